"""Analysis building blocks for ``xtl study NAME``.

The study runners turn a results grid into answers to the questions users bring to it (does the
gain shrink with typological distance from English? with morphological complexity? does
intermediate training improve cross-lingual alignment?).  They are built from these modules:

* :mod:`~adapters_xtl.studies.stats`: correlations with bootstrap confidence intervals and
  permutation p-values, a plain-language sentence for each, line fits and plots (PNG, Agg).
* :mod:`~adapters_xtl.studies.typology`: language-code normalisation and URIEL distances read
  from the data files the ``lang2vec`` wheel ships (its module is never imported: it needs the
  ``pkg_resources`` that current setuptools no longer has).
* :mod:`~adapters_xtl.studies.morphology`: UD FEATS per word, moving-average type-token ratio,
  tokenizer fertility.
* :mod:`~adapters_xtl.studies.alignment`: linear CKA, and the retrieval accuracy of
  :mod:`adapters_xtl.metrics` re-exported.

Submodules are imported on demand (``from adapters_xtl.studies import stats``) so that importing
the package does not pull in matplotlib or the URIEL tables.
"""

__all__ = ["alignment", "morphology", "stats", "typology"]
