"""`xtl report`: tables (terminal, report.md, report.csv) and figures of a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console


def report(run_dir: Path = typer.Argument(..., help="a run folder with results.jsonl")):
    """Tables (terminal, report.md, report.csv) of a run's results."""
    from ..api import report as api_report
    from ..reporting import rich_tables

    out = api_report(run_dir)
    for tab in rich_tables(out["tables"]):
        console.print(tab)
    console.print(f"wrote {out['report']} and {out['report'].with_suffix('.csv')}")
