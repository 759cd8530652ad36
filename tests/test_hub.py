"""Push / pull through huggingface_hub against a local Hub endpoint (no network).

`LocalHub` is a small HTTP server on 127.0.0.1 that answers the routes huggingface_hub 0.36 uses
for these calls, as the real Hub does:

- `create_repo`:      POST /api/repos/create (409 + url when it exists)
- `whoami`:           GET  /api/whoami-v2
- `upload_folder` -> `create_commit`:
  README check        POST /api/validate-yaml
  preupload           POST /api/models/{repo}/preupload/{rev}  -> "lfs" for *.safetensors / *.bin, else
                      "regular" (as the Hub's default .gitattributes), with the oid already stored at
                      that path so unchanged files are skipped
  LFS batch           POST /{repo}.git/info/lfs/objects/batch  -> basic transfer, PUT to /__lfs__/{oid}
  commit              POST /api/models/{repo}/commit/{rev}  (ndjson: header, file (base64), lfsFile)
- `model_info`:       GET  /api/models/{repo}[/revision/{rev}]  (sha, siblings)
- `hf_hub_download`:  HEAD/GET /{repo}/resolve/{rev}/{path}  (X-Repo-Commit, ETag / X-Linked-Etag)

Dataset repos (`repo_type="dataset"`) answer the same routes under /api/datasets/... and
/datasets/{repo}/...; the server keeps them as "datasets/{repo}" (`hub.files("datasets/org/x")`).

Writes need the token; private repos answer 401 RepoNotFound without it. Commits are content
addressed, so a revision pins exactly one set of files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import torch

from adapters_xtl.backbone import load_backbone
from adapters_xtl.errors import XtlError
from adapters_xtl.pipeline import evaluate_module, train_module
from adapters_xtl.store.hub import check_repo_id, check_revision, parse_repo_spec
from adapters_xtl.store.registry import Registry
from adapters_xtl.store.sharing import pull, push
from adapters_xtl.store.verify import verify
from test_core import FAST, write_toy_task

TOKEN = "hf_xtl_local_test_token"
USER = "xtl-tester"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LocalHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.lfs: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # -- repo state ---------------------------------------------------------------------------
    @staticmethod
    def is_lfs(path: str, size: int) -> bool:
        return path.endswith((".safetensors", ".bin", ".pt")) or size > 10 * 1024 * 1024

    def commit(self, repo: dict, files: dict[str, bytes], message: str, parent: str | None) -> str:
        h = hashlib.sha1(json.dumps([parent, message, time.time_ns(),
                                     sorted((p, hashlib.sha256(b).hexdigest()) for p, b in files.items())]).encode())
        sha = h.hexdigest()
        repo["commits"][sha] = dict(files)
        repo["branches"]["main"] = sha
        return sha

    def files_at(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        repo = self.repos[repo_id]
        sha = repo["branches"].get(revision, revision)
        if sha not in repo["commits"]:
            return None
        return sha, repo["commits"][sha]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self.files_at(repo_id, revision)[1]

    def tamper(self, repo_id: str, revision: str, path: str, data: bytes) -> None:
        """What a compromised server could do: change a file under an existing commit."""
        self.repos[repo_id]["commits"][revision][path] = data

    # -- HTTP ---------------------------------------------------------------------------------
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            # helpers
            def body(self) -> bytes:
                return self._body

            def read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None,
                     head: bool = False):
                data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
                self.send_response(status)
                if raw is None:
                    self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def error(self, status: int, code: str | None, message: str, head: bool = False):
                self.send(status, {"error": message}, {"X-Error-Code": code} if code else None, head=head)

            def authed(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {TOKEN}"

            def repo_or_error(self, repo_id: str, head: bool = False) -> dict | None:
                repo = hub.repos.get(repo_id)
                if repo is None or (repo["private"] and not self.authed()):
                    self.error(401 if not self.authed() else 404, "RepoNotFound", "Repository not found", head)
                    return None
                return repo

            # verbs
            def do_GET(self):
                self.route("GET")

            def do_HEAD(self):
                self.route("HEAD")

            def do_POST(self):
                self.route("POST")

            def do_PUT(self):
                self.route("PUT")

            def route(self, verb: str):
                # read the whole body first, also for requests answered with an error, so the
                # kept-alive connection stays in sync
                self._body = self.read_body() if verb in ("POST", "PUT") else b""
                url = urlsplit(self.path)
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                with hub.lock:
                    hub.log.append((verb, url.path))
                    try:
                        self.dispatch(verb, parts, parse_qs(url.query))
                    except Exception as e:  # pragma: no cover - a bug in the fake server
                        self.error(500, None, f"local hub error: {e!r}")

            def dispatch(self, verb, parts, query):
                head = verb == "HEAD"
                # dataset repos: the same routes under /api/datasets/ and /datasets/, kept apart
                # from model repos as "datasets/<org>/<name>"
                kind = ""
                if parts[:2] == ["api", "datasets"]:
                    parts, kind = ["api", "models", *parts[2:]], "datasets/"
                elif len(parts) > 3 and parts[0] == "datasets":
                    parts, kind = parts[1:], "datasets/"
                if verb == "GET" and parts == ["api", "whoami-v2"]:
                    if not self.authed():
                        return self.error(401, None, "Invalid credentials in Authorization header")
                    return self.send(200, {"type": "user", "name": USER, "orgs": [], "auth": {"type": "access_token"}})
                if verb == "POST" and parts == ["api", "repos", "create"]:
                    if not self.authed():
                        return self.error(401, None, "Invalid credentials")
                    req = json.loads(self.body())
                    kind = "datasets/" if req.get("type") == "dataset" else ""
                    repo_id = f"{kind}{req.get('organization') or USER}/{req['name']}"
                    url = f"{hub.url}/{repo_id}"
                    if repo_id in hub.repos:
                        return self.send(409, {"error": "You already created this model repo", "url": url})
                    repo = {"private": bool(req.get("private")), "commits": {}, "branches": {}}
                    hub.repos[repo_id] = repo
                    hub.commit(repo, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                               "initial commit", None)
                    return self.send(200, {"url": url, "name": repo_id})
                if verb == "POST" and parts == ["api", "validate-yaml"]:
                    import yaml

                    content = json.loads(self.body())["content"]
                    if content.startswith("---\n"):
                        try:
                            meta = yaml.safe_load(content[4:content.index("\n---\n", 4)])
                            assert isinstance(meta, dict)
                        except Exception as e:
                            return self.send(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
                    return self.send(200, {"errors": [], "warnings": []})
                if len(parts) >= 4 and parts[:2] == ["api", "models"]:
                    repo_id = f"{kind}{parts[2]}/{parts[3]}"
                    rest = parts[4:]
                    if verb == "GET" and (not rest or rest[0] == "revision"):
                        repo = self.repo_or_error(repo_id)
                        if repo is None:
                            return
                        got = hub.files_at(repo_id, rest[1] if rest else "main")
                        if got is None:
                            return self.error(404, "RevisionNotFound", "Invalid rev id")
                        sha, files = got
                        return self.send(200, {"id": repo_id[len(kind):], "modelId": repo_id[len(kind):], "sha": sha,
                                               "private": repo["private"], "tags": [], "downloads": 0, "likes": 0,
                                               "lastModified": "2025-01-01T00:00:00.000Z",
                                               "siblings": [{"rfilename": p} for p in sorted(files)]})
                    if verb == "POST" and rest and rest[0] in ("preupload", "commit"):
                        if not self.authed():
                            return self.error(401, None, "Invalid credentials")
                        repo = self.repo_or_error(repo_id)
                        if repo is None:
                            return
                        got = hub.files_at(repo_id, rest[1])
                        if got is None:
                            return self.error(404, "RevisionNotFound", "Invalid rev id")
                        _, files = got
                        if rest[0] == "preupload":
                            out = []
                            for f in json.loads(self.body())["files"]:
                                lfs = hub.is_lfs(f["path"], f["size"])
                                old = files.get(f["path"])
                                oid = None if old is None else (hashlib.sha256(old).hexdigest() if lfs
                                                                else git_blob_sha1(old))
                                out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                                            "shouldIgnore": False, "oid": oid})
                            return self.send(200, {"files": out, "commitOid": got[0]})
                        new = dict(files)
                        header = {}
                        for line in self.body().splitlines():
                            if not line.strip():
                                continue
                            item = json.loads(line)
                            key, value = item["key"], item["value"]
                            if key == "header":
                                header = value
                            elif key == "file":
                                new[value["path"]] = base64.b64decode(value["content"])
                            elif key == "lfsFile":
                                if value["oid"] not in hub.lfs:
                                    return self.error(422, None, f"LFS object {value['oid']} was not uploaded")
                                new[value["path"]] = hub.lfs[value["oid"]]
                            elif key == "deletedFile":
                                new.pop(value["path"], None)
                            else:
                                return self.error(400, None, f"unsupported commit operation {key}")
                        sha = hub.commit(repo, new, header.get("summary", ""), got[0])
                        return self.send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                                               "pullRequestUrl": None, "success": True})
                if verb == "POST" and len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == [
                        "info", "lfs", "objects", "batch"]:
                    if not self.authed():
                        return self.error(401, None, "Invalid credentials")
                    req = json.loads(self.body())
                    objects = []
                    for o in req["objects"]:
                        entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
                        if o["oid"] not in hub.lfs:
                            entry["actions"] = {"upload": {"href": f"{hub.url}/__lfs__/{o['oid']}/{o['size']}"}}
                        objects.append(entry)
                    return self.send(200, {"transfer": "basic", "objects": objects})
                if verb == "PUT" and len(parts) == 3 and parts[0] == "__lfs__":
                    data = self.body()
                    if hashlib.sha256(data).hexdigest() != parts[1] or len(data) != int(parts[2]):
                        return self.error(400, None, "LFS object does not match its oid/size")
                    hub.lfs[parts[1]] = data
                    return self.send(200, {})
                if verb in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
                    repo_id = f"{kind}{parts[0]}/{parts[1]}"
                    if self.repo_or_error(repo_id, head) is None:
                        return
                    got = hub.files_at(repo_id, parts[3])
                    if got is None:
                        return self.error(404, "RevisionNotFound", "Invalid rev id", head)
                    sha, files = got
                    path = "/".join(parts[4:])
                    if path not in files:
                        return self.error(404, "EntryNotFound", "Entry not found", head)
                    data = files[path]
                    lfs = hub.is_lfs(path, len(data))
                    etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
                    headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
                    if lfs:
                        headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
                    return self.send(200, raw=data, headers=headers, head=head)
                return self.error(404, None, f"no route for {verb} /{'/'.join(parts)}", head)

        return Handler


@pytest.fixture()
def hub(monkeypatch):
    """A running LocalHub; huggingface_hub online (conftest sets offline) and pointed at it."""
    from huggingface_hub import constants, file_download, hf_api
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    reset_sessions()
    with LocalHub() as h:
        # as if HF_ENDPOINT had been set before huggingface_hub was imported (it reads it once)
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setattr(constants, "ENDPOINT", h.url)
        template = h.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        # huggingface_hub's module-level functions (file_exists, model_info, ... that peft and
        # adapters call) are methods of one HfApi made at import time
        monkeypatch.setattr(hf_api.api, "endpoint", h.url)
        yield h
    monkeypatch.undo()
    reset_sessions()


@pytest.fixture(scope="module")
def trained(tiny_backbone_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    task = write_toy_task(root / "toy")
    reg = Registry(root / "registry")
    bb = load_backbone(str(tiny_backbone_dir))
    train_module(bb, str(task), name="toy-lora", method="lora", registry=reg, train_config=FAST)
    return reg, task


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", ["name-only", "../etc", "org/../x", "org//x", "a/b/c", "http://h/x", "org/na me",
                                 "-org/x", "org/x.git", "org--x/y", "", None, "org/x/", "org/.x"])
def test_bad_repo_ids_are_refused(bad):
    with pytest.raises(XtlError, match="invalid Hub repo id"):
        check_repo_id(bad)


@pytest.mark.parametrize("bad", ["../main", "-x", "a..b", "x/", "refs//x", "a b", "x?y", "main.lock", ""])
def test_bad_revisions_are_refused(bad):
    with pytest.raises(XtlError, match="invalid revision"):
        check_revision(bad)


def test_repo_specs_parse():
    assert parse_repo_spec("my-lab/xnli-lora") == ("my-lab/xnli-lora", None)
    assert parse_repo_spec("my-lab/m@v1.2") == ("my-lab/m", "v1.2")
    assert parse_repo_spec("a/b@" + "0" * 40) == ("a/b", "0" * 40)
    with pytest.raises(XtlError, match="invalid revision"):
        parse_repo_spec("a/b@../../x")


def test_invalid_spec_makes_no_request(hub, registry):
    with pytest.raises(XtlError, match="invalid revision"):
        pull(registry, "a/b@../../etc")
    with pytest.raises(XtlError, match="invalid Hub repo id"):
        pull(registry, "../x")
    with pytest.raises(XtlError, match="invalid Hub repo id"):
        pull(registry, "org/x/../../y@main")
    assert hub.log == []


# ---------------------------------------------------------------------------------------- push / pull


def test_push_then_pull_round_trips_a_pinned_module(hub, trained, tmp_path, tiny_backbone_dir):
    from huggingface_hub import ModelCard, snapshot_download
    from peft import PeftModel
    from transformers import XLMRobertaModel

    reg, _ = trained
    pushed = push(reg, "toy-lora", repo_id="xtl-lab/toy-lora")
    sha = pushed.hub["revision"]
    assert pushed.hub == {"repo_id": "xtl-lab/toy-lora", "revision": sha}
    assert hub.repos["xtl-lab/toy-lora"]["branches"]["main"] == sha
    files = hub.files("xtl-lab/toy-lora", sha)
    # the repo root is a peft repo (the toy head mean-pools, so it rides beside as xtl_head.*)
    assert {"manifest.json", "weights.safetensors", "README.md", "adapter_config.json",
            "adapter_model.safetensors", "xtl_head.safetensors", "xtl_head.json"} <= set(files)
    # weights went through LFS (preupload said "lfs"), text as regular base64 files
    assert files["weights.safetensors"] in hub.lfs.values() and ("PUT", ) in {(v,) for v, _ in hub.log}
    assert reg.manifest("toy-lora").hub == pushed.hub and verify(reg) == []

    # the card the Hub renders
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-classification"
    assert card.data.tags == ["adapters_xtl", "lora", "toy-sentiment", "cross-lingual", "xtreme"]
    assert card.data.language == ["en", "de"]
    results = card.data.eval_results
    assert results and {r.dataset_config for r in results} == {"en", "de"}
    assert 'PeftModel.from_pretrained(model, "xtl-lab/toy-lora").eval()' in card.text
    assert "xtl registry pull xtl-lab/toy-lora" in card.text

    # pull into another registry: pinned, verified, equal tensors
    other = Registry(tmp_path / "other")
    pulled = pull(other, "xtl-lab/toy-lora")
    assert pulled.name == "toy-lora" and pulled.version == f"hub-{sha[:12]}"
    assert pulled.hub == {"repo_id": "xtl-lab/toy-lora", "revision": sha}
    m_a, t_a = reg.load("toy-lora")
    m_b, t_b = other.load("toy-lora")
    assert_same_tensors(t_a, t_b)
    assert m_b.files["weights.safetensors"] == m_a.files["weights.safetensors"]
    assert (m_b.task, m_b.method_config, m_b.backbone, m_b.scores) == (m_a.task, m_a.method_config, m_a.backbone,
                                                                       m_a.scores)
    assert verify(other) == []
    assert pull(other, "xtl-lab/toy-lora") == other.manifest("toy-lora")  # same commit again: no-op

    # a new push makes a new commit; the old revision still gives the old files
    reg.update_scores("toy-lora", None, {"fr": {"accuracy": 12.5}})
    second = push(reg, "toy-lora", repo_id="xtl-lab/toy-lora")
    assert second.hub["revision"] != sha
    old = pull(other, f"xtl-lab/toy-lora@{sha}", name="toy-lora-old")
    new = pull(other, "xtl-lab/toy-lora", name="toy-lora-new")
    assert old.hub["revision"] == sha and "fr" not in old.scores
    assert new.hub["revision"] == second.hub["revision"] and new.scores["fr"] == {"accuracy": 12.5}

    # the peft export at the repo root loads with peft alone
    folder = snapshot_download("xtl-lab/toy-lora", revision=sha, allow_patterns=["adapter_*"],
                               local_dir=str(tmp_path / "snap"), endpoint=hub.url)
    base = XLMRobertaModel.from_pretrained(str(tiny_backbone_dir), add_pooling_layer=False)
    assert isinstance(PeftModel.from_pretrained(base, str(folder)), PeftModel)


def test_lazy_pull_records_a_stub_that_load_completes(hub, trained, tmp_path, tiny_backbone_dir):
    reg, task = trained
    sha = push(reg, "toy-lora", repo_id="xtl-lab/lazy").hub["revision"]
    other = Registry(tmp_path / "other")
    hub.log.clear()
    stub = pull(other, "xtl-lab/lazy", lazy=True)
    vdir = other.root / "toy-lora" / stub.version
    assert stub.hub == {"repo_id": "xtl-lab/lazy", "revision": sha, "lazy": True}
    assert sorted(p.name for p in vdir.iterdir()) == ["README.md", "manifest.json"]
    assert not [p for v, p in hub.log if p.endswith("weights.safetensors")]
    assert verify(other) == []  # a stub is healthy
    assert [m.name for m in other.list()] == ["toy-lora"]
    assert other.missing_files(stub) == ["weights.safetensors"]

    # first use: the pipeline loads it, the weights come from the pinned commit
    bb = load_backbone(str(tiny_backbone_dir))
    scores = evaluate_module(bb, "toy-lora", str(task), registry=other, update_registry=False)
    orig = reg.manifest("toy-lora").scores
    assert set(scores) == {"en", "de"} and all(scores[lang] == pytest.approx(orig[lang]) for lang in scores)
    assert [p for v, p in hub.log if v == "GET" and p.endswith(f"/resolve/{sha}/weights.safetensors")]
    done = other.manifest("toy-lora")
    assert done.hub == {"repo_id": "xtl-lab/lazy", "revision": sha} and (vdir / "weights.safetensors").is_file()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((vdir / "weights.safetensors").stat().st_mode) == 0o666 & ~umask  # not the download's 0600
    assert_same_tensors(other.load("toy-lora")[1], reg.load("toy-lora")[1])
    assert verify(other) == []


def test_tampered_hub_files_are_refused(hub, trained, tmp_path):
    reg, _ = trained
    sha = push(reg, "toy-lora", repo_id="xtl-lab/tamper").hub["revision"]
    other = Registry(tmp_path / "other")
    stub = pull(other, "xtl-lab/tamper", lazy=True)
    blob = bytearray(hub.files("xtl-lab/tamper", sha)["weights.safetensors"])
    blob[-1] ^= 1
    hub.tamper("xtl-lab/tamper", sha, "weights.safetensors", bytes(blob))
    with pytest.raises(XtlError, match="sha256 mismatch for weights.safetensors"):
        other.load("toy-lora")
    assert other.missing_files(other.manifest("toy-lora")) == ["weights.safetensors"]  # still a stub
    assert not [p for p in other.root.iterdir() if p.name.startswith(".tmp-")]
    assert stub.hub["lazy"]


def test_private_repos_and_tokens(hub, trained, tmp_path, monkeypatch):
    reg, _ = trained
    push(reg, "toy-lora", repo_id="xtl-lab/private", private=True)
    assert hub.repos["xtl-lab/private"]["private"]
    other = Registry(tmp_path / "other")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    with pytest.raises(XtlError, match=r"(?s)not found \(or private\).*HF_TOKEN"):
        pull(other, "xtl-lab/private")
    with pytest.raises(XtlError, match=r"(?s)(not authorised|no Hugging Face token).*HF_TOKEN"):
        push(reg, "toy-lora", repo_id="xtl-lab/private")
    with pytest.raises(XtlError, match="no Hugging Face token"):
        push(reg, "toy-lora")  # the default repo id needs whoami
    assert pull(other, "xtl-lab/private", token=TOKEN).hub["repo_id"] == "xtl-lab/private"


def test_default_repo_id_is_user_slash_name(hub, trained):
    reg, _ = trained
    m = push(reg, "toy-lora")
    assert m.hub["repo_id"] == f"{USER}/toy-lora" and f"{USER}/toy-lora" in hub.repos


def test_pull_errors_are_clear(hub, trained, tmp_path):
    reg, _ = trained
    push(reg, "toy-lora", repo_id="xtl-lab/errs")
    other = Registry(tmp_path / "other")
    with pytest.raises(XtlError, match="repository not found"):
        pull(other, "xtl-lab/missing")
    with pytest.raises(XtlError, match="no such revision"):
        pull(other, "xtl-lab/errs@v9")
    first = pull(other, "xtl-lab/errs")
    push(reg, "toy-lora", repo_id="xtl-lab/errs2")
    with pytest.raises(XtlError, match="(?s)already has version.*--name or --version"):
        pull(other, "xtl-lab/errs2", version=first.version)
    hub.log.clear()
    with pytest.raises(XtlError, match="invalid Hub repo id"):
        push(reg, "toy-lora", repo_id="xtl-lab/../x")
    assert hub.log == []


def test_unreachable_hub_and_offline_mode(monkeypatch, tmp_path, registry):
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    try:
        with pytest.raises(XtlError, match="unreachable"):
            pull(registry, "xtl-lab/x")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        reset_sessions()
        with pytest.raises(XtlError, match="offline mode"):
            pull(registry, "xtl-lab/x")
    finally:
        monkeypatch.undo()
        reset_sessions()


def test_pull_of_a_peft_repo_points_to_import_which_works(hub, trained, tmp_path, tiny_backbone_dir, registry):
    from huggingface_hub import HfApi

    from adapters_xtl.store.sharing import import_module
    from test_interop import peft_script_lora, write_retrieval_task

    peft_script_lora(tiny_backbone_dir, tmp_path / "p", r=4, lora_alpha=8, target_modules=["query", "value"])
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("someone/peft-lora")
    sha = api.upload_folder(repo_id="someone/peft-lora", folder_path=str(tmp_path / "p")).oid
    with pytest.raises(XtlError, match="xtl registry import"):
        pull(registry, "someone/peft-lora")
    task = write_retrieval_task(tmp_path / "ret")
    bb = load_backbone(str(tiny_backbone_dir))
    m = import_module(registry, "someone/peft-lora", task=str(task), backbone=bb)
    assert m.name == "peft-lora" and m.imported["source"] == {"repo_id": "someone/peft-lora", "revision": sha}
    local = import_module(registry, tmp_path / "p", task=str(task), backbone=bb, name="from-folder")
    assert_same_tensors(registry.load(m.name)[1], registry.load(local.name)[1])
    assert m.method_config == local.method_config
    # our own pushed repo is a peft repo at its root (with our head beside): importable as such
    reg, task = trained
    push(reg, "toy-lora", repo_id="xtl-lab/sub")
    sub = import_module(registry, "xtl-lab/sub", task=str(task), backbone=bb, name="sub")
    assert sub.imported["head"] == "adapters_xtl" and sub.method_config == reg.manifest("toy-lora").method_config
    assert_same_tensors(registry.load("sub")[1], reg.load("toy-lora")[1])


# ---------------------------------------------------------------------------------------- CLI


def test_cli_push_pull_fetch(hub, trained, tmp_path, capsys):
    from adapters_xtl.cli import main

    reg, _ = trained
    assert main(["registry", "push", "toy-lora", "--repo-id", "xtl-lab/cli", "--registry", str(reg.root)]) == 0
    out = capsys.readouterr().out
    sha = hub.repos["xtl-lab/cli"]["branches"]["main"]
    assert "pushed toy-lora" in out and sha in out
    assert "card has no base_model" in " ".join(out.split())  # the tiny backbone is a local folder
    other = tmp_path / "other"
    assert main(["registry", "pull", f"xtl-lab/cli@{sha}", "--lazy", "--name", "cli-mod", "--registry", str(other)]) == 0
    assert "weights fetched on first use" in capsys.readouterr().out
    assert main(["registry", "fetch", "cli-mod", "--registry", str(other)]) == 0
    assert "complete" in capsys.readouterr().out
    assert_same_tensors(Registry(other).load("cli-mod")[1], reg.load("toy-lora")[1])
    assert main(["registry", "verify", "--registry", str(other)]) == 0
    assert main(["registry", "pull", "../evil", "--registry", str(other)]) == 2
    assert "invalid Hub repo id" in capsys.readouterr().err
