"""The protocol of a task format, and the batching shared by all of them.

Scoring and inference go through the same code: a format's `predict_examples` and its `score`
share one forward pass and one decoding, so the prediction a user sees is the one the metric
counted. The contract of the inference half (read it before implementing a format):

`examples_from_inputs(inputs, spec)` turns what a user passes to `predict` (a list of strings or
dicts) into example dicts in the task's *roles*, the same dicts `data.load_examples` gives minus
the gold roles. A string is the task's main text; a dict names roles, and keys the format does not
use (e.g. `id`) are kept. A missing or ill-typed role is `input_error(n, ...)`, i.e. an `XtlError`
with `where="input N"` (N counted from 0) whose message names the role.

`predict_examples(model, examples, spec, batch_size=32)` returns one plain, JSON-ready dict per
example, in input order, computed in batches on `model.device` (the caller puts the model in eval
mode, as `evaluate` does). A dict gains `"truncated": True` (and the key is absent otherwise) when
the input was longer than `encoder_limit(spec, tokenizer)` and was cut. Per format:

  classification    {"label": str, "score": p(label), "probabilities": {label: p}}
  tagging           {"tokens": [...], "tags": [...], "scores": [p of each tag]}
  span_qa           {"answer": str, "score": p(span), "start": char offset or None}
  multiple_choice   {"choice": index, "label": its text, "score": p(choice), "probabilities": [p per choice]}
  retrieval         {"embedding": [float, ...]}

`score(..., keep=rows)`: when `keep` is a list, the format appends one `keep_row(...)` per scored
example, {"id": its `id` role or its index, "gold", "prediction", "score": confidence or None},
in example order, and returns exactly the metrics it returns without `keep`. Gold and prediction
have the shape of the output (a label, a list of tags, an answer text, a choice index); the score
is that of `predict_examples` (a list of per-word probabilities for tagging). Recomputing the
metric from the rows must give the returned value.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from ..errors import XtlError
from ..tasks import TaskSpec

TOKENIZER_NO_LIMIT = 1_000_000  # HF's model_max_length when a tokenizer declares none (1e30)


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
              lang: str | None = None, keep: list | None = None) -> dict[str, float]:
        """Metrics (name -> value in percent) of `model` on encoded features of language `lang`
        (language-aware metrics such as MLQA's normalisation need it). With a list `keep`, also
        append one `keep_row` per example (module doc); the metrics do not change."""
        raise NotImplementedError

    def examples_from_inputs(self, inputs: list[str | dict], spec: TaskSpec) -> list[dict]:
        """User inputs -> example dicts in the task's roles (module doc); bad input is
        `input_error` naming the role."""
        raise NotImplementedError

    def predict_examples(self, model, examples: list[dict], spec: TaskSpec, batch_size: int = 32) -> list[dict]:
        """One output dict per example, in order, batched on the model's device (module doc)."""
        raise NotImplementedError


# --------------------------------------------------------------------------- inference helpers
def input_error(n: int, message: str, fix: str | None = None) -> XtlError:
    """The error for the `n`-th user input (0-based): where="input n"."""
    return XtlError(message, where=f"input {n}", fix=fix)


def input_list(inputs, spec: TaskSpec) -> list:
    """`inputs` as a list, or a clear error when a single string or dict was passed."""
    if isinstance(inputs, (str, bytes, dict)) or not hasattr(inputs, "__iter__"):
        raise XtlError(f"predict takes a list of inputs, got one {type(inputs).__name__}",
                       where="inputs", fix=f"wrap it in a list: [{inputs!r:.40}]")
    return list(inputs)


def input_roles(inp, n: int, roles: tuple[str, ...], spec: TaskSpec, fix: str) -> dict:
    """A dict input with every role of `roles` present (not None); a copy, other keys kept."""
    if not isinstance(inp, dict):
        raise input_error(n, f"task {spec.name!r} ({spec.format}) needs a dict with {', '.join(map(repr, roles))}, "
                             f"got {type(inp).__name__}", fix)
    missing = [r for r in roles if inp.get(r) is None]
    if missing:
        raise input_error(n, f"missing field {', '.join(map(repr, missing))} (task {spec.name!r} needs "
                             f"{', '.join(map(repr, roles))}; got {sorted(map(str, inp))})", fix)
    return dict(inp)


def encoder_limit(spec: TaskSpec, tokenizer) -> int:
    """The most tokens one sequence may have: the task's `max_length`, capped by the tokenizer's
    `model_max_length` when it declares one."""
    model_max = getattr(tokenizer, "model_max_length", None) or 0
    return min(spec.max_length, model_max) if 0 < model_max < TOKENIZER_NO_LIMIT else spec.max_length


def limited_spec(spec: TaskSpec, tokenizer) -> TaskSpec:
    """`spec` with `max_length` at `encoder_limit` (itself when it already fits)."""
    limit = encoder_limit(spec, tokenizer)
    return spec if limit == spec.max_length else spec.model_copy(update={"max_length": limit})


def was_cut(tokenizer, texts: list[str], pairs: list[str] | None, encoded: list[list[int]], limit: int) -> list[bool]:
    """Per input: did truncating to `limit` tokens cut it? Only inputs that reached the limit are
    tokenized again, in full."""
    cut = [False] * len(texts)
    full_up = [i for i, ids in enumerate(encoded) if len(ids) >= limit]
    if full_up:
        full = tokenizer([texts[i] for i in full_up], [pairs[i] for i in full_up] if pairs is not None else None,
                         truncation=False, verbose=False)["input_ids"]
        for i, ids in zip(full_up, full):
            cut[i] = len(ids) > limit
    return cut


def flag_truncated(outputs: list[dict], cut: list[bool]) -> list[dict]:
    for out, c in zip(outputs, cut):
        if c:
            out["truncated"] = True
    return outputs


def keep_row(example: dict, index: int, gold, prediction, score) -> dict:
    """One per-example prediction row of `score(..., keep=...)`."""
    eid = example.get("id") if isinstance(example, dict) else None
    return {"id": index if eid is None else eid, "gold": gold, "prediction": prediction, "score": score}


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
