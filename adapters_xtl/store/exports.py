"""`xtl registry export`: a folder written whole, marked as ours, and never replacing anything else.

An export is a folder outside the registry that peft or adapters loads (`store.convert` writes
its contents). Two guarantees sit around that:

- **Only our own folders are replaced.** Every export holds `MARKER` (`.xtl-export.json`: module,
  version, format, date). `overwrite=True` replaces an existing non-empty folder only when it holds
  the marker, that is when an earlier export wrote it; anything else is refused and left untouched.
- **A killed export is found.** The export is staged next to its target in
  `.tmp-<token>-export-<name>/` and renamed into place. Before the stage is made, the registry
  records it in `<root>/.exports/<token>.json` (stage, target, writer's pid and host); the record
  is removed when the export finishes or fails. A record that outlives its writer means a kill:
  `xtl registry verify` reports the stage and `--fix` deletes it (`store.verify`). The record
  never names anything but a stage whose folder name matches its token, so a damaged record
  cannot make `--fix` delete anything else.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import XtlError
from ..io import TMP_PREFIX, atomic_write_json, fsync_dir
from .convert import export_module
from .hub import check_repo_id
from .interop import FORMATS
from .layout import write_owner
from .registry import Registry

MARKER = ".xtl-export.json"
JOURNAL_DIR = ".exports"
STAGE_INFIX = "-export-"
_TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")

__all__ = ["JOURNAL_DIR", "MARKER", "STAGE_INFIX", "PendingExport", "export", "pending_exports", "read_marker",
           "remove_pending"]


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a folder an export wrote, or None (no marker, or not one of ours)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == "adapters_xtl" else None


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, or a non-empty folder that is not an earlier export."""
    if not out.exists():
        if out.is_symlink():
            raise XtlError(f"{out} is a broken symbolic link", where="OUT_DIR", fix="remove the link or choose "
                           "another path")
        return
    if not out.is_dir():
        raise XtlError(f"{out} exists and is not a folder", where="OUT_DIR", fix="choose another path")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise XtlError(f"{out} exists and is not empty", where="OUT_DIR",
                       fix="choose a new or empty folder, or pass --overwrite to replace a folder that an earlier "
                       "`xtl registry export` wrote")
    if read_marker(out) is None:
        raise XtlError(
            f"{out} was not written by `xtl registry export` (it has no {MARKER}); --overwrite replaces only "
            "earlier exports, so nothing was deleted",
            where="OUT_DIR",
            fix="choose a new or empty folder, or move what that folder holds away yourself",
        )


def export(
    registry: Registry,
    name: str,
    out_dir: str | Path,
    *,
    fmt: str,
    version: str | None = None,
    base_model: str | None = None,
    adapter_name: str | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> Path:
    """Export module `name` (default: latest version) to `out_dir` for peft or adapters; return the folder.

    `fmt="hub"` writes the folder `xtl registry push` would upload (peft / adapters files at the
    root, the card, our manifest and module beside; `repo_id` is the repo the card names), so a
    module can be inspected or uploaded by other means.

    `overwrite` replaces a non-empty `out_dir` only when an earlier export wrote it (see the module
    docstring); the old folder is kept until the new one is complete.
    """
    out = Path(out_dir).expanduser().absolute()
    if fmt not in (*FORMATS, "hub"):
        raise XtlError(f"unknown export format {fmt!r}", where="--format",
                       fix="use peft (LoRA, IA3), adapters (bottleneck) or hub (the folder a push uploads)")
    if fmt == "hub" and (base_model or adapter_name):
        raise XtlError("--base-model and --adapter-name are for --format peft/adapters", where="--format hub",
                       fix="leave them out: the hub folder names the module's own backbone and adapter")
    if repo_id and fmt != "hub":
        raise XtlError("--repo-id names the repo of a --format hub folder", where="--repo-id",
                       fix="add --format hub, or leave --repo-id out")
    if repo_id:
        repo_id = check_repo_id(repo_id)
    _check_target(out, overwrite)
    m = registry.manifest(name, version)  # an unknown module fails before anything is written
    token = uuid.uuid4().hex
    stage = out.parent / f"{TMP_PREFIX}{token}{STAGE_INFIX}{out.name[:100]}"
    journal = registry.root / JOURNAL_DIR / f"{token}.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(journal, {"stage": str(stage), "out": str(out), "module": m.name, "version": m.version,
                                "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage.mkdir()
        write_owner(stage)
        if fmt == "hub":
            done = _write_hub_folder(registry, m.name, m.version, stage / "export", repo_id=repo_id)
        else:
            done = export_module(registry, m.name, stage / "export", fmt=fmt, version=m.version,
                                 base_model=base_model, adapter_name=adapter_name)
        atomic_write_json(done / MARKER, {
            "written_by": "adapters_xtl", "module": m.name, "version": m.version, "format": fmt,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
        _check_target(out, overwrite)  # again: the folder may have changed while the export was written
        previous = None
        if out.exists() or out.is_symlink():
            previous = stage / "previous"
            os.rename(out, previous)
        try:
            os.rename(done, out)
        except BaseException:
            if previous is not None:
                os.rename(previous, out)  # put the earlier export back
            raise
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        journal.unlink(missing_ok=True)
    return out


def _write_hub_folder(registry: Registry, name: str, version: str, folder: Path, *, repo_id: str | None) -> Path:
    from .repo import write_repo

    m, tensors = registry.load(name, version)  # verifies every file
    folder.mkdir()
    write_repo(registry, m, tensors, folder, repo_id=repo_id)
    return folder


@dataclass(frozen=True)
class PendingExport:
    """One record in `<root>/.exports/`: an export that is running, or was killed."""

    record: Path
    stage: Path | None  # None when the record is unreadable or names something that is not its stage
    out: str
    pid: int | None
    host: str | None
    started: float | None


def pending_exports(root: Path) -> list[PendingExport]:
    """Every export record of the registry at `root` (running or killed), oldest first."""
    folder = Path(root) / JOURNAL_DIR
    if not folder.is_dir():
        return []
    out: list[PendingExport] = []
    for record in sorted(folder.iterdir()):
        if record.name.startswith(TMP_PREFIX):  # half-written record (atomic_write_json's temp file)
            out.append(PendingExport(record, None, "?", None, None, None))
            continue
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            stage = Path(data["stage"])
            ok = (record.suffix == ".json" and _TOKEN_RE.match(record.stem) is not None and stage.is_absolute()
                  and stage.name.startswith(f"{TMP_PREFIX}{record.stem}{STAGE_INFIX}"))
            out.append(PendingExport(record, stage if ok else None, str(data.get("out", "?")),
                                     int(data["pid"]), str(data["host"]), float(data["started"])))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            out.append(PendingExport(record, None, "?", None, None, None))
    return out


def remove_pending(entry: PendingExport) -> None:
    """Delete a killed export's stage (only a folder named for its record) and the record."""
    if entry.stage is not None and entry.stage.is_dir() and not entry.stage.is_symlink():
        shutil.rmtree(entry.stage, ignore_errors=True)
    if entry.record.is_dir():
        shutil.rmtree(entry.record, ignore_errors=True)
    else:
        entry.record.unlink(missing_ok=True)
