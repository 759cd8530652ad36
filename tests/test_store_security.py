"""Issue 14, the store's part: nothing read or written outside its roots, and nothing unsafe suggested.

Symbolic links out of the registry are refused (and reported by verify), `export --overwrite`
replaces only earlier exports, killed exports are found and cleaned, verify's exit code says
whether the registry is healthy, Hub downloads are capped and streamed to disk, a Hub backbone's
fingerprint names its commit, model cards quote hostile values safely, the pickle refusal gives no
unsafe advice, and files get the user's umask.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapters_xtl.cli import main
from adapters_xtl.errors import XtlError
from adapters_xtl.store.card import front_matter, parse_front_matter, render_card
from adapters_xtl.store.exports import JOURNAL_DIR, MARKER, export, read_marker
from adapters_xtl.store.files import move_verified, new_file_mode
from adapters_xtl.store.hub import parse_size
from adapters_xtl.store.interop import PLACEHOLDER
from adapters_xtl.store.manifest import BackboneFingerprint, Manifest, read_manifest
from adapters_xtl.store.registry import Registry
from adapters_xtl.store.sharing import pull, push
from adapters_xtl.store.verify import check, verify
from adapters_xtl.store.weights import load_pickled_tensors
from test_hub import TOKEN, hub  # noqa: F401  (the local Hub fixture)
from test_registry import E5, make_manifest, tiny_tensors

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "reg")


def lora_module(reg: Registry, name: str = "exp-lora", width: int = 32, r: int = 4) -> Manifest:
    """A LoRA module peft can export (one query projection), without training."""
    path = "encoder.layer.0.attention.self.query"
    t = {f"module.{path}.lora_A.{PLACEHOLDER}.weight": torch.randn(r, width),
         f"module.{path}.lora_B.{PLACEHOLDER}.weight": torch.randn(width, r)}
    return reg.save(make_manifest(name, method_config={"r": r, "alpha": 2 * r}), t)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli_verify(reg: Registry, *args: str) -> int:
    """`xtl registry verify`'s exit code (a problem exits through SystemExit, as the console script sees it)."""
    try:
        return main(["registry", "verify", "--registry", str(reg.root), *args])
    except SystemExit as e:
        return int(e.code)


# ------------------------------------------------------------------------------------------- symlinks


def test_a_module_folder_linked_outside_is_refused_and_its_target_never_touched(reg, tmp_path, capsys):
    elsewhere = Registry(tmp_path / "elsewhere")
    elsewhere.save(make_manifest("mnli-lora"), tiny_tensors())
    reg.save(make_manifest("other"), tiny_tensors())
    link = reg.root / "mnli-lora"
    link.symlink_to(elsewhere.root / "mnli-lora", target_is_directory=True)
    before = snapshot(elsewhere.root)

    pattern = rf"{re.escape(str(link))} is a symbolic link to {re.escape(str(elsewhere.root / 'mnli-lora'))}, outside"
    for attempt in (lambda: reg.load("mnli-lora"),
                    lambda: reg.update_scores("mnli-lora", None, {"de": {"accuracy": 1.0}}),  # what `xtl eval` does
                    lambda: reg.set_hub("mnli-lora", None, {"repo_id": "a/b", "revision": "c" * 40}),
                    lambda: reg.save(make_manifest("mnli-lora"), tiny_tensors()),  # would add version 2 there
                    lambda: reg.remove("mnli-lora", "1")):
        with pytest.raises(XtlError, match=pattern):
            attempt()
    assert snapshot(elsewhere.root) == before and sorted(p.name for p in link.iterdir()) == ["1"]
    assert [m.name for m in reg.list()] == ["other"]
    found = reg.find(task="mnli", method="lora", method_config={"r": 8, "alpha": 16}, backbone=E5)
    assert found is not None and found.name == "other"  # never the linked one

    assert main(["registry", "show", "mnli-lora", "--registry", str(reg.root)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert [(p.kind, p.path) for p in check(reg)] == [("symlink", str(link))]
    assert cli_verify(reg) == 1 and "outside the registry" in capsys.readouterr().out
    assert cli_verify(reg, "--fix") == 1  # links are reported, never deleted
    assert link.is_symlink() and snapshot(elsewhere.root) == before


def test_version_folders_and_files_linked_outside_are_refused(reg, tmp_path):
    import shutil

    reg.save(make_manifest("a"), tiny_tensors())
    reg.save(make_manifest("b"), tiny_tensors())
    outside = tmp_path / "outside"
    shutil.copytree(reg.root / "a" / "1", outside / "a1")
    shutil.rmtree(reg.root / "a" / "1")
    (reg.root / "a" / "1").symlink_to(outside / "a1", target_is_directory=True)
    weights = reg.root / "b" / "1" / "weights.safetensors"
    shutil.copyfile(weights, outside / "b-weights")  # same bytes: the sha256 check alone would pass
    weights.unlink()
    weights.symlink_to(outside / "b-weights")
    with pytest.raises(XtlError, match="a/1 is a symbolic link to .*outside the registry"):
        reg.load("a")
    with pytest.raises(XtlError, match="weights.safetensors is a symbolic link to .*b-weights, outside"):
        reg.load("b")
    found = [(p.kind, Path(p.path).relative_to(reg.root).as_posix()) for p in check(reg)]
    assert sorted(f for f in found if f[0] == "symlink") == [("symlink", "a/1"), ("symlink", "b/1/weights.safetensors")]
    assert found == [("symlink", "a/1"), ("symlink", "b/1/weights.safetensors"), ("index", "index.json")]  # a/1 is
    # not a module of this registry any more, so its index entry is stale (verify --fix drops it, as a rebuild does)


def test_links_that_stay_inside_the_root_are_followed(tmp_path):
    real = Registry(tmp_path / "real")
    real.save(make_manifest("a"), tiny_tensors(1))
    (tmp_path / "link").symlink_to(real.root, target_is_directory=True)  # the root itself on another disk
    reg = Registry(tmp_path / "link")
    weights = reg.root / "a" / "1" / "weights.safetensors"
    os.rename(weights, reg.root / "a" / "shared.safetensors")
    weights.symlink_to(Path("..") / "shared.safetensors")
    m, t = reg.load("a")
    assert torch.equal(t["head.bias"], tiny_tensors(1)["head.bias"]) and verify(reg) == []
    reg.update_scores("a", None, {"de": {"accuracy": 0.5}})
    assert real.manifest("a").scores["de"] == {"accuracy": 0.5}


# ------------------------------------------------------------------------------------------- exports


def test_overwrite_replaces_only_a_folder_an_earlier_export_wrote(reg, tmp_path, capsys):
    lora_module(reg)
    out = tmp_path / "out"
    export(reg, "exp-lora", out, fmt="peft")
    assert read_marker(out) == {**read_marker(out), "module": "exp-lora", "version": "1", "format": "peft"}
    with pytest.raises(XtlError, match="exists and is not empty"):
        export(reg, "exp-lora", out, fmt="peft")
    (out / "adapter_model.safetensors").write_bytes(b"stale")
    export(reg, "exp-lora", out, fmt="peft", overwrite=True)  # an earlier export: replaced
    assert (out / "adapter_model.safetensors").read_bytes() != b"stale"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["registry", "export", "exp-lora", str(mine), "--format", "peft", "--overwrite",
                 "--registry", str(reg.root)]) == 2
    err = capsys.readouterr().err
    assert "was not written by `xtl registry export`" in err and MARKER in err and "nothing was deleted" in err
    assert snapshot(mine) == {"thesis.tex": b"years of work"}
    (tmp_path / "file").write_text("x")
    with pytest.raises(XtlError, match="is not a folder"):
        export(reg, "exp-lora", tmp_path / "file", fmt="peft", overwrite=True)
    assert main(["registry", "export", "exp-lora", str(tmp_path / "new"), "--format", "peft",
                 "--registry", str(reg.root)]) == 0
    assert MARKER not in capsys.readouterr().out and read_marker(tmp_path / "new") is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert not list((reg.root / JOURNAL_DIR).iterdir()) and verify(reg) == []


KILLED_EXPORT = """
import os, signal, sys
from adapters_xtl.store import convert, exports
from adapters_xtl.store.registry import Registry

real = convert.export_module

def killed(registry, name, out_dir, **kw):
    real(registry, name, out_dir, **kw)
    os.kill(os.getpid(), signal.SIGKILL)  # after the files are written, before the rename

exports.export_module = killed
exports.export(Registry(sys.argv[1]), "exp-lora", sys.argv[2], fmt="peft", overwrite=True)
"""


def test_a_killed_export_is_reported_and_cleaned_and_the_earlier_export_survives(reg, tmp_path, capsys):
    lora_module(reg)
    out = tmp_path / "out"
    export(reg, "exp-lora", out, fmt="peft")
    before = snapshot(out)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(reg.root), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    stages = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(stages) == 1 and snapshot(out) == before
    problems = check(reg)
    assert [(p.kind, p.path, p.fixed) for p in problems] == [("leftover", str(stages[0]), False)]
    assert "interrupted `xtl registry export`" in problems[0].message
    assert cli_verify(reg, "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["healthy"] is False and doc["problems"][0]["path"] == str(stages[0])
    assert cli_verify(reg, "--fix") == 0 and "fixed" in capsys.readouterr().out
    assert not stages[0].exists() and not list((reg.root / JOURNAL_DIR).iterdir()) and snapshot(out) == before
    assert cli_verify(reg) == 0


def test_a_damaged_export_record_never_makes_fix_delete_what_it_names(reg, tmp_path):
    lora_module(reg)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("keep me")
    records = reg.root / JOURNAL_DIR
    records.mkdir()
    (records / ("0" * 32 + ".json")).write_text(json.dumps({"stage": str(victim), "out": "x", "pid": 1, "host": "h",
                                                              "started": 0}))
    (records / "junk.json").write_text("{not json")
    problems = check(reg)
    assert len(problems) == 2 and all("unreadable record" in p.message for p in problems)
    assert all(p.fixed for p in check(reg, fix=True))
    assert (victim / "data.txt").read_text() == "keep me" and not list(records.iterdir())


def test_a_running_export_is_left_alone(reg, tmp_path):
    token = "ab" * 16
    stage = tmp_path / f".tmp-{token}-export-out"
    stage.mkdir()
    (stage / ".owner").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    (reg.root / JOURNAL_DIR).mkdir(parents=True)
    (reg.root / JOURNAL_DIR / f"{token}.json").write_text(json.dumps(
        {"stage": str(stage), "out": str(tmp_path / "out"), "pid": os.getpid(), "host": socket.gethostname(),
         "started": 0}))
    assert check(reg, fix=True) == [] and stage.is_dir()


# ------------------------------------------------------------------------------------------- verify


def test_verify_exit_code_and_json(reg, capsys):
    reg.save(make_manifest("a"), tiny_tensors())
    assert cli_verify(reg) == 0 and "healthy" in capsys.readouterr().out
    assert cli_verify(reg, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"registry": str(reg.root), "healthy": True, "fixed": 0,
                                                   "problems": []}
    (reg.root / ".tmp-deadbeef").mkdir()
    os.utime(reg.root / ".tmp-deadbeef", (0, 0))  # old, no owner: a killed writer's
    assert cli_verify(reg) == 1 and "1 problem(s)" in capsys.readouterr().out
    assert cli_verify(reg, "--fix", "--json") == 0  # everything found was repaired
    doc = json.loads(capsys.readouterr().out)
    assert doc["healthy"] and doc["fixed"] == 1 and doc["problems"][0]["kind"] == "leftover"
    (reg.path("a") / "weights.safetensors").write_bytes(b"corrupt")
    assert cli_verify(reg, "--fix", "--json") == 1  # damage is never "fixed"
    doc = json.loads(capsys.readouterr().out)
    assert [(p["kind"], p["fixed"]) for p in doc["problems"]] == [("damaged", False)]
    assert "sha256 mismatch" in doc["problems"][0]["text"]


# ------------------------------------------------------------------------------------------- Hub


def test_hub_downloads_are_capped_per_file_and_name_the_file_size_and_fix(hub, reg, tmp_path, monkeypatch):  # noqa: F811
    lora_module(reg, width=512, r=16)  # weights ~64 KB, manifest and card a few KB
    size = (reg.path("exp-lora") / "weights.safetensors").stat().st_size
    push(reg, "exp-lora", repo_id="xtl-lab/big", exports=False)
    other = Registry(tmp_path / "other")
    hub.log.clear()
    with pytest.raises(XtlError) as e:
        pull(other, "xtl-lab/big", max_bytes="20KB")
    msg = str(e.value)
    assert "weights.safetensors" in msg and f"({size} bytes)" in msg and "over the download limit of 19.5 KiB" in msg
    assert "--max-file-size" in msg and "XTL_HUB_MAX_FILE_SIZE" in msg
    assert not [p for v, p in hub.log if v == "GET" and p.endswith("weights.safetensors")]  # never fetched
    stub = other.manifest("exp-lora")
    assert other.missing_files(stub) == ["weights.safetensors"] and verify(other) == []  # a stub, as --lazy

    monkeypatch.setenv("XTL_HUB_MAX_FILE_SIZE", "20KB")  # the limit for loads that complete a stub
    with pytest.raises(XtlError, match="over the download limit"):
        other.load("exp-lora")
    monkeypatch.setenv("XTL_HUB_MAX_FILE_SIZE", "1MB")
    read = []
    real_read_bytes = Path.read_bytes

    def spy(self):
        read.append(self)
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    done = pull(other, "xtl-lab/big")  # the same commit again: completes the stub
    monkeypatch.setattr(Path, "read_bytes", real_read_bytes)
    assert not other.missing_files(done) and "lazy" not in done.hub
    assert not [p for p in read if p.name == "weights.safetensors"]  # hashed and moved in chunks, not read whole
    assert not [p for p in other.root.iterdir() if p.name.startswith(".tmp-")] and verify(other) == []

    hub.log.clear()
    for bad in ("lots", "0", "-5MB", "3 parsecs"):
        with pytest.raises(XtlError, match="invalid size"):
            pull(other, "xtl-lab/big", max_bytes=bad)
    assert hub.log == []
    assert main(["registry", "pull", "xtl-lab/big", "--max-file-size", "nope", "--registry", str(other.root)]) == 2
    assert parse_size("2GiB") == 2 * 1024**3 and parse_size("1.5MB") == 1_500_000 and parse_size(123) == 123


def test_a_hub_backbone_fingerprint_names_its_commit(hub, tiny_backbone_dir, tmp_path, monkeypatch, reg):  # noqa: F811
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import HfApi
    from safetensors.torch import load_file, save_file

    from adapters_xtl.backbone import load_backbone

    monkeypatch.setattr(transformers_hub, "_is_offline_mode", False)
    monkeypatch.setattr(transformers_hub, "TRANSFORMERS_CACHE", str(tmp_path / "hf-cache"))
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("xtl-lab/tiny-xlmr")
    first = api.upload_folder(repo_id="xtl-lab/tiny-xlmr", folder_path=str(tiny_backbone_dir)).oid
    bb = load_backbone("xtl-lab/tiny-xlmr")
    assert bb.fingerprint.weights_sha256 == f"rev:{first}" and bb.fingerprint.model_id == "xtl-lab/tiny-xlmr"
    resolved = [p for v, p in hub.log if "/resolve/" in p and p.endswith("tokenizer.json")]
    assert resolved and all(f"/resolve/{first}/" in p for p in resolved)  # tokenizer of the same commit
    reg.save(make_manifest("on-first", backbone=bb.fingerprint), tiny_tensors())

    changed = {k: v + 1 for k, v in load_file(str(tiny_backbone_dir / "model.safetensors")).items()}
    save_file(changed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    second = api.upload_file(path_or_fileobj=str(tmp_path / "model.safetensors"), path_in_repo="model.safetensors",
                             repo_id="xtl-lab/tiny-xlmr").oid
    new = load_backbone("xtl-lab/tiny-xlmr")
    assert second != first and new.fingerprint.weights_sha256 == f"rev:{second}"
    with pytest.raises(XtlError, match="weights_sha256: 'rev:.*' != 'rev:"):
        reg.load("on-first", expect_backbone=new.fingerprint)  # upstream changed: a mismatch, not a silent reuse


# ------------------------------------------------------------------------------------------- manifest, card


def test_data_revisions_are_recorded_shown_and_optional(reg, tmp_path):
    old = make_manifest().model_dump()
    del old["data_revisions"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_manifest(tmp_path / "old.json").data_revisions == {}
    m = reg.save(make_manifest(data_revisions={"google/xtreme": "a" * 40, "local.tsv": "sha256:12"}), tiny_tensors())
    assert reg.load("mnli-lora")[0].data_revisions == {"google/xtreme": "a" * 40, "local.tsv": "sha256:12"}
    card = (reg.path("mnli-lora") / "README.md").read_text()
    assert f"| data revisions | `google/xtreme@{'a' * 40}, local.tsv@sha256:12` |" in card
    assert parse_front_matter(card)["datasets"] == ["google/xtreme"] and m.version == "1"


HOSTILE = 'x"y\'z\\w\n---\nevil: 1\n```\n<img src=x onerror=alert(1)> `tick` | $(touch /tmp/pwn) [l](http://e)'


def test_module_names_cannot_carry_quotes_or_newlines():
    from adapters_xtl.store.layout import check_name

    for bad in ('a"b', "a'b", "a\\b", "a\nb", "a`b", "a b", "a$b"):
        with pytest.raises(XtlError, match="invalid module name"):
            check_name(bad)


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_model_cards_quote_hostile_values(method):
    """Task, backbone and repo ids come from manifests (hand-edited, imported): any text must stay inert."""
    m = Manifest(name="mod", version="1", task=HOSTILE, format="classification", method=method,
                 backbone=BackboneFingerprint(model_id=HOSTILE, weights_sha256="ab" * 32),
                 scores={"en": {HOSTILE: 1.0}}, composition={"note": HOSTILE}, data_revisions={HOSTILE: HOSTILE},
                 hub={"repo_id": HOSTILE, "revision": HOSTILE}, imported={"library": HOSTILE, "source": {}})
    card = render_card(m)
    assert parse_front_matter(card) == front_matter(m)  # the front matter ends where it should
    assert set(front_matter(m)) <= {"library_name", "base_model", "base_model_relation", "tags", "language",
                                    "metrics", "model-index", "datasets", "pipeline_tag", "license", "license_name"}
    body = card.split("\n---\n", 1)[1]
    lines = body.splitlines()
    assert not [line for line in lines if line.startswith(("---", "evil", "<img"))]
    fences = [i for i, line in enumerate(lines) if line.startswith("```")]
    assert [lines[i] for i in fences[::2]] == ["```bash", "```python", "```bash", "```python"]
    blocks = {(lines[a], b): "\n".join(lines[a + 1:b]) for a, b in zip(fences[::2], fences[1::2])}
    strings = set()
    for (lang, _), code in blocks.items():
        if lang == "```python":
            tree = ast.parse(code)  # valid Python whatever the values
            strings |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        else:
            for line in code.splitlines():
                words = shlex.split(line, comments=True)
                assert words[:2] == ["xtl", "registry"] or words[:2] == ["xtl", "eval"]
                assert not any("\n" in w for w in words)
    assert HOSTILE in strings and "mod" in strings  # the backbone / repo ids quoted exactly, not cut or reinterpreted
    pulled = [shlex.split(line, comments=True) for line in lines if line.startswith("xtl registry pull")]
    assert pulled[1] == ["xtl", "registry", "pull", HOSTILE.replace("\n", " "), "--lazy"]  # one word, inert

    from markdown_it import MarkdownIt  # what a Markdown renderer (raw HTML allowed) makes of the body

    html = MarkdownIt("commonmark").enable("table").render(body)
    assert "<img" not in html and "<a " not in html and html.count("<h1>") == 1 and html.count("<pre>") == 4
    assert "<em>" not in html and "<strong>" in html and html.count("<table>") == 2


# ------------------------------------------------------------------------------------------- pickles, modes


class _Payload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def test_the_pickle_refusal_gives_no_unsafe_advice(tmp_path):
    ran = tmp_path / "ran"
    torch.save({"w": _Payload(str(ran))}, tmp_path / "evil.bin")
    with pytest.raises(XtlError) as e:
        load_pickled_tensors(tmp_path / "evil.bin")
    msg = str(e.value)
    assert "refusing evil.bin" in msg and "needs exec to unpickle" in msg and "safetensors" in msg
    for unsafe in ("weights_only=False", "will likely succeed", "add_safe_globals", "safe_globals", "trust"):
        assert unsafe not in msg
    assert not ran.exists()
    torch.save({"a": torch.ones(2)}, tmp_path / "ok.bin")
    assert torch.equal(load_pickled_tensors(tmp_path / "ok.bin")["a"], torch.ones(2))
    torch.save({"a": {"nested": torch.ones(2)}}, tmp_path / "nested.bin")
    with pytest.raises(XtlError, match="not a flat dict"):
        load_pickled_tensors(tmp_path / "nested.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(XtlError, match="refusing junk.bin") as e:
        load_pickled_tensors(tmp_path / "junk.bin")
    assert "weights_only=False" not in str(e.value) and "can still be loaded" not in str(e.value)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_library_written_files_get_the_users_umask(tmp_path, umask, monkeypatch):
    from safetensors.torch import save_file

    from adapters_xtl.backbone import _weights_sha256
    from adapters_xtl.store.files import fix_mode

    old = os.umask(umask)
    try:
        save_file({"a": torch.zeros(2)}, str(tmp_path / "m.safetensors"))  # 0600, as e5's build wrote it
        fix_mode(tmp_path / "m.safetensors")
        assert new_file_mode(tmp_path) == 0o666 & ~umask
        src = tmp_path / "download"
        src.write_bytes(b"weights")
        os.chmod(src, 0o600)
        with pytest.raises(XtlError, match="sha256 mismatch"):
            move_verified(src, tmp_path / "w", "0" * 64, where="test")
        import hashlib

        move_verified(src, tmp_path / "w", hashlib.sha256(b"weights").hexdigest(), where="test")
        monkeypatch.setenv("XTL_CACHE", str(tmp_path / "cache"))
        folder = tmp_path / "bb"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        save_file({"a": torch.ones(3)}, str(folder / "model.safetensors"))
        digest = _weights_sha256(str(folder), str(folder))
    finally:
        os.umask(old)
    mode = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "w").stat().st_mode) == mode and (tmp_path / "w").read_bytes() == b"weights"
    cached = list((tmp_path / "cache" / "weight-hashes").iterdir())
    assert [p.read_text() for p in cached] == [digest] and stat.S_IMODE(cached[0].stat().st_mode) == mode
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_the_built_backbone_folder_gets_the_users_umask(monkeypatch, tmp_path):
    from adapters_xtl import embedded

    def fake_build(out: Path) -> None:  # the real one takes seconds; only the folder's mode is tested here
        for name in ("model.safetensors", "tokenizer.json"):
            (out / name).write_text("x")
        (out / "xtl_build.json").write_text(json.dumps({"weights_sha256": "fake"}))

    monkeypatch.setattr(embedded, "_build_into", fake_build)
    old = os.umask(0o002)
    try:
        folder = embedded.build_e5_small(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o775  # a lab group can read (mkdtemp gave 0700, then 0755)
