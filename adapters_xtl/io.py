"""Writes that a crash, a kill or a full disk can interrupt without leaving half a file behind.

Results, checkpoints, registry manifests and caches are all read back by later runs, so a reader
must see either the old content or the new one. Every such write goes through here:

- `atomic_write_bytes` / `_text` / `_json` write a temp file in the same folder (same file system,
  so the rename is atomic), fsync it, `os.replace` it over the target and fsync the folder where
  the OS supports it; on any failure the temp file is removed and the old file is untouched.
- `append_jsonl` appends whole lines and fsyncs them. A crash can still cut the *last* line short,
  so before appending it makes sure the file ends with a newline: a truncated row stays one bad
  line instead of swallowing the next good one.
- `atomic_write_with` gives a library's own save function (`torch.save`) the same guarantees.
- `repair_jsonl_tail` cuts such a half line (under a lock, before appending again), and
  `exclusive_lock` is the one-writer-per-folder lock (released by the kernel when its holder dies).

Files get normal permissions: a new file is created with mode 0o666 filtered by the user's umask
(as `open(path, "w")` would; not `mkstemp`'s private 0o600), and a replaced file keeps its mode.
Temp files are named `.tmp-<random>-<name>`, which `xtl registry verify` recognises as leftovers.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import XtlError

TMP_PREFIX = ".tmp-"

__all__ = ["TMP_PREFIX", "LockHeld", "append_jsonl", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "atomic_write_with", "exclusive_lock", "fsync_dir", "fsync_file", "repair_jsonl_tail"]


def fsync_file(path: str | Path) -> None:
    """Flush a file already written (e.g. by a library) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself already happened
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{secrets.token_hex(8)}-{path.name[:200]}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data`: a reader sees the old content or the new one, never half."""
    data = bytes(data)

    def write(tmp: Path) -> None:
        with open(tmp, "r+b") as f:  # the temp file exists already, with its permissions
            f.write(data)

    atomic_write_with(path, write)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """`atomic_write_bytes` for text (written as is: no newline translation)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2, **dumps_kwargs: Any) -> None:
    """`obj` as JSON plus a final newline; `dumps_kwargs` go to `json.dumps` (e.g. `default=str`).

    The object is serialised before the file is touched, so an unserialisable value changes nothing.
    """
    atomic_write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")


def append_jsonl(path: str | Path, rows: Iterable[Any], **dumps_kwargs: Any) -> None:
    """Append one JSON line per row, flushed and fsynced; `dumps_kwargs` go to `json.dumps`.

    If the file does not end with a newline (a writer died mid-line), one is written first so the
    new rows start on a line of their own. Non-ASCII text is kept as is unless `ensure_ascii=True`.
    """
    dumps_kwargs.setdefault("ensure_ascii", False)
    blob = "".join(json.dumps(r, **dumps_kwargs) + "\n" for r in rows).encode("utf-8")
    if not blob:
        return
    with open(path, "a+b") as f:  # created with the umask's permissions; writes always go to the end
        end = f.seek(0, os.SEEK_END)
        if end > 0:
            f.seek(end - 1)
            if f.read(1) != b"\n":
                blob = b"\n" + blob
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_with(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Replace `path` with what `write(temp_path)` writes (a library's own save function, e.g.
    `torch.save` or safetensors' `save_file`), with `atomic_write_bytes`'s guarantees: the temp
    file is created first with the umask's permissions (or the replaced file's mode), so a library
    that truncates and rewrites it keeps them; it is fsynced, renamed over `path`, and removed on
    any failure. Nothing is held in memory that the library would not hold anyway."""
    path = Path(path)
    try:
        keep_mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        keep_mode = None
    tmp = _temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            if keep_mode is not None and hasattr(os, "fchmod"):
                os.fchmod(fd, keep_mode)
        finally:
            os.close(fd)
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def repair_jsonl_tail(path: str | Path) -> str:
    """Cut a last line that a killed writer left half-written; return what was cut ("" if none).

    Only the last line can be partial (`append_jsonl` writes whole lines). A last line that parses
    but lacks its newline gets the newline instead. Call it only while no one else appends (under
    the folder's lock): it truncates the file in place."""
    path = Path(path)
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return ""
    with f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return ""
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return ""
        # find the start of the last line, reading backwards in blocks
        pos, start = end, 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                start = pos + nl + 1
                break
        f.seek(start)
        tail = f.read()
        try:
            json.loads(tail)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())
            return tail.decode("utf-8", "replace")
        f.seek(end)
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
        return ""


class LockHeld(Exception):
    """`exclusive_lock` found the lock taken; `holder` is what the holder wrote ("PID host") or ""."""

    def __init__(self, path: Path, holder: str):
        self.path, self.holder = Path(path), holder
        super().__init__(f"{path} is locked by {holder or 'another process'}")

    @property
    def pid(self) -> int | None:
        try:
            return int(self.holder.split()[0])
        except (IndexError, ValueError):
            return None


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an OS advisory lock (`flock`) on the file `path` for the `with` block, or raise
    `LockHeld` at once (no waiting). The holder's "PID host" is written into the file for the
    message of whoever is refused. The kernel drops the lock when the holder exits, however it
    exits (SIGKILL included), so a stale lock file never blocks anyone: the file may stay, the
    lock does not. Where `fcntl` is missing (Windows) the block runs unguarded.

    Locks are per open file: the same process taking the same lock twice is refused too."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(50):  # the holder writes its PID just after it took the lock
                holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            raise LockHeld(path, holder) from None
        note = f"{os.getpid()} {socket.gethostname()}\n".encode()
        os.pwrite(fd, note, 0)
        os.ftruncate(fd, len(note))
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_utf8(path: str | Path, what: str | None = None) -> str:
    """A text file's content (a UTF-8 BOM dropped); bytes that are not UTF-8 are an error naming the
    file, the byte offset and the line, instead of a UnicodeDecodeError traceback or, under another
    locale, mojibake. `what` names the file's role in the message ("task file")."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, offset) + 1
        raise XtlError(f"{what + ' is ' if what else ''}not UTF-8: byte {offset} (line {line}) is "
                       f"{data[offset:offset + 1]!r}", where=str(path),
                       fix="convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)") from None
