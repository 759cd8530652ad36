"""What one bench row measures (`BenchConfig`, also the message a worker subprocess receives),
and the lists of them the CLI runs: the grid (`expand_grid`, `default_axes`) and the presets that
switch one memory or speed measure on at a time against a baseline (`memory_configs`,
`speed_configs`).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from ..errors import XtlError, did_you_mean
from ..trainer import TrainConfig

_TRAIN_DEFAULTS = {k: TrainConfig.model_fields[k].default for k in ("precision", "backbone_dropout", "module_dropout")}


class BenchConfig(BaseModel):
    """One measured configuration (also the message a worker subprocess receives)."""

    model_config = ConfigDict(extra="forbid")

    shape: str = "e5-small"
    method: str = "lora"
    quant: str = "none"
    seq: int = 128
    batch: int = 16
    steps: int = 3  # measured optimizer steps
    warmup: int = 1  # steps run before timing (lazy init, bnb repacking, compilation)
    grad_ckpt: bool = False
    optimizer: str = "adamw"
    embeddings: str = "full"
    attn: str = "sdpa"
    compile: bool = False
    # as the trainer trains by default (TrainConfig): precision fp32 | bf16 | auto (speed.py);
    # dropout of the frozen backbone / the module while training, None = as built
    precision: str = _TRAIN_DEFAULTS["precision"]
    backbone_dropout: float | None = _TRAIN_DEFAULTS["backbone_dropout"]
    module_dropout: float | None = _TRAIN_DEFAULTS["module_dropout"]
    method_config: dict[str, Any] = {}
    device: str | None = None
    seed: int = 0
    label: str = ""  # preset rows: which measure this row shows
    peak_flops: float | None = None  # filled by the parent from measure_peak_flops
    peak_flops_bf16: float | None = None  # CPU: the bf16 matmul peak, the MFU denominator of bf16 rows
    trim_texts: list[str] | None = None  # trimming corpus; None = the demo data (7 languages)

    def key(self) -> str:
        extras = [k for k, on in (("ckpt", self.grad_ckpt), ("compile", self.compile)) if on]
        if self.optimizer != "adamw":
            extras.append(self.optimizer)
        if self.embeddings != "full":
            extras.append(f"emb:{self.embeddings}")
        if self.attn != "sdpa":
            extras.append(f"attn:{self.attn}")
        if self.precision != _TRAIN_DEFAULTS["precision"]:
            extras.append(self.precision)
        for name, short in (("backbone_dropout", "bbdrop"), ("module_dropout", "moddrop")):
            v = getattr(self, name)
            if v != _TRAIN_DEFAULTS[name]:
                extras.append(f"{short}:{'built' if v is None else format(v, 'g')}")
        return "/".join([self.shape, self.method, self.quant, f"b{self.batch}xs{self.seq}"] + extras)


def default_axes(device: torch.device) -> dict:
    """Defaults: a few minutes on a small CPU; the full grid on a GPU."""
    if device.type == "cuda":
        return dict(shapes=["e5-small", "base", "large"], methods=["lora", "bottleneck"], quant=["none", "8bit", "4bit"],
                    seq=[128, 256, 384], batch=32, steps=10, warmup=2)
    return dict(shapes=["e5-small"], methods=["lora", "bottleneck"], quant=["none"], seq=[128], batch=8, steps=3, warmup=1)


def expand_grid(*, shapes: list[str], methods: list[str], quant: list[str], seq: list[int], batch: int, steps: int,
                warmup: int = 1, grad_ckpt: list[bool] = (False,), optimizer: list[str] = ("adamw",),
                embeddings: list[str] = ("full",), attn: list[str] = ("sdpa",), compile: list[bool] = (False,),
                device: str | None = None, method_config: dict | None = None, precision: list[str] | None = None,
                backbone_dropout: list[float | None] | None = None,
                module_dropout: list[float | None] | None = None) -> list[BenchConfig]:
    from ..backbone import QUANTIZATIONS
    from ..compress import OPTIMIZERS, parse_embeddings_mode
    from ..methods import method_names

    for m in methods:
        if m not in method_names():
            raise XtlError(f"unknown method {m!r}", where="--methods", fix=did_you_mean(m, method_names()))
    for q in quant:
        if q not in QUANTIZATIONS:
            raise XtlError(f"unknown quantization {q!r}", where="--quant", fix=did_you_mean(q, QUANTIZATIONS))
    for o in optimizer:
        if o not in OPTIMIZERS:
            raise XtlError(f"unknown optimizer {o!r}", where="--optimizer", fix=did_you_mean(o, OPTIMIZERS))
    for e in embeddings:
        parse_embeddings_mode(e)
    from ..speed import PRECISIONS

    for pr in precision or []:
        if pr not in PRECISIONS:
            raise XtlError(f"unknown precision {pr!r}", where="--precision", fix=did_you_mean(pr, PRECISIONS))
    step_axes = [dict(precision=pr, backbone_dropout=bd, module_dropout=md)
                 for pr in (precision or [_TRAIN_DEFAULTS["precision"]])
                 for bd in (backbone_dropout or [_TRAIN_DEFAULTS["backbone_dropout"]])
                 for md in (module_dropout or [_TRAIN_DEFAULTS["module_dropout"]])]
    out = []
    for sh in shapes:
        for m in methods:
            for q in quant:
                for s in seq:
                    for gc in grad_ckpt:
                        for o in optimizer:
                            for e in embeddings:
                                for a in attn:
                                    for c in compile:
                                        for st in step_axes:
                                            out.append(BenchConfig(shape=sh, method=m, quant=q, seq=s, batch=batch,
                                                                   steps=steps, warmup=warmup, grad_ckpt=gc, optimizer=o,
                                                                   embeddings=e, attn=a, compile=c, device=device,
                                                                   method_config=method_config or {}, **st))
    return out


def memory_configs(device: torch.device, *, shape: str = "large", method: str = "lora", batch: int = 32, seq: int = 128,
                   steps: int = 3, warmup: int = 1) -> list[BenchConfig]:
    """Baseline, each memory measure alone, and all together (XLM-R large + LoRA, 32 x 128)."""
    base = dict(shape=shape, method=method, batch=batch, seq=seq, steps=steps, warmup=warmup, device=str(device))
    cuda = device.type == "cuda"
    rows = [
        ("baseline", {}),
        ("gradient checkpointing", {"grad_ckpt": True}),
        ("8-bit AdamW", {"optimizer": "adamw8bit"}),
        ("paged 8-bit AdamW", {"optimizer": "paged_adamw8bit"}),
        ("trimmed vocabulary", {"embeddings": "trimmed"}),
        ("8-bit embeddings", {"embeddings": "8bit"}),
        ("4-bit embeddings", {"embeddings": "4bit"}),
        ("8-bit backbone", {"quant": "8bit"}),
        ("4-bit backbone", {"quant": "4bit"}),
        ("all: 4-bit + trimmed 4-bit embeddings + checkpointing + 8-bit optimizer",
         {"quant": "4bit", "embeddings": "trimmed+4bit", "grad_ckpt": True,
          "optimizer": "paged_adamw8bit" if cuda else "adamw8bit"}),
    ]
    return [BenchConfig(**base, **over, label=label) for label, over in rows]


def speed_configs(device: torch.device, *, shape: str = "e5-small", method: str = "lora", batch: int = 16, seq: int = 128,
                  steps: int = 3, warmup: int = 2) -> list[BenchConfig]:
    """The trainer's defaults, then each step measure alone against the old step (fp32, dropout
    as built): bf16 autocast, no backbone dropout, no module dropout, both; eager attention and
    torch.compile against the default."""
    base = dict(shape=shape, method=method, batch=batch, seq=seq, steps=steps, warmup=warmup, device=str(device))
    old = {"precision": "fp32", "backbone_dropout": None, "module_dropout": None}
    rows = [("trainer defaults", {}),
            ("fp32, dropout as built (before issue 18)", old),
            ("bf16 autocast, dropout as built", {**old, "precision": "bf16"}),
            ("fp32, no backbone dropout", {**old, "backbone_dropout": 0.0}),
            ("fp32, no module dropout", {**old, "module_dropout": 0.0}),
            ("fp32, no dropout", {**old, "backbone_dropout": 0.0, "module_dropout": 0.0}),
            ("bf16, no dropout", {**old, "precision": "bf16", "backbone_dropout": 0.0, "module_dropout": 0.0}),
            ("eager attention", {"attn": "eager"}),
            ("sdpa + torch.compile", {"compile": True})]
    return [BenchConfig(**base, **over, label=label) for label, over in rows]


def bf16_rows_possible(precisions: list[str] | None, presets: bool) -> bool:
    """Whether a run may have bf16 rows (then the CPU's bf16 matmul peak is measured too)."""
    return presets or any(p != "fp32" for p in (precisions or [_TRAIN_DEFAULTS["precision"]]))
