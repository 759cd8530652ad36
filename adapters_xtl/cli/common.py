"""What every command shares: the console, list parsing, the registry, score tables, --json."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

console = Console()


def langs(s: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def registry(path: Optional[Path]):
    from ..api import Registry

    return Registry(path)


def progress():
    """Bars on a terminal, timestamped lines in a log."""
    from ..progress import reporter_for

    return reporter_for(console)


def scores_table(title: str, scores: dict[str, dict[str, float]]) -> Table:
    metrics = sorted({m for ms in scores.values() for m in ms})
    t = Table(title=title)
    t.add_column("language")
    for m in metrics:
        t.add_column(m, justify="right")
    for lang, ms in scores.items():
        t.add_row(lang, *(f"{ms[m]:.2f}" if m in ms else "" for m in metrics))
    if len(scores) > 1:
        t.add_row("[bold]mean", *(f"{sum(ms.get(m, 0) for ms in scores.values()) / len(scores):.2f}" for m in metrics))
    return t


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


@contextmanager
def json_output(as_json: bool):
    """With --json, stdout carries exactly one JSON document: tables, progress and messages go to
    stderr for the command's duration (so `xtl ... --json | jq` works)."""
    if not as_json:
        yield
        return
    saved = console._file  # None = follow sys.stdout
    console.file = sys.stderr
    try:
        yield
    finally:
        console._file = saved


@contextmanager
def tracker_for(kind: Optional[str], folder: Path, *, project: str, config: dict):
    """The chosen experiment tracker for a command's duration (None when none), closed even when
    training fails, so what it logged is flushed."""
    if not kind:
        yield None
        return
    from ..api import Tracker

    with Tracker(kind, folder, project=project, config=config) as tracker:
        yield tracker


def method_config_json(text: Optional[str], example: str = '{"r": 16}') -> dict:
    """`--method-config` as a dict: JSON, and an object, or an error saying which."""
    from ..errors import XtlError

    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise XtlError(f"{text!r} is not JSON: {e}", where="--method-config",
                       fix=f"a JSON object, e.g. '{example}'") from None
    if not isinstance(value, dict):
        raise XtlError(f"{text!r} is not a JSON object", where="--method-config",
                       fix=f"a JSON object of method settings, e.g. '{example}'")
    return value
