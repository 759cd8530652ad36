"""The local module registry: a folder of trained task modules with their provenance.

Layout (root: `$XTL_REGISTRY`, else `./registry`)::

    <root>/index.json                      cache: name -> version -> {task, method, backbone, ...}
    <root>/.index.lock                     file lock serialising writers (index + version choice)
    <root>/<name>/<version>/manifest.json  `Manifest`: provenance, scores, sha256 of every file
    <root>/<name>/<version>/weights.safetensors
    <root>/<name>/<version>/README.md      model card (`adapters_xtl.card.render_card`)

Guarantees:
- Writes are atomic. A module version is written into `<root>/.tmp-<uuid>/` and renamed into
  place, so a reader sees a whole version or none; a killed writer leaves only a `.tmp-*` folder,
  which `verify()` reports as harmless and `verify(fix=True)` removes. Small files (index,
  manifest, card) are replaced with write-to-temp + `os.replace`.
- Writers hold `<root>/.index.lock` (an OS file lock, released if the process dies) while they
  choose a version number, rename the folder in and update the index; the heavy weight writing
  happens before, outside the lock.
- The folders are the truth; `index.json` is a cache, rebuilt when missing or unreadable.
- Loading verifies the sha256 of every file listed in the manifest and refuses a module whose
  backbone fingerprint differs from the one a run uses, unless explicitly allowed.
- Weights are safetensors only: nothing is ever unpickled.
- Names and versions are validated so that nothing is read or written outside the root.
- A version pulled from the Hub with `--lazy` is a *stub*: manifest.json + README.md, with
  `hub: {repo_id, revision, lazy: true}` and the sha256 of the files still on the Hub. `load`
  (or `materialize`) downloads them from that pinned commit, checks each hash, moves them in
  atomically and drops `lazy`; `verify` treats a stub's absent files as expected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import filelock
import torch
from pydantic import ValidationError

from .errors import XtlError, did_you_mean
from .manifest import BackboneFingerprint, Manifest, config_hash

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
README = "README.md"
INDEX = "index.json"
LOCK = ".index.lock"
TMP_PREFIX = ".tmp-"
OWNER = ".owner"  # inside a temp folder: who is writing it (pid, host), so verify leaves it alone

INDEX_SCHEMA = 1
LOCK_TIMEOUT_S = 120.0
# A temp folder without a readable owner file is left alone this long (it may be just created).
FRESH_TMP_S = 60.0

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESERVED_NAMES = {INDEX.lower(), README.lower()}  # files that live in the root
RESERVED_FILES = {MANIFEST, WEIGHTS, README}


# ---------------------------------------------------------------------------------------------
# validation


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


def _check_file_name(fn: Any, where: str) -> str:
    if not isinstance(fn, str) or not FILE_RE.match(fn) or ".." in fn or fn.startswith(TMP_PREFIX):
        raise XtlError(
            f"invalid file name {fn!r}",
            where=where,
            fix="use a plain file name (letters, digits, '.', '_', '-'; no folders, no '..')",
        )
    return fn


def is_stub(manifest: Manifest) -> bool:
    """True for a version pulled with `--lazy`: its files are fetched from the Hub on first load."""
    hub = manifest.hub or {}
    return bool(hub.get("lazy")) and bool(hub.get("repo_id")) and bool(hub.get("revision"))


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key: token versions first (alphabetically), then numbers ascending; last = latest."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


# ---------------------------------------------------------------------------------------------
# small file helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a reader sees the old or the new content, never half."""
    tmp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors only; a separate function so tests can interrupt a write here."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    _fsync_file(path)


def _prepare_tensors(tensors: Any) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached, no shared storage (safetensors refuses aliased tensors)."""
    if not isinstance(tensors, Mapping):
        raise XtlError(
            f"weights must be a dict of name -> torch.Tensor, got {type(tensors).__name__}",
            where="Registry.save(tensors=...)",
            fix="pass module.state_dict() (or the method's trainable-state dict)",
        )
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(key, str) or not key:
            raise XtlError(f"tensor name {key!r} is not a non-empty string", where="Registry.save(tensors=...)",
                           fix="use state-dict style string keys")
        if not isinstance(value, torch.Tensor):
            raise XtlError(f"tensors[{key!r}] is a {type(value).__name__}, not a torch.Tensor",
                           where="Registry.save(tensors=...)", fix="store only tensors in the weights dict; put "
                           "other values in the manifest (method_config / head)")
        t = value.detach().to("cpu").contiguous()
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:  # a view of a tensor already in the dict
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            seen.add(ptr)
        out[key] = t
    return out


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


# ---------------------------------------------------------------------------------------------
# the registry


class Registry:
    """A folder of task modules: `<root>/<name>/<version>/{manifest.json, weights.safetensors, README.md}`."""

    def __init__(self, root: str | Path | None = None):
        if root is None:
            root = os.environ.get("XTL_REGISTRY") or "registry"
        self.root = Path(root).expanduser().absolute()
        self._lock_obj: filelock.FileLock | None = None

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- paths and locking ----------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    def path(self, name: str, version: str | None = None) -> Path:
        """Folder of one module version (latest when `version` is None); it must exist."""
        name = check_name(name)
        version = self._resolve_version(name, version)
        return self.root / name / version

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._lock_obj is None:
            self._lock_obj = filelock.FileLock(str(self.root / LOCK), timeout=LOCK_TIMEOUT_S)
        try:
            self._lock_obj.acquire()
        except filelock.Timeout:
            raise XtlError(
                f"timed out after {LOCK_TIMEOUT_S:.0f} s waiting for the registry lock",
                where=str(self.root / LOCK),
                fix="another xtl process is writing to this registry; wait for it to finish (the lock "
                "is released automatically when that process exits)",
            ) from None
        try:
            yield
        finally:
            self._lock_obj.release()

    # -- reading ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Module names present as folders (valid names only), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and NAME_RE.match(p.name) and ".." not in p.name
        )

    def _version_dirs(self, name: str) -> list[str]:
        d = self.root / name
        if not d.is_dir():
            return []
        return [
            p.name for p in d.iterdir()
            if p.is_dir() and VERSION_RE.match(p.name) and ".." not in p.name and not p.name.startswith(".")
        ]

    def versions(self, name: str) -> list[str]:
        """Versions of a module that have a manifest, oldest to latest (see `version_key`)."""
        name = check_name(name)
        self._require_name(name)
        return sorted(
            (v for v in self._version_dirs(name) if (self.root / name / v / MANIFEST).is_file()),
            key=version_key,
        )

    def _require_name(self, name: str) -> None:
        if (self.root / name).is_dir():
            return
        names = self.names()
        if names:
            fix = did_you_mean(name, names)
        else:
            fix = (f"nothing is registered in {self.root} yet: train a module first, or point "
                   "$XTL_REGISTRY (or --registry) at the registry that has it")
        raise XtlError(f"no module named {name!r} in the registry", where=str(self.root), fix=fix)

    def _resolve_version(self, name: str, version: str | int | None) -> str:
        versions = self.versions(name)
        if version is None:
            if not versions:
                raise XtlError(
                    f"module {name!r} has no complete version (no folder with a {MANIFEST})",
                    where=str(self.root / name),
                    fix="run `xtl registry verify` to see what is wrong, or delete the folder and retrain",
                )
            return versions[-1]
        version = check_version(version)
        if version not in versions:
            raise XtlError(
                f"module {name!r} has no version {version!r}",
                where=str(self.root / name),
                fix=f"existing versions: {', '.join(versions) or 'none'}; leave the version out for the latest",
            )
        return version

    def _read_manifest(self, path: Path) -> Manifest:
        """Parse one manifest.json, with an XtlError naming the file when it is unreadable."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Manifest.model_validate(data)
        except FileNotFoundError:
            raise XtlError(f"{MANIFEST} is missing", where=str(path),
                           fix="restore the file, or delete this version folder and retrain") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise XtlError(f"{MANIFEST} is not readable JSON ({e})", where=str(path),
                           fix="restore the file from a backup or the Hub, or delete this version folder") from None
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first.get("loc", ()))
            raise XtlError(f"{MANIFEST} is not a valid manifest: field {loc!r}: {first.get('msg')} "
                           f"({e.error_count()} problem(s))", where=str(path),
                           fix="restore the file, or delete this version folder and retrain") from None

    def manifest(self, name: str, version: str | int | None = None) -> Manifest:
        """The manifest of one version (latest when None)."""
        name = check_name(name)
        version = self._resolve_version(name, version)
        path = self.root / name / version / MANIFEST
        m = self._read_manifest(path)
        if m.name != name or m.version != version:
            raise XtlError(
                f"manifest says {m.name!r} version {m.version!r} but lives in {name}/{version}",
                where=str(path),
                fix="a folder was copied or renamed by hand: move it back to <name>/<version> matching "
                "its manifest (or fix the manifest's name/version fields)",
            )
        return m

    def load(
        self,
        name: str,
        version: str | int | None = None,
        *,
        expect_backbone: BackboneFingerprint | None = None,
        allow_backbone_mismatch: bool = False,
    ) -> tuple[Manifest, dict[str, torch.Tensor]]:
        """Manifest and weights of one version (latest when None), hashes verified."""
        from safetensors.torch import load as load_safetensors

        m = self.manifest(name, version)
        vdir = self.root / m.name / m.version
        if expect_backbone is not None:
            if isinstance(expect_backbone, Mapping):
                expect_backbone = BackboneFingerprint.model_validate(expect_backbone)
            diffs = m.backbone.differences(expect_backbone)
            if diffs:
                msg = (f"module {m.name!r} version {m.version} was trained on backbone {m.backbone.short()}, "
                       f"but this run uses {expect_backbone.short()}; differs in "
                       + "; ".join(diffs) + " (module's != this run's)")
                if not allow_backbone_mismatch:
                    raise XtlError(
                        msg,
                        where=f"{vdir / MANIFEST}: backbone",
                        fix="retrain the module on this backbone (or pick one registered for it: `xtl registry "
                        "list`), or load it anyway with --allow-backbone-mismatch "
                        "(allow_backbone_mismatch=True); its recorded scores will not carry over",
                    )
                log.warning("loading despite backbone mismatch: %s", msg)
        if WEIGHTS not in m.files:
            raise XtlError(
                f"{MANIFEST} lists no sha256 for {WEIGHTS}, so the weights cannot be verified",
                where=f"{vdir / MANIFEST}: files",
                fix="re-save the module through Registry.save (or re-pull it), which records the hashes",
            )
        if is_stub(m) and self.missing_files(m):
            m = self.materialize(m.name, m.version)
        weights_bytes = b""
        for fn, expected in m.files.items():
            data = self._read_verified(vdir, fn, expected)
            if fn == WEIGHTS:
                weights_bytes = data
        try:
            tensors = load_safetensors(weights_bytes)
        except Exception as e:  # safetensors raises its own error types
            raise XtlError(f"{WEIGHTS} is not a valid safetensors file ({e})", where=str(vdir / WEIGHTS),
                           fix="delete this version folder and retrain or re-pull the module") from None
        return m, tensors

    def _read_verified(self, vdir: Path, fn: str, expected: str) -> bytes:
        _check_file_name(fn, where=f"{vdir / MANIFEST}: files")
        path = vdir / fn
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise XtlError(f"{fn} is listed in {MANIFEST} but missing", where=str(path),
                           fix="restore the file (re-pull the module), or delete this version folder and "
                           "retrain") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise XtlError(
                f"sha256 mismatch for {fn}: file has {actual[:16]}…, {MANIFEST} records {str(expected)[:16]}… "
                "(the file changed after it was saved: a corrupt copy or an edit)",
                where=str(path),
                fix="restore the original file (re-pull the module), or delete this version folder and retrain",
            )
        return data

    def _all_manifests(self) -> Iterator[Manifest]:
        """Every readable manifest whose folder matches its name/version (broken ones skipped)."""
        for name in self.names():
            for version in self._version_dirs(name):
                path = self.root / name / version / MANIFEST
                if not path.is_file():
                    continue
                try:
                    m = self._read_manifest(path)
                except XtlError as e:
                    log.warning("skipping unreadable module: %s", e)
                    continue
                if m.name == name and m.version == version:
                    yield m

    def list(self) -> list[Manifest]:
        """Latest version of every module, from the folders; rebuilds a missing/corrupt index."""
        out = []
        for name in self.names():
            versions = self.versions(name)
            for version in reversed(versions):  # latest readable one
                try:
                    out.append(self.manifest(name, version))
                    break
                except XtlError as e:
                    log.warning("skipping unreadable module: %s", e)
        if self.root.is_dir() and (out or self.index_path.exists()) and self._read_index() is None:
            with self._lock():
                if self._read_index() is None:
                    self._write_index(self._rebuild_index())
        return out

    def find(
        self,
        *,
        task: str,
        method: str,
        method_config: dict,
        backbone: BackboneFingerprint,
        composition: dict | None = None,
        steps: int | None = None,
        seed: int | None = None,
    ) -> Manifest | None:
        """Newest module trained for exactly this task, method config, composition and backbone.

        `composition` is compared exactly (None matches only modules trained alone); `steps` and
        `seed` match anything when None. Newest = latest `created_at`, then highest version.
        """
        if isinstance(backbone, Mapping):
            backbone = BackboneFingerprint.model_validate(backbone)
        want_cfg = config_hash(method_config or {})
        want_comp = config_hash(composition) if composition else None
        best: Manifest | None = None
        for m in self._all_manifests():
            if m.task != task or m.method != method or m.backbone != backbone:
                continue
            if config_hash(m.method_config or {}) != want_cfg:
                continue
            if (config_hash(m.composition) if m.composition else None) != want_comp:
                continue
            if steps is not None and m.steps != steps:
                continue
            if seed is not None and m.seed != seed:
                continue
            if best is None or (m.created_at, version_key(m.version)) > (best.created_at, version_key(best.version)):
                best = m
        return best

    # -- index --------------------------------------------------------------------------------

    @staticmethod
    def _index_entry(m: Manifest) -> dict[str, Any]:
        return {
            "task": m.task,
            "method": m.method,
            "backbone": m.backbone.short(),
            "reuse_key": m.reuse_key(),
            "created_at": m.created_at,
        }

    def _read_index(self) -> dict[str, Any] | None:
        """The index, or None when missing or unreadable."""
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("modules"), dict):
            return None
        if not all(isinstance(v, dict) for v in data["modules"].values()):
            return None
        return data

    def index(self) -> dict[str, dict[str, dict[str, Any]]]:
        """name -> version -> {task, method, backbone, reuse_key, created_at} (rebuilt if needed)."""
        data = self._read_index()
        if data is None:
            if not self.root.is_dir():
                return {}
            with self._lock():
                data = self._read_index()
                if data is None:
                    data = self._rebuild_index()
                    self._write_index(data)
        return data["modules"]

    def _rebuild_index(self) -> dict[str, Any]:
        modules: dict[str, dict[str, Any]] = {}
        for m in self._all_manifests():
            modules.setdefault(m.name, {})[m.version] = self._index_entry(m)
        return self._index_doc(modules)

    @staticmethod
    def _index_doc(modules: dict[str, dict[str, Any]]) -> dict[str, Any]:
        ordered = {n: dict(sorted(vs.items(), key=lambda kv: version_key(kv[0]))) for n, vs in sorted(modules.items())}
        return {"schema_version": INDEX_SCHEMA, "modules": ordered}

    def _write_index(self, data: dict[str, Any]) -> None:
        _atomic_write(self.index_path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())

    def _update_index(self, put: Manifest | None = None, drop: tuple[str, str | None] | None = None) -> None:
        """Under the lock: read (or rebuild) the index, apply one change, replace it atomically."""
        data = self._read_index()
        if data is None:
            data = self._rebuild_index()  # already reflects the folders, including this change
        modules = data["modules"]
        if put is not None:
            modules.setdefault(put.name, {})[put.version] = self._index_entry(put)
        if drop is not None:
            name, version = drop
            if version is None:
                modules.pop(name, None)
            elif name in modules:
                modules[name].pop(version, None)
                if not modules[name]:
                    modules.pop(name)
        self._write_index(self._index_doc(modules))

    # -- writing ------------------------------------------------------------------------------

    def _next_version(self, name: str) -> str:
        numbers = [int(v) for v in self._version_dirs(name) if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def save(
        self,
        manifest: Manifest,
        tensors: dict[str, torch.Tensor],
        *,
        card: str | None = None,
        extra_files: dict[str, bytes] | None = None,
        version: str | int | None = None,
    ) -> Manifest:
        """Write a new module version atomically and return its final manifest.

        `version` None -> the next integer; `manifest.version` is ignored. `card` replaces the
        generated README.md. `extra_files` (plain names -> bytes) are stored and hashed too.
        """
        from .card import render_card

        if not isinstance(manifest, Manifest):
            raise XtlError(f"expected a Manifest, got {type(manifest).__name__}", where="Registry.save(manifest=...)",
                           fix="build an adapters_xtl.manifest.Manifest")
        name = check_name(manifest.name)
        if version is not None:
            version = check_version(version)
        prepared = _prepare_tensors(tensors)
        extras: dict[str, bytes] = {}
        for fn, data in (extra_files or {}).items():
            _check_file_name(fn, where="Registry.save(extra_files=...)")
            if fn in RESERVED_FILES or fn == OWNER:
                raise XtlError(f"extra file name {fn!r} is reserved", where="Registry.save(extra_files=...)",
                               fix=f"rename it; {', '.join(sorted(RESERVED_FILES))} are written by the registry")
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise XtlError(f"extra file {fn!r} must be bytes, got {type(data).__name__}",
                               where="Registry.save(extra_files=...)", fix="encode text with .encode('utf-8')")
            extras[fn] = bytes(data)

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            _write_file(tmp / OWNER, json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
            metadata = {"format": "pt", "adapters_xtl.name": name, "adapters_xtl.task": manifest.task,
                        "adapters_xtl.method": manifest.method}
            _write_weights(tmp / WEIGHTS, prepared, metadata)
            for fn, data in extras.items():
                _write_file(tmp / fn, data)
            with self._lock():
                if version is None:
                    final_version = self._next_version(name)
                else:
                    final_version = version
                    if (self.root / name / final_version).exists():
                        raise XtlError(
                            f"module {name!r} already has version {final_version!r}",
                            where=str(self.root / name / final_version),
                            fix="leave the version out to get the next number, or remove that version first",
                        )
                m = manifest.model_copy(deep=True, update={"version": final_version, "files": {}})
                m = Manifest.model_validate(m.model_dump())
                readme = card if card is not None else render_card(m)
                _write_file(tmp / README, readme.encode("utf-8"))
                files = {fn: sha256_file(tmp / fn) for fn in [WEIGHTS, README, *extras]}
                m = m.model_copy(update={"files": files})
                _write_file(tmp / MANIFEST, (m.model_dump_json(indent=2) + "\n").encode())
                (tmp / OWNER).unlink()
                (self.root / name).mkdir(exist_ok=True)
                os.rename(tmp, self.root / name / final_version)
                self._update_index(put=m)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return m

    def update_scores(self, name: str, version: str | int | None, scores: dict[str, dict[str, float]]) -> Manifest:
        """Merge `scores` (language -> metric -> value) into a version's manifest and card."""
        from .card import GENERATED_MARKER, render_card

        clean: dict[str, dict[str, float]] = {}
        if not isinstance(scores, Mapping):
            raise XtlError(f"scores must be a dict language -> metric -> value, got {type(scores).__name__}",
                           where="Registry.update_scores(scores=...)", fix="e.g. {'de': {'accuracy': 0.71}}")
        for lang, per_metric in scores.items():
            if not isinstance(lang, str) or not isinstance(per_metric, Mapping):
                raise XtlError(f"scores[{lang!r}] must map metric names to numbers",
                               where="Registry.update_scores(scores=...)", fix="e.g. {'de': {'accuracy': 0.71}}")
            for metric, value in per_metric.items():
                try:
                    clean.setdefault(lang, {})[str(metric)] = float(value)
                except (TypeError, ValueError):
                    raise XtlError(f"scores[{lang!r}][{metric!r}] = {value!r} is not a number",
                                   where="Registry.update_scores(scores=...)", fix="pass floats") from None
        name = check_name(name)
        with self._lock():
            m = self.manifest(name, version)
            vdir = self.root / m.name / m.version
            merged = {lang: dict(v) for lang, v in m.scores.items()}
            for lang, per_metric in clean.items():
                merged.setdefault(lang, {}).update(per_metric)
            m = m.model_copy(deep=True, update={"scores": merged})
            files = dict(m.files)
            readme_path = vdir / README
            try:
                old_card = readme_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                old_card = None
            if old_card is None or GENERATED_MARKER in old_card:  # hand-written cards are kept
                _atomic_write(readme_path, render_card(m).encode("utf-8"))
                files[README] = sha256_file(readme_path)
            m = m.model_copy(update={"files": files})
            _atomic_write(vdir / MANIFEST, (m.model_dump_json(indent=2) + "\n").encode())
        return m

    # -- Hub: stubs, materialisation, provenance ------------------------------------------------

    def missing_files(self, manifest: Manifest) -> list[str]:
        """Files the manifest lists that are not (yet) in the version folder."""
        vdir = self.root / check_name(manifest.name) / check_version(manifest.version)
        return [fn for fn in manifest.files
                if not (vdir / _check_file_name(fn, where=f"{vdir / MANIFEST}: files")).is_file()]

    def _replace_manifest(self, vdir: Path, m: Manifest) -> Manifest:
        """Under the lock: re-render a generated card for `m`, then replace manifest.json atomically."""
        from .card import GENERATED_MARKER, render_card

        files = dict(m.files)
        readme_path = vdir / README
        try:
            old_card = readme_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            old_card = None
        if old_card is None or GENERATED_MARKER in old_card:  # hand-written cards are kept
            _atomic_write(readme_path, render_card(m).encode("utf-8"))
            files[README] = sha256_file(readme_path)
        m = m.model_copy(update={"files": files})
        _atomic_write(vdir / MANIFEST, (m.model_dump_json(indent=2) + "\n").encode())
        return m

    def set_hub(self, name: str, version: str | int | None, hub: Mapping[str, Any] | None) -> Manifest:
        """Record where a version lives on the Hub (`{repo_id, revision}`) in its manifest and card."""
        name = check_name(name)
        with self._lock():
            m = self.manifest(name, version)
            m = m.model_copy(deep=True, update={"hub": dict(hub) if hub else None})
            m = self._replace_manifest(self.root / m.name / m.version, m)
            self._update_index(put=m)
        return m

    def save_stub(self, manifest: Manifest, *, card: str | None = None, version: str | int | None = None) -> Manifest:
        """Register a version whose files stay on the Hub until first use (`xtl registry pull --lazy`).

        `manifest.hub` names the repo and its pinned commit (`{repo_id, revision}`, revision = 40 hex
        digits) and `manifest.files` the sha256 of every file there (weights included). Only
        manifest.json and README.md are written now; `load` (or `materialize`) downloads the rest,
        checks each file against its recorded sha256 and moves it in. The manifest then says
        `hub: {repo_id, revision, lazy: true}` until the files are local.
        """
        from .card import render_card
        from .hub import check_repo_id, check_sha

        if not isinstance(manifest, Manifest):
            raise XtlError(f"expected a Manifest, got {type(manifest).__name__}", where="Registry.save_stub",
                           fix="build an adapters_xtl.manifest.Manifest")
        name = check_name(manifest.name)
        if version is not None:
            version = check_version(version)
        hub = dict(manifest.hub or {})
        hub["repo_id"] = check_repo_id(hub.get("repo_id"))
        hub["revision"] = check_sha(hub.get("revision"))
        hub["lazy"] = True
        files: dict[str, str] = {}
        for fn, digest in manifest.files.items():
            _check_file_name(fn, where="Registry.save_stub(manifest.files)")
            if fn == README:
                continue  # written here
            if fn == MANIFEST or fn == OWNER:
                raise XtlError(f"manifest files lists the reserved name {fn!r}", where="Registry.save_stub")
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise XtlError(f"files[{fn!r}] is not a sha256 hex digest", where="Registry.save_stub",
                               fix="the Hub manifest is damaged; push the module again")
            files[fn] = digest
        if WEIGHTS not in files:
            raise XtlError(f"manifest lists no sha256 for {WEIGHTS}", where="Registry.save_stub",
                           fix="the Hub manifest is damaged; push the module again")

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            _write_file(tmp / OWNER, json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
            with self._lock():
                if version is None:
                    final_version = self._next_version(name)
                else:
                    final_version = version
                    if (self.root / name / final_version).exists():
                        raise XtlError(
                            f"module {name!r} already has version {final_version!r}",
                            where=str(self.root / name / final_version),
                            fix="pass another --name/--version, or remove that version first",
                        )
                m = manifest.model_copy(deep=True, update={"version": final_version, "files": files, "hub": hub})
                m = Manifest.model_validate(m.model_dump())
                readme = card if card is not None else render_card(m)
                _write_file(tmp / README, readme.encode("utf-8"))
                m = m.model_copy(update={"files": {**files, README: sha256_file(tmp / README)}})
                _write_file(tmp / MANIFEST, (m.model_dump_json(indent=2) + "\n").encode())
                (tmp / OWNER).unlink()
                (self.root / name).mkdir(exist_ok=True)
                os.rename(tmp, self.root / name / final_version)
                self._update_index(put=m)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return m

    def materialize(
        self,
        name: str,
        version: str | int | None = None,
        *,
        token: str | None = None,
        endpoint: str | None = None,
    ) -> Manifest:
        """Download the missing files of a stub from its pinned Hub revision; a no-op otherwise.

        Every file is checked against the sha256 in the manifest before it is moved in (one
        atomic rename each, under the lock); the manifest then drops `hub.lazy`.
        """
        from safetensors import safe_open

        from .hub import download_files

        m = self.manifest(name, version)
        if not is_stub(m):
            return m
        vdir = self.root / m.name / m.version
        missing = self.missing_files(m)
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            _write_file(tmp / OWNER, json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode())
            got: dict[str, Path] = {}
            if missing:
                log.info("fetching %s from %s@%s", ", ".join(missing), m.hub["repo_id"], m.hub["revision"])
                got = download_files(m.hub["repo_id"], m.hub["revision"], missing, tmp / "download",
                                     token=token, endpoint=endpoint)
                for fn in missing:
                    actual = sha256_file(got[fn])
                    if actual != m.files[fn]:
                        raise XtlError(
                            f"sha256 mismatch for {fn} from {m.hub['repo_id']}@{m.hub['revision'][:12]}: got "
                            f"{actual[:16]}…, {MANIFEST} records {m.files[fn][:16]}…",
                            where=str(vdir / MANIFEST),
                            fix="the Hub copy is not the one this stub was made from; pull the module again",
                        )
                    _fsync_file(got[fn])
                if WEIGHTS in got:
                    try:
                        with safe_open(str(got[WEIGHTS]), framework="pt"):
                            pass
                    except Exception as e:
                        raise XtlError(f"{WEIGHTS} from the Hub is not a valid safetensors file ({e})",
                                       where=f"{m.hub['repo_id']}@{m.hub['revision']}",
                                       fix="push the module again") from None
            with self._lock():
                current = self.manifest(m.name, m.version)
                for fn in missing:
                    if current.files.get(fn) != m.files[fn]:
                        raise XtlError(f"{MANIFEST} changed while {fn} was downloading", where=str(vdir / MANIFEST),
                                       fix="run the command again")
                    if not (vdir / fn).is_file():
                        os.replace(got[fn], vdir / fn)
                if not is_stub(current):
                    return current
                hub = {k: v for k, v in (current.hub or {}).items() if k != "lazy"}
                m = self._replace_manifest(vdir, current.model_copy(deep=True, update={"hub": hub}))
                self._update_index(put=m)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return m

    def remove(self, name: str, version: str | int | None = None) -> list[str]:
        """Delete one version (or every version when None); returns the removed versions."""
        name = check_name(name)
        with self._lock():
            self._require_name(name)
            if version is None:
                removed = sorted(self._version_dirs(name), key=version_key)
                src = self.root / name
            else:
                version = check_version(version)
                if version not in self._version_dirs(name):
                    raise XtlError(
                        f"module {name!r} has no version {version!r}",
                        where=str(self.root / name),
                        fix=f"existing versions: {', '.join(self.versions(name)) or 'none'}",
                    )
                removed = [version]
                src = self.root / name / version
            trash = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
            os.rename(src, trash)  # atomic: readers see the version or nothing
            if version is not None:
                try:
                    (self.root / name).rmdir()  # only when it was the last version
                except OSError:
                    pass
            self._update_index(drop=(name, version))
        shutil.rmtree(trash, ignore_errors=True)
        return removed

    # -- checking -----------------------------------------------------------------------------

    def _tmp_in_progress(self, path: Path) -> bool:
        """True when a temp folder belongs to a live writer (or is too fresh to judge)."""
        try:
            owner = json.loads((path / OWNER).read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            try:
                return time.time() - path.stat().st_mtime < FRESH_TMP_S
            except OSError:
                return False
        if host == socket.gethostname():
            return _pid_alive(pid)
        return time.time() - path.stat().st_mtime < 24 * 3600  # another machine's writer: give it a day

    def verify(self, fix: bool = False) -> list[str]:
        """Check every module and the index; return the problems found (empty = healthy).

        Checks: leftover `.tmp-*` folders/files from interrupted writes (harmless), unreadable or
        misplaced manifests, missing files, sha256 mismatches, and the index against the folders.
        With `fix=True` the safe repairs are made (temp leftovers deleted, empty module folders
        removed, index rebuilt from the folders) and the returned lines say so; damaged modules are
        only reported, never deleted.
        """
        if not self.root.is_dir():
            return []
        problems: list[str] = []
        done = " (fixed)" if fix else ""
        with self._lock():
            # 1. leftovers of interrupted writes
            for p in sorted(self.root.iterdir()):
                if not p.name.startswith(TMP_PREFIX):
                    continue
                if p.is_dir():
                    if self._tmp_in_progress(p):
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
            for d in sorted(self.root.iterdir()):
                if not d.is_dir() or d.name.startswith("."):
                    continue
                if not NAME_RE.match(d.name) or ".." in d.name:
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
                    m = self._verify_version(vdir, problems, fix)
                    if m is not None:
                        found.setdefault(m.name, {})[m.version] = m

            # 3. the index against the folders
            data = self._read_index()
            rebuild = False
            if data is None:
                if self.index_path.exists():
                    problems.append(f"{self.index_path}: unreadable or not a registry index{done}")
                    rebuild = True
                elif found:
                    problems.append(f"{self.index_path}: missing{done}")
                    rebuild = True
            else:
                indexed = data["modules"]
                for name, vs in sorted(indexed.items()):
                    for version, entry in sorted(vs.items()):
                        if version not in found.get(name, {}):
                            problems.append(
                                f"{self.index_path}: entry {name} version {version} has no valid folder{done}"
                            )
                            rebuild = True
                        elif entry != self._index_entry(found[name][version]):
                            problems.append(f"{self.index_path}: entry {name} version {version} is out of date{done}")
                            rebuild = True
                for name, vs in sorted(found.items()):
                    for version in sorted(vs):
                        if version not in indexed.get(name, {}):
                            problems.append(f"{self.root / name / version}: not listed in {INDEX}{done}")
                            rebuild = True
            if fix and rebuild:
                modules = {n: {v: self._index_entry(m) for v, m in vs.items()} for n, vs in found.items()}
                self._write_index(self._index_doc(modules))
        return problems

    def _verify_version(self, vdir: Path, problems: list[str], fix: bool) -> Manifest | None:
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
        if not VERSION_RE.match(version) or ".." in version:
            problems.append(f"{vdir}: folder name is not a valid version; ignored")
            return None
        try:
            m = self._read_manifest(vdir / MANIFEST)
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
                _check_file_name(fn, where=str(vdir / MANIFEST))
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
        # A damaged module is still a module: it stays in the index (as in _rebuild_index).
        return m
