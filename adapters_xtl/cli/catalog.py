"""`xtl tasks` and `xtl backbone`: what there is to train on, and with."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import console, print_json


def tasks(
    action: Optional[str] = typer.Argument(None, help="`audit`: check a task's evaluation data for training leaks"),
    name: Optional[str] = typer.Argument(None, help="the task to audit"),
    group: Optional[str] = typer.Option(None, help="intermediate | target | demo | local"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="data folder (default $XTL_DATA or ../shared/data)"),
    as_json: bool = typer.Option(False, "--json", help="print the catalog (or the audit report) as JSON"),
):
    """List the task catalog (built-in tasks plus --tasks-dir folders), or `xtl tasks audit NAME`:
    overlaps between training and evaluation examples per language (exit 1 when any)."""
    from ..errors import XtlError
    from ..tasks import active_catalog

    if action is not None:
        if action != "audit":
            raise XtlError(f"unknown action {action!r}", where="xtl tasks", fix="`xtl tasks` lists, `xtl tasks audit NAME` audits")
        if not name:
            raise XtlError("which task?", where="xtl tasks audit", fix="xtl tasks audit NAME [--data-dir DIR] [--json]")
        _audit(name, data_dir, as_json)
        return
    specs = [s for s in active_catalog() if not group or s.group == group]
    if as_json:
        print_json([{"name": s.name, "format": s.format, "group": s.group, "languages": list(s.languages),
                     "train_task": s.train_task, "paper_name": s.paper_name, "metrics": list(s.metrics),
                     "main_metric": s.main_metric, "description": s.description, "file": s.file} for s in specs])
        return
    t = Table(title="tasks")
    for col in ("name", "format", "group", "languages", "description"):
        t.add_column(col)
    for s in specs:
        t.add_row(s.name, s.format, s.group, str(len(s.languages)), s.description[:70])
    console.print(t)


def _audit(name: str, data_dir: Optional[Path], as_json: bool) -> None:
    import json

    from ..audit import audit_or_raise, render

    report = audit_or_raise(name, data_dir)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
    else:
        console.print(render(report) if report.applicable else "\n".join(report.notes))
        if report.applicable:
            verdict = "clean: no evaluation example overlaps training" if report.clean else (
                f"{report.leaked} of {report.n_eval} evaluation examples overlap training")
            console.print(verdict, style="green" if report.clean else "bold red")
    if not report.clean:
        raise typer.Exit(1)


def backbone(
    name: str = typer.Argument("xlmr-e5-small"),
    quantization: str = typer.Option("none"),
    check: bool = typer.Option(True, help="run the translation-similarity sanity check"),
):
    """Load (building if needed) a backbone and show its fingerprint and size."""
    from ..backbone import load_backbone
    from ..embedded import sanity_check

    t0 = time.perf_counter()
    bb = load_backbone(name, quantization)
    console.print(f"{bb.fingerprint.short()} from {bb.source}: {bb.total_params() / 1e6:.2f}M params, "
                  f"{bb.num_layers} layers, hidden {bb.hidden_size}, loaded in {time.perf_counter() - t0:.1f}s")
    if check:
        console.print(sanity_check(bb.model, bb.tokenizer, device=str(bb.device)))
