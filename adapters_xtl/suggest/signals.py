"""The signals ``suggest`` ranks by, each measured on the loaded backbone without training.

Per candidate and target (language-independent):

* ``text_sim`` / ``cov_sim``: TextEmb (Vu et al. 2020): the cosine of the two tasks' mean
  backbone representations of their English inputs, centred on the mean of every task in the
  comparison, and the covariance similarity (:mod:`adapters_xtl.studies.similarity`, reused).
* ``logme`` / ``hscore``: LogME and H-score (:mod:`.transfer`) of the target's English training
  labels on the last layer's features with the candidate's module active, minus the same on the
  bare backbone: one forward pass over at most ``n_examples`` examples (classification: the
  pooled sentence; tagging: each word's first sub-word).  Needs a trained module; undefined for
  span QA, multiple choice and retrieval targets.
* ``delta_sim``: the cosine of the candidate module's weight delta and the target's ``single``
  module's (:func:`studies.similarity.delta_similarity`), when the registry has both.

Per candidate and language:

* ``align_delta``: how the module changes the backbone's cross-lingual alignment: retrieval
  accuracy (mean of both directions, percent) on at most ``align_pairs`` parallel sentences
  with English (Tatoeba where it has the language, else SIB-200's FLORES sentences), with the
  module active minus without.

Per language (the same for every candidate of one query, so they only matter through the
learned ranker's interactions and the past-results kernel):

* ``align``: the bare backbone's retrieval accuracy for the language (as above);
* ``syntactic``, ``genetic``, ``geographic``, ``featural``: URIEL distances from English
  (:mod:`adapters_xtl.studies.typology`).

Values are cached in ``$XTL_CACHE/suggest-signals.json`` keyed by backbone fingerprint, module
weights hash, task and sample sizes, so a second suggestion or an evaluation reuses them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapters_xtl.errors import XtlError

__all__ = ["LANGUAGE_SIGNALS", "PAIR_SIGNALS", "SignalContext"]

PAIR_SIGNALS = ("text_sim", "cov_sim", "logme", "hscore", "delta_sim")
CANDIDATE_LANGUAGE_SIGNALS = ("align_delta",)
URIEL_KINDS = ("syntactic", "genetic", "geographic", "featural")
LANGUAGE_SIGNALS = ("align", *URIEL_KINDS)
MAX_WORDS = 4000  # tagging: word rows fed to LogME at most


def _local(spec, split: str, lang: str, data_dir: Path | None) -> bool:
    """Whether a split's file for ``lang`` is on disk (never reach for the Hub here)."""
    from adapters_xtl.data import source_path

    try:
        src = spec.source_for(split)
        return bool(src.path) and source_path(src, spec, lang, data_dir).is_file()
    except XtlError:
        return False


class SignalCache:
    """A JSON file of computed signal values (floats; None for undefined)."""

    def __init__(self, path: Path | None):
        import json

        self.path = path
        self.data: dict[str, Any] = {}
        if path is not None and path.is_file():
            try:
                self.data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.data = {}
        self.dirty = False

    def get(self, key: str, compute):
        if key not in self.data:
            v = compute()
            self.data[key] = None if v is None or not math.isfinite(float(v)) else float(v)
            self.dirty = True
        v = self.data[key]
        return math.nan if v is None else float(v)

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        from adapters_xtl.io import atomic_write_json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.data, indent=None, sort_keys=True)
        self.dirty = False


def default_cache_path() -> Path:
    from adapters_xtl.embedded import default_cache_dir

    return default_cache_dir() / "suggest-signals.json"


class SignalContext:
    """A loaded backbone, a registry and the sample sizes: computes (and caches) signals."""

    def __init__(self, backbone, registry=None, *, data_dir: str | Path | None = None, n_examples: int = 200,
                 align_pairs: int = 100, n_texts: int = 200, seed: int = 0, cache: Path | None | bool = True):
        self.backbone = backbone
        self.registry = registry
        self.data_dir = Path(data_dir) if data_dir else None
        self.n_examples, self.align_pairs, self.n_texts, self.seed = n_examples, align_pairs, n_texts, seed
        self.cache = SignalCache(default_cache_path() if cache is True else (cache or None))
        self.notes: list[str] = []
        self._emb: dict[str, np.ndarray] = {}
        self._feats: dict[tuple[str, str | None], Any] = {}
        self._pairs: dict[str, Any] = {}
        self._examples: dict[str, list[dict]] = {}
        self.fp = backbone.fingerprint.short()

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)

    def _module_id(self, ref: str | None) -> str:
        if ref is None:
            return "bare"
        from adapters_xtl.session import parse_ref

        man = self.registry.manifest(*parse_ref(ref))
        return f"{man.name}@{man.version}:{man.files.get('weights.safetensors', '')[:16]}"

    def _session(self, ref: str):
        from adapters_xtl.session import ModuleSession

        return ModuleSession.saved_module(self.backbone, self.registry, ref, purpose="suggest")

    # ------------------------------------------------------------------ task similarity (TextEmb)
    def embeddings(self, task: str) -> np.ndarray:
        """Last-layer mean-pooled embeddings of up to ``n_texts`` English inputs of a task."""
        if task not in self._emb:
            from adapters_xtl.studies.similarity import embed_layers, task_texts
            from adapters_xtl.tasks import get_task

            refs = task[3:].split("+") if task.startswith("mt:") else [task]
            texts = [t for r in refs for t in self._english_texts(get_task(r), task_texts)]
            layer = self.backbone.num_layers
            self._emb[task] = embed_layers(self.backbone, texts, [layer])[layer]
        return self._emb[task]

    def _english_texts(self, spec, task_texts) -> list[str]:
        """A task's English inputs: its training texts, or for a retrieval task (no training
        split) the English side of its first language's parallel file."""
        if spec.format != "retrieval":
            return task_texts(spec, self.data_dir, self.n_texts, seed=self.seed)
        from adapters_xtl.evaluation import retrieval_pairs

        for lang in spec.languages:
            if _local(spec, spec.eval_split, lang, self.data_dir):
                _, english = retrieval_pairs(spec, lang, self.data_dir, self.n_texts)
                return english
        raise XtlError(f"no local parallel file of {spec.name!r}", where=spec.file or spec.name)

    def text_similarity(self, candidates: Sequence[str], targets: Sequence[str]) -> dict[tuple[str, str], dict]:
        """``{(candidate, target): {"text_sim", "cov_sim"}}``; centred on every task's mean."""
        from adapters_xtl.studies.similarity import centroid_cosine, covariance_similarity

        tasks = sorted(set(candidates) | set(targets))
        embs = {}
        for t in tasks:
            try:
                embs[t] = self.embeddings(t)
            except XtlError as e:
                self.note(f"no text embedding for {t}: {e}")
        center = np.mean([e.mean(axis=0) for e in embs.values()], axis=0) if len(embs) > 2 else None
        out = {}
        for c in candidates:
            for t in targets:
                if c not in embs or t not in embs:
                    out[(c, t)] = {"text_sim": math.nan, "cov_sim": math.nan}
                    continue
                out[(c, t)] = {"text_sim": centroid_cosine(embs[c], embs[t], center=center),
                               "cov_sim": covariance_similarity(embs[c], embs[t])}
        return out

    # ------------------------------------------------------------------ LogME / H-score
    def target_examples(self, target: str) -> list[dict] | None:
        from adapters_xtl.data import load_examples
        from adapters_xtl.tasks import get_task

        spec = get_task(target)
        if spec.format not in ("classification", "tagging"):
            self.note(f"LogME/H-score: {target} is a {spec.format} task; they apply to classification and tagging "
                      "targets (left out)")
            return None
        if target not in self._examples:
            train = get_task(spec.train_task) if spec.train_task else spec
            exs = load_examples(train, "train", train.train_language, self.data_dir)
            rng = random.Random(self.seed)
            self._examples[target] = rng.sample(exs, self.n_examples) if len(exs) > self.n_examples else exs
        return self._examples[target]

    @torch.inference_mode()
    def _features(self, target: str, examples: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(rows, labels) of the target's examples under whatever modules are active now."""
        from adapters_xtl.formats import get_format
        from adapters_xtl.formats.base import length_bucketed_batches, pool, to_device
        from adapters_xtl.tasks import get_task

        spec = get_task(target)
        fmt = get_format(spec.format)
        feats = fmt.encode(examples, spec, self.backbone.tokenizer, train=False)
        model = self.backbone.model
        was = model.training
        model.eval()
        rows, labels = [], []
        try:
            for b in length_bucketed_batches([len(f["input_ids"]) for f in feats], 32, seed=None):
                batch = to_device(fmt.collate([feats[i] for i in b], self.backbone.tokenizer.pad_token_id),
                                  self.backbone.device)
                hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                hidden = hidden.float()
                if spec.format == "classification":
                    rows.append(pool(hidden, batch["attention_mask"], spec.pooling).cpu().numpy())
                    labels.append(batch["labels"].cpu().numpy())
                else:
                    keep = batch["labels"] != -100
                    rows.append(hidden[keep].cpu().numpy())
                    labels.append(batch["labels"][keep].cpu().numpy())
        finally:
            model.train(was)
        f, y = np.concatenate(rows).astype(np.float64), np.concatenate(labels)
        if f.shape[0] > MAX_WORDS:
            idx = np.random.default_rng(self.seed).choice(f.shape[0], MAX_WORDS, replace=False)
            f, y = f[idx], y[idx]
        return f, y

    def _transfer_values(self, target: str, ref: str | None) -> tuple[float, float]:
        from .transfer import hscore, logme

        exs = self.target_examples(target)
        if exs is None:
            return math.nan, math.nan
        key = f"{self.fp}|{self._module_id(ref)}|{target}|n{self.n_examples}|s{self.seed}"

        def compute(which: str):
            if (target, ref) not in self._feats:
                if ref is None:
                    self._feats[(target, ref)] = self._features(target, exs)
                else:
                    with self._session(ref):
                        self._feats[(target, ref)] = self._features(target, exs)
            f, y = self._feats[(target, ref)]
            if len(np.unique(y)) < 2:
                return math.nan
            return logme(f, y) if which == "logme" else hscore(f, y)

        return (self.cache.get(f"logme|{key}", lambda: compute("logme")),
                self.cache.get(f"hscore-pca|{key}", lambda: compute("hscore")))

    def transferability(self, ref: str | None, target: str) -> dict[str, float]:
        """``{"logme", "hscore"}`` with module ``ref`` active minus the bare backbone's."""
        if ref is None:
            return {"logme": math.nan, "hscore": math.nan}
        base = self._transfer_values(target, None)
        mod = self._transfer_values(target, ref)
        return {"logme": mod[0] - base[0], "hscore": mod[1] - base[1]}

    # ------------------------------------------------------------------ weight deltas
    def delta_similarity(self, ref: str | None, target_ref: str | None) -> float:
        if ref is None or target_ref is None:
            return math.nan
        from adapters_xtl.session import parse_ref
        from adapters_xtl.studies.similarity import delta_similarity, module_deltas

        def compute():
            deltas = []
            for r in (ref, target_ref):
                man, tensors = self.registry.load(*parse_ref(r))
                deltas.append(module_deltas(tensors, man.method, man.method_config))
            return delta_similarity(*deltas)["global"]

        try:
            return self.cache.get(f"delta|{self._module_id(ref)}|{self._module_id(target_ref)}", compute)
        except XtlError as e:
            self.note(f"no weight-delta similarity for {ref} vs {target_ref}: {e}")
            return math.nan

    # ------------------------------------------------------------------ alignment
    def parallel(self, lang: str) -> tuple[list[str], list[str], str] | None:
        """Up to ``align_pairs`` (language, English) sentence pairs: Tatoeba, else SIB-200."""
        if lang in self._pairs:
            return self._pairs[lang]
        from adapters_xtl.data import load_examples
        from adapters_xtl.evaluation import retrieval_pairs
        from adapters_xtl.tasks import get_task

        found = None
        if lang != "en":
            tat = get_task("tatoeba")
            if lang in tat.languages and _local(tat, "test", lang, self.data_dir):
                try:
                    src, tgt = retrieval_pairs(tat, lang, self.data_dir, self.align_pairs)
                    if len(src) >= 10:
                        found = (src, tgt, "tatoeba")
                except (XtlError, OSError):
                    pass
            sib = get_task("sib200")
            if found is None and lang in sib.languages and _local(sib, "test", lang, self.data_dir) \
                    and _local(sib, "test", "en", self.data_dir):
                try:
                    xx = {str(e["id"]): e["text"] for e in load_examples(sib, "test", lang, self.data_dir)}
                    en = {str(e["id"]): e["text"] for e in load_examples(sib, "test", "en", self.data_dir)}
                    ids = [i for i in xx if i in en][: self.align_pairs]
                    if len(ids) >= 10:
                        found = ([xx[i] for i in ids], [en[i] for i in ids], "sib200 (FLORES)")
                except (XtlError, OSError):
                    pass
        self._pairs[lang] = found
        return found

    def _align_value(self, lang: str, ref: str | None) -> float:
        from adapters_xtl.formats.retrieval import Retrieval
        from adapters_xtl.model import Encoder
        from adapters_xtl.tasks import get_task

        pairs = self.parallel(lang)
        if pairs is None and lang == "en":
            return math.nan  # English is the pivot: no alignment to measure
        if pairs is None:
            self.note(f"alignment: no parallel text with English for {lang!r} (Tatoeba, SIB-200) in "
                      f"{self.data_dir or 'the default data folder'}")
            return math.nan
        src, tgt, source = pairs

        def compute():
            spec = get_task("tatoeba")
            if ref is None:
                return Retrieval().score_pairs(Encoder(self.backbone), src, tgt, spec)["accuracy"]
            with self._session(ref):
                return Retrieval().score_pairs(Encoder(self.backbone), src, tgt, spec)["accuracy"]

        return self.cache.get(f"align|{self.fp}|{self._module_id(ref)}|{lang}|{source}|n{len(src)}", compute)

    def alignment_change(self, ref: str | None, lang: str) -> float:
        if ref is None:
            return math.nan
        return self._align_value(lang, ref) - self._align_value(lang, None)

    def language_features(self, lang: str) -> dict[str, float]:
        from adapters_xtl.studies.typology import distances_from

        try:
            uriel = distances_from("en", [lang], URIEL_KINDS, missing="nan")[lang]
        except XtlError as e:
            self.note(f"URIEL: {e}")
            uriel = {k: math.nan for k in URIEL_KINDS}
        return {"align": self._align_value(lang, None), **uriel}
