"""Constrained generative ranking: catalogue title trie and batched beam search.

* :mod:`~flrec.decoding.trie` — the title trie as flat tensors (CSR edges, subtree masses,
  information gain per edge);
* :mod:`~flrec.decoding.beam` — batched trie-constrained beam search (HF-equivalent by default);
* :mod:`~flrec.decoding.scoring` — decoding options: token scores (``sum`` / ``trie_renorm`` /
  ``info_gain``), PMI prior correction, the text-free assistant, exclude-seen, item-level split;
* :mod:`~flrec.decoding.prior` — teacher-forced title scores and the disk-cached PMI prior;
* :mod:`~flrec.decoding.ranker` — the ranking pipeline of the LLM recommenders (prefill, beam
  candidates, prior correction, titles to items), also used by SFT's validation ranking.

``flrec tune-decoding`` (choosing the options on validation rows) is :mod:`flrec.experiments.tune`.
"""
