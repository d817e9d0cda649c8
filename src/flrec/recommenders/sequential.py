"""Item-ID sequential recommenders (SASRec, GRU4Rec, Caser) behind one shared trainer.

Every model reads the same input: a row's ``history`` (oldest first), cut to its last ``max_len``
items and left-padded to ``max_len`` with index 0 (item ``i`` is index ``i + 1``). A network maps
that ``(B, L)`` tensor to logits over the whole catalogue, and :func:`train_ranker` fits it with
full-softmax cross-entropy on the row's target, selecting the epoch with the best validation
NDCG@10 (item-ID full ranking). Departures from the original papers, shared by all three:

* **Loss.** Full softmax over every item instead of the originals' sampled losses (SASRec: BCE with
  one negative; GRU4Rec: BPR/TOP1 over mini-batch negatives; Caser: BCE with sampled negatives). With
  ~2-6k items the full softmax is cheap and is what the calibration numbers used.
* **Last position only.** SASRec and GRU4Rec originally take a loss at every position of a user's
  sequence. Sliding-window rows already contain every prefix of every user as a row of its own, so
  the loss on each row's last position sees the same (prefix, next item) pairs.
* **Early stopping** on validation NDCG@10 by item id (fast, tensor-only); the contract's
  title-level metrics are computed afterwards by :meth:`Recommender.recommend`.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from flrec.config import ConfigBase, option, save_run_metadata
from flrec.data.schema import Catalogue, Interaction, RecDataset
from flrec.errors import ConfigError, DataError, FlrecError
from flrec.evaluation.metrics import metrics_from_rank_tensor
from flrec.recommenders.base import Recommender, register_recommender
from flrec.utils.io import atomic_save, atomic_write_json
from flrec.utils.seed import seed_everything

C = TypeVar("C", bound=ConfigBase)
R = TypeVar("R", bound="NeuralRecommender")

# ----------------------------------------------------------------------------------------- configs


@dataclass
class SeqConfig(ConfigBase):
    """Options shared by every neural baseline."""

    hidden_size: int = option(64, help="embedding / hidden size d")
    dropout: float = option(0.2, help="dropout probability")
    lr: float = option(1e-3, help="Adam learning rate")
    weight_decay: float = option(0.0, help="Adam L2 weight decay")
    batch_size: int = option(256, help="training rows per step")
    eval_batch_size: int = option(1024, help="rows per scoring batch")
    max_epochs: int = option(100, help="upper bound on training epochs")
    patience: int = option(5, help="stop after this many epochs without a better validation NDCG@10")
    seed: int = option(42, help="seed for initialisation, shuffling and dropout")
    device: str = option("cpu", help="torch device, e.g. cpu or cuda")
    max_len: int = option(10, help="history items kept (the most recent); shorter ones are left-padded")
    progress: bool = option(True, help="show a tqdm progress bar while training")

    def __post_init__(self) -> None:
        for key in ("hidden_size", "batch_size", "eval_batch_size", "max_epochs", "patience", "max_len"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}': must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"config key 'dropout': must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"config keys 'lr'/'weight_decay': need lr > 0 and weight_decay >= 0, got {self.lr}/{self.weight_decay}")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"config key 'device': '{self.device}' is not a torch device (try cpu or cuda)") from None


@dataclass
class SASRecConfig(SeqConfig):
    num_layers: int = option(2, help="self-attention blocks")
    num_heads: int = option(1, help="attention heads per block (hidden_size must be divisible by it)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_layers < 1 or self.num_heads < 1 or self.hidden_size % self.num_heads:
            raise ConfigError(
                f"config keys 'num_layers'/'num_heads': need >= 1 and hidden_size ({self.hidden_size}) divisible "
                f"by num_heads ({self.num_heads})"
            )


@dataclass
class GRU4RecConfig(SeqConfig):
    # Without SASRec's sqrt(d) input scaling these learn slowly at 1e-3 on ~10k rows (measured on CDs).
    lr: float = option(3e-3, help="Adam learning rate")
    patience: int = option(10, help="stop after this many epochs without a better validation NDCG@10")
    num_layers: int = option(1, help="stacked GRU layers")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_layers < 1:
            raise ConfigError(f"config key 'num_layers': must be >= 1, got {self.num_layers}")


@dataclass
class CaserConfig(SeqConfig):
    # Without SASRec's sqrt(d) input scaling these learn slowly at 1e-3 on ~10k rows (measured on CDs).
    lr: float = option(3e-3, help="Adam learning rate")
    patience: int = option(10, help="stop after this many epochs without a better validation NDCG@10")
    num_h: int = option(16, help="horizontal filters per height (heights 1..max_len)")
    num_v: int = option(4, help="vertical filters")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_h < 1 or self.num_v < 1:
            raise ConfigError(f"config keys 'num_h'/'num_v': must be >= 1, got {self.num_h}/{self.num_v}")


# ------------------------------------------------------------------------------- tensors and ranks


def pad_histories(rows: Sequence[Interaction], max_len: int, n_items: int) -> Tensor:
    """``(len(rows), max_len)`` long tensor: last ``max_len`` history items + 1, left-padded with 0."""
    ids = torch.zeros(len(rows), max_len, dtype=torch.long)
    real = torch.zeros(len(rows), max_len, dtype=torch.bool)
    for r, row in enumerate(rows):
        hist = row.history[-max_len:]
        if hist:
            ids[r, max_len - len(hist) :] = torch.tensor(hist, dtype=torch.long)
            real[r, max_len - len(hist) :] = True
    bad = real & ((ids < 0) | (ids >= n_items))
    if bad.any():
        r = int(bad.any(1).nonzero()[0])
        raise DataError(f"row {r} (user {rows[r].user})", f"history has an item id outside 0..{n_items - 1}; "
                        "rebuild the rows against this catalogue", field="history")
    return torch.where(real, ids + 1, 0)


def targets_of(rows: Sequence[Interaction], n_items: int) -> Tensor:
    y = torch.tensor([row.target for row in rows], dtype=torch.long)
    bad = (y < 0) | (y >= n_items)
    if bad.any():
        r = int(bad.nonzero()[0])
        raise DataError(f"row {r} (user {rows[r].user})", f"target {int(y[r])} is outside 0..{n_items - 1}; "
                        "rebuild the rows against this catalogue", field="target")
    return y


def target_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """1-based rank of each row's target among all items (ties count in the target's favour)."""
    return (scores > scores.gather(1, targets[:, None])).sum(1) + 1


@torch.no_grad()
def predict(net: nn.Module, seqs: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Logits ``(len(seqs), n_items)`` computed in eval mode batch by batch, returned on the CPU."""
    net.eval()
    return torch.cat([net(b.to(device)).float().cpu() for b in seqs.split(batch_size)])


@torch.no_grad()
def rank_targets(net: nn.Module, seqs: Tensor, targets: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Item-ID rank of every target without holding all scores at once."""
    net.eval()
    return torch.cat([
        target_ranks(net(bx.to(device)).float(), by.to(device)).cpu()
        for bx, by in zip(seqs.split(batch_size), targets.split(batch_size), strict=True)
    ])


# ------------------------------------------------------------------------------------ the trainer


def train_ranker(
    net: nn.Module,
    train: tuple[Tensor, Tensor],
    valid: tuple[Tensor, Tensor],
    cfg: SeqConfig,
    run_dir: str | Path | None = None,
    desc: str = "train",
) -> list[dict[str, Any]]:
    """Fit ``net`` (seqs -> logits over all items) with full-softmax CE; restore the best epoch.

    Returns the per-epoch log (also appended to ``run_dir/train_log.jsonl`` when given).
    """
    device = torch.device(cfg.device)
    (x, y), (vx, vy) = train, valid
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling independent of other RNG consumers
    log_path = Path(run_dir) / "train_log.jsonl" if run_dir is not None else None
    if log_path is not None:
        log_path.write_text("")
    best, best_state, stale, log = -1.0, None, 0, []
    bar = tqdm(range(1, cfg.max_epochs + 1), desc=desc, disable=not cfg.progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        net.train()
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            loss = F.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        metrics = metrics_from_rank_tensor(rank_targets(net, vx, vy, cfg.eval_batch_size, device))
        entry = {"epoch": epoch, "loss": total / len(x), **{f"valid_{k}": v for k, v in metrics.items()},
                 "seconds": round(time.perf_counter() - t0, 3)}
        log.append(entry)
        if log_path is not None:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        if metrics["ndcg@10"] > best:
            best, stale = metrics["ndcg@10"], 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
        bar.set_postfix(loss=f"{entry['loss']:.3f}", ndcg10=f"{metrics['ndcg@10']:.4f}", best=f"{best:.4f}")
        if stale >= cfg.patience:
            break
    assert best_state is not None
    net.load_state_dict(best_state)
    return log


# ------------------------------------------------------------------------------------ checkpoints


def write_checkpoint(path: str | Path, method: str, config: ConfigBase, catalogue: Catalogue,
                     tensors: dict[str, Tensor], extra: dict[str, Any] | None = None) -> None:
    """``config.json`` (method, config, extra), ``catalogue.json`` and ``model.safetensors``, each atomic."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_save(path / "model.safetensors", lambda p: save_file(state, str(p)))
    atomic_write_json(path / "catalogue.json", catalogue.titles)
    # config.json last: a directory with a config always has the files it describes.
    atomic_write_json(path / "config.json", {"method": method, "config": config.to_dict(), "extra": extra or {}})


def read_checkpoint(path: str | Path, method: str, config_cls: type[C]) -> tuple[C, Catalogue, dict[str, Tensor], dict]:
    path = Path(path)
    for name in ("config.json", "catalogue.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FlrecError(f"{path / name} is missing; pass a directory written by {method}'s save()")
    meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if meta.get("method") != method:
        raise FlrecError(f"{path / 'config.json'}: saved by method '{meta.get('method')}', not '{method}'; "
                         f"load it with get_recommender('{meta.get('method')}')")
    cfg = config_cls.from_dict(meta["config"], source=str(path / "config.json"))
    catalogue = Catalogue(json.loads((path / "catalogue.json").read_text(encoding="utf-8")))
    return cfg, catalogue, load_file(str(path / "model.safetensors")), meta.get("extra", {})


# --------------------------------------------------------------------------- the shared recommender


class NeuralRecommender(Recommender):
    """A network ``(B, max_len) -> (B, n_items)`` trained by :func:`train_ranker`."""

    config_cls: type[SeqConfig] = SeqConfig

    def __init__(self, catalogue: Catalogue | None = None, config: SeqConfig | None = None):
        self.catalogue = catalogue  # type: ignore[assignment]  # set by fit() when None
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(self.config).__name__}")
        self.net: nn.Module | None = None
        self.history: list[dict[str, Any]] = []

    @abstractmethod
    def build_net(self, n_items: int, dataset: RecDataset | None = None,
                  state: dict[str, Tensor] | None = None) -> nn.Module:
        """The network; ``dataset`` is given when fitting, ``state`` when loading."""

    def fit(self, dataset: RecDataset, run_dir: str | Path | None = None) -> NeuralRecommender:
        if self.catalogue is None:
            self.catalogue = dataset.catalogue
        n = len(self.catalogue)
        for split in ("train", "valid"):
            if not dataset.splits.get(split):
                raise FlrecError(f"dataset '{dataset.name}' has no {split} rows; {self.name} trains on train and "
                                 "early-stops on valid, so both must be non-empty")
        if run_dir is not None:
            save_run_metadata(run_dir, self.config, stage=f"fit-{self.name}")
        seed_everything(self.config.seed)
        self.net = self.build_net(n, dataset=dataset)
        L = self.config.max_len
        train = (pad_histories(dataset["train"], L, n), targets_of(dataset["train"], n))
        valid = (pad_histories(dataset["valid"], L, n), targets_of(dataset["valid"], n))
        self.history = train_ranker(self.net, train, valid, self.config, run_dir, desc=self.name)
        self.net.eval()
        return self

    def score(self, rows: Sequence[Interaction]) -> Tensor:
        if self.net is None:
            raise FlrecError(f"{self.name} is not trained; call fit() or load() first")
        if not rows:
            return torch.zeros(0, len(self.catalogue))
        seqs = pad_histories(rows, self.config.max_len, len(self.catalogue))
        return predict(self.net, seqs, self.config.eval_batch_size, torch.device(self.config.device))

    def save(self, path: str | Path) -> None:
        if self.net is None:
            raise FlrecError(f"{self.name} is not trained; nothing to save")
        write_checkpoint(path, self.name, self.config, self.catalogue, self.net.state_dict(),
                         extra={"history": self.history})

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        cfg, catalogue, state, extra = read_checkpoint(path, cls.name, cls.config_cls)
        rec = cls(catalogue, cfg)
        rec.net = rec.build_net(len(catalogue), state=state)
        rec.net.load_state_dict(state)
        rec.net.to(torch.device(cfg.device)).eval()
        rec.history = extra.get("history", [])
        return rec


# --------------------------------------------------------------------------------------- networks


def _embedding(n: int, d: int) -> nn.Embedding:
    """Item table with row 0 = padding. Xavier-normal init (std ~ sqrt(2 / (n + d))), as in the
    reference SASRec/RecBole code: torch's default N(0, 1) gives logits in the hundreds at the
    start and the full softmax then overfits within an epoch or two."""
    emb = nn.Embedding(n, d, padding_idx=0)
    nn.init.xavier_normal_(emb.weight)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


class SASRecNet(nn.Module):
    """Kang & McAuley 2018: causal self-attention over item + learned position embeddings.

    Pre-LN blocks with a ReLU feed-forward of width d (as the original's point-wise convolutions);
    the output at the last position is scored against the (shared) input item embeddings.
    """

    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        d, L = cfg.hidden_size, cfg.max_len
        self.item = _embedding(n_items + 1, d)
        self.pos = nn.Embedding(L, d)
        nn.init.xavier_normal_(self.pos.weight)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(d, cfg.num_heads, dim_feedforward=d, dropout=cfg.dropout,
                                           activation="relu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.num_heads = cfg.num_heads
        self.register_buffer("causal", torch.ones(L, L, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, seq: Tensor) -> Tensor:
        B, L = seq.shape
        x = self.item(seq) * self.item.embedding_dim**0.5 + self.pos.weight[:L]
        x = self.drop(x) * (seq > 0).unsqueeze(-1)
        # Mask the future and padded keys; a position may always attend to itself, so an all-padding
        # row (empty history) yields finite outputs instead of NaNs.
        blocked = self.causal[:L, :L] | (seq == 0)[:, None, :]
        blocked &= ~torch.eye(L, dtype=torch.bool, device=seq.device)
        h = self.blocks(x, mask=blocked.repeat_interleave(self.num_heads, 0))
        return self.norm(h[:, -1]) @ self.item.weight[1:].T


class GRU4RecNet(nn.Module):
    """Hidasi et al. 2016: a GRU over item embeddings; the final state is scored against the items.

    Rows are realigned to the right-padded layout and packed, so padding never enters the GRU.
    Output scores use the input item embeddings (tied, as in RecBole's GRU4Rec) after a linear map.
    """

    def __init__(self, n_items: int, cfg: GRU4RecConfig):
        super().__init__()
        d = cfg.hidden_size
        self.item = _embedding(n_items + 1, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(d, d, cfg.num_layers, batch_first=True, dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.out = nn.Linear(d, d)

    def forward(self, seq: Tensor) -> Tensor:
        B, L = seq.shape
        lengths = (seq > 0).sum(1)
        # Left-padded -> right-padded: rotate each row left by its padding count.
        idx = (torch.arange(L, device=seq.device) + (L - lengths)[:, None]) % L
        x = self.drop(self.item(seq.gather(1, idx)))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.out(h[-1]) @ self.item.weight[1:].T


class CaserNet(nn.Module):
    """Tang & Wang 2018: horizontal (heights 1..L, max-pooled) and vertical convolutions over the
    L x d embedding matrix, a ReLU fully-connected layer, and output item embeddings + biases.

    The user embedding P_u is omitted: rows identify a user only through the history, and a
    per-user vector would not exist for users first seen in valid/test.
    """

    def __init__(self, n_items: int, cfg: CaserConfig):
        super().__init__()
        d, L = cfg.hidden_size, cfg.max_len
        self.item = _embedding(n_items + 1, d)
        self.horizontal = nn.ModuleList(nn.Conv2d(1, cfg.num_h, (h, d)) for h in range(1, L + 1))
        self.vertical = nn.Conv2d(1, cfg.num_v, (L, 1))
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.num_h * L + cfg.num_v * d, d)
        self.out = nn.Embedding(n_items, d)
        self.bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.out.weight, std=1.0 / d)

    def forward(self, seq: Tensor) -> Tensor:
        e = self.item(seq).unsqueeze(1)  # (B, 1, L, d)
        hor = [F.relu(conv(e).squeeze(3)).amax(2) for conv in self.horizontal]  # each (B, num_h)
        ver = self.vertical(e).flatten(1)  # (B, num_v * d)
        z = F.relu(self.fc(self.drop(torch.cat([*hor, ver], 1))))
        return z @ self.out.weight.T + self.bias


@register_recommender("sasrec")
class SASRec(NeuralRecommender):
    """SASRec (2 causal self-attention blocks, d=64, learned positions); see :class:`SASRecNet`."""

    config_cls = SASRecConfig

    def build_net(self, n_items, dataset=None, state=None) -> nn.Module:
        return SASRecNet(n_items, self.config)


@register_recommender("gru4rec")
class GRU4Rec(NeuralRecommender):
    """GRU4Rec with full-softmax CE instead of its ranking losses; see :class:`GRU4RecNet`."""

    config_cls = GRU4RecConfig

    def build_net(self, n_items, dataset=None, state=None) -> nn.Module:
        return GRU4RecNet(n_items, self.config)


@register_recommender("caser")
class Caser(NeuralRecommender):
    """Caser with L = max_len (left padding) and no user embedding; see :class:`CaserNet`."""

    config_cls = CaserConfig

    def build_net(self, n_items, dataset=None, state=None) -> nn.Module:
        return CaserNet(n_items, self.config)
