"""`xtl study NAME`: research questions asked of a results grid, registered by name.

Each study is one file (``*_study.py``) that ends with one :func:`register_study` call, as a
method registers itself with :func:`adapters_xtl.methods.register_method` (and peft's
``register_peft_method``): the CLI, the recipe loader and the report look the study up here, so
adding a study is one new file plus one import line at the bottom of this module.  What every
study shares (loading its recipe, the grid, writing study.json / study.md) is in
:mod:`~adapters_xtl.studies.context`; the correlation table and scatter helpers in
:mod:`~adapters_xtl.studies.common`.

The measurements the studies are built from are plain modules, usable on their own:

* :mod:`~adapters_xtl.studies.stats`: correlations with bootstrap confidence intervals and
  permutation p-values, a plain-language sentence for each, line fits and plots (PNG, Agg).
* :mod:`~adapters_xtl.studies.tables`: score tables and gains from results rows, mean CIs,
  Markdown tables.
* :mod:`~adapters_xtl.studies.typology`: language-code normalisation and URIEL distances read
  from the data files the ``lang2vec`` wheel ships (its module is never imported: it needs the
  ``pkg_resources`` that current setuptools no longer has).
* :mod:`~adapters_xtl.studies.morphology`: UD FEATS per word, moving-average type-token ratio,
  tokenizer fertility.
* :mod:`~adapters_xtl.studies.similarity`: text embeddings and task / weight-delta similarity.
* :mod:`~adapters_xtl.studies.alignment`: linear CKA, and the retrieval accuracy of
  :mod:`adapters_xtl.metrics` re-exported.

Registering the studies imports only their configs and code: matplotlib, torch and the URIEL
tables load when a study runs, so ``xtl --help`` can list the studies cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import XtlError, did_you_mean


@dataclass(frozen=True)
class Study:
    """One registered study: the question it answers and the code that answers it."""

    name: str
    question: str
    config_cls: type  # a StudyConfig subclass: the recipe's `study:` section
    run: Callable[[Any, bool], dict[str, Any] | None]  # (StudyContext, dry_run) -> result, None on a dry run
    render: Callable[[Mapping[str, Any]], list[str]]  # result -> the study's own Markdown lines
    recipe: str  # default recipe, a file under recipes/studies/


_STUDIES: dict[str, Study] = {}


def register_study(name: str, *, question: str, config_cls: type, run: Callable, render: Callable,
                   recipe: str | None = None) -> Study:
    if name in _STUDIES:
        raise ValueError(f"study {name!r} is registered twice")
    study = Study(name=name, question=question, config_cls=config_cls, run=run, render=render,
                  recipe=recipe or f"{name}.yaml")
    _STUDIES[name] = study
    return study


def get_study(name: str) -> Study:
    if name not in _STUDIES:
        raise XtlError(f"unknown study {name!r}", where="xtl study NAME", fix=did_you_mean(name, _STUDIES))
    return _STUDIES[name]


def study_names() -> list[str]:
    """In registration order (the order docs/studies.md presents them)."""
    return list(_STUDIES)


# registration side effect; one line per study
from . import steps_study  # noqa: E402,F401
from . import typology_study  # noqa: E402,F401
from . import morphology_study  # noqa: E402,F401
from . import similarity_study  # noqa: E402,F401
from . import intermediate_language_study  # noqa: E402,F401
