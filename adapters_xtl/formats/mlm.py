"""Masked language modelling: the objective a language module (MAD-X) trains with.

Not a task format (there are no labels to score zero-shot): the trainer only needs `collate`,
`loss` and `score` from it. Masking is transformers' `DataCollatorForLanguageModeling` (15% of
the non-special tokens; of those 80% `<mask>`, 10% a random token, 10% kept), drawn from torch's
global generator, so a seeded run (and a resumed one, whose checkpoint restores that generator)
masks the same tokens. Dev features are masked once, with their own seed, so the dev loss of two
states of the module is measured on the same masked tokens.

The head (`LMHead`) is RobertaLMHead's shape: dense + gelu + layer norm, then a decoder whose
weight *is* the backbone's input embedding matrix (tied; frozen with the backbone) plus a bias.
Logits are computed only at masked positions: XLM-R's vocabulary is 250k tokens, and the other
positions have no loss.
"""

from __future__ import annotations

from typing import Callable

import torch

MLM_PROBABILITY = 0.15


class LMHead(torch.nn.Module):
    """dense -> gelu -> layer norm -> (inverse of an invertible adapter) -> tied decoder + bias."""

    def __init__(self, hidden_size: int, embeddings: torch.nn.Embedding, eps: float = 1e-5):
        super().__init__()
        self.dense = torch.nn.Linear(hidden_size, hidden_size)
        self.layer_norm = torch.nn.LayerNorm(hidden_size, eps=eps)
        self.bias = torch.nn.Parameter(torch.zeros(embeddings.weight.shape[0]))
        self._embeddings = [embeddings]  # a list: the backbone's matrix is not this head's parameter

    def forward(self, hidden: torch.Tensor, inverse: Callable | None = None) -> torch.Tensor:
        x = self.layer_norm(torch.nn.functional.gelu(self.dense(hidden)))
        if inverse is not None:  # MAD-X: the invertible adapter's inverse before the output embeddings
            x = inverse(x.unsqueeze(0)).squeeze(0)
        weight = self._embeddings[0].weight
        return x @ weight.to(x.dtype).t() + self.bias


def collator(tokenizer, seed: int | None = None):
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True, mlm_probability=MLM_PROBABILITY,
                                           return_tensors="pt", seed=seed)


class MLMObjective:
    """What the trainer asks of a format, for masked language modelling on one tokenizer."""

    name = "mlm"
    trainable = True

    def __init__(self, tokenizer, max_length: int = 128):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._collate = collator(tokenizer)

    def encode(self, lines: list[str]) -> list[dict]:
        enc = self.tokenizer(lines, truncation=True, max_length=self.max_length, return_special_tokens_mask=True,
                             verbose=False)
        return [{"input_ids": ids, "special_tokens_mask": sm}
                for ids, sm in zip(enc["input_ids"], enc["special_tokens_mask"]) if len(ids) > 2]

    def mask_once(self, features: list[dict], seed: int) -> list[dict]:
        """Dev features masked once with their own generator: each keeps its masked ids and labels."""
        if not features:
            return []
        batch = collator(self.tokenizer, seed=seed)([dict(f) for f in features])
        out = []
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            out.append({"input_ids": batch["input_ids"][i, :n].tolist(), "labels": batch["labels"][i, :n].tolist()})
        return out

    def collate(self, features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        if "labels" in features[0]:  # masked already (dev)
            n = max(len(f["input_ids"]) for f in features)
            ids = torch.full((len(features), n), pad_id, dtype=torch.long)
            labels = torch.full((len(features), n), -100, dtype=torch.long)
            mask = torch.zeros((len(features), n), dtype=torch.long)
            for i, f in enumerate(features):
                k = len(f["input_ids"])
                ids[i, :k] = torch.tensor(f["input_ids"])
                labels[i, :k] = torch.tensor(f["labels"])
                mask[i, :k] = 1
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}
        batch = self._collate([dict(f) for f in features])
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}

    def loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        logits, labels = outputs["logits"], outputs["labels"]
        if labels.numel() == 0:  # no token of the batch was masked
            return logits.sum() * 0.0
        return torch.nn.functional.cross_entropy(logits.float(), labels)

    @torch.no_grad()
    def score(self, model, features: list[dict], examples, spec, batch_size: int, lang=None, keep=None) -> dict:
        """Masked-token accuracy (percent) and mean loss per masked token on masked features."""
        total = correct = 0
        loss_sum = 0.0
        for i in range(0, len(features), batch_size):
            batch = self.collate(features[i:i + batch_size], model.pad_id)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model(batch)
            n = out["labels"].numel()
            if not n:
                continue
            loss_sum += float(torch.nn.functional.cross_entropy(out["logits"].float(), out["labels"],
                                                                reduction="sum"))
            correct += int((out["logits"].argmax(-1) == out["labels"]).sum())
            total += n
        if not total:
            return {"accuracy": 0.0, "loss": float("nan")}
        return {"accuracy": 100.0 * correct / total, "loss": loss_sum / total}
