"""The registry's folder layout, and the names that are safe inside it.

Every part of the store (registry, index, verify, sharing) reads and writes the same tree::

    <root>/index.json                      cache: name -> version -> {task, method, backbone, ...}
    <root>/.index.lock                     file lock serialising writers
    <root>/<name>/<version>/manifest.json  provenance, scores, sha256 of every file
    <root>/<name>/<version>/weights.safetensors
    <root>/<name>/<version>/README.md      model card
    <root>/.tmp-<hex>/                     a version being written (with `.owner`: pid and host)

so its file names, the rules for module names, versions and file names (nothing may be read or
written outside the root, whatever a manifest or a Hub repo says) and the order of versions live
here, once. Names alone do not keep a path inside the root: a module folder, version folder or
file may be a symbolic link. Links that resolve inside the root are followed; one that leaves it
is refused (`check_inside`), so a link cannot make the registry read or rewrite files elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import XtlError
from ..io import TMP_PREFIX, atomic_write_json
from .manifest import MANIFEST, Manifest

WEIGHTS = "weights.safetensors"
README = "README.md"
INDEX = "index.json"
LOCK = ".index.lock"
OWNER = ".owner"  # inside a temp folder: who is writing it (pid, host), so verify leaves it alone

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RESERVED_NAMES = {INDEX.lower(), README.lower()}  # files that live in the root
RESERVED_FILES = {MANIFEST, WEIGHTS, README}

__all__ = ["FILE_RE", "INDEX", "LOCK", "MANIFEST", "NAME_RE", "OWNER", "README", "RESERVED_FILES", "RESERVED_NAMES",
           "SHA256_RE", "TMP_PREFIX", "VERSION_RE", "WEIGHTS", "check_file_name", "check_inside", "check_name",
           "check_version", "is_stub", "is_valid_name", "is_valid_version", "outside_link", "read_owner",
           "sha256_file", "version_key", "write_owner"]


def check_name(name: Any) -> str:
    """A module name that is safe as one folder name inside the root."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name or name.lower() in RESERVED_NAMES:
        raise XtlError(
            f"invalid module name {name!r}",
            where="module name",
            fix="use 1-96 characters from letters, digits, '.', '_', '-', starting with a letter or "
            "digit, without '..' or '/' (e.g. 'mnli-lora-r8')"
            + (f"; {name!r} is reserved" if isinstance(name, str) and name.lower() in RESERVED_NAMES else ""),
        )
    return name


def check_version(version: Any) -> str:
    """A version: digits without leading zeros (`3`) or a safe token (`hub-1a2b3c`)."""
    if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
        version = str(version)
    ok = isinstance(version, str) and VERSION_RE.match(version) and ".." not in version
    if ok and version.isdigit() and (version.startswith("0")):
        ok = False
    if not ok:
        raise XtlError(
            f"invalid module version {version!r}",
            where="module version",
            fix="use a positive integer without leading zeros ('1', '2', ...) or a token of letters, "
            "digits, '.', '_', '-' (at most 64 characters, no '..' or '/'); leave it out to get the next number",
        )
    return version


def check_file_name(fn: Any, where: str) -> str:
    """A plain file name inside a version folder (no folders, no '..', not a temp name)."""
    if not isinstance(fn, str) or not FILE_RE.match(fn) or ".." in fn or fn.startswith(TMP_PREFIX):
        raise XtlError(
            f"invalid file name {fn!r}",
            where=where,
            fix="use a plain file name (letters, digits, '.', '_', '-'; no folders, no '..')",
        )
    return fn


def outside_link(root: Path, path: Path) -> tuple[Path, str] | None:
    """The first symbolic link between `root` and `path` that resolves outside `root`, and its target.

    `path` is a path built under `root` (`root / name / version / file`); the root itself may be
    a link (a registry on another disk). None when every link on the way stays inside the root.
    """
    root = Path(root)
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return Path(path), str(path)
    real_root = root.resolve()
    cur = root
    for part in rel.parts:
        cur = cur / part
        if not cur.is_symlink():
            continue
        try:
            target = cur.resolve(strict=False)
        except (OSError, RuntimeError):  # a link loop
            return cur, f"{os.readlink(cur)} (a link loop)"
        if target != real_root and real_root not in target.parents:
            return cur, str(target)
    return None


def check_inside(root: Path, path: Path) -> Path:
    """`path`, or an XtlError when a symbolic link on the way to it leaves the registry root."""
    bad = outside_link(root, path)
    if bad is not None:
        link, target = bad
        raise XtlError(
            f"{link} is a symbolic link to {target}, outside the registry {root}; the registry reads and "
            "writes only inside its root",
            where=str(link),
            fix="replace the link with a copy of what it points to (`cp -rL`), or point --registry / "
            "$XTL_REGISTRY at the registry that holds the module; `xtl registry verify` lists such links",
        )
    return Path(path)


def is_valid_name(folder: str) -> bool:
    """A folder in the root that holds a module (not hidden, not a temp folder, a valid name)."""
    return not folder.startswith(".") and NAME_RE.match(folder) is not None and ".." not in folder


def is_valid_version(folder: str) -> bool:
    return not folder.startswith(".") and VERSION_RE.match(folder) is not None and ".." not in folder


def is_stub(manifest: Manifest) -> bool:
    """True for a version pulled with `--lazy`: its files are fetched from the Hub on first load."""
    hub = manifest.hub or {}
    return bool(hub.get("lazy")) and bool(hub.get("repo_id")) and bool(hub.get("revision"))


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key: token versions first (alphabetically), then numbers ascending; last = latest."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_owner(tmp: Path) -> None:
    """Mark a temp folder as being written by this process (verify leaves live writers alone)."""
    atomic_write_json(tmp / OWNER, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()},
                      indent=None)


def read_owner(tmp: Path) -> tuple[int, str] | None:
    """(pid, host) of a temp folder's writer, or None when the owner file is missing or unreadable."""
    try:
        owner = json.loads((tmp / OWNER).read_text())
        return int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
