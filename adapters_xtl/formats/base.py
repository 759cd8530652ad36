"""The protocol of a task format, and the batching shared by all of them."""

from __future__ import annotations

import random
from typing import Any

import torch

from ..tasks import TaskSpec


class Format:
    name: str = ""
    trainable: bool = True

    def make_head(self, spec: TaskSpec, hidden_size: int) -> torch.nn.Module:
        raise NotImplementedError

    def encode(self, examples: list[dict], spec: TaskSpec, tokenizer, *, train: bool) -> list[dict]:
        """Examples -> features (python lists); a feature has `input_ids` and its targets."""
        raise NotImplementedError

    def collate(self, features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, model, features: list[dict], examples: list[dict], spec: TaskSpec, batch_size: int,
              lang: str | None = None) -> dict[str, float]:
        """Metrics (name -> value in percent) of `model` on encoded features of language `lang`
        (language-aware metrics such as MLQA's normalisation need it)."""
        raise NotImplementedError


def pad_sequences(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def length_bucketed_batches(lengths: list[int], batch_size: int, *, seed: int | None, bucket_batches: int = 50) -> list[list[int]]:
    """Batches of indices of similar length, so padding costs little.

    With a seed: shuffle, cut into pools of `bucket_batches` batches, sort each pool by length,
    cut into batches and shuffle their order (randomness stays, padding waste mostly goes).
    Without: sort everything by length (evaluation; order does not matter).
    """
    idx = list(range(len(lengths)))
    if seed is None:
        idx.sort(key=lambda i: lengths[i])
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(idx)
    pool = batch_size * bucket_batches
    batches = []
    for p in range(0, len(idx), pool):
        chunk = sorted(idx[p : p + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def padding_waste(lengths: list[int], batches: list[list[int]]) -> float:
    real = sum(lengths)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1.0 - real / padded if padded else 0.0


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
