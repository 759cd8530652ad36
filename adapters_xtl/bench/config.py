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
    method_config: dict[str, Any] = {}
    device: str | None = None
    seed: int = 0
    label: str = ""  # preset rows: which measure this row shows
    peak_flops: float | None = None  # filled by the parent from measure_peak_flops
    trim_texts: list[str] | None = None  # trimming corpus; None = the demo data (7 languages)

    def key(self) -> str:
        extras = [k for k, on in (("ckpt", self.grad_ckpt), ("compile", self.compile)) if on]
        if self.optimizer != "adamw":
            extras.append(self.optimizer)
        if self.embeddings != "full":
            extras.append(f"emb:{self.embeddings}")
        if self.attn != "sdpa":
            extras.append(f"attn:{self.attn}")
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
                device: str | None = None, method_config: dict | None = None) -> list[BenchConfig]:
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
                                        out.append(BenchConfig(shape=sh, method=m, quant=q, seq=s, batch=batch, steps=steps,
                                                               warmup=warmup, grad_ckpt=gc, optimizer=o, embeddings=e,
                                                               attn=a, compile=c, device=device,
                                                               method_config=method_config or {}))
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
    """SDPA (what load_backbone gets by default) vs eager attention, and torch.compile."""
    base = dict(shape=shape, method=method, batch=batch, seq=seq, steps=steps, warmup=warmup, device=str(device))
    rows = [("sdpa (default)", {}), ("eager attention", {"attn": "eager"}), ("sdpa + torch.compile", {"compile": True})]
    return [BenchConfig(**base, **over, label=label) for label, over in rows]
