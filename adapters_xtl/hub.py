"""Share registry modules on the Hugging Face Hub, through `huggingface_hub` only.

A pushed repo holds one module version exactly as the registry stores it, plus an export for the
library that can load it without adapters_xtl::

    manifest.json        provenance + sha256 of every file (hub: {repo_id})
    weights.safetensors  module and head weights (our naming)
    README.md            the model card (card.py), rendered for this repo
    peft/ | adapters/    `xtl registry export` output (peft for LoRA, adapters for bottleneck)

`push` uploads with `HfApi.create_repo` + `HfApi.upload_folder` and records the commit it made in
the local manifest (`hub: {repo_id, revision}`). `pull` resolves a branch/tag/commit to its
commit sha once (`HfApi.model_info`) and downloads from that commit only (`hf_hub_download`), so
the pulled module is pinned; every file is checked against the sha256 in the pulled manifest.
`pull --lazy` registers a stub (manifest + card only) that `Registry.load` completes on first use
(`Registry.materialize`).

The endpoint is `HF_ENDPOINT` (read at call time) or huggingface_hub's default; the token is the
usual one (`hf auth login`, or `HF_TOKEN`). Repo ids, revisions and file names are validated
before any request, and nothing from the Hub is ever unpickled.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import XtlError

log = logging.getLogger(__name__)

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
REPO_ID_RE = re.compile(rf"^{_PART}/{_PART}$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,127}$")
PATH_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DEFAULT_REVISION = "main"


# ---------------------------------------------------------------------------------------------
# validation


def check_repo_id(repo_id: Any) -> str:
    """`org/name`: letters, digits, '.', '_', '-' on each side; no '..', '--', paths or URLs."""
    ok = (isinstance(repo_id, str) and REPO_ID_RE.match(repo_id) is not None and ".." not in repo_id
          and "--" not in repo_id and not repo_id.endswith(".git"))
    if not ok:
        raise XtlError(
            f"invalid Hub repo id {repo_id!r}",
            where="repo id",
            fix="use ORG/NAME (user or organisation, a slash, a name), each 1-96 letters, digits, '.', '_' "
            "or '-', without '..' or '--' (e.g. my-lab/xnli-lora-r8)",
        )
    return repo_id


def check_revision(revision: Any) -> str:
    """A branch, tag or commit sha; no '..', no leading '/' or '-', nothing a URL could abuse."""
    ok = (isinstance(revision, str) and REVISION_RE.match(revision) is not None and ".." not in revision
          and "//" not in revision and not revision.endswith(("/", ".lock", ".")))
    if not ok:
        raise XtlError(
            f"invalid revision {revision!r}",
            where="revision",
            fix="use a branch or tag name (letters, digits, '.', '_', '-', '/') or a 40-hex commit sha",
        )
    return revision


def check_sha(sha: Any) -> str:
    if not isinstance(sha, str) or not SHA_RE.match(sha):
        raise XtlError(f"the Hub returned {sha!r} where a 40-hex commit sha was expected", where="Hub response",
                       fix="check HF_ENDPOINT points at a Hugging Face Hub")
    return sha


def check_repo_path(path: Any) -> str:
    """A relative file path inside a repo: plain parts separated by '/', no '..'."""
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or not all(PATH_PART_RE.match(p) and ".." not in p for p in parts):
        raise XtlError(f"invalid path in repo {path!r}", where="repo path",
                       fix="use plain names separated by '/' (no '..', no leading '/')")
    return path


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """`org/name[@revision]` -> (repo_id, revision or None)."""
    if not isinstance(spec, str):
        raise XtlError(f"invalid repo {spec!r}", where="repo id", fix="use ORG/NAME or ORG/NAME@REVISION")
    repo_id, sep, revision = spec.partition("@")
    return check_repo_id(repo_id), (check_revision(revision) if sep else None)


def looks_like_repo_spec(spec: str) -> bool:
    try:
        parse_repo_spec(spec)
        return True
    except XtlError:
        return False


# ---------------------------------------------------------------------------------------------
# huggingface_hub access


def endpoint_url(endpoint: str | None = None) -> str | None:
    value = endpoint or os.environ.get("HF_ENDPOINT") or None
    return value.rstrip("/") if value else None


def api(token: str | None = None, endpoint: str | None = None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint_url(endpoint), token=token or None)


@contextmanager
def hub_errors(action: str, repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub / network errors into one XtlError that says what to do."""
    import requests
    from huggingface_hub import errors as hf_errors

    what = f"{repo_id}@{revision}" if revision else repo_id
    login = "log in with `hf auth login` (or set HF_TOKEN) with a token that can access it"
    try:
        yield
    except XtlError:
        raise
    except hf_errors.OfflineModeIsEnabled:
        raise XtlError(f"cannot {action} {what}: huggingface_hub offline mode is on", where="HF_HUB_OFFLINE",
                       fix="unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to reach the Hub") from None
    except hf_errors.GatedRepoError:
        raise XtlError(f"cannot {action} {what}: the repo is gated", where=what,
                       fix=f"request access on the Hub, then {login}") from None
    except hf_errors.RevisionNotFoundError:
        raise XtlError(f"cannot {action} {what}: no such revision", where=what,
                       fix="check the branch, tag or commit after '@' (leave it out for main)") from None
    except hf_errors.RepositoryNotFoundError:
        raise XtlError(f"cannot {action} {what}: repository not found (or private)", where=what,
                       fix=f"check the repo id; for a private repo {login}") from None
    except hf_errors.LocalEntryNotFoundError as e:
        raise XtlError(f"cannot {action} {what}: the Hub is unreachable ({e.__cause__ or e})",
                       where=endpoint_url() or "https://huggingface.co",
                       fix="check the network (or HF_ENDPOINT) and try again") from None
    except hf_errors.EntryNotFoundError:
        raise XtlError(f"cannot {action} {what}: a file is missing in that revision", where=what,
                       fix="the repo is incomplete; push the module again") from None
    except hf_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if status in (401, 403):
            raise XtlError(f"cannot {action} {what}: not authorised ({first})", where=what, fix=login) from None
        raise XtlError(f"cannot {action} {what}: the Hub answered {status} ({first})", where=what,
                       fix="try again later; if it persists, check the repo on the Hub") from None
    except hf_errors.LocalTokenNotFoundError:
        raise XtlError(f"cannot {action} {what}: no Hugging Face token found", where="token", fix=login) from None
    except requests.HTTPError as e:  # whoami re-raises plain requests errors
        status = getattr(getattr(e, "response", None), "status_code", None)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fix = login if status in (401, 403) else "try again later"
        raise XtlError(f"cannot {action} {what}: the Hub answered {status} ({first})", where=what, fix=fix) from None
    except (requests.ConnectionError, requests.Timeout) as e:
        raise XtlError(f"cannot {action} {what}: the Hub is unreachable ({type(e).__name__})",
                       where=endpoint_url() or "https://huggingface.co",
                       fix="check the network (or HF_ENDPOINT) and try again") from None


def resolve(repo_id: str, revision: str | None = None, *, token: str | None = None,
            endpoint: str | None = None) -> tuple[str, list[str]]:
    """(commit sha, files) of a revision of a model repo."""
    repo_id = check_repo_id(repo_id)
    revision = check_revision(revision or DEFAULT_REVISION)
    with hub_errors("read", repo_id, revision):
        info = api(token, endpoint).model_info(repo_id, revision=revision)
    return check_sha(info.sha), [s.rfilename for s in (info.siblings or [])]


def download_files(repo_id: str, revision: str, filenames: list[str], dest: Path, *, token: str | None = None,
                   endpoint: str | None = None) -> dict[str, Path]:
    """Download files of one pinned revision into `dest` (hf_hub_download); name -> local path."""
    from huggingface_hub import hf_hub_download

    repo_id = check_repo_id(repo_id)
    revision = check_revision(revision)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for fn in filenames:
        check_repo_path(fn)
        with hub_errors(f"download {fn} from", repo_id, revision[:12]):
            path = hf_hub_download(repo_id=repo_id, filename=fn, revision=revision, repo_type="model",
                                   local_dir=str(dest), token=token or None, endpoint=endpoint_url(endpoint))
        path = Path(path).resolve()
        if dest.resolve() not in path.parents:  # belt and braces: names are validated above
            raise XtlError(f"download of {fn!r} landed outside {dest}", where=repo_id)
        out[fn] = path
    return out


# ---------------------------------------------------------------------------------------------
# push / pull


def push(
    registry,
    name: str,
    version: str | None = None,
    *,
    repo_id: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
    exports: bool = True,
):
    """Upload one module version (default: latest) to a model repo; return the updated manifest.

    The module is verified (sha256 of every file) before anything is uploaded; afterwards the
    local manifest records `hub: {repo_id, revision}` with the commit that was made. `repo_id`
    defaults to `<your user>/<name>`; `private` applies when the repo is created.
    """
    from .card import GENERATED_MARKER, render_card
    from .interop import FORMAT_OF_METHOD, export_module
    from .registry import MANIFEST, README, sha256_file

    m, _ = registry.load(name, version)  # verifies every file (and fetches a stub's)
    vdir = registry.path(m.name, m.version)
    hf = api(token, endpoint)
    if repo_id is None:
        with hub_errors("find the user name for", "whoami"):
            user = hf.whoami().get("name")
        repo_id = f"{user}/{m.name}"
    repo_id = check_repo_id(repo_id)
    stage = Path(tempfile.mkdtemp(prefix="xtl-push-"))
    try:
        up = m.model_copy(deep=True, update={"hub": {"repo_id": repo_id}})
        files = dict(up.files)
        for fn, digest in m.files.items():
            if fn == README:
                continue
            shutil.copyfile(vdir / fn, stage / fn)
            if sha256_file(stage / fn) != digest:
                raise XtlError(f"{fn} changed while it was being pushed", where=str(vdir / fn),
                               fix="run `xtl registry verify`, then push again")
        card = (vdir / README).read_text(encoding="utf-8") if (vdir / README).is_file() else ""
        if not card or GENERATED_MARKER in card:
            card = render_card(up)  # the card the Hub shows names this repo
        (stage / README).write_bytes(card.encode("utf-8"))
        files[README] = sha256_file(stage / README)
        up = up.model_copy(update={"files": files})
        (stage / MANIFEST).write_text(up.model_dump_json(indent=2) + "\n", encoding="utf-8")
        fmt = FORMAT_OF_METHOD.get(m.method)
        if exports and fmt:
            export_module(registry, m.name, stage / fmt, fmt=fmt, version=m.version)
        with hub_errors("create", repo_id):
            hf.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with hub_errors("upload to", repo_id):
            info = hf.upload_folder(
                repo_id=repo_id,
                folder_path=str(stage),
                repo_type="model",
                commit_message=commit_message or f"adapters_xtl: {m.name} version {m.version} ({m.task}, {m.method})",
            )
        sha = check_sha(info.oid)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("pushed %s version %s to %s@%s", m.name, m.version, repo_id, sha)
    return registry.set_hub(m.name, m.version, {"repo_id": repo_id, "revision": sha})


def pull(
    registry,
    spec: str,
    *,
    name: str | None = None,
    version: str | None = None,
    lazy: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
):
    """Register a module pushed by `push` from `org/name[@revision]`; return its manifest.

    The revision (default main) is resolved to a commit sha first and everything is read from
    that commit. The module is registered as `name` (default: the pushed name) and version
    `hub-<sha[:12]>` (default), so pulling the same commit twice is a no-op. With `lazy`, only
    manifest.json and README.md are fetched; the weights come on first `Registry.load`.
    """
    from .card import GENERATED_MARKER, render_card
    from .registry import MANIFEST, README, WEIGHTS, _check_file_name, check_name, check_version, sha256_file

    repo_id, revision = parse_repo_spec(spec)
    sha, siblings = resolve(repo_id, revision, token=token, endpoint=endpoint)
    if MANIFEST not in siblings:
        raise XtlError(f"{repo_id}@{sha[:12]} has no {MANIFEST}: it is not an adapters_xtl module repo",
                       where=repo_id,
                       fix="for a peft or adapters repo use `xtl registry import REPO_ID --task TASK`")
    tmp = Path(tempfile.mkdtemp(prefix="xtl-pull-"))
    try:
        got = download_files(repo_id, sha, [MANIFEST], tmp, token=token, endpoint=endpoint)
        remote = registry._read_manifest(got[MANIFEST])
        for fn in remote.files:
            _check_file_name(fn, where=f"{repo_id}@{sha[:12]}/{MANIFEST}: files")
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
            hub = existing.hub or {}
            if hub.get("repo_id") == repo_id and hub.get("revision") == sha:
                return existing if lazy else registry.materialize(name, version, token=token, endpoint=endpoint)
            raise XtlError(f"module {name!r} already has version {version!r} (from {hub or 'elsewhere'})",
                           where=str(registry.root / name / version),
                           fix="pass --name or --version to register the pulled module under another name")
        card = None
        if README in remote.files:
            got.update(download_files(repo_id, sha, [README], tmp, token=token, endpoint=endpoint))
            if sha256_file(got[README]) != remote.files[README]:
                raise XtlError(f"sha256 mismatch for {README} in {repo_id}@{sha[:12]}", where=repo_id,
                               fix="push the module again")
            card = got[README].read_text(encoding="utf-8")
        local = remote.model_copy(deep=True, update={"name": name, "version": version,
                                                     "hub": {"repo_id": repo_id, "revision": sha}})
        if card is None or GENERATED_MARKER in card:
            card = render_card(local.model_copy(update={"hub": {"repo_id": repo_id, "revision": sha, "lazy": True}}))
        m = registry.save_stub(local, card=card, version=version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if lazy:
        return m
    return registry.materialize(m.name, m.version, token=token, endpoint=endpoint)


def download_foreign(spec: str, dest: Path, *, subfolder: str | None = None, token: str | None = None,
                     endpoint: str | None = None) -> tuple[Path, str, str]:
    """Download a peft / adapters adapter from `org/name[@revision]` (pinned); (folder, repo_id, sha)."""
    from . import interop

    repo_id, revision = parse_repo_spec(spec)
    prefix = (check_repo_path(subfolder.strip("/")) + "/") if subfolder else ""
    sha, siblings = resolve(repo_id, revision, token=token, endpoint=endpoint)
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
    download_files(repo_id, sha, files, dest, token=token, endpoint=endpoint)
    return dest / prefix if prefix else dest, repo_id, sha
