"""Measured training throughput, remembered per machine so `xtl run --dry-run` can say what a
grid will cost here instead of guessing.

A FLOP-count estimate (tokens x 4N / (peak x assumed MFU)) is off by an order of magnitude on
small backbones: real MFU varies 10x between a laptop CPU and an H100, and padded lengths
differ from the task's max length. Every training run therefore appends one line to
``$XTL_CACHE/throughput.jsonl`` (or ``$XTL_THROUGHPUT``): backbone, quantization, method, device kind, task, batch size,
seconds per optimizer step (dev evaluation excluded) and real tokens per step. The planner then
prices a job from the closest measurement it has:

1. ``task``: the same backbone, quantization, method, device and task: seconds/step, scaled
   linearly by batch size;
2. ``flops``: the same backbone, quantization, method and device on any task: its achieved
   FLOP/s applied to the job's FLOP estimate;
3. ``guess``: nothing measured: measured matmul peak x an assumed MFU.

The file is append-only; a torn last line (a killed process) is skipped on reading.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

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


@dataclass
class StepCost:
    seconds: float
    source: str  # "task" | "flops" | "guess"


def step_cost(rows: Iterable[dict[str, Any]], *, backbone: str, quantization: str, method: str, device: str,
              task: str, batch_size: int, flops_per_step: float, guess_flops_per_s: float | None) -> StepCost:
    """Seconds one optimizer step of this job should take here (see the module docstring).

    Of several matching measurements the most recent ones count (the median of the last five),
    so an old run on a busy machine does not price a quiet one forever.
    """
    want = {"backbone": backbone, "quantization": quantization, "method": method, "device": device}
    same = [r for r in rows if all(r.get(k) == v for k, v in want.items())]
    same_task = [r for r in same if r.get("task") == task]
    if same_task:
        per = [r["seconds_per_step"] * batch_size / max(1, r.get("batch_size", batch_size)) for r in same_task[-5:]]
        return StepCost(_median(per), "task")
    rates = [r["flops_per_step"] / r["seconds_per_step"] for r in same[-5:] if r.get("flops_per_step")]
    if rates:
        return StepCost(flops_per_step / _median(rates), "flops")
    return StepCost(flops_per_step / guess_flops_per_s if guess_flops_per_s else float("nan"), "guess")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
