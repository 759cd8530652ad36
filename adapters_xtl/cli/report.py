"""`xtl report`: tables (terminal, report.md, report.csv) and figures of a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console


def report(run_dir: Path = typer.Argument(..., help="a run folder with results.jsonl"),
           correction: str = typer.Option("holm", help="p-value correction across the report's gains: holm | bh"),
           alpha: float = typer.Option(0.05, help="significance level after the correction"),
           push: str = typer.Option(None, "--push", metavar="ORG/NAME",
                                    help="also publish the results as a Hub dataset (Parquet + dataset card)"),
           run_name: str = typer.Option(None, help="with --push: the run's file name in the dataset (default: "
                                                   "the run folder's name); the same name replaces its file"),
           private: bool = typer.Option(False, help="with --push: create the dataset repo private")):
    """Tables (terminal, report.md, report.csv) of a run's results, every gain with its paired
    bootstrap interval; * marks the gains that stay significant after the correction. With
    --push ORG/NAME the rows also go to a Hub dataset that other labs' grids pool with."""
    from ..api import report as api_report
    from ..reporting import rich_tables
    from ..store.hub import check_repo_id

    if push:
        check_repo_id(push)  # before the report is written

    out = api_report(run_dir, correction=correction, alpha=alpha)
    for tab in rich_tables(out["tables"]):
        console.print(tab)
    console.print(f"wrote {out['report']} and {out['report'].with_suffix('.csv')}")
    if push:
        from ..reporting.hub_results import push_results

        done = push_results(run_dir, push, run_name=run_name, private=private)
        console.print(f"pushed {done['rows']} result rows to dataset {done['repo_id']} ({done['path']}) at "
                      f"{done['revision']}")
