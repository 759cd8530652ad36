"""A training checkpoint as one unit: one file, replaced atomically, or nothing.

Resuming needs the trainable weights, the best-so-far weights, the optimizer and scheduler state,
the counters and every random generator, all from the *same* step. They used to be two files
written one after the other (`last.safetensors`, then `trainer_state.pt`): a kill between the
two paired step-k weights with a step-j optimizer and the resumed run diverged without a word.
Here everything goes into `checkpoint.pt`, written to a temp file and renamed over the old one
(`io.atomic_write_with`), so a reader sees the previous checkpoint or the new one, never a mix.

The random state saved is Python's, NumPy's, torch's CPU generator and, when CUDA has been used
in this process, every CUDA device's generator (dropout on a GPU draws from those), so a resumed
run draws the same dropout masks an uninterrupted one would.

Loading is `torch.load(weights_only=True)`: tensors and plain containers only, no pickled code.
A checkpoint of another run (different settings, data size or parameters: `run_key`), an older
format, or an unreadable file is ignored with a note, and training starts from step 0, which is
always correct, only slower. The folder is locked while a trainer uses it (`LOCK`), so two
trainers never write one checkpoint.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import TMP_PREFIX, atomic_write_with

CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"
FORMAT = 2  # 1: last.safetensors + trainer_state.pt + best.safetensors (not one unit)
LEGACY_FILES = ("last.safetensors", "trainer_state.pt", "best.safetensors")

__all__ = ["CHECKPOINT", "FORMAT", "LOCK", "clean_leftovers", "load_checkpoint", "restore_rng", "rng_state",
           "save_checkpoint"]


def rng_state() -> dict[str, Any]:
    """Every generator training may draw from, as tensors and plain values (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    # only when CUDA was initialised here: asking earlier would start a CUDA context for nothing
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            warnings.warn(f"the checkpoint holds {len(cuda)} CUDA generator states, this machine has "
                          f"{torch.cuda.device_count()} devices: CUDA random state not restored, so dropout "
                          "after the resume differs from an uninterrupted run", stacklevel=2)
        else:
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` (tensors and plain containers) as the folder's one checkpoint file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT
    atomic_write_with(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))
    for name in LEGACY_FILES:  # a format-1 checkpoint left here would only confuse a reader
        (folder / name).unlink(missing_ok=True)
    return path


def load_checkpoint(folder: Path, run_key: str) -> dict[str, Any] | None:
    """The folder's checkpoint if it belongs to this run (`run_key`), else None (start over)."""
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        if any((Path(folder) / n).exists() for n in LEGACY_FILES):
            warnings.warn(f"{folder}: a checkpoint of an older format (two files, not one unit) is ignored; "
                          "training starts from step 0", stacklevel=2)
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged on disk: starting over is correct, resuming from it would not be
        warnings.warn(f"{path}: unreadable checkpoint ignored ({type(e).__name__}: {str(e)[:200]}); "
                      "training starts from step 0", stacklevel=2)
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("run_key") != run_key:
        return None
    return state


def clean_leftovers(folder: Path) -> list[Path]:
    """Remove temp files of checkpoint writes a kill interrupted (call it holding the folder lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX) and p.name.endswith(CHECKPOINT)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone
