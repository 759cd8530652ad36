"""The folder a module becomes on the Hub: what `registry push` uploads and `registry export
--format hub` writes (one function, so the two cannot drift apart)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import XtlError
from .card import GENERATED_MARKER, base_model, render_card
from .cardfacts import card_facts
from .layout import README, sha256_file
from .manifest import MANIFEST, Manifest
from .native import plan, write_root
from .registry import Registry

__all__ = ["write_repo"]


def write_repo(registry: Registry, m: Manifest, tensors: dict, folder: Path, *, repo_id: str | None,
               exports: bool = True, native=None) -> Manifest:
    """Write into `folder` exactly the files a push uploads: the module's own files, the card (naming
    `repo_id` when given), our manifest and the peft / adapters root export. `push` stages this
    folder; `xtl registry export --format hub` hands it to the user (to inspect, or upload with
    `huggingface-cli upload`). The module must already be verified (`registry.load`)."""
    vdir = registry.path(m.name, m.version)
    native = native or plan(m, tensors)
    facts = card_facts(registry, m, native.to_dict())
    up = m.model_copy(deep=True, update={"hub": {"repo_id": repo_id} if repo_id else None})
    up.__pydantic_extra__["card"] = facts  # what the Hub card says (datasets, licence, how to load)
    files = dict(up.files)
    for fn, digest in m.files.items():
        if fn == README:
            continue
        shutil.copyfile(vdir / fn, folder / fn)
        if sha256_file(folder / fn) != digest:
            raise XtlError(f"{fn} changed while it was being copied", where=str(vdir / fn),
                           fix="run `xtl registry verify`, then try again")
    card = (vdir / README).read_text(encoding="utf-8") if (vdir / README).is_file() else ""
    if not card or GENERATED_MARKER in card:
        card = render_card(up)  # the card the Hub shows names this repo
    (folder / README).write_bytes(card.encode("utf-8"))
    files[README] = sha256_file(folder / README)
    up = up.model_copy(update={"files": files})
    (folder / MANIFEST).write_text(up.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if exports:
        write_root(m, tensors, folder, base_model=base_model(m.backbone.model_id))
    return up
