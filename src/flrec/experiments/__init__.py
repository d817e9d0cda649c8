"""Experiments: orchestration that runs recommenders and writes result folders (above the recommenders).

* :mod:`~flrec.experiments.runner` — ``flrec evaluate``: a recommender on a split into a resumable,
  fingerprinted folder (``ranks.jsonl``, ``summary.json``), shards and their merge;
* :mod:`~flrec.experiments.compare` — ``flrec compare``: methods × seeds, significance, ``summary.md``
  (its parts: ``compare_config``, ``compare_cells``, ``compare_stats``, ``compare_table``);
* :mod:`~flrec.experiments.ablation` — ``flrec ablate``: a grid of FLR variants through the comparison;
* :mod:`~flrec.experiments.tune` — ``flrec tune-decoding``: choose the decoding options on validation rows.

The scoring they rely on (metrics, per-row records, significance) is :mod:`flrec.evaluation`, a low
layer that training and the recommenders use too.
"""
