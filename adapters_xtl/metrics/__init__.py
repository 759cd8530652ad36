"""Every score the product reports, reproducing the official scripts number for number.

A zero-shot transfer result is only comparable with published XTREME numbers if it is computed
the way the published numbers were, quirks included, so each function names the script it
follows and says where (and why) it departs from it.  The scripts followed:

* XTREME ``evaluate.py`` (google-research/xtreme): which metric each task uses, the mean over
  languages, the ``(EM + F1) / 2`` QA score and the mean over tasks.
* SQuAD v1.1 ``evaluate-v1.1.py``: XQuAD and TyDiQA-GoldP (XTREME scores both with it).
* MLQA ``mlqa_evaluation_v1.py``: MLQA, with its per-language articles and Chinese segmentation.
* seqeval 1.2.2, default (conlleval-compatible) mode: PAN-X NER *and* XTREME's UD-POS "F1".
* XTREME ``third_party/utils_retrieve.py`` (from LASER): ratio-margin mining, ``bucc_optimize``
  and ``bucc_eval``; ``third_party/evaluate_retrieval.py``: Tatoeba nearest-neighbour accuracy.

Units follow the script being reproduced, so nothing is silently rescaled:

* fractions in [0, 1]: ``accuracy``, ``macro_f1``, ``pos_accuracy``, ``pos_xtreme_f1``,
  ``ner_f1``, ``choice_accuracy``, ``retrieval_accuracy*``, per-answer ``squad_em/f1``,
  ``mlqa_em/f1`` (seqeval, sklearn and the per-answer script functions return fractions);
* percent in [0, 100]: ``squad_scores``, ``mlqa_scores``, ``bucc_f1`` (their scripts print
  percent).  XTREME's ``evaluate.py`` multiplies everything by 100 before averaging, so scale the
  fractions by 100 before mixing them with these in ``task_score`` / ``overall_score``.

Pure functions: numpy and the standard library, seqeval for tagging.  torch tensors are accepted
wherever arrays are (converted through ``.detach().cpu().numpy()``); torch is never imported.
Inputs of the wrong length or shape raise ``ValueError`` naming the argument and the sizes,
because a silently truncated ``zip`` is the classic way an evaluation goes wrong unnoticed.
"""



from __future__ import annotations

import functools
import re
import string
import sys
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "macro_f1",
    "pos_accuracy",
    "pos_xtreme_f1",
    "ner_f1",
    "squad_normalize",
    "squad_em",
    "squad_f1",
    "squad_scores",
    "MLQA_LANGS",
    "mlqa_normalize",
    "mlqa_em",
    "mlqa_f1",
    "mlqa_scores",
    "qa_score",
    "choice_accuracy",
    "retrieval_accuracy",
    "retrieval_accuracy_both",
    "margin_scores",
    "mine_pairs",
    "bucc_f1",
    "task_score",
    "overall_score",
]

from ._checks import _as_list, _as_matrix, _check_tag_seqs, _l2_normalize, _same_length  # noqa: F401


# --------------------------------------------------------------------------- classification


def accuracy(preds: Any, labels: Any) -> float:
    """XNLI / PAWS-X / Tatoeba metric in XTREME's ``evaluate.py`` (as a fraction, not percent)."""
    p, y = _as_list(preds, "preds"), _as_list(labels, "labels")
    _same_length(p, y, "preds", "labels")
    return sum(int(a == b) for a, b in zip(p, y)) / len(y)


def macro_f1(preds: Any, labels: Any, labels_set: Iterable | None = None) -> float:
    """Unweighted mean of per-class F1, identical to sklearn ``f1_score(average='macro')``.

    Which classes are averaged is the only real choice, and we take sklearn's:

    * ``labels_set=None``: the classes present in gold ∪ pred (sklearn's default), so a class
      the model never predicts but which occurs in gold counts as 0, and vice versa;
    * ``labels_set`` given: exactly those classes, like sklearn's ``labels=``: a listed class
      with neither support nor prediction contributes F1 = 0 (sklearn's ``zero_division=0``;
      it is *not* dropped), and items whose gold and prediction are both unlisted are ignored.

    Per class, F1 = 2TP / (2TP + FP + FN), which equals 2PR/(P+R) and is 0 when TP = 0.
    """
    p, y = _as_list(preds, "preds"), _as_list(labels, "labels")
    _same_length(p, y, "preds", "labels")
    if labels_set is None:
        classes = sorted(set(y) | set(p), key=repr)
    else:
        classes = list(dict.fromkeys(_as_list(labels_set, "labels_set")))
        if not classes:
            raise ValueError("labels_set is empty; give at least one class or None")
    scores = []
    for c in classes:
        tp = sum(1 for a, b in zip(p, y) if a == c and b == c)
        fp = sum(1 for a, b in zip(p, y) if a == c and b != c)
        fn = sum(1 for a, b in zip(p, y) if a != c and b == c)
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(sum(scores) / len(scores))


def choice_accuracy(logits: Any, labels: Any) -> float:
    """XCOPA-style multiple choice: argmax over the options, first option wins a tie (np.argmax).

    ``logits`` is an ``[n, k]`` array/tensor or a list of per-example score lists (which may
    differ in length when examples have different numbers of options).
    """
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()
    if isinstance(logits, np.ndarray) and logits.ndim != 2:
        raise ValueError(f"logits must be 2-D [n_examples, n_choices], got shape {logits.shape}")
    rows = _as_list(logits, "logits")
    y = _as_list(labels, "labels")
    _same_length(rows, y, "logits", "labels")
    correct = 0
    for i, (row, label) in enumerate(zip(rows, y)):
        r = np.asarray(row, dtype=np.float64)
        if r.ndim != 1 or r.size == 0:
            raise ValueError(f"logits[{i}] must be a non-empty 1-D list of scores, got shape {r.shape}")
        try:
            ok = not isinstance(label, bool) and float(label).is_integer() and 0 <= int(label) < r.size
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"labels[{i}] = {label!r} is not a valid choice index for {r.size} choices")
        correct += int(int(np.argmax(r)) == int(label))
    return correct / len(y)


# --------------------------------------------------------------------------- tagging


def pos_accuracy(pred_seqs: Any, gold_seqs: Any) -> float:
    """UD-POS token accuracy, the metric POS tagging is conventionally reported with.

    XTREME's own ``evaluate.py`` does *not* use it: it scores ``udpos`` with seqeval F1 (see
    ``pos_xtreme_f1``).  Both are provided; use ``pos_xtreme_f1`` to compare with the XTREME
    leaderboard and this one for anything else.
    """
    p, g = _check_tag_seqs(pred_seqs, gold_seqs)
    total = sum(len(s) for s in g)
    correct = sum(a == b for ps, gs in zip(p, g) for a, b in zip(ps, gs))
    return correct / total


def _seqeval_prf(p: list[list[str]], g: list[list[str]]) -> dict[str, float]:
    from seqeval.metrics import f1_score, precision_score, recall_score

    with warnings.catch_warnings():
        # raw UPOS tags trigger "seems not to be NE tag"; the warning changes nothing in the score
        warnings.simplefilter("ignore")
        return {
            "precision": float(precision_score(g, p, zero_division=0)),
            "recall": float(recall_score(g, p, zero_division=0)),
            "f1": float(f1_score(g, p, zero_division=0)),
        }


def pos_xtreme_f1(pred_seqs: Any, gold_seqs: Any) -> dict[str, float]:
    """The UD-POS score XTREME actually reports: seqeval micro P/R/F1 on the raw UPOS tags.

    XTREME's ``evaluate.py`` maps ``udpos`` to the same seqeval ``f1`` as PAN-X (the paper's
    Table 1 lists F1 for POS).  seqeval reads a tag without ``B-``/``I-`` as first character =
    chunk tag, rest = type (``NOUN`` -> tag ``N``, type ``OUN``), so runs of the same UPOS tag
    merge into one "entity" and ``SCONJ``/``INTJ`` act as S-/I- tags.  This is close to, but not
    the same as, token accuracy; we reproduce it unchanged because that is what was published.
    """
    p, g = _check_tag_seqs(pred_seqs, gold_seqs)
    return _seqeval_prf(p, g)


def ner_f1(pred_seqs: Any, gold_seqs: Any) -> dict[str, float]:
    """PAN-X entity-level micro P/R/F1 via seqeval's default (conlleval-compatible) mode, as XTREME.

    Default mode rather than ``mode='strict', scheme=IOB2`` because XTREME's ``evaluate.py`` and
    ``run_tag.py`` call seqeval with no mode: an ``I-X`` after ``O`` still opens an entity.  An
    entity counts only if type, start and end all match, so a partial span is a miss and
    ``B-PER B-PER`` (two one-token entities) scores nothing against gold ``B-PER I-PER``.
    Returns fractions; an empty prediction or gold set gives 0 (seqeval ``zero_division=0``).
    """
    p, g = _check_tag_seqs(pred_seqs, gold_seqs)
    return _seqeval_prf(p, g)


# --------------------------------------------------------------------------- SQuAD v1.1


def squad_normalize(text: str) -> str:
    """``normalize_answer`` of SQuAD ``evaluate-v1.1.py``: lower, drop ASCII punctuation, drop
    English articles, collapse whitespace, in that order (punctuation first, so "the," loses its
    comma and then the article)."""
    text = str(text).lower()
    exclude = set(string.punctuation)
    text = "".join(ch for ch in text if ch not in exclude)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """v1.1 semantics: no overlap (including both empty) is 0; v2.0's "both empty = 1" is not used."""
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _golds_list(golds: Any, name: str = "golds") -> list[str]:
    """A bare string is one answer; iterating it character by character would be a silent bug."""
    if isinstance(golds, str):
        return [golds]
    g = _as_list(golds, name)
    if not g:
        raise ValueError(f"{name} is empty; every question needs at least one gold answer")
    return [str(x) for x in g]


def squad_em(pred: str, golds: Any) -> float:
    """Max over gold answers of normalised exact match (``evaluate-v1.1.py``), 0.0 or 1.0."""
    p = squad_normalize(pred)
    return float(max(p == squad_normalize(g) for g in _golds_list(golds)))


def squad_f1(pred: str, golds: Any) -> float:
    """Max over gold answers of bag-of-tokens F1 after normalisation (``evaluate-v1.1.py``)."""
    p = squad_normalize(pred).split()
    return max(_token_f1(p, squad_normalize(g).split()) for g in _golds_list(golds))


def _qa_scores(preds: Mapping, golds: Mapping, em_fn, f1_fn) -> dict[str, float]:
    if not isinstance(preds, Mapping):
        raise ValueError(f"preds must be a dict id -> answer, got {type(preds).__name__}")
    if not isinstance(golds, Mapping):
        raise ValueError(f"golds must be a dict id -> list of answers, got {type(golds).__name__}")
    if not golds:
        raise ValueError("golds is empty; the official scripts divide by the number of questions")
    em = f1 = 0.0
    for qid, answers in golds.items():
        answers = _golds_list(answers, f"golds[{qid!r}]")
        if qid not in preds:
            continue  # as the official scripts: an unanswered question scores 0 but still counts
        em += em_fn(preds[qid], answers)
        f1 += f1_fn(preds[qid], answers)
    return {"exact_match": 100.0 * em / len(golds), "f1": 100.0 * f1 / len(golds)}


def squad_scores(preds: Mapping[str, str], golds: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """``evaluate()`` of SQuAD ``evaluate-v1.1.py``, in percent; XTREME uses it for XQuAD and TyDiQA.

    The denominator is the number of gold questions: a missing prediction counts as 0 (the script
    prints a warning; we stay silent) and predictions for unknown ids are ignored.
    """
    return _qa_scores(preds, golds, squad_em, squad_f1)


# --------------------------------------------------------------------------- MLQA

MLQA_LANGS = ("en", "es", "hi", "vi", "de", "ar", "zh")
_WHITESPACE_LANGS = ("en", "es", "hi", "vi", "de", "ar")
_MIXED_SEGMENTATION_LANGS = ("zh",)
_MLQA_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    # the script's list, not a linguist's: "là" (is) and classifiers "cái"/"chiếc" are removed
    # too, while "các" and "một" are kept
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    # verbatim: the first alternative can never match, so in effect *every* "ال" is replaced by a
    # space, even word-internally; reproduced because the published numbers depend on it
    "ar": r"\sال^|ال",
}


@functools.lru_cache(maxsize=1)
def _mlqa_punct() -> frozenset[str]:
    """The script's PUNCT: every Unicode P* character below sys.maxunicode, plus ASCII punctuation
    (which adds the symbols $+<=>^`|~).  Built lazily: scanning 1.1M code points takes ~0.3 s."""
    return frozenset(
        chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")
    ) | frozenset(string.punctuation)


def _mixed_segmentation(text: str) -> list[str]:
    """The script's Chinese segmentation: each char in U+4E00..U+9FA5 (the script's range, not the
    full CJK block) or in PUNCT is its own token; runs of anything else are whitespace-split."""
    punct = _mlqa_punct()
    out: list[str] = []
    buf = ""
    for ch in text:
        if re.search(r"[\u4e00-\u9fa5]", ch) or ch in punct:
            if buf:
                out.extend(buf.split())
                buf = ""
            out.append(ch)
        else:
            buf += ch
    if buf:
        out.extend(buf.split())
    return out


def _check_lang(lang: str) -> str:
    if lang not in MLQA_LANGS:
        raise ValueError(f"lang {lang!r} is not an MLQA language; valid: {', '.join(MLQA_LANGS)}")
    return lang


def mlqa_normalize(text: str, lang: str) -> str:
    """``normalize_answer`` of MLQA ``mlqa_evaluation_v1.py``: lower, drop Unicode punctuation,
    drop the language's articles, then re-tokenise (whitespace, or char-level CJK for zh) and
    join with single spaces, so that ``.split()`` of the result is the F1 token list."""
    _check_lang(lang)
    punct = _mlqa_punct()
    text = "".join(ch for ch in str(text).lower() if ch not in punct)
    if lang in _MLQA_ARTICLES:
        text = re.sub(_MLQA_ARTICLES[lang], " ", text)
    tokens = text.split() if lang in _WHITESPACE_LANGS else _mixed_segmentation(text)
    return " ".join(t for t in tokens if t.strip() != "")


def mlqa_em(pred: str, golds: Any, lang: str) -> float:
    """Max over gold answers of normalised exact match (``mlqa_evaluation_v1.py``)."""
    p = mlqa_normalize(pred, lang)
    return float(max(p == mlqa_normalize(g, lang) for g in _golds_list(golds)))


def mlqa_f1(pred: str, golds: Any, lang: str) -> float:
    """Max over gold answers of token F1; for zh the tokens are single characters."""
    p = mlqa_normalize(pred, lang).split()
    return max(_token_f1(p, mlqa_normalize(g, lang).split()) for g in _golds_list(golds))


def mlqa_scores(
    preds: Mapping[str, str], golds: Mapping[str, Sequence[str]], lang: str
) -> dict[str, float]:
    """``evaluate()`` of ``mlqa_evaluation_v1.py`` in percent; ``lang`` is the *context* language,
    as the script's ``answer_language`` argument.  Missing predictions count as 0."""
    _check_lang(lang)
    return _qa_scores(
        preds, golds, lambda p, g: mlqa_em(p, g, lang), lambda p, g: mlqa_f1(p, g, lang)
    )


def qa_score(em: float, f1: float) -> float:
    """XTREME's single QA number: ``avg_metric = (avg_exact_match + avg_f1) / 2`` in ``evaluate.py``.
    Average EM and F1 over languages first, then combine (the two orders agree, it is linear)."""
    return (em + f1) / 2


# --------------------------------------------------------------------------- aggregation


def _mean_of(values: Mapping[str, float], name: str) -> float:
    if not isinstance(values, Mapping):
        raise ValueError(f"{name} must be a dict, got {type(values).__name__}")
    if not values:
        raise ValueError(f"{name} is empty; a mean over nothing is undefined")
    vals = [float(v) for v in values.values()]
    bad = [key for key, v in zip(values, vals) if not np.isfinite(v)]
    if bad:
        raise ValueError(f"{name} has non-finite scores for {bad}")
    return sum(vals) / len(vals)


def task_score(per_language: Mapping[str, float]) -> float:
    """A task's XTREME score: the unweighted mean over its languages (``avg_*`` in ``evaluate.py``);
    English is included, as in XTREME, and low-resource languages weigh as much as any other."""
    return _mean_of(per_language, "per_language")


def overall_score(per_task: Mapping[str, float]) -> float:
    """The XTREME score: unweighted mean of the tasks' scores (``all_task`` in ``evaluate.py``).
    For QA tasks pass ``qa_score(em, f1)``; keep all tasks in the same unit (see module doc)."""
    return _mean_of(per_task, "per_task")


from .retrieval import (  # noqa: E402,F401
    _cosine, _knn, _nn_accuracy, bucc_f1, margin_scores, mine_pairs, retrieval_accuracy, retrieval_accuracy_both)
