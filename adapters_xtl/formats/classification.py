"""Single-sentence and sentence-pair classification (SST-2, MNLI, XNLI, PAWS-X, SIB-200, ...).

A task is a pair task when its `columns` map `text_pair`. Inputs longer than `max_length` are
truncated (`longest_first` for pairs), in scoring and inference alike.
"""

from __future__ import annotations

import torch

from .. import metrics
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

NO_LABEL = -100  # the label of an example to predict (cross_entropy's ignore_index)


class ClassificationHead(torch.nn.Module):
    """RoBERTa's head (dense-tanh-out), over mean- or <s>-pooled states."""

    def __init__(self, hidden: int, num_labels: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.pooling = pooling
        self.dropout = torch.nn.Dropout(dropout)
        self.dense = torch.nn.Linear(hidden, hidden)
        self.out = torch.nn.Linear(hidden, num_labels)

    def forward(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        x = pool(hidden, batch["attention_mask"], self.pooling)
        x = torch.tanh(self.dense(self.dropout(x)))
        return self.out(self.dropout(x))


class Classification(Format):
    name = "classification"

    def make_head(self, spec, hidden_size):
        return ClassificationHead(hidden_size, len(spec.labels), pooling=spec.pooling)

    def head_config(self, spec) -> dict:
        return {"kind": "classification", "labels": list(spec.labels), "pooling": spec.pooling}

    def encode(self, examples, spec, tokenizer, *, train):
        label_id = {l: i for i, l in enumerate(spec.labels)}
        ids = self._token_ids(examples, spec, tokenizer)
        return [{"input_ids": i, "label": label_id[e["label"]]} for i, e in zip(ids, examples)]

    @staticmethod
    def _texts(examples, spec) -> tuple[list[str], list[str] | None]:
        texts = [str(e["text"] or "") for e in examples]
        pairs = [str(e.get("text_pair") or "") for e in examples] if "text_pair" in spec.columns else None
        return texts, pairs

    def _token_ids(self, examples, spec, tokenizer) -> list[list[int]]:
        texts, pairs = self._texts(examples, spec)
        return tokenizer(texts, pairs, truncation=True, max_length=spec.max_length)["input_ids"]

    def collate(self, features, pad_id):
        ids, mask = pad_sequences([f["input_ids"] for f in features], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["label"] for f in features])}

    def loss(self, outputs, batch):
        return torch.nn.functional.cross_entropy(outputs.float(), batch["labels"])

    @torch.inference_mode()
    def logits(self, model, features, batch_size) -> torch.Tensor:
        """[n_features, n_labels] logits of the head (float32, on the CPU), in feature order."""
        lengths = [len(f["input_ids"]) for f in features]
        out = torch.zeros(len(features), 0)
        for b in length_bucketed_batches(lengths, batch_size, seed=None):
            batch = to_device(self.collate([features[i] for i in b], model.pad_id), model.device)
            z = model(batch).float().cpu()
            if out.shape[1] == 0:
                out = torch.zeros(len(features), z.shape[1])
            out[b] = z
        return out

    def predict(self, model, features, batch_size) -> list[int]:
        """The predicted label id of every feature."""
        if not features:
            return []
        return self.logits(model, features, batch_size).argmax(-1).tolist()

    def score(self, model, features, examples, spec, batch_size, lang=None, keep=None):
        logits = self.logits(model, features, batch_size)
        preds = logits.argmax(-1).tolist()
        gold = [f["label"] for f in features]
        if keep is not None:
            probs = logits.softmax(-1)
            keep.extend(keep_row(e, i, spec.labels[g], spec.labels[p], float(probs[i, p]))
                        for i, (e, g, p) in enumerate(zip(examples, gold, preds)))
        return {
            "accuracy": 100.0 * metrics.accuracy(preds, gold),
            "macro_f1": 100.0 * metrics.macro_f1(preds, gold),
        }

    # ----------------------------------------------------------------------- inference
    def examples_from_inputs(self, inputs, spec):
        """A string is the text; a pair task takes {"text", "text_pair"} or "text<TAB>pair"."""
        pair = "text_pair" in spec.columns
        roles = ("text", "text_pair") if pair else ("text",)
        fix = ('pass {"text": ..., "text_pair": ...} or "text<TAB>text_pair"' if pair
               else 'pass a string or {"text": ...}')
        out = []
        for n, inp in enumerate(input_list(inputs, spec)):
            if isinstance(inp, str):
                if pair:
                    if "\t" not in inp:
                        raise input_error(n, f"task {spec.name!r} classifies sentence pairs: field 'text_pair' is "
                                             "missing (a string input needs a tab between text and text_pair)", fix)
                    a, b = inp.split("\t", 1)
                    inp = {"text": a, "text_pair": b}
                else:
                    inp = {"text": inp}
            ex = input_roles(inp, n, roles, spec, fix)
            if not pair and ex.get("text_pair") is not None:
                raise input_error(n, f"task {spec.name!r} classifies single texts, but field 'text_pair' was given",
                                  'pass {"text": ...} only')
            out.append(ex)
        return out

    def predict_examples(self, model, examples, spec, batch_size=32):
        if not examples:
            return []
        spec = limited_spec(spec, model.tokenizer)
        ids = self._token_ids(examples, spec, model.tokenizer)
        logits = self.logits(model, [{"input_ids": i, "label": NO_LABEL} for i in ids], batch_size)
        labels = list(spec.labels)
        outs = []
        for best, row in zip(logits.argmax(-1).tolist(), logits.softmax(-1).tolist()):
            outs.append({"label": labels[best], "score": row[best], "probabilities": dict(zip(labels, row))})
        return flag_truncated(outs, was_cut(model.tokenizer, *self._texts(examples, spec), ids, spec.max_length))


register_format(Classification())
