"""Scoring (a low layer: data → evaluation → models, usable from training and the recommenders).

* :mod:`~flrec.evaluation.metrics` — HR/NDCG@K from ranks;
* :mod:`~flrec.evaluation.records` — per-row records of ranked titles and their summary;
* :mod:`~flrec.evaluation.analysis` — paired t-tests, seed summaries, popularity groups, item level.

Running a recommender into a result folder, comparisons, ablations and decoding tuning are
:mod:`flrec.experiments`.
"""
