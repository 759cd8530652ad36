"""`xtl study NAME`: run one research question's grid and analysis (the studies registered in
adapters_xtl/studies/, one `*_study.py` file each; the shared driver is studies/context.py).

Registered in cli/__init__.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..studies import study_names

console = Console()

_HELP = ", ".join(study_names())  # the registry's names: a new study file shows up here by itself


def study(
    name: str = typer.Argument(..., help=f"which study: {_HELP}"),
    recipe: Optional[Path] = typer.Option(None, help="study recipe (default recipes/studies/NAME.yaml)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default runs/study-NAME)"),
    data_dir: Optional[Path] = typer.Option(None, help="override the recipe's data_dir"),
    registry: Optional[Path] = typer.Option(None, help="module registry (default $XTL_REGISTRY or registry/)"),
    device: Optional[str] = typer.Option(None),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the grid the study needs, run nothing"),
):
    """Run a study: its grid (cached cells and registry modules reused), the statistics, and a
    report: OUT/study.md (with figures) and OUT/study.json."""
    from .. import checks
    from ..studies import get_study
    from ..studies.context import run_study

    get_study(name)  # an unknown study, then every option: before its grid starts
    checks.input_dir(data_dir, "--data-dir")
    checks.device(device)
    checks.registry_root(registry, "--registry", write=not dry_run)
    if not dry_run or (out and out.exists()):
        checks.output_dir(out or Path("runs") / f"study-{name}", "--out")
    res = run_study(name, recipe=recipe, out=out, data_dir=data_dir, registry=registry, console=console,
                    device=device, dry_run=dry_run)
    if res is None:
        return
    console.print("[bold]headline[/]")
    for h in res.result.get("headline", []):
        console.print(f"  - {h}", highlight=False)
    console.print(f"wrote {res.md_path}, {res.json_path} and {len(res.result.get('figures', []))} figures")


if __name__ == "__main__":  # `python -m adapters_xtl.cli.study NAME ...`, the same as `xtl study NAME ...`
    import sys

    from ..errors import XtlError

    try:
        app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        app.command()(study)
        app(standalone_mode=False)
    except XtlError as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
