"""Morphological complexity measured from data: UD FEATS, type-token ratios, tokenizer fertility.

Three proxies, each with its caveat:

* :func:`feats_per_token`: mean number of UD morphological features (``Case=Nom|Number=Sing``
  counts 2) per syntactic word of a CoNLL-U treebank.  It measures the *annotation* as much as the
  language: Japanese-GSD and Chinese-GSD annotate almost no FEATS, and treebanks of one language
  differ.  Compare languages through treebanks annotated in a similar style where you can (the
  PUD treebanks are parallel), and read one-point differences with care.
* :func:`mattr`: moving-average type-token ratio (Covington & McFall 2010), the mean TTR over all
  windows of ``window`` consecutive tokens.  Unlike plain TTR it does not fall as the text grows,
  so texts of different lengths compare; richer inflection gives more types per window.  It
  depends on the tokenisation (use UD word forms for every language, see :func:`conllu_forms`).
* :func:`fertility`: sub-words the model's tokenizer produces per word.  High fertility means the
  vocabulary fits the language poorly (often, morphologically rich or low-resource languages).

Fertility and scripts without spaces
------------------------------------
"Per whitespace word" is meaningless for Chinese, Japanese, Thai, Lao, Khmer, Myanmar and Tibetan
script, which do not separate words by spaces (a whole Thai clause is one "word").  With the
default ``unit="auto"`` such text (at least half of its letters in those scripts) is measured per
non-space *character* instead, and the result says so (``Fertility.unit == "char"``).  The two
units are **not comparable**: a study must not put per-character and per-word values in one
correlation.  Either leave the unspaced languages out of a fertility correlation, or measure
every language with ``unit="char"`` (comparable across all scripts, though it then also reflects
how much meaning one character carries in each script).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters_xtl.errors import XtlError

__all__ = [
    "FeatsStats",
    "Fertility",
    "MATTR",
    "UNSPACED_SCRIPTS",
    "conllu_forms",
    "feats_per_token",
    "feats_stats",
    "fertility",
    "mattr",
    "ud_files",
]


# --------------------------------------------------------------------------- CoNLL-U


def _paths(path_or_paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(path_or_paths, (str, Path)):
        paths = [Path(path_or_paths)]
    else:
        paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise XtlError("no CoNLL-U file given")
    for p in paths:
        if not p.is_file():
            raise XtlError("CoNLL-U file not found", where=str(p))
    return paths


def _words(path: Path):
    """Yield (line number, 10 columns) for each syntactic word; multiword ranges and empty nodes
    are skipped.  Counts sentences through the blank lines / ``# sent_id`` boundaries."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line or line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise XtlError(
                    f"expected 10 tab-separated CoNLL-U columns, found {len(cols)}",
                    where=f"{path}:{lineno}",
                )
            tid = cols[0]
            if "-" in tid or "." in tid:  # multiword token range, or empty node
                continue
            yield lineno, cols


@dataclass(frozen=True)
class FeatsStats:
    """FEATS counts over one or more CoNLL-U files (syntactic words only)."""

    n_words: int
    n_sentences: int
    n_feats: int
    n_words_with_feats: int

    @property
    def mean(self) -> float:
        return self.n_feats / self.n_words if self.n_words else float("nan")

    @property
    def share_with_feats(self) -> float:
        return self.n_words_with_feats / self.n_words if self.n_words else float("nan")


def feats_stats(path_or_paths: str | Path | Iterable[str | Path], *, max_sentences: int | None = None) -> FeatsStats:
    """Count FEATS per syntactic word (see :func:`feats_per_token`); ``max_sentences`` caps each file."""
    words = feats = with_feats = sentences = 0
    for path in _paths(path_or_paths):
        file_sents = 0
        for _, cols in _words(path):
            if cols[0] == "1":
                file_sents += 1
                if max_sentences is not None and file_sents > max_sentences:
                    file_sents -= 1
                    break
            words += 1
            f = cols[5]
            if f and f != "_":
                # one feature per "Name=Value[,Value]" item; layered names (Number[psor]) count apart
                k = sum(1 for item in f.split("|") if item)
                feats += k
                with_feats += k > 0
        sentences += file_sents
    if words == 0:
        raise XtlError(f"no syntactic words found in {path_or_paths}")
    return FeatsStats(n_words=words, n_sentences=sentences, n_feats=feats, n_words_with_feats=with_feats)


def feats_per_token(path_or_paths: str | Path | Iterable[str | Path], *, max_sentences: int | None = None) -> float:
    """Mean number of UD FEATS per syntactic word (multiword-token ranges and empty nodes skipped).

    ``_`` counts as 0 features; ``PronType=Int,Rel`` as 1 (one feature, two values).  Several
    files are pooled (word-weighted).  See the module docstring for the annotation caveat.
    """
    return feats_stats(path_or_paths, max_sentences=max_sentences).mean


def conllu_forms(
    path_or_paths: str | Path | Iterable[str | Path], *, lowercase: bool = True, max_sentences: int | None = None
) -> list[str]:
    """The FORM of each syntactic word, in order (for :func:`mattr`); punctuation (UPOS ``PUNCT``)
    is left out, since it adds the same few types in every language."""
    out: list[str] = []
    for path in _paths(path_or_paths):
        file_sents = 0
        for _, cols in _words(path):
            if cols[0] == "1":
                file_sents += 1
                if max_sentences is not None and file_sents > max_sentences:
                    break
            if cols[3] == "PUNCT":
                continue
            out.append(cols[1].lower() if lowercase else cols[1])
    return out


def ud_files(ud_root: str | Path, lang: str, split: str = "test") -> list[Path]:
    """CoNLL-U files of language ``lang`` (ISO 639-1/3 as in UD file names) for ``split`` under
    ``ud_root`` (e.g. ``shared/data/ud``): ``*/{lang}_*-ud-{split}.conllu``, sorted."""
    root = Path(ud_root)
    if not root.is_dir():
        raise XtlError("UD folder not found", where=str(root))
    return sorted(root.glob(f"*/{lang}_*-ud-{split}.conllu"))


# --------------------------------------------------------------------------- MATTR


@dataclass(frozen=True)
class MATTR:
    """Moving-average type-token ratio.  ``windowed`` is False when the text was shorter than the
    window, in which case ``value`` is the plain TTR of the whole text (not comparable with
    windowed values: TTR of a short text is higher)."""

    value: float
    window: int
    n_tokens: int
    windowed: bool

    def __float__(self) -> float:
        return self.value


def mattr(tokens: Sequence[str], window: int = 500) -> MATTR:
    """Covington & McFall (2010) MATTR: the mean over every window of ``window`` consecutive
    tokens of (distinct types in the window) / ``window``.  O(n) with a sliding count.

    A text shorter than the window gives its plain TTR with ``windowed=False``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    n = len(tokens)
    if n == 0:
        raise XtlError("MATTR of an empty text is undefined")
    ids: dict[str, int] = {}
    seq = [ids.setdefault(t, len(ids)) for t in tokens]
    if n < window:
        return MATTR(value=len(ids) / n, window=window, n_tokens=n, windowed=False)
    counts = [0] * len(ids)
    distinct = 0
    for t in seq[:window]:
        if counts[t] == 0:
            distinct += 1
        counts[t] += 1
    total = distinct
    for i in range(window, n):
        out, inn = seq[i - window], seq[i]
        counts[out] -= 1
        if counts[out] == 0:
            distinct -= 1
        if counts[inn] == 0:
            distinct += 1
        counts[inn] += 1
        total += distinct
    n_windows = n - window + 1
    return MATTR(value=total / (n_windows * window), window=window, n_tokens=n, windowed=True)


# --------------------------------------------------------------------------- fertility

# Scripts written without spaces between words (Unicode script name prefixes, via character names).
UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def _unspaced_share(texts: Sequence[str]) -> float:
    letters = unspaced = 0
    for text in texts:
        for ch in text:
            if not ch.isalpha():
                continue
            letters += 1
            name = unicodedata.name(ch, "")
            if name.startswith(UNSPACED_SCRIPTS) or "IDEOGRAPH" in name:
                unspaced += 1
    return unspaced / letters if letters else 0.0


@dataclass(frozen=True)
class Fertility:
    """Sub-words per ``unit`` ("word": whitespace-separated word; "char": non-space character)."""

    value: float
    unit: str
    n_subwords: int
    n_units: int
    n_texts: int

    def __float__(self) -> float:
        return self.value


def _tokenize_fn(tokenizer: Any) -> Callable[[str], Sequence[Any]]:
    if hasattr(tokenizer, "tokenize"):  # Hugging Face tokenizers and the like
        return tokenizer.tokenize
    if callable(tokenizer):
        return tokenizer
    raise TypeError("tokenizer must have a .tokenize(text) method or be a callable text -> tokens")


def fertility(texts: Iterable[str], tokenizer: Any, *, unit: str = "auto") -> Fertility:
    """Sub-word tokens per word over ``texts`` (pooled: total sub-words / total words).

    ``tokenizer`` is a Hugging Face tokenizer (its ``.tokenize``, without special tokens; the
    SentencePiece word-boundary piece ``▁`` counts when it stands alone, since the model sees it)
    or any callable ``str -> list of tokens``.  ``unit``: "word" (whitespace words), "char"
    (non-space characters) or "auto" (per character for text mostly in an unspaced script, see the
    module docstring, otherwise per word).
    """
    if unit not in ("auto", "word", "char"):
        raise ValueError(f"unit must be 'auto', 'word' or 'char', got {unit!r}")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise XtlError("fertility needs at least one non-empty text")
    if unit == "auto":
        unit = "char" if _unspaced_share(texts) >= 0.5 else "word"
    tok = _tokenize_fn(tokenizer)
    n_sub = n_units = 0
    for text in texts:
        n_sub += len(tok(text))
        n_units += len(text.split()) if unit == "word" else sum(1 for ch in text if not ch.isspace())
    value = n_sub / n_units if n_units else math.nan
    return Fertility(value=value, unit=unit, n_subwords=n_sub, n_units=n_units, n_texts=len(texts))
