"""Module weights on disk: safetensors only, so loading a module never runs code.

A state dict from training can hold views, non-contiguous or GPU tensors; safetensors refuses
aliased storage, so tensors are normalised once here before they are written. Bytes are read back
only after the registry has checked their sha256 against the manifest.

Other libraries' `.bin` files are pickles; `load_pickled_tensors` reads one with
`torch.load(weights_only=True)` and refuses anything else. Its message never repeats torch's
advice to retry with `weights_only=False` (or to allow-list globals): that advice runs whatever
code the file carries, which is exactly what the refusal is for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import XtlError
from ..io import atomic_write_bytes

__all__ = ["check_file", "from_bytes", "load_pickled_tensors", "pickle_refusal_reason", "prepare", "write_weights"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
# phrases of torch's advice to load the file unsafely; a reason holding one is replaced
_UNSAFE_ADVICE = ("weights_only", "can still be loaded", "add_safe_globals", "safe_globals", "trust")


def prepare(tensors: Any, where: str = "Registry.save(tensors=...)") -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached, no shared storage (safetensors refuses aliased tensors)."""
    if not isinstance(tensors, Mapping):
        raise XtlError(f"weights must be a dict of name -> torch.Tensor, got {type(tensors).__name__}", where=where,
                       fix="pass module.state_dict() (or the method's trainable-state dict)")
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(key, str) or not key:
            raise XtlError(f"tensor name {key!r} is not a non-empty string", where=where,
                           fix="use state-dict style string keys")
        if not isinstance(value, torch.Tensor):
            raise XtlError(f"tensors[{key!r}] is a {type(value).__name__}, not a torch.Tensor", where=where,
                           fix="store only tensors in the weights dict; put other values in the manifest "
                           "(method_config / head)")
        t = value.detach().to("cpu").contiguous()
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:  # a view of a tensor already in the dict
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            seen.add(ptr)
        out[key] = t
    return out


def write_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write prepared tensors atomically (`safetensors.torch.save_file` would make the file 0600)."""
    from safetensors.torch import save

    atomic_write_bytes(path, save(tensors, metadata=metadata))


def from_bytes(data: bytes, where: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file already read (and hash-checked) by the caller."""
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error types
        raise XtlError(f"{Path(where).name} is not a valid safetensors file ({e})", where=where,
                       fix="delete this version folder and retrain or re-pull the module") from None


def check_file(path: Path, where: str) -> None:
    """Refuse a file that is not safetensors (reads the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as e:  # safetensors raises its own error types
        raise XtlError(f"{path.name} from the Hub is not a valid safetensors file ({e})", where=where,
                       fix="push the module again") from None


def pickle_refusal_reason(error: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, without torch's advice to load it unsafely."""
    text = _ANSI.sub("", str(error))
    found = _GLOBAL.search(text)
    if found:
        return f"it needs {found.group(1)} to unpickle, which is code, not a tensor"
    for line in text.splitlines():
        line = line.strip()
        if line and not any(phrase in line for phrase in _UNSAFE_ADVICE):
            return line[:200]
    return f"{type(error).__name__}: not a plain pickle of tensors"


def load_pickled_tensors(path: Path, where: str | None = None) -> dict[str, torch.Tensor]:
    """A flat dict name -> tensor from a torch `.bin`, loaded with `weights_only=True`; nothing else.

    A pickle that needs code, or holds anything but tensors, is refused; nothing from it runs.
    """
    where = where or str(path)
    fix = ("adapters_xtl never loads pickles that need code; re-save the adapter with safetensors "
           "(peft: save_pretrained(..., safe_serialization=True); adapters: save_adapter(..., use_safetensors=True))")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError and friends: refuse, never fall back to full unpickling
        raise XtlError(f"refusing {Path(path).name}: it cannot be loaded as plain tensors with "
                       f"torch.load(weights_only=True) ({pickle_refusal_reason(e)})", where=where, fix=fix) from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise XtlError(f"refusing {Path(path).name}: it is not a flat dict of name -> tensor", where=where, fix=fix)
    return {k: v.contiguous() for k, v in data.items()}
