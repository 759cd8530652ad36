"""Task similarity and representation probes for the studies: sentence embeddings of several
layers in one pass, task texts, two representation views of how similar two tasks' English data
look to the backbone, and how similar two trained modules' weight changes are.

Representation similarity (the two tasks' examples are *not* paired, so paired measures such as
CKA do not apply directly):

* :func:`centroid_cosine`: cosine between the mean-pooled representation averaged over each
  task's examples (Vu et al. 2020, "Exploring and Predicting Transferability across NLP Tasks",
  TextEmb).  Raw sentence embeddings of a transformer share a large common direction
  (anisotropy), so raw centroid cosines sit close to 1 for every pair; pass ``center`` (the mean
  of all the tasks' centroids in a study) to compare the task-specific parts instead.
* :func:`covariance_similarity`: cosine between the two tasks' feature covariance matrices,
  ``<Cx, Cy>_F / (||Cx||_F ||Cy||_F)``: the same geometry comparison linear CKA makes
  (``||X^T Y||_F^2`` with rows paired), done on second moments so no pairing is needed.

Weight-delta similarity (:func:`module_deltas`, :func:`delta_similarity`): the change a module
makes to each adapted layer, flattened, compared by cosine.  LoRA: ``dW = B A * alpha / r`` per
adapted Linear.  Bottleneck: ``W_up W_down`` per adapter (the adapter's linear part, its
non-linearity ignored; raw bottleneck weights would compare mostly their random initialisation).
Caveat: two LoRA modules trained with the same seed start from the same random ``A``, so their
``B A`` live in related subspaces and their cosine is comparable across pairs of one study (all
modules of a recipe share its seeds); modules of different seeds have nearly orthogonal random
subspaces and a cosine near 0 whatever their tasks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapters_xtl.errors import XtlError
from adapters_xtl.model import Encoder  # re-exported: the studies embed text with it

__all__ = [
    "Encoder",
    "centroid_cosine",
    "covariance_similarity",
    "delta_similarity",
    "embed_layers",
    "module_deltas",
    "task_texts",
]


def resolve_layers(layers: Sequence[Any] | None, num_layers: int) -> list[int]:
    """Layer names -> indices into hidden_states (0 = embeddings): ``mid`` (7/12 of the depth, the
    retrieval default), ``last``, or an integer (negative counts from the top)."""
    from adapters_xtl.formats.retrieval import default_layer

    out = []
    for layer in layers or ["mid"]:
        if layer in (None, "mid"):
            idx = default_layer(num_layers)
        elif layer == "last":
            idx = num_layers
        elif isinstance(layer, int) or (isinstance(layer, str) and re.fullmatch(r"-?\d+", layer)):
            idx = int(layer)
            idx = num_layers + 1 + idx if idx < 0 else idx
        else:
            raise XtlError(f"unknown layer {layer!r}", where="study.layers", fix="use mid, last or an integer")
        if not 0 <= idx <= num_layers:
            raise XtlError(f"layer {layer!r} is outside 0..{num_layers}", where="study.layers")
        if idx not in out:
            out.append(idx)
    return out


@torch.inference_mode()
def embed_layers(backbone, texts: Sequence[str], layers: Sequence[int], *, max_length: int = 128,
                 batch_size: int = 32, pooling: str = "mean") -> dict[int, np.ndarray]:
    """Mean-pooled (or <s>) hidden states of each of ``layers`` for every text, in one forward
    pass per batch, with whatever modules are active in the backbone.  ``{layer: (n, hidden)}``."""
    from adapters_xtl.formats.base import length_bucketed_batches, pad_sequences, pool, to_device

    tok = backbone.tokenizer
    was_training = backbone.model.training
    backbone.model.eval()
    try:
        enc = tok([t or "" for t in texts], truncation=True, max_length=max_length)["input_ids"]
        out = {L: torch.zeros(len(texts), backbone.hidden_size) for L in layers}
        for b in length_bucketed_batches([len(e) for e in enc], batch_size, seed=None):
            ids, mask = pad_sequences([enc[i] for i in b], tok.pad_token_id)
            batch = to_device({"input_ids": ids, "attention_mask": mask}, backbone.device)
            hs = backbone.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                output_hidden_states=True).hidden_states
            for L in layers:
                out[L][b] = pool(hs[L].float(), batch["attention_mask"], pooling).cpu()
    finally:
        backbone.model.train(was_training)
    return {L: v.numpy().astype(np.float64) for L, v in out.items()}


# --------------------------------------------------------------------------- task texts


def example_text(ex: Mapping[str, Any]) -> str:
    """One string per example of any format: the text roles it has, in reading order."""
    parts = []
    for role in ("context", "question", "text", "text_pair"):
        v = ex.get(role)
        if isinstance(v, str) and v.strip():
            parts.append(v.strip())
    toks = ex.get("tokens")
    if isinstance(toks, (list, tuple)) and toks:
        parts.append(" ".join(str(t) for t in toks))
    choices = ex.get("choices")
    if isinstance(choices, (list, tuple)) and choices and not parts:
        parts.append(" ".join(str(c) for c in choices if c))
    if not parts:
        for k, v in ex.items():
            if isinstance(v, str) and k not in ("id", "label") and v.strip():
                parts.append(v.strip())
    return " ".join(parts)


def task_texts(spec, data_dir: Path | None, n: int, *, seed: int = 0) -> list[str]:
    """Up to ``n`` English training texts of a task (its ``train_task``'s when it has one), a
    seeded random sample."""
    import random

    from adapters_xtl.data import load_examples
    from adapters_xtl.tasks import get_task

    train = get_task(spec.train_task) if spec.train_task else spec
    if train.mixture:
        members = [get_task(m) for m in train.mixture]
        per = max(1, n // len(members))
        return [t for m in members for t in task_texts(m, data_dir, per, seed=seed)]
    split = "train" if ("train" in train.splits or train.id_split) else train.eval_split
    exs = load_examples(train, split, train.train_language, data_dir)
    texts = [t for t in (example_text(e) for e in exs) if t]
    if not texts:
        raise XtlError(f"task {train.name!r} has no text to embed", where=train.file or train.name)
    rng = random.Random(seed)
    if len(texts) > n:
        texts = rng.sample(texts, n)
    return texts


# --------------------------------------------------------------------------- representation similarity


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return math.nan
    return float(np.clip(a.ravel() @ b.ravel() / (na * nb), -1.0, 1.0))


def centroid_cosine(X: Any, Y: Any, center: Any | None = None) -> float:
    """Cosine between the mean rows of X and Y (after subtracting ``center`` from both)."""
    mx, my = np.asarray(X, float).mean(axis=0), np.asarray(Y, float).mean(axis=0)
    if center is not None:
        c = np.asarray(center, float)
        mx, my = mx - c, my - c
    return _cos(mx, my)


def covariance_similarity(X: Any, Y: Any) -> float:
    """Cosine between the feature covariance matrices of X (n1 x d) and Y (n2 x d): 1 when the
    two samples spread the same way in representation space, whatever their sizes."""
    x, y = np.asarray(X, float), np.asarray(Y, float)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"X and Y need the same number of columns, got {x.shape} and {y.shape}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("covariance_similarity needs at least 2 rows on each side")
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    cx, cy = xc.T @ xc / (x.shape[0] - 1), yc.T @ yc / (y.shape[0] - 1)
    return _cos(cx, cy)


# --------------------------------------------------------------------------- weight deltas


def module_deltas(tensors: Mapping[str, torch.Tensor], method: str, method_config: Mapping[str, Any] | None = None
                  ) -> dict[str, torch.Tensor]:
    """Per adapted layer, the weight change a saved module makes (see the module docstring).

    ``tensors`` are a registry module's weights (``module.*`` keys; ``head.*`` are ignored).
    """
    cfg = dict(method_config or {})
    mod = {k[len("module."):] if k.startswith("module.") else k: v for k, v in tensors.items()
           if not k.startswith("head.") and not k.startswith("heads.") and not k.startswith("fusion.")}
    out: dict[str, torch.Tensor] = {}
    if method == "lora":
        for k, a in mod.items():
            if ".lora_A." not in k:
                continue
            b = mod.get(k.replace(".lora_A.", ".lora_B."))
            if b is None:
                continue
            layer = k.split(".lora_A.")[0]
            out[layer] = (b.float() @ a.float()) * lora_scale(cfg, layer, rank=a.shape[0])
    elif method == "bottleneck":
        for k, down in mod.items():
            if ".adapter_down." not in k or not k.endswith("weight"):
                continue
            prefix = k.split(".adapter_down.")[0]
            ups = [v for kk, v in mod.items() if kk.startswith(prefix + ".adapter_up") and kk.endswith("weight")]
            if len(ups) != 1 or ups[0].shape[1] != down.shape[0]:
                continue
            out[prefix] = ups[0].float() @ down.float()
    else:
        raise XtlError(f"no weight-delta view for method {method!r}", where="similarity study",
                       fix="use lora or bottleneck modules")
    if not out:
        raise XtlError(f"found no {method} layers in the module's weights", where="similarity study")
    return out


def lora_scale(cfg: Mapping[str, Any], layer: str, rank: int) -> float:
    """peft's scaling of one layer's B A: its alpha (``alpha_pattern`` matched as peft matches it)
    over its rank (read off the saved A, so ``rank_pattern`` holds), or over sqrt(rank) with rsLoRA.
    DoRA modules get the same low-rank direction update; their magnitude vectors rescale the whole
    weight and would need the backbone's own weights, so they are left out of this view."""
    from peft.utils.other import get_pattern_key

    alphas = dict(cfg.get("alpha_pattern") or {})
    key = get_pattern_key(list(alphas), layer)
    alpha = float(alphas.get(key, cfg.get("alpha", 16)))
    return alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)


def delta_similarity(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Cosine of two modules' deltas: ``global`` (all layers flattened into one vector) and
    ``per_layer`` (the mean of the per-layer cosines), over the layers both adapt."""
    common = sorted(set(a) & set(b))
    if not common:
        raise XtlError("the two modules adapt no common layer", where="similarity study",
                       fix="compare modules of one method and target_modules")
    va = torch.cat([a[k].reshape(-1) for k in common]).double().numpy()
    vb = torch.cat([b[k].reshape(-1) for k in common]).double().numpy()
    per = [_cos(a[k].double().numpy(), b[k].double().numpy()) for k in common]
    per = [p for p in per if math.isfinite(p)]
    return {"global": _cos(va, vb), "per_layer": float(np.mean(per)) if per else math.nan, "layers": len(common)}
