"""What a training step computes in and which dropout it draws: the two knobs that change a
step's cost without changing what is trained.

- **Precision** (`fp32 | bf16 | auto`): bf16 autocast around the forward pass; parameters, their
  gradients, the optimizer state and the loss stay fp32 (autocast casts the matmul inputs only).
  CPUs with AVX512-BF16 or AMX run bf16 matmuls about 2x faster than fp32; elsewhere bf16 is
  emulated and slower, so `auto` picks bf16 only where the hardware has it (CUDA with bf16,
  or such a CPU).
- **Dropout** (`backbone_dropout`, `module_dropout`): the frozen backbone's dropout (embeddings,
  attention probabilities, attention and FFN outputs) and the trained module's (peft's
  `lora_dropout` on the input of every adapted Linear, the bottleneck's own) set for the training
  steps and put back afterwards (the backbone is shared). A dropout of 0 draws no random mask at
  all: on CPU `bernoulli_` was 18% of a LoRA step, and SDPA with dropout cannot use the fused
  attention kernel.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "auto")
_SLOT_PREFIX = "xtl_"  # model.slot_name(): a module's own submodules carry its slot in their path


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo),
    the only CPUs where bf16 autocast pays; oneDNN's own check is the fallback off Linux."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
        return " avx512_bf16" in flags or " amx_bf16" in flags
    except OSError:
        pass
    try:  # pragma: no cover - not Linux
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover
        return False


def bf16_is_fast(device: torch.device | str) -> bool:
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return dev.type == "cpu" and cpu_has_fast_bf16()


def cpu_auto_bf16() -> bool:
    """Whether `auto` takes bf16 on this CPU: where it is fast, unless `XTL_CPU_BF16=0` (`=1`
    forces it). bf16 kernels round differently on AMX and AVX512-BF16 machines, so a result meant
    to match another CPU's (or a tiny-model test threshold) is run in fp32."""
    forced = os.environ.get("XTL_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return cpu_has_fast_bf16()


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of a training/eval forward, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        dev = torch.device(device)
        on = cpu_auto_bf16() if dev.type == "cpu" else bf16_is_fast(dev)
        return torch.bfloat16 if on else None
    from .errors import XtlError, did_you_mean

    raise XtlError(f"unknown precision {precision!r}", where="precision", fix=did_you_mean(precision, PRECISIONS))


def autocast(precision: str, device: torch.device | str):
    """`with autocast(cfg.precision, device): out = model(batch)` (the forward only)."""
    dev = torch.device(device)
    dtype = autocast_dtype(precision, dev)
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def attention_backend(precision: str, device: torch.device | str):
    """Around a whole micro-step (forward and backward): on CPU, bf16 attention goes through
    SDPA's math backend (bf16 matmuls). The fused CPU flash kernel's bf16 backward took 4x its fp32
    time (31% of a bf16 LoRA step); the math backend made the step 1.17x faster. The backward is
    inside too, so gradient checkpointing recomputes with the backend the forward used."""
    dev = torch.device(device)
    if dev.type != "cpu" or autocast_dtype(precision, dev) is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def to_fp32(out):
    """Floating tensors of a forward's output back to fp32, so the loss is computed in fp32."""
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() and out.dtype != torch.float32 else out
    if isinstance(out, dict):
        return type(out)({k: to_fp32(v) for k, v in out.items()}) if type(out) is dict else \
            out.__class__(**{k: to_fp32(v) for k, v in out.items()})
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(to_fp32(v) for v in out))
    if isinstance(out, (list, tuple)):
        return type(out)(to_fp32(v) for v in out)
    return out


def _is_module_part(name: str) -> bool:
    return any(part.startswith(_SLOT_PREFIX) for part in name.split("."))


def dropout_sites(model: torch.nn.Module) -> dict[str, list]:
    """The backbone's and the module's dropout sites: (module, attribute) pairs."""
    sites: dict[str, list] = {"backbone": [], "module": []}
    for name, mod in model.named_modules():
        side = "module" if _is_module_part(name) else "backbone"
        if isinstance(mod, torch.nn.Dropout):
            sites[side].append((mod, "p"))
        elif isinstance(getattr(mod, "dropout_prob", None), float):  # SDPA attention: dropout_p in the call
            sites[side].append((mod, "dropout_prob"))
    return sites


@contextlib.contextmanager
def dropout_overrides(model: torch.nn.Module, *, backbone: float | None = None, module: float | None = None):
    """Set the dropout probability of the backbone's and/or the module's sites (None: leave them
    as built) for the duration; the old values come back afterwards, also on error."""
    sites = dropout_sites(model)
    saved = []
    try:
        for side, p in (("backbone", backbone), ("module", module)):
            if p is None:
                continue
            for mod, attr in sites[side]:
                saved.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, float(p))
        yield
    finally:
        for mod, attr, value in reversed(saved):
            setattr(mod, attr, value)
