"""Token tagging over pre-split words: UD POS (UPOS) and NER (IOB2: UNER, PAN-X, ...).

Examples carry `tokens` (the words) and `tags` (one per word); the task's `labels` is the tag set
and `label_map` may rename source tags (e.g. UNER-Croatian's `B-OTH: O`, `I-OTH: O`). A tag
outside the set is an `XtlError` naming the sentence, word and tag, raised in `encode`.

Sub-words (XTREME's convention): each word is tokenized on its own
(`is_split_into_words=True`); the word's label sits on its FIRST sub-word, every other sub-word
and the special tokens get -100 (ignored by the loss, not predicted). A word the tokenizer turns
into nothing (a lone control or zero-width character) is replaced by the unknown token, as
XTREME's `utils_tag.py` does, so every word is predicted.

Long sentences: instead of truncating (XTREME cuts at `max_length` sub-words and drops the cut
words from the *gold* too, which flatters the score), a sentence longer than `max_length` is
split at word boundaries into consecutive windows that each fit, without overlap; every window is
one feature and the predictions are stitched back per sentence. So every gold word is scored, and
a word at a window's start sees only its own window as context. (A single word longer than a
window keeps its first `max_length - 2` sub-words; its label is on the first, so it is still
predicted.) Should a word still end up without a prediction, it is scored as predicted `O`:
a missed entity for NER, a wrong tag for POS.

Scores (percent), chosen by `metrics:` in the task YAML:
  [ner_f1]                        -> {"f1", "precision", "recall"}   entity-level seqeval, as XTREME PAN-X
  [pos_accuracy] / [pos_xtreme_f1] -> {"accuracy", "f1_xtreme"}      token accuracy, and XTREME's UD-POS
                                                                      number (seqeval on raw UPOS tags)
Inference (`predict_examples`) encodes and decodes exactly as scoring does: a string input is
split on whitespace into words, and long inputs are windowed, never truncated.

With no `metrics:` a tag set that looks like IOB2 (`O` plus `B-`/`I-` tags) is NER, anything else
POS. The default main metric of tagging is `f1`: a POS task should set `main_metric: accuracy`
(or `f1_xtreme` to compare with the XTREME leaderboard).
"""

from __future__ import annotations

import torch

from .. import metrics
from ..errors import XtlError
from . import register_format
from .base import (
    Format,
    input_error,
    input_list,
    input_roles,
    keep_row,
    length_bucketed_batches,
    limited_spec,
    pad_sequences,
    to_device,
)

IGNORE = -100
FALLBACK_TAG = "O"  # what an unpredicted word counts as (see the module doc)
NER_METRICS = {"ner_f1"}
POS_METRICS = {"pos_accuracy", "pos_xtreme_f1"}


class TaggingHead(torch.nn.Module):
    """Dropout + one linear layer on every token's hidden state."""

    def __init__(self, hidden: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(hidden, num_labels)

    def forward(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.out(self.dropout(hidden))  # [batch, seq, labels]


def looks_iob2(labels) -> bool:
    labels = list(labels or [])
    return "O" in labels and len(labels) > 1 and all(l == "O" or l.startswith(("B-", "I-")) for l in labels)


def tagging_kind(spec) -> str:
    """'ner' or 'pos': from `metrics:` when it names one, else from the look of the tag set."""
    named = set(spec.metrics or [])
    ner, pos = bool(named & NER_METRICS), bool(named & POS_METRICS)
    if ner and pos:
        raise XtlError(
            f"task {spec.name!r} asks for both NER and POS metrics {sorted(named)}",
            where=spec.file or spec.name,
            fix="a tagging task is scored either as NER (metrics: [ner_f1]) or as POS (metrics: [pos_accuracy])",
        )
    if ner:
        return "ner"
    if pos:
        return "pos"
    return "ner" if looks_iob2(spec.labels) else "pos"


def _normalise_tags(ex: dict, spec, n_words: int, label_id: dict[str, int]) -> list[int]:
    """Tag ids of one example, with the task's label_map applied; clear errors for bad tags."""
    tags = ex.get("tags")
    sid = ex.get("id")
    if tags is None:
        raise XtlError(
            f"sentence {sid!r} has no tags (task {spec.name!r})",
            where=spec.file or spec.name,
            fix="map the `tags` role in `columns:` (readers give columns `tokens` and `tags`)",
        )
    if len(tags) != n_words:
        raise XtlError(
            f"sentence {sid!r} has {n_words} tokens but {len(tags)} tags (task {spec.name!r})",
            where=spec.file or spec.name,
            fix="every word needs exactly one tag",
        )
    lmap = spec.label_map or {}
    out = []
    for k, raw in enumerate(tags):
        tag = lmap.get(str(raw), str(raw))
        if tag not in label_id:
            word = ex["tokens"][k]
            raise XtlError(
                f"sentence {sid!r}, word {k + 1} ({word!r}): tag {raw!r} is not in the label set "
                f"{list(label_id)} (task {spec.name!r})",
                where=spec.file or spec.name,
                fix="add the tag to `labels`, or map it with `label_map` (e.g. B-OTH: O)",
            )
        out.append(label_id[tag])
    return out


def _windows(counts: list[int], budget: int) -> list[tuple[int, int]]:
    """Word spans [start, end) whose sub-word counts sum to at most `budget` (at least one word each)."""
    spans, start, used = [], 0, 0
    for i, c in enumerate(counts):
        if i > start and used + c > budget:
            spans.append((start, i))
            start, used = i, 0
        used += c
    if start < len(counts) or not spans:
        spans.append((start, len(counts)))
    return spans


class Tagging(Format):
    name = "tagging"

    def make_head(self, spec, hidden_size):
        return TaggingHead(hidden_size, len(spec.labels))

    def head_config(self, spec) -> dict:
        return {"kind": "tagging", "labels": list(spec.labels), "scoring": tagging_kind(spec)}

    def encode(self, examples, spec, tokenizer, *, train):
        """One feature per window: `input_ids`, `labels` (-100 off first sub-words), and for
        scoring `example` (index into `examples`) and `words` (the window's first word index)."""
        label_id = {l: i for i, l in enumerate(spec.labels)}
        tagging_kind(spec)  # conflicting metrics fail before any work
        words_of: list[list[str]] = []
        tag_ids: list[list[int]] = []
        for ex in examples:
            tokens = ex.get("tokens")
            if not isinstance(tokens, (list, tuple)):
                raise XtlError(
                    f"sentence {ex.get('id')!r}: `tokens` must be a list of words, got {type(tokens).__name__} "
                    f"(task {spec.name!r})",
                    where=spec.file or spec.name,
                    fix="use file_format conllu/iob2 (or a list column) and map `tokens` in `columns:`",
                )
            words = [str(w) for w in tokens]
            tag_ids.append(_normalise_tags(ex, spec, len(words), label_id))
            words_of.append(words)
        return self._features(words_of, tag_ids, spec, tokenizer)

    def _features(self, words_of: list[list[str]], tag_ids: list[list[int]], spec, tokenizer) -> list[dict]:
        """Windows of the sentences `words_of` (lists of words, changed in place: see <unk>)
        labelled with `tag_ids`; what `encode` returns."""
        # sub-words per word (each word is tokenized on its own, so counts do not depend on windows)
        counts_of: list[list[int]] = []
        nonempty = [i for i, w in enumerate(words_of) if w]
        if nonempty:
            bare = tokenizer([words_of[i] for i in nonempty], is_split_into_words=True, add_special_tokens=False)
            for j, i in enumerate(nonempty):
                counts = [0] * len(words_of[i])
                for wid in bare.word_ids(j):
                    if wid is not None:
                        counts[wid] += 1
                for k, c in enumerate(counts):
                    if c == 0:  # nothing left after normalisation: predict it through <unk>
                        words_of[i][k] = tokenizer.unk_token
                        counts[k] = 1
                counts_of.append(counts)
        counts_iter = iter(counts_of)

        budget = max(1, spec.max_length - tokenizer.num_special_tokens_to_add(pair=False))
        chunks, origin = [], []
        for i, words in enumerate(words_of):
            if not words:
                continue  # an empty sentence has nothing to predict
            for start, end in _windows(next(counts_iter), budget):
                chunks.append(words[start:end])
                origin.append((i, start))
        if not chunks:
            return []
        enc = tokenizer(chunks, is_split_into_words=True, truncation=True, max_length=spec.max_length)
        feats = []
        for j, (ids, (i, start)) in enumerate(zip(enc["input_ids"], origin)):
            labels, prev = [], None
            for wid in enc.word_ids(j):
                if wid is None or wid == prev:
                    labels.append(IGNORE)
                else:
                    labels.append(tag_ids[i][start + wid])
                prev = wid if wid is not None else prev
            feats.append({"input_ids": ids, "labels": labels, "example": i, "words": start})
        return feats

    def collate(self, features, pad_id):
        ids, mask = pad_sequences([f["input_ids"] for f in features], pad_id)
        labels = torch.full(ids.shape, IGNORE, dtype=torch.long)
        for i, f in enumerate(features):
            labels[i, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def loss(self, outputs, batch):
        return torch.nn.functional.cross_entropy(
            outputs.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE
        )

    @torch.inference_mode()
    def predict_scored(self, model, features, batch_size) -> list[tuple[list[int], list[float]]]:
        """Per feature: (label id, its probability) of each word of its window, in order."""
        lengths = [len(f["input_ids"]) for f in features]
        out: list[tuple[list[int], list[float]]] = [([], []) for _ in features]
        for b in length_bucketed_batches(lengths, batch_size, seed=None):
            batch = to_device(self.collate([features[i] for i in b], model.pad_id), model.device)
            logits = model(batch).float()
            pred = logits.argmax(-1)
            prob = logits.softmax(-1).gather(-1, pred.unsqueeze(-1)).squeeze(-1).cpu()
            pred = pred.cpu()
            first = batch["labels"].cpu() != IGNORE
            for row, i in enumerate(b):
                out[i] = (pred[row][first[row]].tolist(), prob[row][first[row]].tolist())
        return out

    def predict(self, model, features, batch_size) -> list[list[int]]:
        """Per feature: the predicted label id of each word of its window, in order."""
        return [ids for ids, _ in self.predict_scored(model, features, batch_size)]

    def predict_tags(self, model, features, examples, spec, batch_size) -> list[list[str]]:
        """Predicted tags per example, one per word; unpredicted words are `O` (module doc)."""
        return self._stitch(model, features, examples, spec, batch_size)[0]

    def _stitch(self, model, features, examples, spec, batch_size) -> tuple[list[list[str]], list[list[float | None]]]:
        """(tags, probabilities) per example, one per word, windows put back together; an
        unpredicted word is `O` with probability None."""
        tags = [[FALLBACK_TAG] * len(e.get("tokens") or []) for e in examples]
        probs: list[list[float | None]] = [[None] * len(t) for t in tags]
        for f, (ids, ps) in zip(features, self.predict_scored(model, features, batch_size)):
            row, prow = tags[f["example"]], probs[f["example"]]
            for k, (label, p) in enumerate(zip(ids, ps)):
                if f["words"] + k < len(row):
                    row[f["words"] + k] = spec.labels[label]
                    prow[f["words"] + k] = p
        return tags, probs

    def score(self, model, features, examples, spec, batch_size, lang=None, keep=None):
        pred, probs = self._stitch(model, features, examples, spec, batch_size)
        lmap = spec.label_map or {}
        gold = [[lmap.get(str(t), str(t)) for t in e["tags"]] for e in examples]
        if keep is not None:
            keep.extend(keep_row(e, i, g, p, ps) for i, (e, g, p, ps) in enumerate(zip(examples, gold, pred, probs)))
        pairs = [(p, g) for p, g in zip(pred, gold) if g]  # empty sentences score nothing
        pred, gold = [p for p, _ in pairs], [g for _, g in pairs]
        if tagging_kind(spec) == "ner":
            prf = metrics.ner_f1(pred, gold)
            return {"f1": 100.0 * prf["f1"], "precision": 100.0 * prf["precision"], "recall": 100.0 * prf["recall"]}
        return {
            "accuracy": 100.0 * metrics.pos_accuracy(pred, gold),
            "f1_xtreme": 100.0 * metrics.pos_xtreme_f1(pred, gold)["f1"],
        }

    # ----------------------------------------------------------------------- inference
    def examples_from_inputs(self, inputs, spec):
        """A string is split on whitespace into words; a dict gives `tokens` (a list of words)."""
        fix = 'pass a sentence string (split on whitespace) or {"tokens": ["word", ...]}'
        out = []
        for n, inp in enumerate(input_list(inputs, spec)):
            ex = {"tokens": inp.split()} if isinstance(inp, str) else input_roles(inp, n, ("tokens",), spec, fix)
            if isinstance(ex["tokens"], str):
                ex["tokens"] = ex["tokens"].split()
            if not isinstance(ex["tokens"], (list, tuple)):
                raise input_error(n, f"field 'tokens' must be a list of words, got {type(ex['tokens']).__name__}", fix)
            ex["tokens"] = [str(w) for w in ex["tokens"]]
            out.append(ex)
        return out

    def predict_examples(self, model, examples, spec, batch_size=32):
        """Never `truncated`: long sentences are windowed (module doc)."""
        spec = limited_spec(spec, model.tokenizer)
        words_of = [[str(w) for w in e.get("tokens") or []] for e in examples]
        feats = self._features([list(w) for w in words_of], [[0] * len(w) for w in words_of], spec, model.tokenizer)
        tags, probs = self._stitch(model, feats, [{"tokens": w} for w in words_of], spec, batch_size)
        return [{"tokens": w, "tags": t, "scores": p} for w, t, p in zip(words_of, tags, probs)]


register_format(Tagging())
