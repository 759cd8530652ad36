"""The module registry: atomic writes, verified loads, backbone checks, reuse lookup, model cards."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from adapters_xtl.errors import XtlError
from adapters_xtl.store.card import GENERATED_MARKER, parse_front_matter, render_card
from adapters_xtl.store.layout import check_name, check_version
from adapters_xtl.store.manifest import BackboneFingerprint, Manifest
from adapters_xtl.store.registry import Registry
from adapters_xtl.store.remote import Remote
from adapters_xtl.store.verify import verify

REPO = Path(__file__).resolve().parents[1]

E5 = BackboneFingerprint(model_id="xlmr-e5-small", weights_sha256="ab" * 32, quantization="none")
LARGE = BackboneFingerprint(model_id="FacebookAI/xlm-roberta-large", weights_sha256="cd" * 32)


def make_manifest(name="mnli-lora", *, task="mnli", method="lora", method_config=None, backbone=E5, **kw) -> Manifest:
    return Manifest(
        name=name,
        task=task,
        format="classification",
        method=method,
        method_config={"r": 8, "alpha": 16} if method_config is None else method_config,
        head={"type": "classification", "num_labels": 3},
        backbone=backbone,
        **kw,
    )


def tiny_tensors(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.0.lora_A": torch.randn(8, 16, generator=g),
        "layer.0.lora_B": torch.randn(16, 8, generator=g),
        "head.bias": torch.randn(3, generator=g).to(torch.bfloat16),
    }


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "reg")


# -- round trip and versions ----------------------------------------------------------------------


def test_save_load_round_trip(reg):
    t = tiny_tensors()
    t["transposed"] = torch.arange(12.0).reshape(3, 4).T  # not contiguous
    base = torch.arange(10.0)
    t["view_a"], t["view_b"] = base[:5], base[5:]  # shared storage
    saved = reg.save(make_manifest(steps=100, seed=3, scores={"en": {"accuracy": 0.8}}), t)
    assert saved.version == "1"
    assert set(saved.files) == {"weights.safetensors", "README.md"}
    vdir = reg.root / "mnli-lora" / "1"
    assert sorted(p.name for p in vdir.iterdir()) == ["README.md", "manifest.json", "weights.safetensors"]

    m, loaded = reg.load("mnli-lora", expect_backbone=E5)
    assert m == saved
    assert (m.task, m.method, m.method_config, m.steps, m.seed) == ("mnli", "lora", {"r": 8, "alpha": 16}, 100, 3)
    assert m.backbone == E5 and m.scores == {"en": {"accuracy": 0.8}}
    assert set(loaded) == set(t)
    for k in t:
        assert loaded[k].dtype == t[k].dtype
        assert torch.equal(loaded[k], t[k])
    assert reg.manifest("mnli-lora", "1") == saved
    assert reg.path("mnli-lora") == vdir
    assert verify(reg) == []


def test_versions_increment(reg):
    for i in range(3):
        assert reg.save(make_manifest(), tiny_tensors(i)).version == str(i + 1)
    assert reg.versions("mnli-lora") == ["1", "2", "3"]
    assert reg.save(make_manifest(), tiny_tensors(), version="hub-1a2b").version == "hub-1a2b"
    assert reg.versions("mnli-lora") == ["hub-1a2b", "1", "2", "3"]  # numbers are the latest
    m, t = reg.load("mnli-lora")
    assert m.version == "3" and torch.equal(t["layer.0.lora_A"], tiny_tensors(2)["layer.0.lora_A"])
    assert reg.load("mnli-lora", 1)[0].version == "1"
    assert reg.save(make_manifest(), tiny_tensors()).version == "4"
    with pytest.raises(XtlError, match="already has version"):
        reg.save(make_manifest(), tiny_tensors(), version="2")
    with pytest.raises(XtlError, match="no version '9'") as e:
        reg.load("mnli-lora", "9")
    assert "1, 2, 3, 4" in str(e.value)
    assert [m.version for m in reg.list()] == ["4"]
    assert sorted(reg.index()["mnli-lora"]) == ["1", "2", "3", "4", "hub-1a2b"]


def test_extra_files_are_hashed(reg):
    m = reg.save(make_manifest(), tiny_tensors(), extra_files={"adapter_config.json": b'{"r": 8}'}, card="# mine\n")
    assert set(m.files) == {"weights.safetensors", "README.md", "adapter_config.json"}
    assert (reg.path("mnli-lora") / "README.md").read_text() == "# mine\n"
    reg.load("mnli-lora")
    (reg.path("mnli-lora") / "adapter_config.json").write_bytes(b'{"r": 9}')
    with pytest.raises(XtlError, match="adapter_config.json"):
        reg.load("mnli-lora")
    for bad in ("manifest.json", "../evil", "sub/file"):
        with pytest.raises(XtlError, match="extra|file name"):
            reg.save(make_manifest(), tiny_tensors(), extra_files={bad: b"x"})


def test_save_refuses_non_tensors(reg):
    with pytest.raises(XtlError, match="not a torch.Tensor"):
        reg.save(make_manifest(), {"a": [1, 2]})
    assert not reg.root.exists()  # validated before anything is written
    reg.save(make_manifest("ok"), tiny_tensors())
    with pytest.raises(XtlError, match="reserved"):
        reg.save(make_manifest(), tiny_tensors(), extra_files={"README.md": b"x"})
    assert reg.names() == ["ok"]
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".tmp-")]


# -- integrity and backbone checks ----------------------------------------------------------------


def test_hash_mismatch_detected(reg):
    reg.save(make_manifest(), tiny_tensors())
    w = reg.path("mnli-lora") / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor's data
    w.write_bytes(bytes(data))
    with pytest.raises(XtlError, match="sha256 mismatch for weights.safetensors") as e:
        reg.load("mnli-lora")
    assert str(w) in str(e.value) and "fix:" in str(e.value)
    assert any("weights.safetensors: sha256 mismatch" in p for p in verify(reg))


def test_backbone_mismatch_refused_unless_allowed(reg):
    reg.save(make_manifest(), tiny_tensors())
    other = BackboneFingerprint(model_id=E5.model_id, weights_sha256=E5.weights_sha256, quantization="4bit")
    with pytest.raises(XtlError) as e:
        reg.load("mnli-lora", expect_backbone=other)
    msg = str(e.value)
    assert "quantization: 'none' != '4bit'" in msg
    assert "model_id" not in msg.split("differs in")[1].split("fix:")[0]
    assert "--allow-backbone-mismatch" in msg and "retrain" in msg
    m, t = reg.load("mnli-lora", expect_backbone=other, allow_backbone_mismatch=True)
    assert m.backbone == E5 and torch.equal(t["head.bias"], tiny_tensors()["head.bias"])
    with pytest.raises(XtlError, match="model_id") as e:
        reg.load("mnli-lora", expect_backbone=LARGE)
    assert "weights_sha256" in str(e.value)


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "..", ".hidden", "a..b", "x" * 97, "index.json", "/abs", "a b"])
def test_bad_names_refused(reg, bad):
    with pytest.raises(XtlError, match="invalid module name"):
        check_name(bad)
    with pytest.raises(XtlError, match="invalid module name"):
        reg.save(make_manifest(name=bad), tiny_tensors())
    with pytest.raises(XtlError, match="invalid module name"):
        reg.load(bad)
    assert not reg.root.exists() or not [p for p in reg.root.rglob("*") if p.name not in (".index.lock",)]
    assert not (reg.root.parent / "x").exists()


@pytest.mark.parametrize("bad", ["../1", "01", "1/2", "", "..", "-1"])
def test_bad_versions_refused(reg, bad):
    with pytest.raises(XtlError, match="invalid module version"):
        check_version(bad)
    with pytest.raises(XtlError, match="invalid module version"):
        reg.save(make_manifest(), tiny_tensors(), version=bad)


def test_unknown_name_suggests_close_ones(reg):
    with pytest.raises(XtlError, match="nothing is registered"):
        reg.load("mnli-lora")
    reg.save(make_manifest("mnli-lora"), tiny_tensors())
    reg.save(make_manifest("qqp-lora", task="qqp"), tiny_tensors())
    with pytest.raises(XtlError) as e:
        reg.load("mnli-lroa")
    assert "no module named 'mnli-lroa'" in str(e.value) and "did you mean 'mnli-lora'" in str(e.value)


# -- reuse lookup -----------------------------------------------------------------------------------


def test_find_matches_only_equal_config(reg):
    a = reg.save(make_manifest("a", created_at="2024-01-01T00:00:00+00:00", steps=100, seed=1), tiny_tensors())
    b = reg.save(make_manifest("b", created_at="2024-01-02T00:00:00+00:00", steps=100, seed=2), tiny_tensors())
    reg.save(make_manifest("c", method_config={"r": 16, "alpha": 16}), tiny_tensors())
    reg.save(make_manifest("d", backbone=LARGE), tiny_tensors())
    reg.save(make_manifest("e", task="qqp"), tiny_tensors())
    reg.save(make_manifest("f", method="bottleneck"), tiny_tensors())
    reg.save(make_manifest("g", composition={"stack": ["a", "target"]}), tiny_tensors())

    q = dict(task="mnli", method="lora", method_config={"alpha": 16, "r": 8}, backbone=E5)
    assert reg.find(**q).name == "b"  # newest of a, b
    assert reg.find(**q, seed=1).name == "a"
    assert reg.find(**q, steps=100, seed=2) == b
    assert reg.find(**q, steps=5) is None
    assert reg.find(**{**q, "method_config": {"r": 16, "alpha": 16}}).name == "c"
    assert reg.find(**{**q, "backbone": LARGE}).name == "d"
    assert reg.find(**{**q, "task": "qqp"}).name == "e"
    assert reg.find(**{**q, "method": "bottleneck"}).name == "f"
    assert reg.find(**q, composition={"stack": ["a", "target"]}).name == "g"
    assert reg.find(**{**q, "method_config": {"r": 4}}) is None
    assert reg.find(**{**q, "backbone": BackboneFingerprint(**{**E5.model_dump(), "quantization": "8bit"})}) is None
    assert a.name == "a"


# -- scores, verify, index, remove ---------------------------------------------------------------


def test_update_scores_merges_and_keeps_hashes_valid(reg):
    reg.save(make_manifest(scores={"en": {"accuracy": 0.8}}), tiny_tensors())
    m = reg.update_scores("mnli-lora", "1", {"de": {"accuracy": 0.7}, "en": {"f1": 0.75}})
    assert m.scores == {"en": {"accuracy": 0.8, "f1": 0.75}, "de": {"accuracy": 0.7}}
    assert reg.manifest("mnli-lora") == m
    card = (reg.path("mnli-lora") / "README.md").read_text()
    assert "| de | 0.7000 |" in card
    reg.load("mnli-lora")  # hashes still match
    assert verify(reg) == []
    # a hand-written card is kept as is
    reg.save(make_manifest("custom"), tiny_tensors(), card="# hand written\n")
    reg.update_scores("custom", None, {"fr": {"accuracy": 0.5}})
    assert (reg.path("custom") / "README.md").read_text() == "# hand written\n"
    with pytest.raises(XtlError, match="not a number"):
        reg.update_scores("custom", None, {"fr": {"accuracy": "high"}})


def test_verify_finds_problems_and_fixes_safe_ones(reg):
    reg.save(make_manifest("a"), tiny_tensors())
    reg.save(make_manifest("b"), tiny_tensors())
    reg.save(make_manifest("c"), tiny_tensors())
    assert verify(reg) == []
    (reg.path("a") / "README.md").unlink()  # a deleted file
    leftover = reg.root / ".tmp-deadbeef"  # what a killed writer leaves behind
    leftover.mkdir()
    (leftover / "weights.safetensors").write_bytes(b"partial")
    (leftover / ".owner").write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    shutil.rmtree(reg.root / "b")  # index entry without a folder

    problems = verify(reg)
    text = "\n".join(problems)
    assert "a/1/README.md: missing" in text
    assert ".tmp-deadbeef: leftover temporary folder" in text and "harmless" in text
    assert "entry b version 1 has no valid folder" in text
    assert leftover.exists()  # reporting alone changes nothing

    fixed = verify(reg, fix=True)
    assert all("(fixed)" in p for p in fixed if ".tmp-deadbeef" in p or "entry b" in p)
    assert not leftover.exists()
    assert verify(reg) == [p for p in problems if "README.md: missing" in p]  # damage is only reported
    assert sorted(reg.index()) == ["a", "c"]


def test_index_is_a_cache(reg):
    reg.save(make_manifest("a"), tiny_tensors())
    reg.save(make_manifest("b"), tiny_tensors())
    reg.index_path.write_text("{ not json")
    assert [m.name for m in reg.list()] == ["a", "b"]
    data = json.loads(reg.index_path.read_text())
    assert set(data["modules"]) == {"a", "b"}
    assert data["modules"]["a"]["1"]["reuse_key"] == reg.manifest("a").reuse_key()
    reg.index_path.unlink()
    assert "missing" in verify(reg)[0]
    assert set(reg.index()) == {"a", "b"}
    assert verify(reg) == []


def test_index_left_behind_by_a_kill_after_the_rename_heals_itself(reg):
    """A writer killed between renaming a version in and updating the index leaves the index one
    version behind: verify calls that harmless, reading the index and the next write catch up."""
    reg.save(make_manifest("a"), tiny_tensors())
    behind = json.loads(reg.index_path.read_text())
    reg.save(make_manifest("a"), tiny_tensors())
    reg.index_path.write_text(json.dumps(behind))  # what the kill leaves: folder a/2, index without it
    problems = verify(reg)
    assert len(problems) == 1 and "a/2: not listed in index.json (harmless" in problems[0]
    assert sorted(reg.index()["a"]) == ["1", "2"]
    assert verify(reg) == []
    reg.index_path.write_text(json.dumps(behind))
    reg.save(make_manifest("b"), tiny_tensors())  # the next write rebuilds rather than patching a stale index
    assert sorted(json.loads(reg.index_path.read_text())["modules"]["a"]) == ["1", "2"]
    assert verify(reg) == []


def test_remove(reg):
    reg.save(make_manifest("a"), tiny_tensors())
    reg.save(make_manifest("a"), tiny_tensors())
    reg.save(make_manifest("b"), tiny_tensors())
    assert reg.remove("a", "1") == ["1"]
    assert reg.versions("a") == ["2"] and list(reg.index()["a"]) == ["2"]
    assert reg.remove("a") == ["2"]
    assert not (reg.root / "a").exists() and "a" not in reg.index()
    with pytest.raises(XtlError, match="no module named 'a'"):
        reg.remove("a")
    assert [m.name for m in reg.list()] == ["b"] and verify(reg) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_saved_files_get_the_users_umask_not_0600(reg):
    old = os.umask(0o022)
    try:
        reg.save(make_manifest(), tiny_tensors(), extra_files={"notes.txt": b"x"})
        reg.update_scores("mnli-lora", None, {"de": {"accuracy": 0.5}})
    finally:
        os.umask(old)
    vdir = reg.path("mnli-lora")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [*vdir.iterdir(), reg.index_path]}
    assert modes == {"weights.safetensors": 0o644, "manifest.json": 0o644, "README.md": 0o644, "notes.txt": 0o644,
                     "index.json": 0o644}


def test_a_stub_is_completed_through_the_remote_the_registry_is_given(tmp_path):
    """The registry knows no Hub: a lazily pulled version is fetched by whatever `Remote` it holds."""
    source = Registry(tmp_path / "source")
    made = source.save(make_manifest(), tiny_tensors(7))
    calls = []

    def download(repo_id, revision, filenames, dest, *, token=None, endpoint=None):
        calls.append((repo_id, revision, list(filenames)))
        dest.mkdir(parents=True, exist_ok=True)
        for fn in filenames:
            shutil.copyfile(source.path("mnli-lora") / fn, dest / fn)
            os.chmod(dest / fn, 0o600)  # as huggingface_hub's temp files are
        return {fn: dest / fn for fn in filenames}

    def check_pin(repo_id, revision):
        if len(str(revision)) != 40:
            raise XtlError(f"not pinned: {revision!r}", where="test remote")
        return repo_id, revision

    reg = Registry(tmp_path / "reg", remote=Remote(check_pin=check_pin, download=download))
    pin = {"repo_id": "lab/mnli-lora", "revision": "c" * 40}
    with pytest.raises(XtlError, match="not pinned"):
        reg.save_stub(made.model_copy(update={"hub": {**pin, "revision": "main"}}))
    stub = reg.save_stub(made.model_copy(update={"hub": pin}), version="hub-c")
    assert stub.hub == {**pin, "lazy": True} and reg.missing_files(stub) == ["weights.safetensors"]
    assert verify(reg) == [] and calls == []
    old = os.umask(0o022)
    try:
        m, t = reg.load("mnli-lora")
    finally:
        os.umask(old)
    assert calls == [("lab/mnli-lora", "c" * 40, ["weights.safetensors"])]
    assert m.hub == pin and all(torch.equal(t[k], tiny_tensors(7)[k]) for k in t)
    weights = reg.path("mnli-lora") / "weights.safetensors"
    if os.name == "posix":
        assert stat.S_IMODE(weights.stat().st_mode) == 0o644  # the user's umask, not the download's 0600
    assert verify(reg) == [] and reg.materialize("mnli-lora") == m and len(calls) == 1


# -- model card ----------------------------------------------------------------------------------


def test_card_front_matter_and_tables():
    m = make_manifest(
        scores={"en": {"accuracy": 0.81, "f1": 0.8}, "de": {"accuracy": 0.7}, "avg": {"accuracy": 0.75}},
        languages_trained=["en"],
        steps=500,
        seed=1,
        recipe_hash="abc123",
        library_versions={"torch": "2.13.0"},
    )
    card = render_card(m)
    meta = parse_front_matter(card)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == "intfloat/multilingual-e5-small"
    assert meta["tags"] == ["adapters_xtl", "lora", "mnli", "cross-lingual", "xtreme"]
    assert meta["language"] == ["en", "de"]
    assert meta["metrics"] == ["accuracy", "f1"]
    results = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "mnli-lora"
    assert len(results) == 3  # one per (language, metric); the average is no data set
    de = [r for r in results if r["dataset"]["config"] == "de"][0]
    assert de["task"]["type"] == "text-classification"
    assert de["metrics"][0] == {"type": "accuracy", "value": 0.7, "name": "accuracy (de, zero-shot)", "verified": False}
    body = card.split("\n---\n", 1)[1]
    assert GENERATED_MARKER in body
    assert "| language | accuracy | f1 |" in body
    assert "| en | 0.8100 | 0.8000 |" in body and "| de | 0.7000 | — |" in body
    assert "rounded to 4 bits" in body and "xtl eval --module mnli-lora" in body
    assert "abc123" in body and "torch 2.13.0" in body and "`{\"alpha\": 16, \"r\": 8}`" in body

    other = render_card(make_manifest(backbone=LARGE))
    assert parse_front_matter(other)["base_model"] == "FacebookAI/xlm-roberta-large"
    assert "rounded to 4 bits" not in other and "No scores recorded yet." in other
    local = make_manifest(backbone=BackboneFingerprint(model_id="/tmp/tiny xlmr", weights_sha256="0" * 64))
    assert "base_model" not in parse_front_matter(render_card(local))


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_card_metadata_and_how_to_load_with_each_library(method):
    from huggingface_hub import ModelCard

    m = Manifest(name="xnli-mod", task="xnli", format="classification", method=method,
                 backbone=BackboneFingerprint(model_id="xlmr-e5-small", weights_sha256="ab" * 32),
                 scores={"en": {"accuracy": 80.0}, "sw": {"accuracy": 61.5}},
                 hub={"repo_id": "my-lab/xnli-mod", "revision": "c" * 40})
    card = ModelCard(render_card(m))
    assert card.data.library_name == {"lora": "peft", "bottleneck": "adapter-transformers"}[method]
    assert card.data.base_model == "intfloat/multilingual-e5-small"
    assert card.data.language == ["en", "sw"] and method in card.data.tags
    assert {(r.dataset_config, r.metric_value) for r in card.data.eval_results} == {("en", 80.0), ("sw", 61.5)}
    text = card.text
    assert f"xtl registry pull my-lab/xnli-mod@{'c' * 40}" in text and "--lazy" in text
    assert 'XLMRobertaModel.from_pretrained("intfloat/multilingual-e5-small", add_pooling_layer=False)' in text
    if method == "lora":
        assert 'PeftModel.from_pretrained(model, "my-lab/xnli-mod").eval()' in text
        assert "xtl registry export xnli-mod --format peft" in text
    else:
        assert 'model.load_adapter("my-lab/xnli-mod", set_active=True)' in text
        assert "xtl registry export xnli-mod --format adapters" in text


# -- concurrency and crashes -----------------------------------------------------------------------


def _register_many(root: str, worker: int, n: int) -> None:
    reg = Registry(root)
    for i in range(n):
        # half the names are this worker's own, half are shared with the other worker
        name = f"w{worker}-m{i:02d}" if i % 2 == 0 else f"shared-m{i:02d}"
        reg.save(make_manifest(name, seed=worker), {"w": torch.full((4, 4), float(i))})


def test_two_processes_register_concurrently(tmp_path):
    root = str(tmp_path / "reg")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(root, w, 50)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    reg = Registry(root)
    index = reg.index()
    assert sum(len(v) for v in index.values()) == 100
    shared = [n for n in index if n.startswith("shared-")]
    assert len(shared) == 25 and all(sorted(index[n]) == ["1", "2"] for n in shared)
    assert {m.seed for n in shared for m in (reg.manifest(n, "1"), reg.manifest(n, "2"))} == {0, 1}
    assert len(reg.list()) == 75
    assert sum(len(reg.versions(n)) for n in reg.names()) == 100
    assert verify(reg) == []
    assert not [p for p in Path(root).iterdir() if p.name.startswith(".tmp-")]


_KILL_CHILD = """
import json, os, sys, time, torch
import adapters_xtl.store.index as index
import adapters_xtl.store.weights as weights
from adapters_xtl.store.manifest import BackboneFingerprint, Manifest
from adapters_xtl.store.registry import Registry
from adapters_xtl.store.remote import Remote

point = sys.argv[2]
if point == "weights":
    orig = weights.write_weights
    def slow(path, tensors, metadata=None):
        orig(path, tensors, metadata)
        print("READY", flush=True)
        time.sleep(60)
    weights.write_weights = slow
else:
    orig = index.atomic_write_json
    def slow(path, obj, indent=2, **kw):
        if path.name == "index.json":
            data = json.dumps(obj).encode()
            tmp = path.parent / (".tmp-killed-" + path.name)
            tmp.write_bytes(data[: len(data) // 2])
            print("READY", flush=True)
            time.sleep(60)
        orig(path, obj, indent, **kw)
    index.atomic_write_json = slow
bb = BackboneFingerprint(model_id="xlmr-e5-small", weights_sha256="ab" * 32)
m = Manifest(name="victim", task="mnli", format="classification", method="lora", backbone=bb)
Registry(sys.argv[1]).save(m, {"w": torch.ones(256, 256)})
"""


@pytest.mark.parametrize("point", ["weights", "index"])
def test_killed_save_leaves_registry_consistent(tmp_path, point):
    reg = Registry(tmp_path / "reg")
    reg.save(make_manifest("survivor"), tiny_tensors())
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILL_CHILD), str(reg.root), point],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "READY", child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    json.loads(reg.index_path.read_text())  # the index is valid JSON after the kill
    problems = verify(reg)
    assert problems and all("harmless" in p or "not listed in index.json" in p for p in problems), problems
    verify(reg, fix=True)
    assert verify(reg) == []
    assert json.loads(reg.index_path.read_text())["modules"].keys() == set(reg.names())
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".tmp-")]
    reg.load("survivor")
    if point == "weights":  # died before the rename: the module never appeared
        assert reg.names() == ["survivor"]
    else:  # died after the rename: the module is whole, and now indexed
        assert reg.load("victim")[1]["w"].sum() == 256 * 256
    # the killed writer's lock was released: the registry still takes writes
    assert reg.save(make_manifest("after"), tiny_tensors()).version == "1"
