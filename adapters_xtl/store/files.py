"""Large files into the registry without holding them in memory, with the user's permissions.

`adapters_xtl.io` writes small files (bytes in memory) atomically with the umask's permissions.
Weights downloaded from the Hub can be large, and libraries write files their own way
(huggingface_hub's downloads and `safetensors.save_file` make them 0600, unreadable to the rest of
a lab sharing a registry or cache). So here:

- `new_file_mode(folder)`: the mode a new file in `folder` gets (0o666 filtered by the umask, as the
  kernel applies it), found by creating a probe file: `os.umask` can only be read by changing it,
  which races with other threads.
- `move_verified(src, dest, sha256)`: hash `src` in chunks, refuse it when the hash differs, give it
  the user's mode and rename it over `dest` (a streamed copy when `src` is on another file system).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from pathlib import Path

from ..errors import XtlError
from ..io import TMP_PREFIX, fsync_dir, fsync_file

CHUNK = 1 << 20

__all__ = ["CHUNK", "fix_mode", "move_verified", "new_file_mode", "sha256_stream"]


def new_file_mode(folder: str | Path) -> int:
    """Permission bits a file newly created in `folder` gets from the umask (e.g. 0o644 for 022)."""
    probe = Path(folder) / f"{TMP_PREFIX}{secrets.token_hex(8)}-mode"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def fix_mode(path: str | Path) -> None:
    """Give a file a library wrote (0600) the mode the user's umask gives new files in its folder."""
    os.chmod(path, new_file_mode(Path(path).parent))


def sha256_stream(path: str | Path) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def move_verified(src: str | Path, dest: str | Path, sha256: str, *, where: str) -> None:
    """Move `src` over `dest` atomically when it hashes to `sha256`; otherwise raise and leave `dest` alone.

    `dest` gets the mode new files in its folder get (not the downloader's 0600). Memory use is
    one chunk whatever the file's size.
    """
    src, dest = Path(src), Path(dest)
    if src.is_symlink() or not src.is_file():
        raise XtlError(f"{src.name} is not a plain file", where=where, fix="download it again")
    actual, _ = sha256_stream(src)
    if actual != sha256:
        raise XtlError(f"sha256 mismatch for {src.name}: got {actual[:16]}…, expected {str(sha256)[:16]}…",
                       where=where, fix="the copy is not the one recorded; download it again")
    mode = new_file_mode(dest.parent)
    os.chmod(src, mode)
    fsync_file(src)  # the downloader may not have; the rename must not publish unwritten data
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f"{TMP_PREFIX}{secrets.token_hex(8)}-{dest.name[:200]}")
        try:
            shutil.copyfile(src, tmp)
            os.chmod(tmp, mode)
            if sha256_stream(tmp)[0] != sha256:
                raise XtlError(f"{dest.name} changed while it was copied", where=where, fix="run the command again")
            fsync_file(tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        src.unlink(missing_ok=True)
    fsync_dir(dest.parent)
