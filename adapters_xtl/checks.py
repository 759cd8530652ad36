"""Checks of user input at the edges (command-line options, recipe fields), run before any work.

Each check raises one `XtlError` that names the option or field (`where`), the value and the fix,
so a command never loads a backbone, trains or registers anything on an impossible value, and
never fails half-done (a results path that is a folder is found before the module is
registered, not after). The checks only read: they create no file and no folder.

The rules themselves live with the code they protect and are reused here, not copied: module
names are the registry's (`store.layout.check_name`), training settings are `TrainConfig`'s,
quantizations and backbone names are `backbone.py`'s.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import XtlError


def message_of(e: XtlError) -> str:
    """An XtlError's message without its `where: ` prefix and `fix:` line (to re-raise it
    under another `where`)."""
    text = str(e).split("\n  fix:")[0]
    return text[len(e.where) + 2:] if e.where and text.startswith(f"{e.where}: ") else text


# ------------------------------------------------------------------------------------ numbers
def at_least(value: Any, minimum: int, where: str, fix: str | None = None) -> None:
    """An integer option or field that must be >= minimum (None: not given, nothing to check)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise XtlError(f"must be an integer >= {minimum}, got {value!r}", where=where,
                       fix=fix or f"give a whole number >= {minimum}")
    if value < minimum:
        raise XtlError(f"must be at least {minimum}, got {value!r}", where=where,
                       fix=fix or f"give a whole number >= {minimum}")


def positive_number(value: Any, where: str, fix: str | None = None) -> None:
    """A finite number > 0 (a rate, a time limit); NaN and infinity are refused."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise XtlError(f"must be a finite number > 0, got {value!r}", where=where, fix=fix or "give a number > 0")


# training settings the command line and recipes set directly, with what each must be; TrainConfig
# says the same (and more) when it is built, these say it with the option's or field's own name
TRAIN_RULES: dict[str, tuple[str, str]] = {
    "steps": ("count", "optimizer steps, e.g. 200"),
    "batch_size": ("count", "examples per optimizer step, e.g. 16"),
    "grad_accum": ("count", "micro-batches per step, e.g. 1"),
    "eval_every": ("count", "steps between dev evaluations, e.g. 50"),
    "eval_examples": ("count", "English dev examples for checkpoint selection, or leave it out for all"),
    "max_train_examples": ("count", "training examples at most, or leave it out for all"),
    "log_every": ("count", "steps between loss lines, e.g. 10"),
    "checkpoint_every": ("count", "steps between checkpoints, or leave it out (every eval)"),
    "lr": ("rate", "a learning rate > 0, e.g. 1e-3 for adapters"),
    "head_lr": ("rate", "a learning rate > 0 for the head, or leave it out"),
    "weight_decay": ("nonnegative", "AdamW's weight decay >= 0, e.g. 0.01"),
    "max_grad_norm": ("nonnegative", "the gradient-norm clip >= 0 (0: no clipping), e.g. 1.0"),
    "warmup_ratio": ("fraction", "the share of steps with a rising learning rate, from 0 to 1, e.g. 0.1"),
}


def train_setting(key: str, value: Any, where: str) -> None:
    """One training setting against TRAIN_RULES (settings without a rule are left to TrainConfig)."""
    rule = TRAIN_RULES.get(key)
    if rule is None or value is None:
        return
    kind, what = rule
    if kind == "count":
        at_least(value, 1, where, fix=f"{key} is {what}")
    elif kind == "rate":
        positive_number(value, where, fix=f"{key} is {what}")
    else:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        low, high = (0, 1) if kind == "fraction" else (0, math.inf)
        if not number or not low <= value <= high:
            rule_text = "from 0 to 1" if kind == "fraction" else ">= 0"
            raise XtlError(f"must be a finite number {rule_text}, got {value!r}", where=where, fix=f"{key} is {what}")


# ------------------------------------------------------------------------------------ names
def module_name(name: Any, where: str) -> str:
    """A name that becomes a folder (a registry module, a checkpoint folder): the registry's rule."""
    from .store.layout import check_name

    try:
        return check_name(name)
    except XtlError as e:
        raise XtlError(f"{name!r} is not a safe module name (it becomes a folder name): {message_of(e)}",
                       where=where, fix=e.fix) from None


def module_ref(ref: str, where: str) -> tuple[str, str | None]:
    """`NAME[@VERSION]` with a safe name: (name, version or None)."""
    name, _, version = str(ref).partition("@")
    module_name(name, where)
    return name, (version or None)


# ------------------------------------------------------------------------------------ backbone
def quantization(value: str, where: str) -> None:
    from .backbone import QUANTIZATIONS
    from .errors import did_you_mean

    if value not in QUANTIZATIONS:
        raise XtlError(f"unknown quantization {value!r}", where=where, fix=did_you_mean(str(value), QUANTIZATIONS))


def embeddings(value: str, where: str) -> None:
    """A word-embeddings mode (compress.EMBEDDING_MODES)."""
    from .compress import EMBEDDING_MODES
    from .errors import did_you_mean

    if value not in EMBEDDING_MODES:
        raise XtlError(f"unknown embeddings mode {value!r}", where=where, fix=did_you_mean(str(value), EMBEDDING_MODES))


def backbone(name: str, where: str) -> None:
    """A backbone that can be loaded: a known name, a folder with a config.json, or a Hub id.
    Known names are not resolved (that would build xlmr-e5-small)."""
    from .backbone import KNOWN_BACKBONES, resolve_backbone

    if not isinstance(name, str) or not name:
        raise XtlError(f"backbone must be a name, a folder or a Hub id, got {name!r}", where=where,
                       fix=", ".join(KNOWN_BACKBONES))
    if name in KNOWN_BACKBONES:
        return
    try:
        resolve_backbone(name)
    except XtlError as e:
        raise XtlError(message_of(e), where=where, fix=e.fix) from None


def device(value: str | None, where: str = "--device") -> None:
    """A torch device string that exists on this machine (cpu, cuda, cuda:N, mps)."""
    if value is None:
        return
    import torch

    fix = "cpu, cuda, cuda:N (N below the number of GPUs here) or mps; leave it out to pick one"
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise XtlError(f"unknown device {value!r}", where=where, fix=fix) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index or 0) >= n:
            raise XtlError(f"device {value!r} is not on this machine ({n} CUDA device{'s' if n != 1 else ''})",
                           where=where, fix=fix)
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise XtlError(f"device {value!r} is not on this machine", where=where, fix=fix)
    elif dev.type != "cpu":
        raise XtlError(f"device {value!r} is not supported", where=where, fix=fix)


# ------------------------------------------------------------------------------------ paths
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable_folder(folder: Path) -> bool:
    """Can files be created in this existing folder? Probed with an unnamed temporary file
    (O_TMPFILE where the system has it): nothing appears in the folder."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def output_file(path: Path | str | None, where: str) -> None:
    """A file the command will write or append to: not a folder, under a folder that exists or
    can be made, writable."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise XtlError(f"{str(path)!r} is a folder, not a file", where=where, fix="name a file (inside that folder, say)")
    _creatable(path.parent, where, f"the folder of {str(path)!r}")
    if path.exists() and not os.access(path, os.W_OK):
        raise XtlError(f"{str(path)!r} is not writable", where=where, fix="name a file you can write")


def output_dir(path: Path | str | None, where: str) -> None:
    """A folder the command will create files in: a folder or nothing yet, creatable, writable."""
    if path is None:
        return
    _creatable(Path(path).expanduser(), where, repr(str(path)))


def _creatable(folder: Path, where: str, label: str) -> None:
    base = _nearest_existing(folder.absolute())
    if not base.is_dir():
        raise XtlError(f"{label} cannot be a folder: {str(base)!r} is a file", where=where,
                       fix="choose a path that does not go through a file")
    if not _writable_folder(base):
        raise XtlError(f"{label} is not writable (nothing can be created in {str(base)!r})", where=where,
                       fix="choose a folder you can write to")


def input_dir(path: Path | str | None, where: str) -> None:
    """A folder the command reads from: it must exist and be a folder."""
    if path is None:
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise XtlError(f"folder {str(p)!r} does not exist", where=where, fix="give an existing folder")
    if not p.is_dir():
        raise XtlError(f"{str(p)!r} is a file, not a folder", where=where, fix="give a folder")


def registry_root(path: Path | str | None, where: str, *, write: bool) -> None:
    """The registry folder ($XTL_REGISTRY or ./registry when not given): a folder or nothing yet;
    writable when the command registers or updates a module."""
    if path is None:
        path = os.environ.get("XTL_REGISTRY") or "registry"
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise XtlError(f"registry {str(p)!r} is a file, not a folder", where=where,
                       fix="point --registry (or $XTL_REGISTRY) at a registry folder, or at a new one")
    if write:
        output_dir(p, where)
