"""The local module registry: a folder of trained task modules with their provenance.

Layout: see `store.layout` (root: `$XTL_REGISTRY`, else `./registry`).

Guarantees:
- Writes are atomic. A module version is written into `<root>/.tmp-<uuid>/` and renamed into
  place, so a reader sees a whole version or none; a killed writer leaves only a `.tmp-*` folder,
  which `store.verify` reports as harmless and removes with `fix=True`. Small files (index,
  manifest, card) are replaced through `adapters_xtl.io` (temp file + fsync + `os.replace`).
- Writers hold `<root>/.index.lock` (an OS file lock, released if the process dies) while they
  choose a version number, rename the folder in and update the index; the heavy weight writing
  happens before, outside the lock.
- The folders are the truth; `index.json` is a cache (`store.index`), rebuilt when unreadable.
- Loading verifies the sha256 of every file listed in the manifest and refuses a module whose
  backbone fingerprint differs from the one a run uses, unless explicitly allowed.
- Weights are safetensors only: nothing is ever unpickled.
- Names and versions are validated, and symbolic links that leave the root are refused
  (`layout.check_inside`), so that nothing is read or written outside the root.
- A version pulled from the Hub with `--lazy` is a *stub*: manifest.json + README.md, with
  `hub: {repo_id, revision, lazy: true}` and the sha256 of the files still on the Hub. `load`
  (or `materialize`) fetches them from that pinned commit through a `Remote` (the registry never
  imports the Hub; `adapters_xtl.store` installs it) to disk, checks each hash in chunks, moves
  them in atomically with the user's permissions and drops `lazy`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import filelock
import torch

from ..errors import XtlError, did_you_mean
from ..io import atomic_write_bytes, atomic_write_text
from . import index as _index
from . import weights as _weights
from .card import GENERATED_MARKER, render_card
from .files import move_verified, sha256_stream
from .layout import (INDEX, LOCK, MANIFEST, OWNER, README, RESERVED_FILES, SHA256_RE, TMP_PREFIX, WEIGHTS,
                     check_file_name, check_inside, check_name, check_version, is_stub, is_valid_name,
                     is_valid_version, outside_link, sha256_file, version_key, write_owner)
from .manifest import BackboneFingerprint, Manifest, check_backbone, check_scores, config_hash, read_manifest
from .remote import Remote, default_remote

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 120.0

__all__ = ["LOCK_TIMEOUT_S", "Registry"]


class Registry:
    """A folder of task modules: `<root>/<name>/<version>/{manifest.json, weights.safetensors, README.md}`.

    `remote` fetches the files of lazily pulled versions (default: the Hub, see `store.remote`).
    """

    def __init__(self, root: str | Path | None = None, *, remote: Remote | None = None):
        if root is None:
            root = os.environ.get("XTL_REGISTRY") or "registry"
        self.root = Path(root).expanduser().absolute()
        self._remote = remote
        self._lock_obj: filelock.FileLock | None = None

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- paths and locking ----------------------------------------------------------------

    @property
    def remote(self) -> Remote:
        return self._remote or default_remote()

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    def path(self, name: str, version: str | None = None) -> Path:
        """Folder of one module version (latest when `version` is None); it must exist."""
        name = check_name(name)
        version = self._resolve_version(name, version)
        return self._inside(self.root / name / version)

    def _inside(self, path: Path) -> Path:
        """`path`, refused when a symbolic link on the way leaves the root (see `layout.check_inside`)."""
        return check_inside(self.root, path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the writers' lock (re-entrant within this Registry object)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._inside(self.root / LOCK)
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
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_valid_name(p.name))

    def _version_dirs(self, name: str) -> list[str]:
        d = self.root / name
        if not d.is_dir():
            return []
        return [p.name for p in d.iterdir() if p.is_dir() and is_valid_version(p.name)]

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

    def manifest(self, name: str, version: str | int | None = None) -> Manifest:
        """The manifest of one version (latest when None)."""
        name = check_name(name)
        version = self._resolve_version(name, version)
        path = self._inside(self.root / name / version / MANIFEST)
        m = read_manifest(path)
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
        m = self.manifest(name, version)
        vdir = self.root / m.name / m.version
        if expect_backbone is not None:
            check_backbone(m, expect_backbone, allow_mismatch=allow_backbone_mismatch,
                           where=f"{vdir / MANIFEST}: backbone")
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
        return m, _weights.from_bytes(weights_bytes, where=str(vdir / WEIGHTS))

    def _read_verified(self, vdir: Path, fn: str, expected: str) -> bytes:
        check_file_name(fn, where=f"{vdir / MANIFEST}: files")
        path = self._inside(vdir / fn)
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

    def all_manifests(self) -> Iterator[Manifest]:
        """Every readable manifest whose folder matches its name/version (broken ones skipped)."""
        for name in self.names():
            for version in self._version_dirs(name):
                path = self.root / name / version / MANIFEST
                if not path.is_file():
                    continue
                if (bad := outside_link(self.root, path)) is not None:
                    log.warning("skipping %s: a symbolic link to %s, outside the registry", *bad)
                    continue
                try:
                    m = read_manifest(path)
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
        if self.root.is_dir() and (out or self.index_path.exists()) and _index.read_index(self.root) is None:
            self.index()
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
        if not isinstance(backbone, BackboneFingerprint):
            backbone = BackboneFingerprint.model_validate(backbone)
        want_cfg = config_hash(method_config or {})
        want_comp = config_hash(composition) if composition else None
        best: Manifest | None = None
        for m in self.all_manifests():
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

    def index(self) -> dict[str, dict[str, dict[str, Any]]]:
        """name -> version -> {task, method, backbone, reuse_key, created_at} (rebuilt if needed)."""
        data = _index.read_index(self.root)
        if data is None or not self._index_matches_folders(data):
            if not self.root.is_dir():
                return {}
            with self.lock():
                data = _index.read_index(self.root)
                if data is None or not self._index_matches_folders(data):
                    data = _index.rebuild(self.all_manifests())
                    _index.write_index(self.root, data)
        return data["modules"]

    def _folder_versions(self) -> set[tuple[str, str]]:
        return {(n, v) for n in self.names() for v in self.versions(n)}

    def _index_matches_folders(self, data: dict[str, Any]) -> bool:
        """Whether the index lists exactly the version folders (a kill between the rename of a new
        version and the index update leaves the index one version behind; listing is cheap)."""
        listed = {(n, v) for n, vs in data["modules"].items() for v in vs}
        return listed == self._folder_versions()

    def _update_index(self, put: Manifest | None = None, drop: tuple[str, str | None] | None = None) -> None:
        """Under the lock: read (or rebuild) the index, apply one change, replace it atomically."""
        data = _index.read_index(self.root)
        if data is not None:
            data = _index.updated(data, put=put, drop=drop)
        if data is None or not self._index_matches_folders(data):  # missing, corrupt, or behind after a kill
            data = _index.rebuild(self.all_manifests())  # reflects the folders, including this change
        _index.write_index(self.root, data)

    # -- writing ------------------------------------------------------------------------------

    def _next_version(self, name: str) -> str:
        numbers = [int(v) for v in self._version_dirs(name) if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def _draft(self) -> Path:
        """A new temp folder in the root, marked with its writer (see `store.verify`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        write_owner(tmp)
        return tmp

    def _publish(self, tmp: Path, manifest: Manifest, version: str | None, update: dict[str, Any], card: str | None,
                 files: Callable[[Path], dict[str, str]], taken_fix: str) -> Manifest:
        """Under the lock: choose the version, write card and manifest, rename `tmp` in, index it.

        `files(tmp)` gives the manifest's file hashes once README.md is written.
        """
        name = manifest.name
        with self.lock():
            self._inside(self.root / name)  # a module folder linked elsewhere would take the version
            if version is None:
                final_version = self._next_version(name)
            else:
                final_version = version
                if (self.root / name / final_version).exists():
                    raise XtlError(f"module {name!r} already has version {final_version!r}",
                                   where=str(self.root / name / final_version), fix=taken_fix)
            m = manifest.model_copy(deep=True, update={**update, "version": final_version})
            m = Manifest.model_validate(m.model_dump())
            atomic_write_text(tmp / README, card if card is not None else render_card(m))
            m = m.model_copy(update={"files": files(tmp)})
            atomic_write_text(tmp / MANIFEST, m.model_dump_json(indent=2) + "\n")
            (tmp / OWNER).unlink()
            (self.root / name).mkdir(exist_ok=True)
            os.rename(tmp, self.root / name / final_version)
            self._update_index(put=m)
        return m

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
        if not isinstance(manifest, Manifest):
            raise XtlError(f"expected a Manifest, got {type(manifest).__name__}", where="Registry.save(manifest=...)",
                           fix="build an adapters_xtl.store.manifest.Manifest")
        name = check_name(manifest.name)
        if version is not None:
            version = check_version(version)
        prepared = _weights.prepare(tensors)
        extras: dict[str, bytes] = {}
        for fn, data in (extra_files or {}).items():
            check_file_name(fn, where="Registry.save(extra_files=...)")
            if fn in RESERVED_FILES or fn == OWNER:
                raise XtlError(f"extra file name {fn!r} is reserved", where="Registry.save(extra_files=...)",
                               fix=f"rename it; {', '.join(sorted(RESERVED_FILES))} are written by the registry")
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise XtlError(f"extra file {fn!r} must be bytes, got {type(data).__name__}",
                               where="Registry.save(extra_files=...)", fix="encode text with .encode('utf-8')")
            extras[fn] = bytes(data)

        tmp = self._draft()
        try:
            metadata = {"format": "pt", "adapters_xtl.name": name, "adapters_xtl.task": manifest.task,
                        "adapters_xtl.method": manifest.method}
            _weights.write_weights(tmp / WEIGHTS, prepared, metadata)  # tests interrupt a save here
            for fn, data in extras.items():
                atomic_write_bytes(tmp / fn, data)
            return self._publish(
                tmp, manifest, version, {"files": {}}, card,
                lambda tmp: {fn: sha256_file(tmp / fn) for fn in [WEIGHTS, README, *extras]},
                taken_fix="leave the version out to get the next number, or remove that version first",
            )
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def update_scores(self, name: str, version: str | int | None, scores: dict[str, dict[str, float]]) -> Manifest:
        """Merge `scores` (language -> metric -> value) into a version's manifest and card."""
        clean = check_scores(scores)
        name = check_name(name)
        with self.lock():
            m = self.manifest(name, version)
            merged = {lang: dict(v) for lang, v in m.scores.items()}
            for lang, per_metric in clean.items():
                merged.setdefault(lang, {}).update(per_metric)
            return self._replace_manifest(m.model_copy(deep=True, update={"scores": merged}))

    def _replace_manifest(self, m: Manifest) -> Manifest:
        """Under the lock: re-render a generated card for `m`, then replace manifest.json atomically."""
        vdir = self._inside(self.root / m.name / m.version)
        files = dict(m.files)
        readme_path = self._inside(vdir / README)
        try:
            old_card = readme_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            old_card = None
        if old_card is None or GENERATED_MARKER in old_card:  # hand-written cards are kept
            atomic_write_text(readme_path, render_card(m))
            files[README] = sha256_file(readme_path)
        m = m.model_copy(update={"files": files})
        atomic_write_text(vdir / MANIFEST, m.model_dump_json(indent=2) + "\n")
        return m

    def remove(self, name: str, version: str | int | None = None) -> list[str]:
        """Delete one version (or every version when None); returns the removed versions."""
        name = check_name(name)
        with self.lock():
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
            self._inside(src)
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

    # -- Hub provenance, stubs and their completion -------------------------------------------

    def set_hub(self, name: str, version: str | int | None, hub: Mapping[str, Any] | None) -> Manifest:
        """Record where a version lives on the Hub (`{repo_id, revision}`) in its manifest and card."""
        name = check_name(name)
        with self.lock():
            m = self.manifest(name, version)
            m = self._replace_manifest(m.model_copy(deep=True, update={"hub": dict(hub) if hub else None}))
            self._update_index(put=m)
        return m

    def missing_files(self, manifest: Manifest) -> list[str]:
        """Files the manifest lists that are not (yet) in the version folder."""
        vdir = self._inside(self.root / check_name(manifest.name) / check_version(manifest.version))
        return [fn for fn in manifest.files
                if not (vdir / check_file_name(fn, where=f"{vdir / MANIFEST}: files")).is_file()]

    def save_stub(self, manifest: Manifest, *, card: str | None = None, version: str | int | None = None) -> Manifest:
        """Register a version whose files stay on the Hub until first use (`xtl registry pull --lazy`).

        `manifest.hub` names the repo and its pinned commit (`{repo_id, revision}`, revision = 40 hex
        digits) and `manifest.files` the sha256 of every file there (weights included). Only
        manifest.json and README.md are written now; `load` (or `materialize`) downloads the rest,
        checks each file against its recorded sha256 and moves it in. The manifest then says
        `hub: {repo_id, revision, lazy: true}` until the files are local.
        """
        if not isinstance(manifest, Manifest):
            raise XtlError(f"expected a Manifest, got {type(manifest).__name__}", where="Registry.save_stub",
                           fix="build an adapters_xtl.store.manifest.Manifest")
        check_name(manifest.name)
        if version is not None:
            version = check_version(version)
        hub = dict(manifest.hub or {})
        hub["repo_id"], hub["revision"] = self.remote.check_pin(hub.get("repo_id"), hub.get("revision"))
        hub["lazy"] = True
        files: dict[str, str] = {}
        for fn, digest in manifest.files.items():
            check_file_name(fn, where="Registry.save_stub(manifest.files)")
            if fn == README:
                continue  # written here
            if fn == MANIFEST or fn == OWNER:
                raise XtlError(f"manifest files lists the reserved name {fn!r}", where="Registry.save_stub")
            if not isinstance(digest, str) or not SHA256_RE.match(digest):
                raise XtlError(f"files[{fn!r}] is not a sha256 hex digest", where="Registry.save_stub",
                               fix="the Hub manifest is damaged; push the module again")
            files[fn] = digest
        if WEIGHTS not in files:
            raise XtlError(f"manifest lists no sha256 for {WEIGHTS}", where="Registry.save_stub",
                           fix="the Hub manifest is damaged; push the module again")

        tmp = self._draft()
        try:
            return self._publish(
                tmp, manifest, version, {"files": files, "hub": hub}, card,
                lambda tmp: {**files, README: sha256_file(tmp / README)},
                taken_fix="pass another --name/--version, or remove that version first",
            )
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def materialize(
        self,
        name: str,
        version: str | int | None = None,
        *,
        token: str | None = None,
        endpoint: str | None = None,
        max_bytes: int | None = None,
    ) -> Manifest:
        """Download the missing files of a stub from its pinned revision; a no-op otherwise.

        Files go to disk (a temp folder in the root), never whole into memory. Each is checked
        against the sha256 in the manifest before it is moved in (one atomic rename each, under
        the lock); the manifest then drops `hub.lazy`. `max_bytes` caps each file's size (the
        transport's default when None: see `store.hub.max_file_bytes`).
        """
        m = self.manifest(name, version)
        if not is_stub(m):
            return m
        vdir = self.root / m.name / m.version
        missing = self.missing_files(m)
        tmp = self._draft()
        try:
            got: dict[str, Path] = {}
            if missing:
                repo_id, revision = self.remote.check_pin(m.hub["repo_id"], m.hub["revision"])
                log.info("fetching %s from %s@%s", ", ".join(missing), repo_id, revision)
                limit = {} if max_bytes is None else {"max_bytes": max_bytes}
                got = self.remote.download(repo_id, revision, missing, tmp / "download", token=token,
                                           endpoint=endpoint, **limit)
                for fn in missing:
                    actual, _ = sha256_stream(got[fn])
                    if actual != m.files[fn]:
                        raise XtlError(
                            f"sha256 mismatch for {fn} from {repo_id}@{revision[:12]}: got "
                            f"{actual[:16]}…, {MANIFEST} records {m.files[fn][:16]}…",
                            where=str(vdir / MANIFEST),
                            fix="the Hub copy is not the one this stub was made from; pull the module again",
                        )
                if WEIGHTS in got:
                    _weights.check_file(got[WEIGHTS], where=f"{repo_id}@{revision}")
            with self.lock():
                current = self.manifest(m.name, m.version)
                for fn in missing:
                    if current.files.get(fn) != m.files[fn]:
                        raise XtlError(f"{MANIFEST} changed while {fn} was downloading", where=str(vdir / MANIFEST),
                                       fix="run the command again")
                    if not (vdir / fn).is_file():  # renamed in with the user's permissions, not the download's
                        move_verified(got[fn], self._inside(vdir / fn), m.files[fn], where=str(vdir / MANIFEST))
                if not is_stub(current):
                    return current
                hub = {k: v for k, v in (current.hub or {}).items() if k != "lazy"}
                m = self._replace_manifest(current.model_copy(deep=True, update={"hub": hub}))
                self._update_index(put=m)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return m
