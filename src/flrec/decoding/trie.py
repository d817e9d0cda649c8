"""A token trie over catalogue titles, stored as flat tensors for batched constrained decoding.

Every path from the root spells one title's target ids — exactly those of
:func:`flrec.data.prompts.encode_target` (``"Title"`` + newline + EOS, tokenised as one string) —
so a beam that follows the trie can only ever emit catalogue titles (map a title back to item ids
with :meth:`flrec.data.schema.Catalogue.item_ids`).
Nodes are numbered breadth-first (root = 0); the edges of node ``n`` are
``child_tok/child_node[child_ptr[n]:child_ptr[n + 1]]``, sorted by token. Because a node's edges
are also sorted globally by ``parent * V + token``, :meth:`TitleTrie.advance` is one
``searchsorted`` and :meth:`TitleTrie.children` one gather — no Python loop over beams and no
data-dependent shapes (so no host syncs on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from flrec.data.prompts import target_text
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
            raise DataError("catalogue titles", "no titles to build a decoding trie from; pass a catalogue")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise DataError("tokenizer", "no eos_token_id, so titles cannot end; set tokenizer.eos_token")
        # encode_target's exact call, batched (one tokenizer call for the whole catalogue)
        encoded = tokenizer([target_text(t) for t in uniq], add_special_tokens=False)["input_ids"]
        seqs = [[*ids, eos] for ids in encoded]
        V = int(vocab_size if vocab_size is not None else len(tokenizer))
        lengths = torch.tensor([len(s) for s in seqs])
        depth = int(lengths.max())
        tok = torch.full((len(seqs), depth), -1, dtype=torch.long)
        for i, s in enumerate(seqs):  # one C-level copy per title; tokenisation dominates anyway
            tok[i, : len(s)] = torch.tensor(s)
        bad = ((tok == eos).cumsum(1) > 0) & (torch.arange(depth) < (lengths - 1)[:, None])
        if bad.any():
            i = int(bad.any(1).nonzero()[0])
            raise DataError(
                "catalogue titles",
                f"title {uniq[i]!r} tokenises to the EOS id before its end; "
                "remove the special token from the title",
            )
        if int(tok.max()) >= V:
            raise DataError(
                "tokenizer", f"token id {int(tok.max())} >= vocab_size {V}; pass the model's vocab_size"
            )

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
            raise DataError(
                "catalogue titles",
                f"titles {uniq[i]!r} and {uniq[j]!r} tokenise identically; "
                "make them distinct in the catalogue",
            )
        node_title[node] = torch.arange(len(seqs))
        return cls(uniq, child_ptr, child_tok, child_node, node_title, V, int(eos), depth)

    # ------------------------------------------------------------------ queries
    @property
    def num_nodes(self) -> int:
        return self.node_title.numel()

    def __post_init__(self) -> None:
        # derived lookups: edge keys (parent * V + token, sorted) and the largest fan-out
        nodes = torch.arange(self.num_nodes, device=self.child_ptr.device)
        self._key = torch.repeat_interleave(nodes, self.child_ptr.diff()) * self.vocab_size + self.child_tok
        self._fanout = max(2, int(self.child_ptr.diff().max()))  # >= 2: a beam search takes 2K of K*F

    def children(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, F) child tokens of each node (ascending), padded to the largest fan-out F, and which
        are real. Fixed width (no data-dependent shapes): no host sync on an accelerator.
        """
        n = nodes.clamp(min=0)
        start = self.child_ptr[n]
        count = torch.where(nodes >= 0, self.child_ptr[n + 1] - start, 0)
        j = torch.arange(self._fanout, device=nodes.device)
        edge = (start[:, None] + j).clamp(max=self.child_tok.numel() - 1)
        return self.child_tok[edge], j < count[:, None]

    def child_edges(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`children` plus each child's edge index into ``child_tok``/``child_node`` (for per-edge
        weights and per-node masses); padded slots point at a valid edge and are marked not real.
        """
        n = nodes.clamp(min=0)
        start = self.child_ptr[n]
        count = torch.where(nodes >= 0, self.child_ptr[n + 1] - start, 0)
        j = torch.arange(self._fanout, device=nodes.device)
        edge = (start[:, None] + j).clamp(max=self.child_tok.numel() - 1)
        return self.child_tok[edge], j < count[:, None], edge

    def allowed_mask(self, nodes: torch.Tensor) -> torch.Tensor:
        """(M, V) bool: which next tokens keep each of ``nodes`` (M,) inside the trie."""
        tok, valid = self.children(nodes.to(self.child_ptr.device))
        mask = torch.zeros(tok.shape[0], self.vocab_size + 1, dtype=torch.bool, device=tok.device)
        return mask.scatter_(1, torch.where(valid, tok, self.vocab_size), True)[:, :-1]  # col V: padding

    def advance(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Child of each node via each token; -1 where the edge does not exist (or node is -1)."""
        q = nodes.clamp(min=0) * self.vocab_size + tokens
        pos = torch.searchsorted(self._key, q).clamp(max=self._key.numel() - 1)
        hit = (self._key[pos] == q) & (nodes >= 0)
        return torch.where(hit, self.child_node[pos], -1)

    def title_of(self, nodes: torch.Tensor) -> torch.Tensor:
        """Title index of each (terminal) node; -1 for non-terminal or invalid nodes."""
        return torch.where(nodes >= 0, self.node_title[nodes.clamp(min=0)], -1)

    def title_lengths(self) -> torch.Tensor:
        """(T,) tokens of each title's target ids (EOS included): the depth of its leaf."""
        edge_parent = torch.repeat_interleave(
            torch.arange(self.num_nodes, device=self.child_ptr.device), self.child_ptr.diff()
        )
        parent = torch.full_like(self.node_title, -1)
        parent[self.child_node] = edge_parent
        leaf = torch.full((len(self.titles),), -1, dtype=torch.long, device=self.node_title.device)
        is_leaf = self.node_title >= 0
        leaf[self.node_title[is_leaf]] = is_leaf.nonzero().squeeze(1)
        length = torch.zeros_like(leaf)
        for _ in range(self.depth):  # pointer jumping to the root (node 0), one level per step
            up = leaf > 0
            length += up.long()
            leaf = torch.where(up, parent[leaf.clamp(min=0)], leaf)
        return length

    def parents(self) -> torch.Tensor:
        """(N,) parent of every node; -1 for the root."""
        edge_parent = torch.repeat_interleave(
            torch.arange(self.num_nodes, device=self.child_ptr.device), self.child_ptr.diff()
        )
        parent = torch.full_like(self.node_title, -1)
        parent[self.child_node] = edge_parent
        return parent

    def ancestor_matrix(self) -> torch.Tensor:
        """Sparse (N, T) float64 0/1 matrix: ``A[n, t] = 1`` iff title ``t``'s path passes node ``n``
        (root and leaf included). ``A @ m`` sums a per-title mass ``m`` over every node's subtree in
        one sparse product ("which catalogue titles continue this prefix", with the CSR edges).
        Built once per trie (``nnz`` = total title length + T) and cached.
        """
        cached = getattr(self, "_ancestors", None)
        if cached is not None:
            return cached
        parent = self.parents()
        is_leaf = self.node_title >= 0
        cur = torch.full((len(self.titles),), -1, dtype=torch.long, device=self.node_title.device)
        cur[self.node_title[is_leaf]] = is_leaf.nonzero().squeeze(1)
        title = torch.arange(len(self.titles), device=cur.device)
        rows, cols = [], []
        for _ in range(self.depth + 1):  # leaf -> root, one level per step (root's parent is -1)
            live = cur >= 0
            rows.append(cur[live])
            cols.append(title[live])
            cur = torch.where(live, parent[cur.clamp(min=0)], -1)
        r, c = torch.cat(rows), torch.cat(cols)
        a = torch.sparse_coo_tensor(torch.stack([r, c]), torch.ones(r.numel(), dtype=torch.float64, device=r.device),
                                    (self.num_nodes, len(self.titles)), check_invariants=True)
        self._ancestors = a.coalesce()
        return self._ancestors

    def node_mass(self, title_mass: torch.Tensor) -> torch.Tensor:
        """(B, N) subtree sums of a (B, T) per-title mass (float64): mass of every prefix."""
        a = self.ancestor_matrix()
        return (a @ title_mass.to(torch.float64).T.contiguous()).T

    def subtree_titles(self) -> torch.Tensor:
        """(N,) number of catalogue titles below each node (1 at a leaf, T at the root)."""
        ones = torch.ones(1, len(self.titles), dtype=torch.float64, device=self.node_title.device)
        return self.node_mass(ones)[0].round().long()

    def edge_information_gain(self) -> torch.Tensor:
        """(E,) information gain (nats) of each edge about the title under a uniform title prior:
        ``log N(parent) - log N(child)`` with ``N`` = titles below a node. An edge out of a node
        with one child ("forced" token) gains 0; the gains along a title's path sum to ``log T``.
        """
        n = self.subtree_titles().double()
        edge_parent = torch.repeat_interleave(
            torch.arange(self.num_nodes, device=self.child_ptr.device), self.child_ptr.diff()
        )
        return n[edge_parent].log() - n[self.child_node].log()

    def forced_chains(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where a beam's next tokens are forced, so a search can feed them in one forward.

        Returns (N,) ``only_tok``/``only_child`` (the single non-EOS child of a node with exactly one
        child, else -1), ``forced_len``: how many such forced tokens follow each node in a row, and
        ``ends``: whether the chain then meets a node whose only child is EOS (the title is unique
        from here, so the beam can only finish it). EOS is never a chain token. Cached per trie.
        """
        cached = getattr(self, "_forced", None)
        if cached is not None:
            return cached
        first = self.child_ptr[:-1].clamp(max=self.child_tok.numel() - 1)
        tok = self.child_tok[first]
        one = self.child_ptr.diff() == 1
        single = one & (tok != self.eos_token_id)
        only_tok = torch.where(single, tok, -1)
        only_child = torch.where(single, self.child_node[first], -1)
        length = torch.zeros_like(only_tok)
        last = torch.arange(self.num_nodes, device=tok.device)  # the node where each chain stops
        for _ in range(self.depth):  # chains are shorter than the depth: this reaches the fixed point
            length = torch.where(single, 1 + length[only_child.clamp(min=0)], 0)
            last = torch.where(single[last], only_child[last], last)
        ends = one[last] & (tok[last] == self.eos_token_id)
        self._forced = (only_tok, only_child, length, ends)
        return self._forced

    def title_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, depth) target ids of every title (EOS included; -1 after the end) and (T,) lengths,
        read back from the trie (edge ``e`` leads to node ``e + 1``: nodes are numbered after the root).
        """
        parent = self.parents()
        is_leaf = self.node_title >= 0
        cur = torch.full((len(self.titles),), -1, dtype=torch.long, device=self.node_title.device)
        cur[self.node_title[is_leaf]] = is_leaf.nonzero().squeeze(1)
        rev = []
        for _ in range(self.depth):  # leaf -> root: the token on the edge into each node
            live = cur > 0
            rev.append(torch.where(live, self.child_tok[(cur - 1).clamp(min=0)], -1))
            cur = torch.where(live, parent[cur.clamp(min=0)], 0)
        rev_tok = torch.stack(rev, 1)  # (T, depth): last token first, then -1 padding
        length = (rev_tok >= 0).sum(1)
        # reverse each row's real prefix: position i holds rev_tok[length - 1 - i]
        i = torch.arange(self.depth, device=rev_tok.device)
        src = (length[:, None] - 1 - i).clamp(min=0)
        tok = torch.where(i < length[:, None], rev_tok.gather(1, src), -1)
        return tok, length

    def to(self, device: torch.device | str) -> TitleTrie:
        """A copy whose tensors live on ``device`` (keep it next to the model's logits)."""
        t = [x.to(device) for x in (self.child_ptr, self.child_tok, self.child_node, self.node_title)]
        return TitleTrie(self.titles, *t, self.vocab_size, self.eos_token_id, self.depth)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        state = {k: getattr(self, k) for k in self.__dataclass_fields__}  # derived lookups are rebuilt
        atomic_save(path, lambda p: torch.save(state, p))

    @classmethod
    def load(cls, path: str | Path) -> TitleTrie:
        return cls(**torch.load(path, weights_only=True))
