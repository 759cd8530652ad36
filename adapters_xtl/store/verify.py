"""`xtl registry verify [--fix]`: find what crashes, hand edits and bad copies did to a registry.

Interrupted writes are expected (the registry is written so that a kill leaves only harmless
`.tmp-*` leftovers), and so is a stale index (a cache); both are repaired with `fix=True`.
Damaged modules (a missing file, a sha256 mismatch, a misplaced manifest) are reported, never
deleted: only the user can tell whether to restore, re-pull or retrain them.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path

from ..errors import XtlError
from . import index as _index
from .layout import (INDEX, MANIFEST, TMP_PREFIX, WEIGHTS, check_file_name, is_stub, is_valid_name,
                     is_valid_version, read_owner, sha256_file)
from .manifest import Manifest, read_manifest
from .registry import Registry

log = logging.getLogger(__name__)

# A temp folder without a readable owner file is left alone this long (it may be just created).
FRESH_TMP_S = 60.0
# A temp folder written from another machine (shared file system): its writer gets a day.
OTHER_HOST_TMP_S = 24 * 3600.0

__all__ = ["FRESH_TMP_S", "verify"]


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


def _tmp_in_progress(path: Path) -> bool:
    """True when a temp folder belongs to a live writer (or is too fresh to judge)."""
    owner = read_owner(path)
    if owner is not None and owner[1] == socket.gethostname():
        return _pid_alive(owner[0])
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    return age < (FRESH_TMP_S if owner is None else OTHER_HOST_TMP_S)


def verify(registry: Registry, fix: bool = False) -> list[str]:
    """Check every module and the index; return the problems found (empty = healthy).

    Checks: leftover `.tmp-*` folders/files from interrupted writes (harmless), unreadable or
    misplaced manifests, missing files, sha256 mismatches, and the index against the folders.
    With `fix=True` the safe repairs are made (temp leftovers deleted, empty module folders
    removed, index rebuilt from the folders) and the returned lines say so; damaged modules are
    only reported, never deleted.
    """
    root = registry.root
    if not root.is_dir():
        return []
    problems: list[str] = []
    done = " (fixed)" if fix else ""
    with registry.lock():
        # 1. leftovers of interrupted writes
        for p in sorted(root.iterdir()):
            if not p.name.startswith(TMP_PREFIX):
                continue
            if p.is_dir():
                if _tmp_in_progress(p):
                    continue
                problems.append(f"{p}: leftover temporary folder from an interrupted write (harmless; "
                                f"`xtl registry verify --fix` deletes it){done}")
                if fix:
                    shutil.rmtree(p, ignore_errors=True)
            else:  # temp copy of index.json (written only under the lock we hold)
                problems.append(f"{p}: leftover temporary file from an interrupted write (harmless){done}")
                if fix:
                    p.unlink(missing_ok=True)

        # 2. every module version
        found: dict[str, dict[str, Manifest]] = {}
        for d in sorted(root.iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            if not is_valid_name(d.name):
                problems.append(f"{d}: folder name is not a valid module name; ignored "
                                "(move it out of the registry)")
                continue
            vdirs = [v for v in sorted(d.iterdir()) if v.is_dir()]
            if not vdirs:
                problems.append(f"{d}: module folder without versions{done}")
                if fix:
                    shutil.rmtree(d, ignore_errors=True)
                continue
            for vdir in vdirs:
                m = _verify_version(vdir, problems, fix)
                if m is not None:
                    found.setdefault(m.name, {})[m.version] = m

        # 3. the index against the folders
        _verify_index(registry, found, problems, fix)
    return problems


def _verify_index(registry: Registry, found: dict[str, dict[str, Manifest]], problems: list[str], fix: bool) -> None:
    root, index_path = registry.root, registry.index_path
    done = " (fixed)" if fix else ""
    data = _index.read_index(root)
    rebuild = False
    if data is None:
        if index_path.exists():
            problems.append(f"{index_path}: unreadable or not a registry index{done}")
            rebuild = True
        elif found:
            problems.append(f"{index_path}: missing{done}")
            rebuild = True
    else:
        indexed = data["modules"]
        for name, vs in sorted(indexed.items()):
            for version, entry in sorted(vs.items()):
                if version not in found.get(name, {}):
                    problems.append(f"{index_path}: entry {name} version {version} has no valid folder{done}")
                    rebuild = True
                elif entry != _index.entry(found[name][version]):
                    problems.append(f"{index_path}: entry {name} version {version} is out of date{done}")
                    rebuild = True
        for name, vs in sorted(found.items()):
            for version in sorted(vs):
                if version not in indexed.get(name, {}):
                    problems.append(f"{root / name / version}: not listed in {INDEX}{done}")
                    rebuild = True
    if fix and rebuild:
        _index.write_index(root, _index.rebuild(m for vs in found.values() for m in vs.values()))


def _verify_version(vdir: Path, problems: list[str], fix: bool) -> Manifest | None:
    """Check one version folder; append problems; return its manifest when it is sound."""
    name, version = vdir.parent.name, vdir.name
    for p in sorted(vdir.iterdir()):
        if p.name.startswith(TMP_PREFIX):  # temp copies of manifest/card (written under the lock)
            problems.append(f"{p}: leftover temporary file from an interrupted write (harmless)"
                            + (" (fixed)" if fix else ""))
            if fix and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif fix:
                p.unlink(missing_ok=True)
    if not is_valid_version(version):
        problems.append(f"{vdir}: folder name is not a valid version; ignored")
        return None
    try:
        m = read_manifest(vdir / MANIFEST)
    except XtlError as e:
        problems.append(str(e).replace("\n", " "))
        return None
    if m.name != name or m.version != version:
        problems.append(f"{vdir / MANIFEST}: says {m.name!r} version {m.version!r}, but lives in {name}/{version}")
        return None
    ok = True
    if WEIGHTS not in m.files:
        problems.append(f"{vdir / MANIFEST}: files lists no sha256 for {WEIGHTS}")
        ok = False
    for fn, expected in m.files.items():
        try:
            check_file_name(fn, where=str(vdir / MANIFEST))
        except XtlError:
            problems.append(f"{vdir / MANIFEST}: files lists an unsafe name {fn!r}")
            ok = False
            continue
        path = vdir / fn
        if not path.is_file():
            if is_stub(m):  # fetched from the Hub on first load
                continue
            problems.append(f"{path}: missing (listed in {MANIFEST})")
            ok = False
        elif sha256_file(path) != expected:
            problems.append(f"{path}: sha256 mismatch with {MANIFEST} (file changed after saving)")
            ok = False
    if not ok:
        log.debug("damaged module %s/%s", name, version)
    # A damaged module is still a module: it stays in the index (as in the registry's rebuild).
    return m
