"""`index.json`: a cache of what the registry holds, so listing does not parse every manifest.

The version folders are the truth; the index only summarises them (task, method, backbone, reuse
key, date per version). It is rebuilt from the manifests whenever it is missing or unreadable, and
`verify --fix` rebuilds it when it disagrees with the folders. Only writers holding the registry
lock change it, always by atomic replacement, so a reader never sees half an index.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from .layout import INDEX, version_key
from .manifest import Manifest

INDEX_SCHEMA = 1

__all__ = ["INDEX_SCHEMA", "entry", "index_doc", "read_index", "rebuild", "updated", "write_index"]


def entry(m: Manifest) -> dict[str, Any]:
    """What the index records about one version."""
    return {
        "task": m.task,
        "method": m.method,
        "backbone": m.backbone.short(),
        "reuse_key": m.reuse_key(),
        "created_at": m.created_at,
    }


def read_index(root: Path) -> dict[str, Any] | None:
    """The index of the registry at `root`, or None when missing or unreadable."""
    try:
        data = json.loads((root / INDEX).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("modules"), dict):
        return None
    if not all(isinstance(v, dict) for v in data["modules"].values()):
        return None
    return data


def index_doc(modules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The index document for name -> version -> entry (names sorted, versions oldest first)."""
    ordered = {n: dict(sorted(vs.items(), key=lambda kv: version_key(kv[0]))) for n, vs in sorted(modules.items())}
    return {"schema_version": INDEX_SCHEMA, "modules": ordered}


def rebuild(manifests: Iterable[Manifest]) -> dict[str, Any]:
    """The index document for these manifests (the registry passes every readable one)."""
    modules: dict[str, dict[str, Any]] = {}
    for m in manifests:
        modules.setdefault(m.name, {})[m.version] = entry(m)
    return index_doc(modules)


def updated(data: dict[str, Any], put: Manifest | None = None,
            drop: tuple[str, str | None] | None = None) -> dict[str, Any]:
    """`data` with one version added/replaced (`put`) or one version or module removed (`drop`)."""
    modules = {n: dict(vs) for n, vs in data["modules"].items()}
    if put is not None:
        modules.setdefault(put.name, {})[put.version] = entry(put)
    if drop is not None:
        name, version = drop
        if version is None:
            modules.pop(name, None)
        elif name in modules:
            modules[name].pop(version, None)
            if not modules[name]:
                modules.pop(name)
    return index_doc(modules)


def write_index(root: Path, data: dict[str, Any]) -> None:
    """Replace the index atomically (the caller holds the registry lock)."""
    atomic_write_json(root / INDEX, data, indent=2)
