"""`xtl registry ...`: list, show and verify modules (push/pull/import/export join here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

registry_app = typer.Typer(no_args_is_help=True, help="The local registry of task modules.")
console = Console()


def _registry(path: Optional[Path]):
    from .registry import Registry

    return Registry(path)


@registry_app.command("list")
def registry_list(registry: Optional[Path] = typer.Option(None)):
    reg = _registry(registry)
    mans = reg.list()
    t = Table(title=f"registry {reg.root} ({len(mans)} modules)")
    for col in ("name", "version", "task", "method", "backbone", "steps", "mean score"):
        t.add_column(col)
    for m in mans:
        vals = [next(iter(ms.values())) for ms in m.scores.values() if ms]
        t.add_row(m.name, m.version, m.task, m.method, m.backbone.short(), str(m.steps),
                  f"{sum(vals) / len(vals):.1f}" if vals else "")
    console.print(t)


@registry_app.command("show")
def registry_show(name: str, version: Optional[str] = typer.Option(None), registry: Optional[Path] = typer.Option(None)):
    reg = _registry(registry)
    m = reg.manifest(name, version)
    console.print_json(m.model_dump_json())


@registry_app.command("verify")
def registry_verify(registry: Optional[Path] = typer.Option(None), fix: bool = typer.Option(False)):
    reg = _registry(registry)
    problems = reg.verify(fix=fix)
    if problems:
        for p in problems:
            console.print(f"[red]- {p}")
        raise typer.Exit(1)
    console.print(f"[green]registry {reg.root} is healthy")
