"""The training sampler: a row order that is a pure function of (seed, epoch), so a resumed run sees the
same batches as an uninterrupted one; optionally grouped by length (less padding)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Sampler whose order depends only on (seed, epoch): reproducible after a restart and identical on
    every process (accelerate then gives each process its own shard of batches).

    With ``lengths`` (and ``batch_size``) it groups by length: the epoch's permutation is cut into
    mega-batches of ``GROUP_MEGA`` micro-batches, each sorted longest first, so a micro-batch holds rows
    of similar length (Hugging Face's ``group_by_length``); the longest micro-batch runs first, so an
    out-of-memory error shows at step one.
    """

    GROUP_MEGA = 50

    def __init__(self, n: int, seed: int, shuffle: bool = True, lengths: Sequence[int] | None = None,
                 batch_size: int = 1):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.lengths, self.batch_size = lengths, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """This epoch's row order."""
        if not self.shuffle:
            perm = list(range(self.n))
        else:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            perm = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is None:
            return perm
        mega = self.GROUP_MEGA * self.batch_size
        groups = [sorted(perm[i : i + mega], key=lambda j: -self.lengths[j]) for i in range(0, self.n, mega)]
        out = [j for grp in groups for j in grp]
        longest = max(range(0, self.n, self.batch_size), key=lambda i: self.lengths[out[i]])
        out[: self.batch_size], out[longest : longest + self.batch_size] = (
            out[longest : longest + self.batch_size], out[: self.batch_size])
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return self.n


def padding_fraction(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Share of a padded batch's cells that are padding, over consecutive batches of ``order``.

    >>> padding_fraction([1, 3, 1, 3], [0, 1, 2, 3], 2), padding_fraction([1, 3, 1, 3], [1, 3, 0, 2], 2)
    (0.3333333333333333, 0.0)
    """
    cells = real = 0
    for i in range(0, len(order), batch_size):
        batch = [lengths[j] for j in order[i : i + batch_size]]
        cells += max(batch) * len(batch)
        real += sum(batch)
    return (cells - real) / max(cells, 1)


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
