"""Atomic writes and appends: old or new content, never half; normal permissions; no swallowed rows."""

from __future__ import annotations

import json
import os
import stat

import pytest

from adapters_xtl import io as xio
from adapters_xtl.io import (LockHeld, append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text,
                             atomic_write_with, exclusive_lock, fsync_dir, fsync_file, repair_jsonl_tail)


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


# -- a library's own writer -----------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_write_with_gives_a_library_writer_the_same_guarantees(tmp_path, umask):
    import torch

    target = tmp_path / "checkpoint.pt"
    atomic_write_with(target, lambda tmp: torch.save({"step": 1}, tmp))
    assert torch.load(target, weights_only=True) == {"step": 1} and mode(target) == 0o644
    umask(0o077)  # a replaced file keeps its mode, whatever the umask now

    def dies_half_way(tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(target, dies_half_way)
    assert torch.load(target, weights_only=True) == {"step": 1} and leftovers(tmp_path) == []
    atomic_write_with(target, lambda tmp: torch.save({"step": 2}, tmp))
    assert torch.load(target, weights_only=True) == {"step": 2} and mode(target) == 0o644


# -- repairing a half-written last line ------------------------------------------------------------


@pytest.mark.parametrize("content, cut, after", [
    (b'{"a": 1}\n{"b": 2}\n', "", b'{"a": 1}\n{"b": 2}\n'),  # clean: untouched
    (b'{"a": 1}\n{"b": ', '{"b": ', b'{"a": 1}\n'),  # a kill mid-row: the fragment goes
    (b'{"a": 1}\n{"b": 2}', "", b'{"a": 1}\n{"b": 2}\n'),  # a whole row without its newline: kept
    (b'{"b": ', '{"b": ', b""),  # the only line was cut
    (b"", "", b""),
    ('{"a": 1}\n{"t": "日'.encode()[:-1], '{"t": "\ufffd', b'{"a": 1}\n'),  # cut inside a character
])
def test_repair_jsonl_tail_cuts_only_a_half_written_last_line(tmp_path, content, cut, after):
    path = tmp_path / "results.jsonl"
    path.write_bytes(content)
    assert repair_jsonl_tail(path) == cut and path.read_bytes() == after
    append_jsonl(path, [{"z": 9}])
    assert read_rows(path)[-1] == {"z": 9} and "BAD" not in read_rows(path)


def test_repair_jsonl_tail_of_a_missing_file_is_a_no_op(tmp_path):
    assert repair_jsonl_tail(tmp_path / "none.jsonl") == "" and not (tmp_path / "none.jsonl").exists()


def test_repair_reads_a_long_last_line_across_blocks(tmp_path):
    path = tmp_path / "results.jsonl"
    long_row = '{"text": "' + "x" * 200_000 + '"}'
    path.write_text('{"a": 1}\n' + long_row[:-5])
    assert repair_jsonl_tail(path).startswith('{"text": "xxx') and path.read_text() == '{"a": 1}\n'


# -- the one-writer lock ---------------------------------------------------------------------------

HOLD = """
import sys, time
from adapters_xtl.io import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(lock, tmp_path):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_second_process_is_refused_with_the_holders_pid_and_a_killed_holder_frees_it(tmp_path):
    import signal

    lock = tmp_path / "run" / ".lock"
    p = _holder(lock, tmp_path)
    try:
        with pytest.raises(LockHeld) as e:
            with exclusive_lock(lock):
                pass
        assert e.value.pid == p.pid and e.value.path == lock
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert lock.exists()  # the file stays; the lock died with its process
    with exclusive_lock(lock):
        assert lock.read_text().split()[0] == str(os.getpid())
    assert lock.read_text() == ""  # released: no holder named


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_the_same_process_cannot_take_a_held_lock_twice(tmp_path):
    lock = tmp_path / ".lock"
    with exclusive_lock(lock):
        with pytest.raises(LockHeld):
            with exclusive_lock(lock):
                pass
    with exclusive_lock(lock):  # free again after the block
        pass
