"""`xtl suggest`: rank intermediate tasks for a target task and language before training any
(issue 17). Each signal is one module of this package; the ranking combines them.

* :mod:`.transfer`: LogME and H-score on frozen features (pure numpy).
* :mod:`.ranking`: Regret@k, NDCG@k, Spearman and the random expectation for one query.
* :mod:`.evidence`: measured gains from grid folders and the registry (backbone checked).
* :mod:`.signals`: the backbone measurements: TextEmb similarity, LogME / H-score with a module
  active, weight-delta similarity, alignment (retrieval on parallel text), URIEL distances.
* :mod:`.combine`: the past-results kernel, the unsupervised combination, LightGBM LambdaRank
  (optional), calibration to predicted gains.
* :mod:`.evaluate`: leave-one-target-out / leave-one-language-out against the baselines.
* :mod:`.core`: :func:`suggest` and :func:`evaluate_runs`, what the CLI and ``xtl.suggest`` call.

docs/suggest.md describes the method and shows a real evaluation.
"""

from .core import Suggestion, evaluate_runs, suggest

__all__ = ["Suggestion", "evaluate_runs", "suggest"]
