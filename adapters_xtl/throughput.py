"""The measurement log: how fast this machine trained, one JSON line per run, so the dry-run
prices a grid from measurements instead of guessing (the pricing itself is in cost.py).

Every training run and every plain `xtl bench` configuration appends one line to
``$XTL_CACHE/throughput.jsonl`` (or ``$XTL_THROUGHPUT``): backbone, quantization, method, device kind, task, batch size,
seconds per optimizer step (dev evaluation excluded), real tokens per step and the step's FLOPs
(`cost.step_flops`).

The file is append-only; a torn last line (a killed process) is skipped on reading.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

FILE_NAME = "throughput.jsonl"
KEY_FIELDS = ("backbone", "quantization", "method", "device")


def throughput_path(cache_dir: str | Path | None = None) -> Path:
    from .embedded import default_cache_dir

    if cache_dir is None and os.environ.get("XTL_THROUGHPUT"):
        return Path(os.environ["XTL_THROUGHPUT"])  # tests keep tiny-model timings out of the user's file
    return Path(cache_dir or default_cache_dir()) / FILE_NAME


def record(row: dict[str, Any], cache_dir: str | Path | None = None) -> None:
    """Append one measurement. Single ``write`` of one short line with O_APPEND: concurrent
    writers interleave whole lines, and a kill leaves at most one torn line."""
    if not row.get("steps") or row.get("seconds_per_step", 0) <= 0:
        return
    path = throughput_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({**row, "time": round(time.time())}, sort_keys=True) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # close a torn line so this record is not glued onto it
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    path = throughput_path(cache_dir)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line from a killed writer
        if isinstance(row, dict) and row.get("seconds_per_step", 0) > 0:
            rows.append(row)
    return rows

