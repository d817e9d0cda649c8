"""Prompt and target formatting (the one place these strings live).

The constants and target helpers at the top are the shared contract used by training, the
decoding trie and evaluation, so a title is tokenised identically everywhere. :class:`PromptBuilder`
turns histories into prompt ids (LatentR3's Alpaca-style prompt, typos fixed) and
:func:`collate_left_padded` batches them in the layout the FLR model consumes.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from flrec.data.schema import THOUGHT_TOKEN, Catalogue, Interaction  # noqa: F401 (re-exported)
from flrec.errors import FlrecError


def target_text(title: str) -> str:
    """The response string the model is trained to produce for ``title`` (EOS is added as an id)."""
    return f'"{title}"\n'


def encode_target(tokenizer, title: str) -> list[int]:
    """Token ids of a whole target: ``"Title"`` + newline + EOS, tokenised as one string.

    Tokenising the whole string (not title pieces) keeps BPE merges at the quote boundaries
    identical between training targets and the decoding trie.
    """
    ids = tokenizer(target_text(title), add_special_tokens=False)["input_ids"]
    return list(ids) + [tokenizer.eos_token_id]


# The prompt, split where history titles go. No chat template and no BOS, as LatentR3.
# "alpaca" is LatentR3's (the paper's) prompt; "compact" says the same in one line, for ~45 fewer
# tokens per row (a measured speed/quality trade-off: docs/cpu-training.md).
_HEAD = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n"
    "Given a list of {plural} the user has recently enjoyed, please write a new {domain} that the "
    "user may enjoy next.\n\n"
    "### User Input:\n"
    "The user has interacted with the following {plural} before:"
)
_SEGMENT = ' "{title}"'  # one history title, with the space that follows ":" or ","
_SEP = ","
_TAIL = "\n\n### Response:\n"  # followed by THOUGHT_TOKEN when use_thought
TEMPLATES = {
    "alpaca": (_HEAD, _TAIL),
    "compact": ("Recommend the next {domain} for a user who enjoyed these {plural}:", "\nNext {domain}:\n"),
}


@contextmanager
def _gc_paused():
    """Pause the cyclic GC while building many acyclic lists: with a large dataset in memory its
    repeated full scans otherwise cost about as much as the encoding itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class EncodedExample:
    """One row's prompt ids (ending in the thought token when used) and target ids (ending in EOS).

    ``prompt_items`` runs parallel to ``prompt_ids``: for each token, the index of the history title
    it belongs to (0 = oldest title kept in the prompt), or -1 for instruction text, separators and
    the thought. The reasoner uses it to restrict or pool its keys to history items, and the factor
    diagnostics to map attention back to items.
    """

    prompt_ids: list[int]
    target_ids: list[int]
    row_index: int
    prompt_items: list[int] | None = None


class PromptBuilder:
    """Builds prompt ids from history titles (oldest first), with batched, cached tokenisation.

    The prompt is assembled from separately tokenised pieces: the fixed head, one segment
    ``' "Title"'`` per history title, ``","`` between them, the fixed tail and the thought token.
    LatentR3 also tokenises segments separately; here it additionally means each distinct title
    is tokenised once (in one batched call) however many rows it appears in, and that a title's
    ids never depend on its neighbours — so training, evaluation and serving see identical ids.
    Over-long prompts drop whole oldest titles until they fit ``max_prompt_tokens``.
    """

    def __init__(
        self,
        tokenizer,
        domain: str = "item",
        domain_plural: str | None = None,
        max_prompt_tokens: int = 512,
        max_history: int = 10,
        use_thought: bool = True,
        template: str = "alpaca",
    ) -> None:
        if max_history < 1:
            raise FlrecError(f"max_history must be >= 1, got {max_history}")
        if template not in TEMPLATES:
            raise FlrecError(f"prompt template '{template}' unknown; use one of {sorted(TEMPLATES)}")
        self.tokenizer = tokenizer
        self.domain = domain
        self.domain_plural = domain_plural or f"{domain}s"
        self.max_prompt_tokens = max_prompt_tokens
        self.max_history = max_history
        self.use_thought = use_thought
        self.template = template
        head, tail = TEMPLATES[template]
        self._head_text = head.format(plural=self.domain_plural, domain=domain)
        self._tail_text = tail.format(plural=self.domain_plural, domain=domain)
        self._head, self._sep, self._tail = self._tokenize([self._head_text, _SEP, self._tail_text])
        self._segments: dict[str, list[int]] = {}  # title -> ids of ' "Title"'
        self._joined: dict[str, list[int]] = {}  # title -> ids of ',' + ' "Title"'
        self._targets: dict[str, list[int]] = {}
        self._thought_id: int | None = None

    @classmethod
    def for_dataset(cls, tokenizer, dataset, **kwargs) -> PromptBuilder:
        """A builder using ``dataset.domain`` (a :class:`~flrec.data.schema.RecDataset`) for the wording."""
        return cls(tokenizer, domain=dataset.domain, **kwargs)

    @property
    def thought_token_id(self) -> int:
        """Id of :data:`THOUGHT_TOKEN`; the tokenizer must already contain it."""
        if self._thought_id is None:
            tid = self.tokenizer.convert_tokens_to_ids(THOUGHT_TOKEN)
            if tid is None or self.tokenizer.convert_ids_to_tokens(tid) != THOUGHT_TOKEN:
                raise FlrecError(
                    f"the tokenizer has no {THOUGHT_TOKEN} token; call "
                    "flrec.models.backbone.add_thought_token(model, tokenizer) before building prompts"
                )
            self._thought_id = tid
        return self._thought_id

    # -- text ------------------------------------------------------------------------------------

    def render(self, history_titles: Sequence[str]) -> str:
        """The prompt as text (for display), after the same truncation as :meth:`encode`."""
        titles = list(history_titles)[-self.max_history :]
        self._cache_segments(titles)
        body = _SEP.join(_SEGMENT.format(title=t) for t in self._kept(titles, "history"))
        return self._head_text + body + self._tail_text + (THOUGHT_TOKEN if self.use_thought else "")

    # -- ids -------------------------------------------------------------------------------------

    def encode(self, history_titles: Sequence[str]) -> list[int]:
        """Prompt ids for one history (oldest title first)."""
        return self.encode_batch([history_titles])[0]

    def encode_batch(self, histories: Sequence[Sequence[str]]) -> list[list[int]]:
        """Prompt ids for many histories; new titles are tokenised in one batched call."""
        histories = [list(h)[-self.max_history :] for h in histories]
        self._cache_segments([t for h in histories for t in h])
        with _gc_paused():
            return [self._assemble(h, f"history {i}") for i, h in enumerate(histories)]

    def encode_rows(self, rows: Sequence[Interaction], catalogue: Catalogue) -> list[EncodedExample]:
        """Prompt and target ids for dataset rows (targets via :func:`encode_target`'s tokenisation)."""
        histories = []
        for i, row in enumerate(rows):
            if not row.history:
                raise FlrecError(f"row {i} (user {row.user!r}) has an empty history; drop it before encoding")
            histories.append([catalogue.titles[j] for j in row.history[-self.max_history :]])
        self._cache_segments([t for h in histories for t in h])
        targets = [catalogue.titles[r.target] for r in rows]
        self._cache_targets(targets)
        with _gc_paused():
            out = []
            for i, (h, t) in enumerate(zip(histories, targets, strict=True)):
                ids, items = self._assemble_with_items(h, f"row {i} (user {rows[i].user!r})")
                out.append(EncodedExample(ids, self._targets[t], i, items))
            return out

    # -- internals -------------------------------------------------------------------------------

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _cache_segments(self, titles: list[str]) -> None:
        new = list(dict.fromkeys(t for t in titles if t not in self._segments))
        for t, ids in zip(new, self._tokenize([_SEGMENT.format(title=t) for t in new]), strict=True):
            self._segments[t] = ids
            self._joined[t] = self._sep + ids

    def _cache_targets(self, titles: list[str]) -> None:
        # Same string and call as encode_target, batched: ids are identical (a test checks this).
        new = list(dict.fromkeys(t for t in titles if t not in self._targets))
        eos = self.tokenizer.eos_token_id
        ids = self._tokenize([target_text(t) for t in new])
        self._targets.update((t, i + [eos]) for t, i in zip(new, ids, strict=True))

    def _fixed_len(self) -> int:
        return len(self._head) + len(self._tail) + int(self.use_thought)

    def _n_fitting(self, titles: list[str]) -> int:
        """How many of the newest ``titles`` fit in ``max_prompt_tokens`` (may be 0)."""
        used, n = self._fixed_len(), 0
        for t in reversed(titles):
            used += len(self._segments[t]) + (len(self._sep) if n else 0)
            if used > self.max_prompt_tokens:
                break
            n += 1
        return n

    def _kept(self, titles: list[str], where: str) -> list[str]:
        """The newest titles that fit; at least one, else a one-line error naming ``where``."""
        if not titles:
            raise FlrecError(f"{where}: empty history; every prompt needs at least one title")
        n = self._n_fitting(titles)
        if n == 0:
            need = self._fixed_len() + len(self._segments[titles[-1]])
            raise FlrecError(
                f"{where}: the newest title alone needs {need} prompt tokens but max_prompt_tokens="
                f"{self.max_prompt_tokens}; raise max_prompt_tokens or shorten the title"
            )
        return titles[len(titles) - n :]

    def _assemble(self, titles: list[str], where: str) -> list[int]:
        return self._assemble_kept(self._kept(titles, where))

    def _assemble_kept(self, kept: list[str]) -> list[int]:
        ids = self._head + self._segments[kept[0]]
        for t in kept[1:]:
            ids += self._joined[t]
        ids += self._tail
        if self.use_thought:
            ids.append(self.thought_token_id)
        return ids

    def _assemble_with_items(self, titles: list[str], where: str) -> tuple[list[int], list[int]]:
        """:meth:`_assemble` plus the per-token history-item index (see :class:`EncodedExample`)."""
        kept = self._kept(titles, where)
        ids = self._assemble_kept(kept)
        items = [-1] * len(self._head)
        n_sep = len(self._sep)
        for j, t in enumerate(kept):
            if j:
                items += [-1] * n_sep  # the comma between titles belongs to no item
            items += [j] * len(self._segments[t])
        items += [-1] * (len(ids) - len(items))  # tail and thought
        return ids, items


def collate_left_padded(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch examples: prompts LEFT-padded (every prompt ends — in its thought — in the last column),
    targets RIGHT-padded with ``pad_id``; masks are 1 on real tokens (int64, as HF attention masks).
    """
    prompts = [torch.tensor(e.prompt_ids, dtype=torch.long) for e in examples]
    targets = [torch.tensor(e.target_ids, dtype=torch.long) for e in examples]
    p_len = torch.tensor([len(p) for p in prompts])
    t_len = torch.tensor([len(t) for t in targets])
    pad = torch.nn.utils.rnn.pad_sequence
    prompt_ids = pad(prompts, batch_first=True, padding_value=pad_id, padding_side="left")
    target_ids = pad(targets, batch_first=True, padding_value=pad_id)
    p_cols = torch.arange(prompt_ids.shape[1])
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": (p_cols >= prompt_ids.shape[1] - p_len[:, None]).long(),
        "target_ids": target_ids,
        "target_mask": (torch.arange(target_ids.shape[1]) < t_len[:, None]).long(),
    }
    if all(e.prompt_items is not None for e in examples):
        items = [torch.tensor(e.prompt_items, dtype=torch.long) for e in examples]
        batch["prompt_items"] = pad(items, batch_first=True, padding_value=-1, padding_side="left")
    return batch
