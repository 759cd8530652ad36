"""Atomic writes and appends: old or new content, never half; normal permissions; no swallowed rows."""

from __future__ import annotations

import json
import os
import stat

import pytest

from adapters_xtl import io as xio
from adapters_xtl.io import (append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir,
                             fsync_file)


@pytest.fixture
def umask():
    """Run with a known umask, restored afterwards (the umask is per process)."""
    old = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(xio.TMP_PREFIX))


# -- atomic writes ------------------------------------------------------------------------------


def test_atomic_write_replaces_the_content_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, bytearray(b"two, longer"))
    assert target.read_bytes() == b"two, longer"
    atomic_write_text(tmp_path / "t.txt", "zwei\r\nlinien ü")
    assert (tmp_path / "t.txt").read_bytes() == "zwei\r\nlinien ü".encode()  # no newline translation
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_an_exception_mid_write_leaves_the_old_file_intact_and_no_temp_file(tmp_path, monkeypatch, failure):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"old": True})
    written = []

    def broken_fsync(fd):
        written.append(fd)  # the temp file holds the new data by now
        raise failure

    monkeypatch.setattr(xio.os, "fsync", broken_fsync)
    with pytest.raises(type(failure)):
        atomic_write_json(target, {"new": True, "pad": "x" * 100_000})
    monkeypatch.undo()
    assert written, "the failure should happen after the temp file was written"
    assert json.loads(target.read_text()) == {"old": True}
    assert leftovers(tmp_path) == []


def test_a_failing_rename_leaves_the_old_file_intact_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "index.json"
    atomic_write_text(target, "old\n")

    def broken_replace(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(xio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="cross-device"):
        atomic_write_text(target, "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []


def test_an_unserialisable_object_changes_nothing(tmp_path):
    target = tmp_path / "cell.json"
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert not target.exists() and leftovers(tmp_path) == []
    atomic_write_json(target, {"x": object(), "y": 1}, default=lambda o: "obj", sort_keys=True)
    assert target.read_text() == '{\n  "x": "obj",\n  "y": 1\n}\n'


def test_json_is_indented_and_ends_with_a_newline(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"b": [1, 2], "ä": "ö"}, ensure_ascii=False)
    text = (tmp_path / "a.json").read_text(encoding="utf-8")
    assert text == '{\n  "b": [\n    1,\n    2\n  ],\n  "ä": "ö"\n}\n'
    atomic_write_json(tmp_path / "b.json", [1], indent=None)
    assert (tmp_path / "b.json").read_text() == "[1]\n"


# -- permissions --------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_new_files_get_the_users_umask_not_0600(tmp_path, umask):
    atomic_write_bytes(tmp_path / "a", b"x")
    append_jsonl(tmp_path / "a.jsonl", [{"a": 1}])
    assert mode(tmp_path / "a") == 0o644 and mode(tmp_path / "a.jsonl") == 0o644
    umask(0o027)
    atomic_write_text(tmp_path / "b", "x")
    assert mode(tmp_path / "b") == 0o640
    umask(0o002)
    atomic_write_json(tmp_path / "c", {})
    assert mode(tmp_path / "c") == 0o664


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    target = tmp_path / "secret.json"
    atomic_write_json(target, {"v": 1})
    os.chmod(target, 0o600)
    atomic_write_json(target, {"v": 2})
    assert mode(target) == 0o600 and json.loads(target.read_text()) == {"v": 2}


# -- appends ------------------------------------------------------------------------------------


def read_rows(path) -> list:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            rows.append("BAD")
    return rows


def test_append_jsonl_appends_whole_lines(tmp_path):
    path = tmp_path / "results.jsonl"
    append_jsonl(path, [{"lang": "de", "score": 0.5}])
    append_jsonl(path, ({"lang": l, "text": "日本"} for l in ("ja", "sw")))
    append_jsonl(path, [])  # nothing to add: the file is not touched
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and "日本" in text  # kept readable, not \\u-escaped
    assert [r["lang"] for r in read_rows(path)] == ["de", "ja", "sw"]


def test_a_truncated_last_line_does_not_swallow_the_next_row(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"lang": "de", "score": 0.5}\n{"lang": "fr", "sc')  # a writer died mid-line
    append_jsonl(path, [{"lang": "sw", "score": 0.25}, {"lang": "ja", "score": 0.75}])
    rows = read_rows(path)
    assert rows == [{"lang": "de", "score": 0.5}, "BAD", {"lang": "sw", "score": 0.25}, {"lang": "ja", "score": 0.75}]
    append_jsonl(path, [{"lang": "en"}])  # a clean end gets no blank line
    assert read_rows(path)[-2:] == [{"lang": "ja", "score": 0.75}, {"lang": "en"}]
    assert "\n\n" not in path.read_text()


def test_append_to_an_empty_file_adds_no_blank_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("")
    append_jsonl(path, [{"a": 1}])
    assert path.read_text() == '{"a": 1}\n'


def test_an_unserialisable_row_appends_nothing(tmp_path):
    path = tmp_path / "results.jsonl"
    append_jsonl(path, [{"a": 1}])
    with pytest.raises(TypeError):
        append_jsonl(path, [{"b": 2}, {"c": object()}])
    assert read_rows(path) == [{"a": 1}]


# -- fsync helpers ------------------------------------------------------------------------------


def test_fsync_helpers_accept_files_and_folders(tmp_path):
    (tmp_path / "f").write_bytes(b"data")
    fsync_file(tmp_path / "f")
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "no-such-folder")  # nothing to sync: no error
    with pytest.raises(FileNotFoundError):
        fsync_file(tmp_path / "missing")
