"""`xtl registry verify [--fix]`: find what crashes, hand edits and bad copies did to a registry.

Interrupted writes are expected (the registry is written so that a kill leaves only harmless
`.tmp-*` leftovers, and a killed export a staged folder its record in `.exports/` points to), and
so is a stale index (a cache); all are repaired with `fix=True`. Damaged modules (a missing file,
a sha256 mismatch, a misplaced manifest) and symbolic links that leave the registry are reported,
never deleted: only the user can tell whether to restore, re-pull, retrain or move them.

`check` returns `Problem`s (what, where, whether it was fixed); `verify` the same as lines of text.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import XtlError
from . import exports as _exports
from . import index as _index
from .layout import (INDEX, MANIFEST, TMP_PREFIX, WEIGHTS, check_file_name, is_stub, is_valid_name,
                     is_valid_version, outside_link, read_owner, sha256_file)
from .manifest import Manifest, read_manifest
from .registry import Registry

log = logging.getLogger(__name__)

# A temp folder without a readable owner file is left alone this long (it may be just created).
FRESH_TMP_S = 60.0
# A temp folder written from another machine (shared file system): its writer gets a day.
OTHER_HOST_TMP_S = 24 * 3600.0

__all__ = ["FRESH_TMP_S", "Problem", "check", "verify"]


@dataclass(frozen=True)
class Problem:
    """One finding. `kind`: leftover (harmless, fixable), index (fixable), damaged, symlink, misplaced."""

    path: str
    kind: str
    message: str
    fixed: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" + (" (fixed)" if self.fixed else "")

    def to_json(self) -> dict:
        return {**asdict(self), "text": str(self)}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _writer_alive(owner: tuple[int, str] | None, started: float | None) -> bool:
    """True when a writer (pid, host) may still be running (or its work is too fresh to judge)."""
    if owner is not None and owner[1] == socket.gethostname():
        return _pid_alive(owner[0])
    if started is None:
        return False
    return time.time() - started < (FRESH_TMP_S if owner is None else OTHER_HOST_TMP_S)


def _tmp_in_progress(path: Path) -> bool:
    """True when a temp folder belongs to a live writer (or is too fresh to judge)."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = None
    return _writer_alive(read_owner(path), mtime)


def verify(registry: Registry, fix: bool = False) -> list[str]:
    """`check` as lines of text (empty = healthy); a fixed problem's line ends in '(fixed)'."""
    return [str(p) for p in check(registry, fix)]


def check(registry: Registry, fix: bool = False) -> list[Problem]:
    """Check every module, the index and killed exports; return the problems found (empty = healthy).

    Checks: leftover `.tmp-*` folders/files from interrupted writes and exports (harmless),
    symbolic links that leave the root, unreadable or misplaced manifests, missing files, sha256
    mismatches, and the index against the folders. With `fix=True` the safe repairs are made
    (leftovers deleted, empty module folders removed, index rebuilt from the folders) and those
    problems come back with `fixed=True`; damaged modules and links are only reported.
    """
    root = registry.root
    if not root.is_dir():
        return []
    problems: list[Problem] = []
    with registry.lock():
        _verify_leftovers(root, problems, fix)
        _verify_exports(root, problems, fix)
        found: dict[str, dict[str, Manifest]] = {}
        for d in sorted(root.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            if not is_valid_name(d.name):
                problems.append(Problem(str(d), "misplaced", "folder name is not a valid module name; ignored "
                                        "(move it out of the registry)"))
                continue
            if _outside(root, d, problems):
                continue
            vdirs = [v for v in sorted(d.iterdir()) if v.is_dir()]
            if not vdirs:
                problems.append(Problem(str(d), "leftover", "module folder without versions", fix))
                if fix:
                    shutil.rmtree(d, ignore_errors=True)
                continue
            for vdir in vdirs:
                if _outside(root, vdir, problems):
                    continue
                m = _verify_version(root, vdir, problems, fix)
                if m is not None:
                    found.setdefault(m.name, {})[m.version] = m
        _verify_index(registry, found, problems, fix)
    return problems


def _outside(root: Path, path: Path, problems: list[Problem]) -> bool:
    """Report `path` when it is a symbolic link out of the registry (never followed, never deleted)."""
    bad = outside_link(root, path)
    if bad is None:
        return False
    problems.append(Problem(str(bad[0]), "symlink",
                            f"symbolic link to {bad[1]}, outside the registry; refused when loading (replace it "
                            "with a copy, `cp -rL`, or remove it)"))
    return True


def _verify_leftovers(root: Path, problems: list[Problem], fix: bool) -> None:
    for p in sorted(root.iterdir()):
        if not p.name.startswith(TMP_PREFIX):
            continue
        if p.is_dir() and not p.is_symlink():
            if _tmp_in_progress(p):
                continue
            problems.append(Problem(str(p), "leftover", "leftover temporary folder from an interrupted write "
                                    "(harmless; `xtl registry verify --fix` deletes it)", fix))
            if fix:
                shutil.rmtree(p, ignore_errors=True)
        else:  # temp copy of index.json (written only under the lock we hold)
            problems.append(Problem(str(p), "leftover", "leftover temporary file from an interrupted write "
                                    "(harmless)", fix))
            if fix:
                p.unlink(missing_ok=True)


def _verify_exports(root: Path, problems: list[Problem], fix: bool) -> None:
    """Exports whose writer died: their staged folder (next to the target) and their record."""
    for entry in _exports.pending_exports(root):
        if entry.stage is None:
            problems.append(Problem(str(entry.record), "leftover", "unreadable record of an `xtl registry export` "
                                    "(harmless; --fix deletes the record, never anything it names)", fix))
        else:
            if entry.stage.is_dir() and _tmp_in_progress(entry.stage):
                continue
            if not entry.stage.exists() and _writer_alive((entry.pid, entry.host), entry.started):
                continue  # the export is starting
            what = (f"leftover folder of an interrupted `xtl registry export` to {entry.out} (harmless; "
                    "`xtl registry verify --fix` deletes it)" if entry.stage.exists()
                    else f"record of an interrupted `xtl registry export` to {entry.out} (its folder is gone)")
            problems.append(Problem(str(entry.stage if entry.stage.exists() else entry.record), "leftover", what,
                                    fix))
        if fix:
            _exports.remove_pending(entry)


def _verify_index(registry: Registry, found: dict[str, dict[str, Manifest]], problems: list[Problem],
                  fix: bool) -> None:
    root, index_path = registry.root, registry.index_path
    where = str(index_path)
    data = _index.read_index(root)
    rebuild = False
    if data is None:
        if index_path.exists():
            problems.append(Problem(where, "index", "unreadable or not a registry index", fix))
            rebuild = True
        elif found:
            problems.append(Problem(where, "index", "missing", fix))
            rebuild = True
    else:
        indexed = data["modules"]
        for name, vs in sorted(indexed.items()):
            for version, entry in sorted(vs.items()):
                if version not in found.get(name, {}):
                    problems.append(Problem(where, "index", f"entry {name} version {version} has no valid folder", fix))
                    rebuild = True
                elif entry != _index.entry(found[name][version]):
                    problems.append(Problem(where, "index", f"entry {name} version {version} is out of date", fix))
                    rebuild = True
        for name, vs in sorted(found.items()):
            for version in sorted(vs):
                if version not in indexed.get(name, {}):
                    problems.append(Problem(str(root / name / version), "index",
                                            f"not listed in {INDEX} (harmless: the index is a cache that a write "
                                            "interrupted after its rename leaves behind; --fix or the next write "
                                            "rebuilds it)", fix))
                    rebuild = True
    if fix and rebuild:
        _index.write_index(root, _index.rebuild(m for vs in found.values() for m in vs.values()))


def _verify_version(root: Path, vdir: Path, problems: list[Problem], fix: bool) -> Manifest | None:
    """Check one version folder; append problems; return its manifest when it is sound."""
    name, version = vdir.parent.name, vdir.name
    for p in sorted(vdir.iterdir()):
        if p.name.startswith(TMP_PREFIX):  # temp copies of manifest/card (written under the lock)
            problems.append(Problem(str(p), "leftover", "leftover temporary file from an interrupted write "
                                    "(harmless)", fix))
            if fix and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif fix:
                p.unlink(missing_ok=True)
    if not is_valid_version(version):
        problems.append(Problem(str(vdir), "misplaced", "folder name is not a valid version; ignored"))
        return None
    if _outside(root, vdir / MANIFEST, problems):
        return None
    try:
        m = read_manifest(vdir / MANIFEST)
    except XtlError as e:
        text = str(e).replace("\n", " ")
        prefix = f"{e.where}: " if e.where else ""
        problems.append(Problem(e.where or str(vdir / MANIFEST), "damaged", text[len(prefix):] if
                                text.startswith(prefix) else text))
        return None
    if m.name != name or m.version != version:
        problems.append(Problem(str(vdir / MANIFEST), "misplaced",
                                f"says {m.name!r} version {m.version!r}, but lives in {name}/{version}"))
        return None
    ok = True
    if WEIGHTS not in m.files:
        problems.append(Problem(str(vdir / MANIFEST), "damaged", f"files lists no sha256 for {WEIGHTS}"))
        ok = False
    for fn, expected in m.files.items():
        try:
            check_file_name(fn, where=str(vdir / MANIFEST))
        except XtlError:
            problems.append(Problem(str(vdir / MANIFEST), "damaged", f"files lists an unsafe name {fn!r}"))
            ok = False
            continue
        path = vdir / fn
        if _outside(root, path, problems):
            ok = False
        elif not path.is_file():
            if is_stub(m):  # fetched from the Hub on first load
                continue
            problems.append(Problem(str(path), "damaged", f"missing (listed in {MANIFEST})"))
            ok = False
        elif sha256_file(path) != expected:
            problems.append(Problem(str(path), "damaged", f"sha256 mismatch with {MANIFEST} (file changed after "
                                    "saving)"))
            ok = False
    if not ok:
        log.debug("damaged module %s/%s", name, version)
    # A damaged module is still a module: it stays in the index (as in the registry's rebuild).
    return m
