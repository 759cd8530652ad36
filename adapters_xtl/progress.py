"""Progress as events: the library says what happens, the caller decides how to show it.

Training loops and the grid runner call a `progress` callback with a `ProgressEvent` (a job
started, advanced, finished; or, from the Ray executor, "record": a logged point of a job that
ran on a worker, delivered when it finished, for trackers). The CLI passes a `RichReporter` on
a terminal (live bars) and a `LogReporter` when output goes to a file, so a `nohup` log gets plain timestamped lines (step,
loss, ETA) every few seconds instead of escape codes; a notebook can pass any callable, or none.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO


@dataclass
class ProgressEvent:
    kind: str  # "start" | "advance" | "end" | "record" (a logged point of a job that ran on a Ray worker)
    job: str  # a description that names the job ("sst2-lora", "grid mini-xstilts")
    completed: int = 0
    total: Optional[int] = None
    fields: dict[str, Any] = field(default_factory=dict)  # e.g. loss


ProgressCallback = Callable[[ProgressEvent], None]


def emit(progress: Optional[ProgressCallback], kind: str, job: str, completed: int = 0,
         total: Optional[int] = None, **fields: Any) -> None:
    if progress is not None:
        progress(ProgressEvent(kind, job, completed, total, fields))


class RichReporter:
    """Live bars on a terminal (rich), one per job."""

    def __init__(self, console=None):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                                  TimeRemainingColumn(), console=console, transient=False)
        self._ids: dict[str, Any] = {}

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def __call__(self, ev: ProgressEvent) -> None:
        if ev.kind == "record":  # history for trackers; the bars show what runs here
            return
        info = _info(ev.fields)
        if ev.kind == "start" or ev.job not in self._ids:
            self._ids[ev.job] = self._progress.add_task(ev.job, total=ev.total, completed=ev.completed, info=info)
            return
        tid = self._ids[ev.job]
        kw = {"info": info} if info else {}
        if ev.kind == "end":
            total = self._progress.tasks[[t.id for t in self._progress.tasks].index(tid)].total
            self._progress.update(tid, completed=total if total is not None else ev.completed, **kw)
            self._ids.pop(ev.job, None)
        else:
            self._progress.update(tid, completed=ev.completed, **kw)


class LogReporter:
    """Plain timestamped lines for logs: a start and an end line per job, and in between at most
    one line per job every `every` seconds with step/total, the job's fields and an ETA."""

    def __init__(self, stream: Optional[TextIO] = None, every: float = 30.0, clock: Callable[[], float] = time.time):
        self.stream = stream or sys.stderr
        self.every = every
        self.clock = clock
        self._started: dict[str, tuple[float, int]] = {}
        self._last: dict[str, float] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.clock()))
        print(f"{stamp} {text}", file=self.stream, flush=True)

    def __call__(self, ev: ProgressEvent) -> None:
        if ev.kind == "record":
            return
        now = self.clock()
        of = f"/{ev.total}" if ev.total is not None else ""
        info = _info(ev.fields)
        if ev.kind == "start":
            self._started[ev.job] = (now, ev.completed)
            self._last[ev.job] = now
            self._line(f"{ev.job}: start {ev.completed}{of}")
            return
        t0, c0 = self._started.setdefault(ev.job, (now, ev.completed))
        if ev.kind == "end":
            self._line(f"{ev.job}: done {ev.completed}{of} in {now - t0:.0f}s {info}".rstrip())
            self._started.pop(ev.job, None)
            self._last.pop(ev.job, None)
            return
        if now - self._last.get(ev.job, t0) < self.every:
            return
        self._last[ev.job] = now
        eta = ""
        if ev.total and ev.completed > c0:
            rate = (now - t0) / (ev.completed - c0)
            eta = f" eta {rate * (ev.total - ev.completed):.0f}s"
        self._line(f"{ev.job}: {ev.completed}{of} {info}{eta}".rstrip())


def _info(fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4f}" if v == 0 or abs(v) >= 1e-3 else f"{k} {v:.2e}")  # lr 5e-05, not 0.0000
        else:
            parts.append(f"{k} {v}")
    return " ".join(parts)


def reporter_for(console=None, *, every: float = 30.0):
    """Bars on a terminal, plain lines otherwise (a file, a pipe, CI)."""
    file = getattr(console, "file", None) or sys.stdout
    if console is not None and getattr(console, "is_terminal", False):
        return RichReporter(console)
    return LogReporter(file, every=every)
