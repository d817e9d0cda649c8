"""Shared-prefix encoding: the instruction text that opens every prompt is encoded once per batch.

Every flrec prompt starts with the same instruction (~55-75 tokens of ~150-190). Under causal
attention a token's hidden state depends only on the tokens before it, so that head has the same
states and KV entries in every row: we run it once (batch 1) and broadcast its cache to the batch.

Left padding puts the head at a different column in each row, so the batch is first rearranged
into a *hoisted* layout: the shared head in the first ``L`` columns (real in every row), then each
row's remaining tokens left-padded as before (padding now sits between the head and the rest).
Positions come from the attention mask (:func:`flrec.models.flr.positions_from_mask`), so every
real token keeps its position id, the prompt still ends in the thought column, and the result
equals the unshared computation up to floating-point summation order (the tests check values,
gradients and rankings).
"""

from __future__ import annotations

import torch


def shared_head_len(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    prompt_items: torch.Tensor | None = None) -> int:
    """Leading columns that are real and identical (ids, and history-item map) in every row.

    Never more than ``P - 2``: the last prompt token before the thought and the thought itself stay
    per-row (the thought column is refined; LatentR3 queries from the token before it).
    """
    b, p = prompt_ids.shape
    if b < 2 or p < 3:
        return 0
    cols = prompt_mask[:, : p - 2].bool().all(0)
    same = (prompt_ids[:, : p - 2] == prompt_ids[:1, : p - 2]).all(0) & cols
    if prompt_items is not None:
        same &= (prompt_items[:, : p - 2] == prompt_items[:1, : p - 2]).all(0)
    return int(same.long().cumprod(0).sum())


def hoist_shared_prefix(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        prompt_items: torch.Tensor | None = None):
    """Rearrange a left-padded prompt batch so the common head of all rows fills the first columns.

    Returns ``(ids, mask, items, L)`` with the same shapes; ``L`` = the head length (0 = nothing is
    shared, tensors returned unchanged). Each row keeps its tokens in order; only its left padding
    moves from before the head to after it.

    >>> ids = torch.tensor([[0, 7, 8, 1, 9], [7, 8, 2, 3, 9]]); mask = (ids > 0).long()
    >>> new_ids, new_mask, _, n = hoist_shared_prefix(ids, mask)
    >>> n, new_ids.tolist(), new_mask.tolist()
    (2, [[7, 8, 0, 1, 9], [7, 8, 2, 3, 9]], [[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]])
    """
    b, p = prompt_ids.shape
    lens = prompt_mask.long().sum(1)
    pads = p - lens
    if b < 2 or int(lens.min()) < 3:
        return prompt_ids, prompt_mask, prompt_items, 0
    # Align every row at its first real token, then find the common head there.
    aligned = pads[:, None] + torch.arange(int(lens.min()), device=prompt_ids.device)
    gather = [t.gather(1, aligned) for t in (prompt_ids, prompt_mask)]
    items_al = prompt_items.gather(1, aligned) if prompt_items is not None else None
    n = shared_head_len(gather[0], gather[1], items_al)
    if n == 0:
        return prompt_ids, prompt_mask, prompt_items, 0
    # Column c of the rest reads old column c while c is padding, else c + n (skipping the head).
    c = torch.arange(p - n, device=prompt_ids.device)[None]
    src = c + n * (c >= pads[:, None])

    def hoist(t: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        return torch.cat([head[:, :n], t.gather(1, src)], dim=1)

    ids = hoist(prompt_ids, gather[0])
    mask = hoist(prompt_mask, gather[1])
    items = hoist(prompt_items, items_al) if prompt_items is not None else None
    return ids, mask, items, n
