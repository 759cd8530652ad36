"""Multiple choice (CosmosQA, CommonsenseQA, HellaSwag, SIQA, XCOPA-like): pick one of k choices.

Roles of an example (the task's `columns:` map source columns to them):
  context   optional passage (CosmosQA `context`, HellaSwag `ctx`, XCOPA `premise`)
  question  optional question (CommonsenseQA `question`; XCOPA's `question` is "cause"/"effect")
  choices   the choices, as either
              - a list column (JSONL), or
              - a dict column {"label": [letters], "text": [choices]} (CommonsenseQA's HF layout), or
              - several columns: roles `choice0`, `choice1`, ... (`columns: {choice0: answer0, ...}`),
                or `choices: "answer0,answer1,answer2,answer3"` (a comma-separated list of
                columns; `data.to_roles` must then hand the role over as a list)
  label     the right choice. Resolved in this order: `label_map` (source value -> value),
            the choice letters of a dict column (CommonsenseQA `answerKey: "C"` -> 2), the task's
            `labels` naming the choice positions (`labels: [A, B, C, D, E]`), an integer
            (0-based: CosmosQA `"1"` -> 1; a 1-based set uses `label_map: {"1": "0", ...}`),
            and a single letter A-Z (A -> 0).

Encoding: one sequence per choice. With a context the pair is (context, question + " " + choice):
the question travels with the choice, so truncating a long context (`longest_first`) never cuts
the question. Without a context the pair is (question, choice); with neither, the choice alone.

Head: dropout + linear(hidden, 1) on each choice's pooled state (`pooling:` mean or cls); the
scores of an example's choices go through a softmax, the loss is cross-entropy over choices.
Examples with different numbers of choices share a batch: missing choices are never encoded (no
compute spent on them) and get a score of -inf, so they take no probability and are never
predicted. Trailing empty choices (an empty `answer4` cell) are dropped the same way. A task
that names its choice positions in `labels` declares a fixed count: an example with another
count is an `XtlError`.

Score: {"accuracy"} (percent) via `metrics.choice_accuracy` (first choice wins a tie); with
`keep`, one row per example {id, gold, prediction (choice indices), score (its probability)}.

Inference: an input is a dict with the task's text roles (`question`, `context`: those its
`columns` map) and `choices` (two or more texts); it is encoded as in training and the output is
{"choice", "label" (the chosen text), "score", "probabilities"}, with "truncated" when a choice's
sequence was cut at the encoder limit.

Training: the head is one linear unit, which moves little at an adapter's rate in a short run, and
LoRA at 2e-3 stalls near ln(k); the multiple-choice tasks therefore set `lr: 5e-4, head_lr: 1e-2`
(issue 20, docs/multiple_choice.md). A user task of this format should set them too.
"""

from __future__ import annotations

import re

import torch

from .. import metrics
from ..errors import XtlError
from . import register_format
from .base import (
    Format,
    flag_truncated,
    input_error,
    input_list,
    input_roles,
    keep_row,
    length_bucketed_batches,
    limited_spec,
    pad_sequences,
    pool,
    to_device,
    was_cut,
)

_CHOICE_ROLE = re.compile(r"choice(\d+)$")
NO_LABEL = -100  # the label of an example to predict
_TEXT_ROLES = ("context", "question")


class MultipleChoiceHead(torch.nn.Module):
    def __init__(self, hidden: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.pooling = pooling
        self.dropout = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(hidden, 1)

    def forward(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """hidden: [n_choices_in_batch, seq, h] -> scores [n_examples, max_choices] (-inf = no choice)."""
        x = pool(hidden, batch["attention_mask"], self.pooling)
        s = self.out(self.dropout(x)).squeeze(-1).float()
        scores = torch.full(batch["choice_mask"].shape, float("-inf"), device=s.device, dtype=s.dtype)
        return scores.index_put((batch["choice_row"], batch["choice_col"]), s)


def _text(x) -> str:
    return "" if x is None else str(x).strip()


def _fail(spec, ex, msg: str, fix: str | None = None):
    raise XtlError(f"example {ex.get('id')!r}: {msg} (task {spec.name!r})", where=spec.file or spec.name, fix=fix)


def _choices(ex: dict, spec) -> tuple[list[str], list[str] | None]:
    """(choice texts, choice letters if the source names them) of one example."""
    letters = None
    raw = ex.get("choices")
    numbered = sorted(((int(m.group(1)), r) for r in ex if (m := _CHOICE_ROLE.match(r))), key=lambda t: t[0])
    if raw is None and numbered:
        raw = [ex[r] for _, r in numbered]
    if isinstance(raw, dict):
        if "text" not in raw:
            _fail(spec, ex, f"a dict `choices` needs a `text` list, has keys {sorted(raw)}",
                  "CommonsenseQA layout: {\"label\": [\"A\", ...], \"text\": [...]}")
        letters = [str(l) for l in raw.get("label") or []] or None
        raw = raw["text"]
        if letters is not None and len(letters) != len(raw):
            _fail(spec, ex, f"choices has {len(letters)} labels but {len(raw)} texts")
    if isinstance(raw, str):
        _fail(spec, ex, "`choices` is one string, not a list of choices",
              "map several columns with roles choice0, choice1, ... or give a list column")
    if not isinstance(raw, (list, tuple)):
        _fail(spec, ex, f"no choices (got {type(raw).__name__})",
              "map `choices` (a list or dict column) or roles choice0, choice1, ... in `columns:`")
    texts = [_text(c) for c in raw]
    while texts and not texts[-1]:  # trailing empty cells: fewer choices for this example
        texts.pop()
    if letters is not None:
        letters = letters[: len(texts)]
    if not texts:
        _fail(spec, ex, "has no choices")
    return texts, letters


def _label(ex: dict, spec, n: int, letters: list[str] | None) -> int:
    raw = ex.get("label")
    val = _text(raw)
    if not val:
        _fail(spec, ex, "has no label", "map `label` in `columns:` to the column holding the right choice")
    if spec.label_map and val in spec.label_map:
        val = str(spec.label_map[val])
    if letters and val in letters:
        idx = letters.index(val)
    elif spec.labels and val in spec.labels:
        idx = list(spec.labels).index(val)
    elif re.fullmatch(r"-?\d+", val):
        idx = int(val)
    elif re.fullmatch(r"[A-Z]", val):
        idx = ord(val) - ord("A")
    else:
        _fail(spec, ex, f"label {raw!r} names no choice",
              "use a 0-based index, a choice letter, or map it with `label_map`")
    if not 0 <= idx < n:
        _fail(spec, ex, f"label {raw!r} points at choice {idx}, but there are {n} choices (0..{n - 1})",
              "labels are 0-based; for 1-based data add label_map: {\"1\": \"0\", \"2\": \"1\", ...}")
    return idx


def _sequences(ex: dict, texts: list[str]) -> list[tuple[str, str | None]]:
    """The (first, second) text pair of each choice of one example (module doc: Encoding)."""
    context, question = _text(ex.get("context")), _text(ex.get("question"))
    if context:
        return [(context, f"{question} {c}" if question else c) for c in texts]
    if question:
        return [(question, c) for c in texts]
    return [(c, None) for c in texts]


def _first_max(row: list[float]) -> int:
    """argmax with the first choice winning a tie (as `metrics.choice_accuracy`)."""
    return max(range(len(row)), key=lambda j: (row[j], -j))


class MultipleChoice(Format):
    name = "multiple_choice"

    def make_head(self, spec, hidden_size):
        return MultipleChoiceHead(hidden_size, pooling=spec.pooling)

    def head_config(self, spec) -> dict:
        return {"kind": "multiple_choice", "pooling": spec.pooling}

    def encode(self, examples, spec, tokenizer, *, train):
        """A feature: `choice_ids` (one id list per choice), `label`, and `input_ids` = its longest
        choice (what length bucketing sorts by: a batch pads every choice to that length)."""
        return self._encode(examples, spec, tokenizer, labelled=True)[0]

    def _encode(self, examples, spec, tokenizer, *, labelled: bool):
        """(features, per feature: was any of its choices cut by truncation)."""
        pairs, owners, labels = [], [], []
        for i, ex in enumerate(examples):
            texts, letters = _choices(ex, spec)
            if spec.labels and len(texts) != len(spec.labels):
                _fail(spec, ex, f"has {len(texts)} choices, the task declares {len(spec.labels)} ({list(spec.labels)})",
                      "drop `labels` from the task to allow a varying number of choices")
            labels.append(_label(ex, spec, len(texts), letters) if labelled else NO_LABEL)
            for pair in _sequences(ex, texts):
                pairs.append(pair)
                owners.append(i)
        ids: list[list[int] | None] = [None] * len(pairs)
        cut = [False] * len(pairs)
        for paired in (True, False):
            ks = [k for k, (_, second) in enumerate(pairs) if (second is not None) == paired]
            if not ks:
                continue
            firsts = [pairs[k][0] for k in ks]
            seconds = [pairs[k][1] for k in ks] if paired else None
            enc = tokenizer(firsts, seconds, truncation="longest_first" if paired else True,
                            max_length=spec.max_length)["input_ids"]
            flags = was_cut(tokenizer, firsts, seconds, enc, spec.max_length) if not labelled else [False] * len(ks)
            for k, e, c in zip(ks, enc, flags):
                ids[k], cut[k] = e, c
        feats = [{"choice_ids": [], "label": lab} for lab in labels]
        truncated = [False] * len(examples)
        for k, owner in enumerate(owners):
            feats[owner]["choice_ids"].append(ids[k])
            truncated[owner] = truncated[owner] or cut[k]
        for f in feats:
            f["input_ids"] = max(f["choice_ids"], key=len)
        return feats, truncated

    def collate(self, features, pad_id):
        seqs, rows, cols = [], [], []
        for r, f in enumerate(features):
            for c, s in enumerate(f["choice_ids"]):
                seqs.append(s)
                rows.append(r)
                cols.append(c)
        ids, mask = pad_sequences(seqs, pad_id)
        width = max(len(f["choice_ids"]) for f in features)
        choice_mask = torch.zeros((len(features), width), dtype=torch.bool)
        choice_mask[rows, cols] = True
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "choice_row": torch.tensor(rows, dtype=torch.long),
            "choice_col": torch.tensor(cols, dtype=torch.long),
            "choice_mask": choice_mask,
            "labels": torch.tensor([f["label"] for f in features], dtype=torch.long),
        }

    def loss(self, outputs, batch):
        return torch.nn.functional.cross_entropy(outputs.float(), batch["labels"])

    @torch.inference_mode()
    def predict(self, model, features, batch_size) -> list[list[float]]:
        """Per feature: the score of each of its choices (exactly its own number of choices)."""
        lengths = [len(f["input_ids"]) for f in features]
        out: list[list[float]] = [[] for _ in features]
        for b in length_bucketed_batches(lengths, batch_size, seed=None):  # batch_size examples, as in training
            batch = to_device(self.collate([features[i] for i in b], model.pad_id), model.device)
            scores = model(batch).float().cpu()
            for row, i in enumerate(b):
                out[i] = scores[row, : len(features[i]["choice_ids"])].tolist()
        return out

    @staticmethod
    def _probabilities(scores: list[float]) -> list[float]:
        return torch.tensor(scores, dtype=torch.float64).softmax(-1).tolist()

    def score(self, model, features, examples, spec, batch_size, lang=None, keep=None):
        logits = self.predict(model, features, batch_size)
        gold = [f["label"] for f in features]
        if keep is not None:
            for i, (e, row, g) in enumerate(zip(examples, logits, gold)):
                p = _first_max(row)
                keep.append(keep_row(e, i, g, p, self._probabilities(row)[p]))
        return {"accuracy": 100.0 * metrics.choice_accuracy(logits, gold)}

    # ----------------------------------------------------------------------- inference
    def examples_from_inputs(self, inputs, spec):
        """A dict with the task's text roles (`question`, `context`: those its `columns` map) and
        `choices`, a list of two or more non-empty strings. A string is not enough: an error
        names the fields."""
        roles = tuple(r for r in _TEXT_ROLES if r in spec.columns) + ("choices",)
        shape = "{" + ", ".join(f'"{r}": ...' for r in roles[:-1]) + (", " if roles[:-1] else "") + '"choices": ["...", "..."]}'
        fix = f"pass {shape}"
        out = []
        for n, inp in enumerate(input_list(inputs, spec)):
            ex = input_roles(inp, n, roles, spec, fix)
            choices = ex["choices"]
            if isinstance(choices, str) or not isinstance(choices, (list, tuple)):
                raise input_error(n, f"field 'choices' must be a list of choice texts, got {type(choices).__name__}", fix)
            if len(choices) < 2:
                raise input_error(n, f"field 'choices' needs two or more choices, got {len(choices)}", fix)
            blank = [j for j, c in enumerate(choices) if not _text(c)]
            if blank:
                raise input_error(n, f"field 'choices' has empty choice(s) at {blank}", "give every choice a text")
            for r in roles[:-1]:
                if not isinstance(ex[r], str):
                    raise input_error(n, f"field {r!r} must be a string, got {type(ex[r]).__name__}", fix)
            ex["choices"] = [str(c) for c in choices]
            out.append(ex)
        return out

    def predict_examples(self, model, examples, spec, batch_size=32):
        """{"choice": index, "label": its text, "score": its probability, "probabilities": [...]},
        plus "truncated": True when a choice's sequence was cut to the encoder limit."""
        if not examples:
            return []
        spec = limited_spec(spec, model.tokenizer)
        feats, truncated = self._encode(examples, spec, model.tokenizer, labelled=False)
        outs = []
        for ex, row in zip(examples, self.predict(model, feats, batch_size)):
            probs = self._probabilities(row)
            best = _first_max(row)
            texts, _ = _choices(ex, spec)
            outs.append({"choice": best, "label": texts[best], "score": probs[best], "probabilities": probs})
        return flag_truncated(outs, truncated)


register_format(MultipleChoice())
