"""Share registry modules on the Hugging Face Hub: push, pull, and import other libraries' repos.

A pushed repo is an ordinary peft or adapters repo first (its root is what those libraries load
by themselves, head included where it computes the same: `store.native`), with our module beside
it exactly as the registry stores it::

    adapter_config.json, ...  the peft / adapters export (`store.native.write_root`)
    manifest.json        provenance + sha256 of every file of ours (hub: {repo_id}; card: the
                         card's facts, `store.cardfacts`)
    weights.safetensors  module and head weights (our naming)
    README.md            the model card (store.card), rendered for this repo

`push` verifies the module, stages that folder (`store.repo.write_repo`) and uploads it as one commit, then records the
commit in the local manifest (`hub: {repo_id, revision}`). `pull` resolves a branch/tag/commit
to its commit sha once and downloads from that commit only, so the pulled module is pinned;
every file is checked against the sha256 in the pulled manifest. `pull --lazy` registers a stub
(manifest + card only) that `Registry.load` completes on first use.

This module composes the parts and owns none of them: the registry (store.registry), the card
(store.card), the peft / adapters formats (store.interop, store.convert) and the transport
(store.hub, the only code that talks to huggingface_hub). Nothing from the Hub is unpickled.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from ..errors import XtlError
from . import hub
from . import interop
from .card import GENERATED_MARKER, base_model, render_card
from .convert import import_folder
from .layout import README, WEIGHTS, check_file_name, check_name, check_version, sha256_file
from .manifest import MANIFEST, Manifest, read_manifest
from .native import COMPOSED_KINDS, plan
from .registry import Registry
from .repo import write_repo

log = logging.getLogger(__name__)

__all__ = ["download_foreign", "import_module", "pull", "push"]


def push(
    registry: Registry,
    name: str,
    version: str | None = None,
    *,
    repo_id: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
    exports: bool = True,
    parts: bool = True,
) -> Manifest:
    """Upload one module version (default: latest) to a model repo; return the updated manifest.

    A stacked, fused or merged module needs its intermediates: with `parts`, each one that is not
    on the Hub yet is pushed first, to `<org>/<its name>`, and the card links them all, so that
    `pull` can bring them.

    The module is verified (sha256 of every file) before anything is uploaded; afterwards the
    local manifest records `hub: {repo_id, revision}` with the commit that was made. `repo_id`
    defaults to `<your user>/<name>`; `private` applies when the repo is created.
    """
    m, tensors = registry.load(name, version)  # verifies every file (and fetches a stub's)
    if repo_id is None:
        repo_id = f"{hub.user_name(token=token, endpoint=endpoint)}/{m.name}"
    repo_id = hub.check_repo_id(repo_id)
    base = base_model(m.backbone.model_id)
    if base is None:
        log.warning("backbone %r is not a Hub model id: the card of %s has no base_model (the Hub will not link "
                    "the module to its backbone; train on a Hub backbone id to get one)", m.backbone.model_id, repo_id)
    native = plan(m, tensors)
    if native.parts and parts:
        _push_parts(registry, native.parts, owner=repo_id.split("/")[0], private=private, token=token,
                    endpoint=endpoint, exports=exports)
    stage = Path(tempfile.mkdtemp(prefix="xtl-push-"))
    try:
        write_repo(registry, m, tensors, stage, repo_id=repo_id, exports=exports, native=native)
        sha = hub.upload_folder(
            repo_id, stage, private=private, token=token, endpoint=endpoint,
            commit_message=commit_message or f"adapters_xtl: {m.name} version {m.version} ({m.task}, {m.method})",
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("pushed %s version %s to %s@%s", m.name, m.version, repo_id, sha)
    return registry.set_hub(m.name, m.version, {"repo_id": repo_id, "revision": sha})


def _push_parts(registry: Registry, refs: list[str], *, owner: str, **kw) -> None:
    for ref in refs:
        pname, _, pver = ref.partition("@")
        pm = registry.manifest(pname, pver or None)  # a missing part fails before anything is uploaded
        if not (pm.hub and pm.hub.get("repo_id") and pm.hub.get("revision")) or pm.hub.get("lazy"):
            log.info("pushing part %s first", ref)
            push(registry, pm.name, pm.version, repo_id=f"{owner}/{pm.name}", **kw)


def _pull_parts(registry: Registry, m: Manifest, **kw) -> None:
    """Register the intermediates a composed module needs under the `name@version` it names them by."""
    if (m.composition or {}).get("kind") not in COMPOSED_KINDS:
        return
    facts = ((m.model_extra or {}).get("card") or {}).get("parts") or []
    for part in facts:
        ref, hubinfo = str(part.get("ref", "")), part.get("hub") or {}
        pname, _, pver = ref.partition("@")
        if not hubinfo.get("repo_id") or not hubinfo.get("revision"):
            log.warning("part %s of %s is not on the Hub: register it under that name and version yourself "
                        "(train it, or pull it with --name %s --version %s)", ref, m.name, pname, pver)
            continue
        pull(registry, f"{hubinfo['repo_id']}@{hubinfo['revision']}", name=pname, version=pver or None,
             reuse_identical=True, **kw)


def pull(
    registry: Registry,
    spec: str,
    *,
    name: str | None = None,
    version: str | None = None,
    lazy: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    max_bytes: int | str | None = None,
    reuse_identical: bool = False,
) -> Manifest:
    """Register a module pushed by `push` from `org/name[@revision]`; return its manifest.

    A stacked, fused or merged module comes with its parts: each intermediate the card links is
    pulled too and registered under the `name@version` the composition names (one already there
    with the same weights is kept).

    The revision (default main) is resolved to a commit sha first and everything is read from
    that commit. The module is registered as `name` (default: the pushed name) and version
    `hub-<sha[:12]>` (default), so pulling the same commit twice is a no-op. With `lazy`, only
    manifest.json and README.md are fetched; the weights come on first `Registry.load`.
    `max_bytes` caps each downloaded file (default: `hub.max_file_bytes`).
    """
    limit = hub.max_file_bytes(max_bytes)  # a bad limit fails before any request
    repo_id, revision = hub.parse_repo_spec(spec)
    sha, siblings = hub.resolve(repo_id, revision, token=token, endpoint=endpoint)
    if MANIFEST not in siblings:
        raise XtlError(f"{repo_id}@{sha[:12]} has no {MANIFEST}: it is not an adapters_xtl module repo",
                       where=repo_id,
                       fix="for a peft or adapters repo use `xtl registry import REPO_ID --task TASK`")
    tmp = Path(tempfile.mkdtemp(prefix="xtl-pull-"))
    try:
        got = hub.download_files(repo_id, sha, [MANIFEST], tmp, token=token, endpoint=endpoint, max_bytes=limit)
        remote = read_manifest(got[MANIFEST])
        for fn in remote.files:
            check_file_name(fn, where=f"{repo_id}@{sha[:12]}/{MANIFEST}: files")
            if fn not in siblings:
                raise XtlError(f"{fn} is listed in {MANIFEST} but not in {repo_id}@{sha[:12]}", where=repo_id,
                               fix="the repo is incomplete; push the module again")
        if WEIGHTS not in remote.files:
            raise XtlError(f"{MANIFEST} lists no sha256 for {WEIGHTS}", where=f"{repo_id}@{sha[:12]}",
                           fix="push the module again")
        name = check_name(name or remote.name)
        version = check_version(version or f"hub-{sha[:12]}")
        if (registry.root / name / version / MANIFEST).is_file():
            existing = registry.manifest(name, version)
            pinned = existing.hub or {}
            same = reuse_identical and existing.files.get(WEIGHTS) == remote.files.get(WEIGHTS)
            if (pinned.get("repo_id") == repo_id and pinned.get("revision") == sha) or same:
                return existing if lazy or same else registry.materialize(name, version, token=token,
                                                                          endpoint=endpoint, max_bytes=limit)
            raise XtlError(f"module {name!r} already has version {version!r} (from {pinned or 'elsewhere'})",
                           where=str(registry.root / name / version),
                           fix="pass --name or --version to register the pulled module under another name")
        card = None
        if README in remote.files:
            got.update(hub.download_files(repo_id, sha, [README], tmp, token=token, endpoint=endpoint,
                                          max_bytes=limit))
            if sha256_file(got[README]) != remote.files[README]:
                raise XtlError(f"sha256 mismatch for {README} in {repo_id}@{sha[:12]}", where=repo_id,
                               fix="push the module again")
            card = got[README].read_text(encoding="utf-8")
        local = remote.model_copy(deep=True, update={"name": name, "version": version,
                                                     "hub": {"repo_id": repo_id, "revision": sha}})
        if card is None or GENERATED_MARKER in card:
            card = render_card(local.model_copy(update={"hub": {"repo_id": repo_id, "revision": sha, "lazy": True}}))
        # the parts first: a part that cannot be pulled leaves nothing of this module behind
        _pull_parts(registry, remote, lazy=lazy, token=token, endpoint=endpoint, max_bytes=limit)
        m = registry.save_stub(local, card=card, version=version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if lazy:
        return m
    return registry.materialize(m.name, m.version, token=token, endpoint=endpoint, max_bytes=limit)


def download_foreign(spec: str, dest: Path, *, subfolder: str | None = None, token: str | None = None,
                     endpoint: str | None = None, max_bytes: int | str | None = None) -> tuple[Path, str, str]:
    """Download a peft / adapters adapter from `org/name[@revision]` (pinned); (folder, repo_id, sha)."""
    repo_id, revision = hub.parse_repo_spec(spec)
    prefix = (hub.check_repo_path(subfolder.strip("/")) + "/") if subfolder else ""
    sha, siblings = hub.resolve(repo_id, revision, token=token, endpoint=endpoint)
    config = prefix + interop.CONFIG
    if config not in siblings:
        raise XtlError(f"{repo_id}@{sha[:12]} has no {config}", where=repo_id,
                       fix="pass --subfolder if the adapter is in a folder of the repo; for an adapters_xtl "
                       "repo use `xtl registry pull`")
    wanted = [interop.CONFIG, interop.PEFT_WEIGHTS, interop.PEFT_WEIGHTS_BIN, interop.ADAPTERS_WEIGHTS,
              interop.ADAPTERS_WEIGHTS_BIN, interop.ADAPTERS_HEAD_CONFIG, interop.ADAPTERS_HEAD_WEIGHTS,
              interop.ADAPTERS_HEAD_WEIGHTS_BIN, interop.HEAD_WEIGHTS, interop.HEAD_CONFIG]
    # one weights file is enough: prefer safetensors, fetch a .bin only when there is no safetensors
    for safe, pickled in ((interop.PEFT_WEIGHTS, interop.PEFT_WEIGHTS_BIN),
                          (interop.ADAPTERS_WEIGHTS, interop.ADAPTERS_WEIGHTS_BIN),
                          (interop.ADAPTERS_HEAD_WEIGHTS, interop.ADAPTERS_HEAD_WEIGHTS_BIN)):
        if prefix + safe in siblings:
            wanted.remove(pickled)
    files = [prefix + fn for fn in wanted if prefix + fn in siblings]
    hub.download_files(repo_id, sha, files, dest, token=token, endpoint=endpoint, max_bytes=max_bytes)
    return dest / prefix if prefix else dest, repo_id, sha


def import_module(
    registry: Registry,
    source: str | Path,
    *,
    task: str,
    backbone,
    name: str | None = None,
    include_head: bool = True,
    subfolder: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    max_bytes: int | str | None = None,
) -> Manifest:
    """Register a peft / adapters module from a folder or a Hub repo `org/name[@revision]`.

    A repo is read from one pinned commit and recorded as `imported.source: {repo_id, revision}`;
    the conversion and its checks are `store.convert.import_folder`.
    """
    from ..tasks import get_task

    spec = get_task(task)  # a bad task fails before anything is downloaded
    src = str(source)
    path = Path(src).expanduser()
    if path.exists():
        folder = path / subfolder if subfolder else path
        return import_folder(registry, folder, task=spec, backbone=backbone, name=name, include_head=include_head)
    if not hub.looks_like_repo_spec(src):
        raise XtlError(f"{src!r} is neither an existing folder nor a Hub repo id (org/name[@revision])",
                       where="import source", fix="check the path, or pass a repo id like org/name")
    max_bytes = hub.max_file_bytes(max_bytes)  # a bad limit fails before any request
    tmpdir = Path(tempfile.mkdtemp(prefix="xtl-import-"))
    try:
        folder, repo_id, sha = download_foreign(src, tmpdir, subfolder=subfolder, token=token, endpoint=endpoint,
                                                max_bytes=max_bytes)
        origin = {"repo_id": repo_id, "revision": sha, **({"subfolder": subfolder} if subfolder else {})}
        return import_folder(registry, folder, task=spec, backbone=backbone, name=name, include_head=include_head,
                             origin=origin)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
