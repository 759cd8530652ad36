"""Parallel-sentence retrieval (Tatoeba; BUCC-style mining in the catalog issue): no training.

Both sides are embedded by mean-pooling the hidden states of one layer; each sentence's nearest
neighbour by cosine on the other side must be its translation. The default layer is 7/12 of the
depth (layer 14 of 24 for XLM-R large, jiant's choice; middle layers align languages best).
"""

from __future__ import annotations

import torch

from .. import metrics
from . import register_format
from .base import Format, length_bucketed_batches, pad_sequences, pool, to_device


def default_layer(num_layers: int) -> int:
    return max(1, round(num_layers * 7 / 12))


@torch.inference_mode()
def embed(model, texts: list[str], *, layer: int | None, max_length: int = 128, batch_size: int = 32) -> torch.Tensor:
    """Mean-pooled hidden states of `layer` (0 = embeddings) for each text, in input order."""
    tok = model.tokenizer
    enc = tok([t or "" for t in texts], truncation=True, max_length=max_length)["input_ids"]
    L = default_layer(model.num_layers) if layer is None else layer
    out = torch.zeros(len(texts), model.hidden_size)
    for b in length_bucketed_batches([len(e) for e in enc], batch_size, seed=None):
        ids, mask = pad_sequences([enc[i] for i in b], tok.pad_token_id)
        batch = to_device({"input_ids": ids, "attention_mask": mask}, model.device)
        hs = model.encode(batch, output_hidden_states=True).hidden_states[L]
        out[b] = pool(hs.float(), batch["attention_mask"], "mean").cpu()
    return out


class Retrieval(Format):
    name = "retrieval"
    trainable = False

    def make_head(self, spec, hidden_size):
        return None

    def head_config(self, spec) -> dict:
        return {"kind": "none"}

    def score_pairs(self, model, src: list[str], tgt: list[str], spec, batch_size: int = 32) -> dict[str, float]:
        if len(src) != len(tgt):
            from ..errors import XtlError

            raise XtlError(
                f"retrieval sides differ in length: {len(src)} vs {len(tgt)} lines",
                where=spec.name,
                fix="the two files must be line-aligned translations",
            )
        a = embed(model, src, layer=spec.retrieval_layer, max_length=spec.max_length, batch_size=batch_size)
        b = embed(model, tgt, layer=spec.retrieval_layer, max_length=spec.max_length, batch_size=batch_size)
        both = metrics.retrieval_accuracy_both(a.numpy(), b.numpy())
        return {
            "accuracy": 100.0 * (both["src2tgt"] + both["tgt2src"]) / 2,
            "accuracy_xx2en": 100.0 * both["src2tgt"],
            "accuracy_en2xx": 100.0 * both["tgt2src"],
        }


register_format(Retrieval())
