"""A token trie over catalogue titles, stored as flat tensors for batched constrained decoding.

Every path from the root spells one title's target ids (:func:`flrec.data.prompts.encode_target`:
``"Title"`` + newline + EOS), so a beam that follows the trie can only ever emit catalogue titles.
Nodes are numbered breadth-first (root = 0); the edges of node ``n`` are
``child_tok/child_node[child_ptr[n]:child_ptr[n + 1]]``, sorted by token. Because a node's edges
are also sorted globally by ``parent * V + token``, :meth:`TitleTrie.advance` is one
``searchsorted`` and :meth:`TitleTrie.allowed_mask` one scatter — no Python loop over beams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from flrec.data.prompts import encode_target
from flrec.errors import DataError
from flrec.utils.io import atomic_save


@dataclass
class TitleTrie:
    titles: list[str]  # title index -> title string (unique)
    child_ptr: torch.Tensor  # (N + 1,) CSR offsets into child_tok / child_node
    child_tok: torch.Tensor  # (E,) token of each edge
    child_node: torch.Tensor  # (E,) node each edge leads to
    node_title: torch.Tensor  # (N,) title index of a terminal node (after EOS), else -1
    vocab_size: int
    eos_token_id: int
    depth: int  # longest title in tokens (EOS included) = steps a beam search may need

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, tokenizer, titles: Sequence[str], vocab_size: int | None = None) -> TitleTrie:
        """Trie over ``titles`` (duplicates are merged: a trie leaf names a title, not an item).

        ``vocab_size`` defaults to ``len(tokenizer)``; pass the model's (possibly padded) vocabulary
        size so masks line up with its logits.
        """
        uniq = list(dict.fromkeys(titles))
        if not uniq:
            raise DataError("catalogue titles", "no titles to build a decoding trie from; pass a non-empty catalogue")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise DataError("tokenizer", "no eos_token_id, so titles cannot end; set tokenizer.eos_token")
        seqs = [encode_target(tokenizer, t) for t in uniq]
        V = int(vocab_size if vocab_size is not None else len(tokenizer))
        lengths = torch.tensor([len(s) for s in seqs])
        depth = int(lengths.max())
        tok = torch.full((len(seqs), depth), -1, dtype=torch.long)
        for i, s in enumerate(seqs):  # one C-level copy per title; tokenisation dominates anyway
            tok[i, : len(s)] = torch.tensor(s)
        bad = ((tok == eos).cumsum(1) > 0) & (torch.arange(depth) < (lengths - 1)[:, None])
        if bad.any():
            i = int(bad.any(1).nonzero()[0])
            raise DataError("catalogue titles", f"title {uniq[i]!r} tokenises to the EOS id before its end; "
                            "remove the special token from the title")
        if int(tok.max()) >= V:
            raise DataError("tokenizer", f"token id {int(tok.max())} >= vocab_size {V}; pass the model's vocab_size")

        # Level by level: a node is a unique (parent, token) pair. Unique keys come out sorted, so
        # node ids grow with (parent, token) and the edge list below is already in CSR order.
        node = torch.zeros(len(seqs), dtype=torch.long)  # each title's node at the current depth
        parents, toks = [], []
        n_nodes = 1
        for d in range(depth):
            live = (lengths > d).nonzero().squeeze(1)
            keys = node[live] * V + tok[live, d]
            uk, inv = torch.unique(keys, return_inverse=True)
            parents.append(uk // V)
            toks.append(uk % V)
            node[live] = n_nodes + inv
            n_nodes += len(uk)
        parent = torch.cat(parents)
        child_tok = torch.cat(toks)
        child_node = torch.arange(1, n_nodes)
        child_ptr = torch.zeros(n_nodes + 1, dtype=torch.long)
        child_ptr[1:] = torch.bincount(parent, minlength=n_nodes).cumsum(0)
        node_title = torch.full((n_nodes,), -1, dtype=torch.long)
        if torch.unique(node).numel() != len(seqs):  # e.g. a normalising tokenizer merging two titles
            _, inv, counts = torch.unique(node, return_inverse=True, return_counts=True)
            i, j = (counts[inv] > 1).nonzero().squeeze(1)[:2].tolist()
            raise DataError("catalogue titles", f"titles {uniq[i]!r} and {uniq[j]!r} tokenise identically; "
                            "make them distinct in the catalogue")
        node_title[node] = torch.arange(len(seqs))
        return cls(uniq, child_ptr, child_tok, child_node, node_title, V, int(eos), depth)

    # ------------------------------------------------------------------ queries
    @property
    def num_nodes(self) -> int:
        return self.node_title.numel()

    def _edges(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, edge index) for every edge out of ``nodes`` (invalid nodes < 0 have none)."""
        n = nodes.clamp(min=0)
        start = self.child_ptr[n]
        count = torch.where(nodes >= 0, self.child_ptr[n + 1] - start, 0)
        rows = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), count)
        # edge index = start of its row + rank within the row
        first = torch.cumsum(count, 0) - count
        edge = start[rows] + torch.arange(rows.numel(), device=nodes.device) - first[rows]
        return rows, edge

    def allowed_mask(self, nodes: torch.Tensor) -> torch.Tensor:
        """(M, V) bool: which next tokens keep each of ``nodes`` (M,) inside the trie."""
        nodes = nodes.to(self.child_ptr.device)
        mask = torch.zeros(nodes.numel(), self.vocab_size, dtype=torch.bool, device=nodes.device)
        rows, edge = self._edges(nodes)
        mask[rows, self.child_tok[edge]] = True
        return mask

    def constrain(self, nodes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (M, V) with every token outside the trie set to -inf (as HF's prefix constraint)."""
        out = torch.full_like(scores, float("-inf"))
        rows, edge = self._edges(nodes.to(self.child_ptr.device))
        rows, cols = rows.to(scores.device), self.child_tok[edge].to(scores.device)
        out[rows, cols] = scores[rows, cols]
        return out

    def advance(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Child of each node via each token; -1 where the edge does not exist (or node is -1)."""
        key = self._edge_keys()
        q = nodes.clamp(min=0) * self.vocab_size + tokens
        pos = torch.searchsorted(key, q).clamp(max=key.numel() - 1)
        hit = (key[pos] == q) & (nodes >= 0)
        return torch.where(hit, self.child_node[pos], -1)

    def _edge_keys(self) -> torch.Tensor:
        key = getattr(self, "_key", None)
        if key is None:
            nodes = torch.arange(self.num_nodes, device=self.child_ptr.device)
            key = self._key = torch.repeat_interleave(nodes, self.child_ptr.diff()) * self.vocab_size + self.child_tok
        return key

    def title_of(self, nodes: torch.Tensor) -> torch.Tensor:
        """Title index of each (terminal) node; -1 for non-terminal or invalid nodes."""
        return torch.where(nodes >= 0, self.node_title[nodes.clamp(min=0)], -1)

    def to(self, device: torch.device | str) -> TitleTrie:
        """A copy whose tensors live on ``device`` (keep it next to the model's logits)."""
        t = [x.to(device) for x in (self.child_ptr, self.child_tok, self.child_node, self.node_title)]
        return TitleTrie(self.titles, *t, self.vocab_size, self.eos_token_id, self.depth)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        state = {k: getattr(self, k) for k in self.__dataclass_fields__}
        atomic_save(path, lambda p: torch.save(state, p))

    @classmethod
    def load(cls, path: str | Path) -> TitleTrie:
        return cls(**torch.load(path, weights_only=True))
