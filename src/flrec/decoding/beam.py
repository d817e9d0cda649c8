"""Batched trie-constrained beam search: every returned hypothesis is a catalogue title.

It reproduces Hugging Face beam search (transformers 5.24 ``GenerationMixin._beam_search`` with
``num_beams=K, num_return_sequences=K, do_sample=False, early_stopping=False``) under
``prefix_allowed_tokens_fn`` = the trie, but runs users × beams as one tensor and builds the trie
mask with tensor ops instead of a Python callback per beam per step. Per step, as in HF:

1. ``log_softmax`` of the float32 logits, then -inf on tokens outside the trie (no renormalising);
   add each beam's running log-prob; take the top ``2K`` candidates over the row's ``K × V``
   (computed over the trie children only: the other tokens are -inf anyway).
2. Candidates ending in EOS that rank in the first ``K`` of those ``2K`` finish with score
   ``sum_logprobs / generated_len ** length_penalty`` (the length counts EOS) and compete for the
   row's ``K`` finished slots; the best ``K`` non-EOS candidates keep running.
3. A row stops (its finished set is frozen) once all ``K`` slots are full and the best running
   beam's log-prob divided by the *current* generated length does not beat the worst finished
   score — HF's ``early_stopping=False`` heuristic, reproduced as is (it is a heuristic: a running
   beam can still end better after one more token; HF accepts that and so do we, for agreement).

Jump-forward (on by default, exact): where every live beam of a user has a forced continuation
(the rest of a unique title), its tokens run as one multi-token forward and the steps are replayed
on its logits, so a user waits for about one forward per branching point, not one per token.

Differences from HF, all in degenerate cases only: HF seeds beams 2..K with log-prob -1e9 and
keeps -1e9-penalised duplicates/finished beams running; here they are -inf ("dead"), so a row
whose trie admits fewer than K titles returns fewer than K results instead of duplicates. Frozen
rows are dropped from the batch (HF keeps computing them), which changes nothing for other rows.
Hypotheses that reach ``max_new_tokens`` without EOS are not titles and are never returned (HF
would return them); the default ``max_new_tokens`` = trie depth makes that impossible.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from flrec.data.prompts import encode_target
from flrec.decoding.scoring import cf_log_probs, token_scores
from flrec.decoding.shared_prompt import SharedPromptCache, shared_prompt_attention, supports_shared_prompt
from flrec.decoding.trie import TitleTrie
from flrec.errors import FlrecError
from flrec.models.compat import expand_cache, lm_forward, new_cache, out_cache
from flrec.models.flr import positions_from_mask
from flrec.models.sharing import hoist_shared_prefix
from flrec.models.state import PrefillState

NEG_INF = float("-inf")
_NO_LIMIT = 1 << 40  # "no beam bounds this row's jump"


@torch.inference_mode()
def prefill_plain(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, share_prefix: bool = True
) -> PrefillState:
    """Read left-padded prompts once into a fresh KV cache; logits only for the last position.

    ``share_prefix``: the leading tokens common to every row (the instruction) run once, as batch 1,
    and their cache is broadcast (:mod:`flrec.models.sharing`; exact, the returned mask is in the
    hoisted layout that matches the cache).
    """
    attention_mask = attention_mask.to(input_ids.device)
    n = 0
    if share_prefix:
        input_ids, attention_mask, _, n = hoist_shared_prefix(input_ids, attention_mask)
    position_ids = positions_from_mask(attention_mask)
    cache = new_cache(model)
    if n:
        lm_forward(model, cache=cache, input_ids=input_ids[:1, :n], attention_mask=attention_mask[:1, :n],
                   position_ids=position_ids[:1, :n], use_cache=True, logits_to_keep=1)
        expand_cache(cache, input_ids.shape[0])
    out = lm_forward(
        model,
        cache=cache,
        input_ids=input_ids[:, n:],
        attention_mask=attention_mask,
        position_ids=position_ids[:, n:],
        use_cache=True,
        logits_to_keep=1,
    )
    return PrefillState(
        cache=out_cache(out),
        next_logits=out.logits[:, -1].float(),
        attention_mask=attention_mask,
        next_position=attention_mask.long().sum(-1),
    )


@dataclass
class SearchStats:
    """What a search ran, counted not timed (benchmarks report steps per user, old vs jump-forward).

    Pass one to :func:`constrained_beam_search` (it accumulates, so one object can span batches).
    """

    forwards: int = 0  # sequential decoder forwards after the prefill: the search's critical path
    token_slots: int = 0  # beam x position slots fed to the model, padding included
    padded_slots: int = 0  # of those, padding (rows that jumped fewer forced tokens than the widest)
    stopped_in_jump: int = 0  # rows whose stopping test fired on a forced token inside a jump
    shared_forwards: int = 0  # forwards that read each user's prompt once (shared_prompt), not once per beam
    live_slots: int = 0  # of the token slots, those of live beams (not padding, not dead beams): needed work
    live_context: int = 0  # sum over live slots of the positions each attends to (attention's needed work)
    row_forwards: list[int] = field(default_factory=list)  # per prompt row: the forwards it took part in

    @property
    def steps_per_user(self) -> float:
        """Mean sequential forwards a user waited through (what jump-forward cuts)."""
        return sum(self.row_forwards) / max(1, len(self.row_forwards))


@dataclass
class _Scorer:
    """The per-token score of every beam's trie children under the decoding options (one call site
    for the branching step and for the forced tokens of a jump, so both score alike)."""

    trie: TitleTrie
    scoring: str
    edge_weight: torch.Tensor | None
    node_allowed: torch.Tensor | None
    node_mass: torch.Tensor | None
    gamma: float

    def __call__(self, nodes: torch.Tensor, logits: torch.Tensor, beam_row: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, F) scores of each node's children (-inf where none) and their tokens (ascending)."""
        plain = self.scoring == "sum" and self.node_allowed is None and (self.node_mass is None or self.gamma >= 1.0)
        if plain:
            child_tok, real = self.trie.children(nodes)
            return torch.log_softmax(logits, dim=-1).gather(1, child_tok).masked_fill(~real, NEG_INF), child_tok
        return _scored_children(self.trie, nodes, logits, beam_row, self.scoring, self.edge_weight,
                                self.node_allowed, self.node_mass, self.gamma)


@torch.inference_mode()
def constrained_beam_search(
    model: torch.nn.Module,
    state: PrefillState,
    trie: TitleTrie,
    beam_size: int = 10,
    max_new_tokens: int | None = None,
    length_penalty: float = 1.0,
    num_return: int | None = None,
    *,
    scoring: str = "sum",
    edge_weight: torch.Tensor | None = None,
    node_allowed: torch.Tensor | None = None,
    node_mass: torch.Tensor | None = None,
    gamma: float = 1.0,
    jump_forward: bool = True,
    jump_min_fill: float = 0.75,
    jump_max_tokens: int = 16,
    stats: SearchStats | None = None,
    shared_prompt: bool = True,
) -> list[list[tuple[int, float]]]:
    """Top distinct titles per prompt row: ``[(title index in trie.titles, score), ...]`` best first.

    ``state`` is consumed (its cache is expanded to ``rows × beam_size`` and reordered in place).
    The defaults are HF's beam search; the keyword options (:mod:`flrec.decoding.scoring`) change
    the per-token score, all as tensor ops over the users × beams batch:

    * ``scoring`` — ``sum`` | ``trie_renorm`` | ``info_gain`` (``edge_weight`` (E,) from
      :func:`~flrec.decoding.scoring.edge_weights` for the latter);
    * ``node_allowed`` (B, N) bool — per row, trie nodes that may be entered (exclude-seen: nodes
      with at least one allowed title below them);
    * ``node_mass`` (B, N) float64 with ``gamma`` < 1 — the text-free assistant's per-row subtree
      masses (:meth:`TitleTrie.node_mass`); token score ``gamma * s + (1 - gamma) * log p_CF``.

    **Jump-forward** (``jump_forward``, exact): when every live beam of a row sits on a forced
    chain (:meth:`TitleTrie.forced_chains`: nodes with one child), the row's chosen token and the
    following forced tokens go through the model as one multi-token forward (at most
    ``jump_max_tokens``). The row jumps as far as its shortest chain, or, when every live beam can
    only finish its title, until the last of them emits its EOS. Each forced step is then replayed
    on the forward's logits exactly as a step would run it: every candidate is a beam's only child,
    so at most K exist and all rank in the top K; a forced EOS finishes its beam into the finished
    set, the others keep running, and HF's stopping test follows (a row that stops mid-jump keeps
    the finished set of that step). Titles, order and scores are those of the step-by-step search
    (``jump_forward=False``). Rows jump by different counts in one forward, padded with masked
    slots; the width is the largest keeping at least ``jump_min_fill`` of the slots real (1.0: no
    padding; always so under sliding-window attention, whose window counts cache slots).
    ``stats`` (:class:`SearchStats`) counts the forwards.

    **Shared prompt** (``shared_prompt``, exact): each user's prompt stays in the cache once and
    only the generated suffix is kept per beam (:mod:`flrec.decoding.shared_prompt`), so a step's
    beam reorder moves suffixes, not prompts. Used where the model supports it (full-attention
    layers); the results are those of the per-beam cache up to floating-point rounding.
    """
    if scoring == "info_gain" and edge_weight is None:
        raise FlrecError("scoring='info_gain' needs edge_weight; pass flrec.decoding.scoring.edge_weights(trie, cfg)")
    K = beam_size
    T = trie.depth if max_new_tokens is None else max_new_tokens
    if K < 1 or T < 1:
        raise FlrecError(f"beam_size ({K}) and max_new_tokens ({T}) must be >= 1")
    num_return = K if num_return is None else min(num_return, K)
    dev = state.next_logits.device
    trie = trie if trie.child_ptr.device == dev else trie.to(dev)
    edge_weight, node_allowed, node_mass = (None if x is None else x.to(dev) for x in (edge_weight, node_allowed, node_mass))
    V = state.next_logits.shape[1]
    if V < trie.vocab_size:
        raise FlrecError(
            f"the model has {V} logits but the trie was built for {trie.vocab_size}; "
            "rebuild it with TitleTrie.build(..., vocab_size=model.config.vocab_size)"
        )
    search = _BeamSearch(model, state, trie, _Scorer(trie, scoring, edge_weight, node_allowed, node_mass, gamma),
                         K, T, length_penalty, jump_forward and jump_max_tokens > 1 and T > 1, jump_min_fill,
                         jump_max_tokens, stats, shared_prompt and supports_shared_prompt(model, state.cache))
    with shared_prompt_attention(model) if search.shared else contextlib.nullcontext():
        out_score, out_title = search.run()
    return _to_lists(out_score[:, :num_return], out_title[:, :num_return])


class _BeamSearch:
    """One :func:`constrained_beam_search` in flight, split into the steps of its loop.

    The state of the rows still searching lives on ``self`` and each step rebinds it, so the
    loop body reads as the algorithm; the tensor ops, and their order, are those of a single loop
    (attribute access is host-side only: no tensor is copied for the split). Row tensors are
    (b, K) over the b rows still searching; beam tensors are flat (b*K, ...), users × beams.
    """

    def __init__(self, model: torch.nn.Module, state: PrefillState, trie: TitleTrie, score: _Scorer, K: int,
                 T: int, length_penalty: float, jump: bool, jump_min_fill: float, jump_max_tokens: int,
                 stats: SearchStats | None, shared: bool = False) -> None:
        self.model, self.trie, self.score, self.K, self.T = model, trie, score, K, T
        self.length_penalty, self.jump, self.jump_max_tokens, self.stats = length_penalty, jump, jump_max_tokens, stats
        logits = state.next_logits.float()
        dev = self.dev = logits.device
        B = logits.shape[0]
        self.shared = shared
        if shared:  # the prompt once per user; self.attn masks the per-beam suffix only
            self.cache = SharedPromptCache(state.cache, state.attention_mask)
            self.attn = state.attention_mask.new_zeros((B * K, 0))
        else:
            self.cache = state.cache
            self.cache.batch_repeat_interleave(K)  # one copy of the prompt cache per beam
            self.attn = state.attention_mask.repeat_interleave(K, 0)  # rows of one user stay identical
        self.pos = state.next_position.to(dev).repeat_interleave(K)
        self.logits = logits.repeat_interleave(K, 0)
        self.nodes = torch.zeros(B * K, dtype=torch.long, device=dev)
        self.running = torch.full((B, K), NEG_INF, device=dev)
        self.running[:, 0] = 0.0  # only the first beam is alive at the start (HF: the others at -1e9)
        self.fin_score = torch.full((B, K), NEG_INF, device=dev)
        self.fin_title = torch.full((B, K), -1, dtype=torch.long, device=dev)
        self.rows = torch.arange(B, device=dev)  # original row of each row still searching
        self.t = torch.ones(B, dtype=torch.long, device=dev)  # per row: the step whose token is chosen next
        self.perm = torch.arange(B * K, device=dev)  # cache row of each beam (a jump re-sorts beams lazily)
        self.row_forwards = torch.zeros(B, dtype=torch.long, device=dev)
        self.out_score, self.out_title = self.fin_score.clone(), self.fin_title.clone()
        self.top_k_mask = torch.arange(2 * K, device=dev) < K
        self.min_fill = 1.0 if _sliding_cache(self.cache) else jump_min_fill
        self.only_tok, self.only_child, self.forced_len, self.ends = trie.forced_chains() if jump else (None,) * 4

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Search until every row stops; (B, K) finished scores and titles, best first (-inf: none)."""
        K = self.K
        while True:
            beam_src, next_tok = self._expand()
            go_on = self._go_on()
            if not bool(go_on.all()):  # the one host sync per step: freeze finished rows, drop them
                kept = self._retire(~go_on)
                if kept is None:
                    break
                beam_src, next_tok = beam_src[kept], next_tok[_beams_of(kept, K)]
            width, W, forced = self._jump_widths()
            all_logits, path = self._forward(beam_src, next_tok, width, W)
            if W == 1:
                self.t = self.t + 1
                continue
            stop = self._replay_jump(all_logits, path, width, W, forced)
            if bool(stop.any()):  # the finished set is that of the step where the row stopped
                if self.stats is not None:
                    self.stats.stopped_in_jump += int(stop.sum())
                kept = self._retire(stop)
                if kept is None:
                    break
                # the jump's lazy beam order (perm) and its logits follow the kept beams
                beams = _beams_of(kept, K)
                self.logits, self.perm = self.logits[beams], self.perm[beams]
        if self.stats is not None:
            self.stats.row_forwards.extend(self.row_forwards.tolist())
        return self.out_score, self.out_title

    def _expand(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One branching step over every beam's trie children: EOS candidates compete for the
        finished slots, the best K others keep running. Returns each new beam's source (b, K, in
        the pre-step flat layout) and its chosen token (b*K)."""
        K, trie, b = self.K, self.trie, self.rows.numel()
        # Only trie children can score above -inf, so rank those (b, K*F) instead of all (b, K*V)
        # tokens; children are in ascending token order, so ties break as in HF's dense top-k.
        logp, child_tok = self.score(self.nodes, self.logits, self.rows.repeat_interleave(K))
        F = child_tok.shape[1]
        acc = (logp.view(b, K, F) + self.running[:, :, None]).view(b, K * F)
        cand, idx = torch.topk(acc, 2 * K)  # (b, 2K), sorted
        src = idx // F
        tok = child_tok.view(b, K * F).gather(1, idx)
        child = trie.advance(self.nodes.view(b, K).gather(1, src), tok)
        ended = tok == trie.eos_token_id

        # finished: top-K candidates that emit EOS compete with the row's finished slots
        new = torch.where(ended & self.top_k_mask & (cand > NEG_INF),
                          cand / _norm(self.t, self.length_penalty)[:, None], NEG_INF)
        merged = torch.cat([self.fin_score, new], 1)
        merged_title = torch.cat([self.fin_title, trie.title_of(child)], 1)
        self.fin_score, keep = torch.topk(merged, K)
        self.fin_title = merged_title.gather(1, keep)

        # running: the best K candidates that did not end
        self.running, sel = torch.topk(cand.masked_fill(ended, NEG_INF), K)
        beam_src = src.gather(1, sel) + torch.arange(b, device=self.dev)[:, None] * K
        self.nodes = child.gather(1, sel).view(-1)
        return beam_src, tok.gather(1, sel).view(-1)

    def _go_on(self) -> torch.Tensor:
        """HF's early-stopping heuristic (early_stopping=False), per row: is improvement still possible?"""
        return (self.running[:, 0] / _norm(self.t, self.length_penalty) > _worst(self.fin_score)) & (self.t < self.T)

    def _retire(self, done: torch.Tensor) -> torch.Tensor | None:
        """Freeze the finished sets of rows ``done`` into the output and drop them from the row and
        beam state every step uses; the kept rows' indices, or None when no row is left. The
        caller drops the step-specific tensors it holds (the retained ones depend on where)."""
        self.out_score[self.rows[done]], self.out_title[self.rows[done]] = self.fin_score[done], self.fin_title[done]
        kept = (~done).nonzero().squeeze(1)
        if kept.numel() == 0:
            return None
        beams = _beams_of(kept, self.K)
        self.nodes, self.attn, self.pos = self.nodes[beams], self.attn[beams], self.pos[beams]
        if self.shared:
            self.cache.keep_users(kept)
        self.running, self.fin_score, self.fin_title, self.rows, self.t = (
            x[kept] for x in (self.running, self.fin_score, self.fin_title, self.rows, self.t))
        return kept

    def _jump_widths(self) -> tuple[torch.Tensor, int, tuple[torch.Tensor, torch.Tensor] | None]:
        """Tokens each row feeds next (b,): the chosen one, then (jump-forward) its forced chain;
        the forward's width W; and (chain length, finishing) per beam (b, K) for the replay."""
        b, K = self.rows.numel(), self.K
        if not self.jump:
            return torch.ones(b, dtype=torch.long, device=self.dev), 1, None
        live = self.running > NEG_INF
        n = self.nodes.clamp(min=0)
        chain, finishing = self.forced_len[n].view(b, K), live & self.ends[n].view(b, K)
        # a beam that can only finish its title bounds the jump by its EOS step only if every
        # other live beam can, too; otherwise by the shortest chain of those that cannot
        span = torch.where(live & ~finishing, chain, _NO_LIMIT).min(1).values
        span = torch.where(span < _NO_LIMIT, span, torch.where(finishing, chain + 1, 0).max(1).values)
        width = 1 + torch.minimum(span, self.T - self.t - 1).clamp(min=0, max=self.jump_max_tokens - 1)
        W = _jump_width(width, self.min_fill)
        return width.clamp(max=W), W, (chain, finishing)

    def _forward(self, beam_src: torch.Tensor, next_tok: torch.Tensor, width: torch.Tensor, W: int
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Reorder the cache to the new beams and feed each beam its token and forced chain as one
        forward of width W. Returns the forward's logits (b*K, W, V) and each beam's trie node
        before every fed position and after the last (``path``, W + 1 entries)."""
        K, b, dev = self.K, self.rows.numel(), self.dev
        beam_width = width.repeat_interleave(K)
        ids, path = [next_tok], [self.nodes]
        for k in range(1, W):  # walk each beam's chain; beams of rows that jump less get padding
            n = path[-1]
            nxt = self.only_tok[n.clamp(min=0)]
            on = (k < beam_width) & (n >= 0) & (nxt >= 0)  # dead beams may sit anywhere: pad them
            ids.append(torch.where(on, nxt, 0))
            path.append(torch.where(on, self.only_child[n.clamp(min=0)], n))
        slots = (torch.arange(W, device=dev) < beam_width[:, None]).to(self.attn.dtype)

        self.cache.reorder_cache(self.perm[beam_src.view(-1)])  # also drops the beams of frozen rows
        self.attn = torch.cat([self.attn, slots], 1)
        extra = {}
        if self.shared:  # the split attention reads its masks from the cache; the model builds none
            self.cache.suffix_mask = self.attn
            extra = {"flrec_prompt": self.cache}
        out = lm_forward(
            self.model,
            cache=self.cache,
            input_ids=torch.stack(ids, 1),
            attention_mask=None if self.shared else self.attn,
            position_ids=self.pos[:, None] + torch.arange(W, device=dev),
            use_cache=True,
            logits_to_keep=W,
            **extra,
        )
        self.cache = out_cache(out)
        self.row_forwards[self.rows] += 1
        if self.stats is not None:
            self.stats.forwards += 1
            self.stats.shared_forwards += int(self.shared)
            self.stats.token_slots += b * K * W
            self.stats.padded_slots += K * (b * W - int(width.sum()))
            live = (self.running > NEG_INF).view(-1).long()
            self.stats.live_slots += int((live * beam_width).sum())
            ctx = beam_width * self.pos + beam_width * (beam_width + 1) // 2  # positions pos+1 .. pos+width
            self.stats.live_context += int((live * ctx).sum())
        all_logits = out.logits  # (b*K, W, V), model dtype: positions go to float32 one at a time
        self.logits = all_logits[torch.arange(b * K, device=dev), beam_width - 1].float()
        self.nodes = path[-1]
        self.pos = self.pos + beam_width
        self.perm = torch.arange(b * K, device=dev)
        return all_logits, path

    def _replay_jump(self, all_logits: torch.Tensor, path: list[torch.Tensor], width: torch.Tensor, W: int,
                     forced: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Apply a jump's forced tokens (and forced EOS) one step at a time, scored at their
        positions, as the steps would: each candidate is a beam's only child, so at most K exist,
        all in the top K: an EOS finishes its beam, the others keep running; then the stopping
        test. Re-sorts the beams as each step's top-k would (lazily, via ``perm``); returns the
        rows whose stopping test fired (b,)."""
        K, b, trie, lp = self.K, self.rows.numel(), self.trie, self.length_penalty
        chain, finishing = forced
        beam_row = self.rows.repeat_interleave(K)
        eos_at = torch.where(finishing, chain + 1, W)  # (b, K) offset of each beam's forced EOS
        stop = torch.zeros(b, dtype=torch.bool, device=self.dev)
        running, fin_score, fin_title, t = self.running, self.fin_score, self.fin_title, self.t
        for k in range(1, W):
            on = (k < width) & ~stop  # a stopped row's finished set is frozen
            # scored as the step would (a forced node's only child sits in slot 0)
            cand = running + self.score(path[k - 1], all_logits[:, k - 1].float(), beam_row)[0][:, 0].view(b, K)
            ended = on[:, None] & (eos_at == k)
            leaf = trie.advance(path[k - 1], torch.full_like(path[k - 1], trie.eos_token_id)).view(b, K)
            new = torch.where(ended & (cand > NEG_INF), cand / _norm(t + k, lp)[:, None], NEG_INF)
            fin_score, keep = torch.topk(torch.cat([fin_score, new], 1), K)  # no host sync per token
            fin_title = torch.cat([fin_title, trie.title_of(leaf)], 1).gather(1, keep)
            worst = _worst(fin_score)
            running = torch.where(ended, NEG_INF, torch.where(on[:, None], cand, running))
            stop |= on & ~(running.max(1).values / _norm(t + k, lp) > worst)
        self.t = t + width
        self.fin_score, self.fin_title = fin_score, fin_title
        self.running, order = running.sort(dim=1, descending=True, stable=True)  # what each step's top-k did
        self.perm = (order + torch.arange(b, device=self.dev)[:, None] * K).view(-1)
        self.nodes, self.logits = self.nodes[self.perm], self.logits[self.perm]
        return stop


def _norm(t: torch.Tensor, length_penalty: float) -> torch.Tensor:
    """HF's length normaliser ``t ** length_penalty`` per row (float64 power, as Python's, then float32)."""
    return (t.double() ** length_penalty).float()


def _worst(fin_score: torch.Tensor) -> torch.Tensor:
    """Per row: the worst finished score once all K slots are full, else -inf (anything improves)."""
    full = (fin_score > NEG_INF).all(1)
    return torch.where(full, fin_score.min(1).values, torch.full_like(fin_score[:, 0], NEG_INF))


def _beams_of(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Flat beam indices of ``rows`` in a users × ``k`` layout."""
    return (rows[:, None] * k + torch.arange(k, device=rows.device)).view(-1)


def _jump_width(width: torch.Tensor, min_fill: float) -> int:
    """Widest forward (<= the widest row) whose slots are at least ``min_fill`` real tokens; a row
    wanting fewer tokens is padded. The narrowest row's width always qualifies (no padding)."""
    w = width.tolist()
    best = min(w)
    for c in sorted(set(w)):
        if sum(min(x, c) for x in w) >= min_fill * c * len(w):
            best = c
    return best


def _sliding_cache(cache) -> bool:
    """Whether some layer keeps a sliding window (masked padding slots would shift it): no padding then."""
    layers = getattr(cache, "layers", None)
    return layers is None or any(getattr(layer, "is_sliding", False) for layer in layers)


def _scored_children(trie: TitleTrie, nodes: torch.Tensor, logits: torch.Tensor, beam_row: torch.Tensor,
                     scoring: str, edge_weight: torch.Tensor | None, node_allowed: torch.Tensor | None,
                     node_mass: torch.Tensor | None, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(b*K, F) token scores of every beam's children under the decoding options, and the tokens."""
    child_tok, real, edge = trie.child_edges(nodes)
    child_node = trie.child_node[edge]
    if node_allowed is not None:
        real = real & node_allowed[beam_row[:, None], child_node]
    logp = torch.log_softmax(logits, dim=-1).gather(1, child_tok).masked_fill(~real, NEG_INF)
    s = token_scores(logp, real, edge, scoring, edge_weight)
    if node_mass is not None and gamma < 1.0:
        cf = cf_log_probs(node_mass[beam_row[:, None], child_node], real)
        # gamma = 0 exactly: the ID model alone (0 * a finite LLM score would do, but keep it exact)
        s = cf if gamma == 0.0 else torch.where(real, gamma * s + (1.0 - gamma) * cf, NEG_INF)
    return s, child_tok


def _to_lists(score: torch.Tensor, title: torch.Tensor) -> list[list[tuple[int, float]]]:
    valid = score > NEG_INF
    # each finished hypothesis is a distinct trie leaf, so titles in a row never repeat
    st = torch.where(valid, title, -1 - torch.arange(title.shape[1], device=title.device)).sort(1).values
    assert bool((st[:, 1:] != st[:, :-1]).all()), "beam search returned a title twice"
    s, ti, v = score.tolist(), title.tolist(), valid.tolist()
    return [[(ti[r][j], s[r][j]) for j in range(len(s[r])) if v[r][j]] for r in range(len(s))]


def hf_reference_search(
    model: torch.nn.Module,
    tokenizer,
    trie: TitleTrie,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    beam_size: int = 10,
    length_penalty: float = 1.0,
    max_new_tokens: int | None = None,
) -> list[list[tuple[int, float]]]:
    """The predecessor's decoding — HF ``generate`` + a per-beam Python ``prefix_allowed_tokens_fn``
    over a prefix dict — returned in :func:`constrained_beam_search`'s format. Slow; kept as the
    parity reference for tests and benchmarks. Non-title hypotheses HF pads with are left out.
    """
    from transformers import GenerationConfig

    seqs = [tuple(encode_target(tokenizer, t)) for t in trie.titles]
    table: dict[tuple[int, ...], set[int]] = {}
    for s in seqs:
        for i in range(len(s)):
            table.setdefault(s[:i], set()).add(s[i])
    allowed_lists = {k: sorted(v) for k, v in table.items()}
    leaf = {s: i for i, s in enumerate(seqs)}
    width, eos = input_ids.shape[1], trie.eos_token_id

    def allowed(_batch_id: int, sent: torch.Tensor) -> list[int]:
        return allowed_lists.get(tuple(sent[width:].tolist()), [eos])  # dead (off-trie) beams: anything

    cfg = GenerationConfig(
        num_beams=beam_size,
        num_return_sequences=beam_size,
        do_sample=False,
        length_penalty=length_penalty,
        early_stopping=False,
        max_new_tokens=trie.depth if max_new_tokens is None else max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        return_dict_in_generate=True,
        output_scores=True,
    )
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=cfg,
            prefix_allowed_tokens_fn=allowed,
        )
    gen, scores = out.sequences[:, width:].tolist(), out.sequences_scores.tolist()
    res: list[list[tuple[int, float]]] = []
    for r in range(input_ids.shape[0]):
        row = []
        for j in range(r * beam_size, (r + 1) * beam_size):
            g = gen[j][: gen[j].index(eos) + 1] if eos in gen[j] else gen[j]
            if tuple(g) in leaf:
                row.append((leaf[tuple(g)], scores[j]))
        res.append(row)
    return res
