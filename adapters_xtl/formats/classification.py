"""Single-sentence and sentence-pair classification (SST-2, MNLI, XNLI, PAWS-X, SIB-200, ...)."""

from __future__ import annotations

import torch

from .. import metrics
from . import register_format
from .base import Format, length_bucketed_batches, pad_sequences, pool, to_device


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
        texts = [str(e["text"] or "") for e in examples]
        pairs = [str(e.get("text_pair") or "") for e in examples] if "text_pair" in spec.columns else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=spec.max_length)
        return [
            {"input_ids": ids, "label": label_id[e["label"]]}
            for ids, e in zip(enc["input_ids"], examples)
        ]

    def collate(self, features, pad_id):
        ids, mask = pad_sequences([f["input_ids"] for f in features], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["label"] for f in features])}

    def loss(self, outputs, batch):
        return torch.nn.functional.cross_entropy(outputs.float(), batch["labels"])

    @torch.inference_mode()
    def predict(self, model, features, batch_size):
        lengths = [len(f["input_ids"]) for f in features]
        preds = [0] * len(features)
        for b in length_bucketed_batches(lengths, batch_size, seed=None):
            batch = to_device(self.collate([features[i] for i in b], model.pad_id), model.device)
            logits = model(batch)
            for i, p in zip(b, logits.argmax(-1).tolist()):
                preds[i] = p
        return preds

    def score(self, model, features, examples, spec, batch_size, lang=None):
        preds = self.predict(model, features, batch_size)
        gold = [f["label"] for f in features]
        return {
            "accuracy": 100.0 * metrics.accuracy(preds, gold),
            "macro_f1": 100.0 * metrics.macro_f1(preds, gold),
        }


register_format(Classification())
