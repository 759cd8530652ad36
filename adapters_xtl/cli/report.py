"""`xtl report`: tables (terminal, report.md, report.csv) and figures of a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console


def report(run_dir: Path = typer.Argument(..., help="a run folder with results.jsonl"),
           correction: str = typer.Option("holm", help="p-value correction across the report's gains: holm | bh"),
           alpha: float = typer.Option(0.05, help="significance level after the correction")):
    """Tables (terminal, report.md, report.csv) of a run's results, every gain with its paired
    bootstrap interval; * marks the gains that stay significant after the correction."""
    from ..api import report as api_report
    from ..reporting import rich_tables

    out = api_report(run_dir, correction=correction, alpha=alpha)
    for tab in rich_tables(out["tables"]):
        console.print(tab)
    console.print(f"wrote {out['report']} and {out['report'].with_suffix('.csv')}")
