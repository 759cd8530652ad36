"""Hugging Face Hub transport: validated repo ids and revisions, upload a folder, download pinned files.

Only `huggingface_hub` is called here, and only this module calls it; what is uploaded or
downloaded, and what it means for the registry, is `store.sharing`'s business. Revisions are
resolved to a commit sha once (`resolve`) and every download names that commit, so what a pull
reads is pinned. Repo ids, revisions and paths are validated before any request is made, and
huggingface_hub / network errors become one `XtlError` that says what to do (`hub_errors`).

The endpoint is `HF_ENDPOINT` (read at call time) or huggingface_hub's default; the token is the
usual one (`hf auth login`, or `HF_TOKEN`).

Downloads are streamed to files by `hf_hub_download` (never held in memory here) and capped per
file: a file the Hub says is larger than the limit is not downloaded at all, and one that turns
out larger on disk is refused. The limit is `max_bytes`, else `$XTL_HUB_MAX_FILE_SIZE` (`500MB`,
`2GiB`, or bytes), else `DEFAULT_MAX_FILE_BYTES`; task modules are megabytes, so the default only
stops what is not a module (or a server sending endless data).
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import XtlError

log = logging.getLogger(__name__)

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
REPO_ID_RE = re.compile(rf"^{_PART}/{_PART}$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,127}$")
PATH_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DEFAULT_REVISION = "main"
MAX_FILE_SIZE_ENV = "XTL_HUB_MAX_FILE_SIZE"
DEFAULT_MAX_FILE_BYTES = 2 * 1024**3  # 2 GiB: far above any task module, far below a disk
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")

__all__ = ["DEFAULT_MAX_FILE_BYTES", "DEFAULT_REVISION", "MAX_FILE_SIZE_ENV", "REPO_ID_RE", "REVISION_RE", "SHA_RE",
           "api", "check_pin", "check_repo_id", "check_repo_path", "check_revision", "check_sha", "download_files",
           "endpoint_url", "format_size", "hub_errors", "looks_like_repo_spec", "max_file_bytes", "parse_repo_spec",
           "parse_size", "REPO_TYPES", "resolve", "upload_folder", "user_name"]


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


def check_pin(repo_id: Any, revision: Any) -> tuple[str, str]:
    """A repo id and the commit sha it is pinned to (what a lazily pulled module records)."""
    return check_repo_id(repo_id), check_sha(revision)


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


def parse_size(value: Any, where: str = "--max-file-size") -> int:
    """A size like `500MB`, `2GiB`, `1.5G` or `123456` (bytes) as a positive number of bytes."""
    m = _SIZE_RE.match(str(value)) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise XtlError(f"invalid size {value!r}", where=where,
                       fix="give a positive size in bytes or with a unit: 500MB, 2GB, 4GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def max_file_bytes(max_bytes: int | str | None = None) -> int:
    """The per-file download limit: `max_bytes`, else $XTL_HUB_MAX_FILE_SIZE, else the default."""
    if max_bytes is not None:
        return parse_size(max_bytes)
    env = os.environ.get(MAX_FILE_SIZE_ENV, "").strip()
    return parse_size(env, where=f"${MAX_FILE_SIZE_ENV}") if env else DEFAULT_MAX_FILE_BYTES


def _check_size(fn: str, size: int | None, limit: int, what: str) -> None:
    if size is not None and size > limit:
        raise XtlError(
            f"{fn} in {what} is {format_size(size)} ({size} bytes), over the download limit of "
            f"{format_size(limit)}", where=what,
            fix=f"if you trust this repo, raise the limit with --max-file-size (e.g. --max-file-size "
            f"{format_size(size * 2).replace(' ', '')}) or ${MAX_FILE_SIZE_ENV}; a task module is normally "
            "a few MB")


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
                   endpoint: str | None = None, max_bytes: int | str | None = None) -> dict[str, Path]:
    """Download files of one pinned revision into `dest`; name -> local path.

    Each file is streamed to disk by `hf_hub_download`. Its size is asked first (the same HEAD
    request huggingface_hub makes) and a file over `max_file_bytes(max_bytes)` is refused before
    any of it is fetched; the size on disk is checked again afterwards.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    repo_id = check_repo_id(repo_id)
    revision = check_revision(revision)
    limit = max_file_bytes(max_bytes)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    what = f"{repo_id}@{revision[:12]}"
    out: dict[str, Path] = {}
    for fn in filenames:
        check_repo_path(fn)
        url = hf_hub_url(repo_id, fn, revision=revision, repo_type="model", endpoint=endpoint_url(endpoint))
        with hub_errors(f"download {fn} from", repo_id, revision[:12]):
            meta = get_hf_file_metadata(url, token=token or None, endpoint=endpoint_url(endpoint))
            _check_size(fn, meta.size, limit, what)
            path = hf_hub_download(repo_id=repo_id, filename=fn, revision=revision, repo_type="model",
                                   local_dir=str(dest), token=token or None, endpoint=endpoint_url(endpoint))
        path = Path(path).resolve()
        if dest.resolve() not in path.parents:  # belt and braces: names are validated above
            raise XtlError(f"download of {fn!r} landed outside {dest}", where=repo_id)
        _check_size(fn, path.stat().st_size, limit, what)
        out[fn] = path
    return out


def user_name(*, token: str | None = None, endpoint: str | None = None) -> str:
    """The Hub user the token belongs to (`whoami`)."""
    with hub_errors("find the user name for", "whoami"):
        return api(token, endpoint).whoami().get("name")


REPO_TYPES = ("model", "dataset")


def upload_folder(repo_id: str, folder: Path, *, private: bool = False, commit_message: str,
                  token: str | None = None, endpoint: str | None = None, repo_type: str = "model") -> str:
    """Create the repo (a model repo, or a `dataset` one) if needed (`private` applies then) and
    commit `folder`; the commit sha."""
    repo_id = check_repo_id(repo_id)
    if repo_type not in REPO_TYPES:
        raise XtlError(f"unknown repo type {repo_type!r}", where="repo_type", fix="use model or dataset")
    hf = api(token, endpoint)
    with hub_errors("create", repo_id):
        hf.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
    with hub_errors("upload to", repo_id):
        info = hf.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type,
                                commit_message=commit_message)
    return check_sha(info.oid)
