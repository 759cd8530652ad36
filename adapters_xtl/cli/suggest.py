"""`xtl suggest`: which English intermediate task to train first for a target and language,
ranked before training (docs/suggest.md); `--evaluate` scores the suggestions on measured grids.

Registered in cli/__init__.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import console, langs, print_json


def suggest(
    run_dirs: Optional[List[Path]] = typer.Argument(None, metavar="[RUN_DIR]...",
                                                    help="grid folders (`xtl run` output) whose measured gains are "
                                                    "evidence; with --evaluate, the grids to evaluate on"),
    target: Optional[str] = typer.Option(None, help="the target task (e.g. sib200)"),
    languages: Optional[str] = typer.Option(None, help="comma-separated target languages, e.g. sw,yo"),
    candidates: str = typer.Option("catalog", help="catalog | registry | a comma list of tasks or modules"),
    registry: Optional[Path] = typer.Option(None, help="module registry (default $XTL_REGISTRY or registry/)"),
    runs: Optional[List[Path]] = typer.Option(None, "--runs", help="a grid folder with measured gains (repeatable)"),
    evaluate: bool = typer.Option(False, "--evaluate", help="rank the grids' held-out cells (leave one target / "
                                  "language out) and compare with the baselines"),
    backbone: Optional[str] = typer.Option(None, help="backbone (default: the grids' recipe's, else xlmr-e5-small)"),
    data_dir: Optional[Path] = typer.Option(None, help="data folder (default: the grids' recipe's, else ../shared/data)"),
    composition: str = typer.Option("auto", help="whose gains to rank: stack, continue, or auto (the grids' own)"),
    ranker: str = typer.Option("auto", help="auto (learned when there are enough cells) | learned | combined"),
    n_examples: int = typer.Option(200, help="target training examples for LogME / H-score"),
    align_pairs: int = typer.Option(100, help="parallel sentence pairs per language for alignment"),
    allow_other_backbone: bool = typer.Option(False, "--allow-other-backbone",
                                              help="use grids run on another backbone fingerprint (said in the notes)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    out: Optional[Path] = typer.Option(None, help="also write the Markdown (and OUT.json) here"),
):
    """Rank candidate intermediate tasks per language, with predicted gains, each signal's
    contribution and the evidence (measured cells); or, with --evaluate, how well that ranking
    picks the best intermediate on held-out measured cells."""
    from ..errors import XtlError
    from ..suggest import evaluate_runs
    from ..suggest import suggest as run_suggest
    from ..suggest.report import render_evaluation

    grids = [*(run_dirs or []), *(runs or [])]
    reg = registry
    if reg is None:
        from .common import registry as default_registry

        reg = default_registry(None)
    log = None if as_json else (lambda msg: console.print(f"[dim]{msg}[/]", highlight=False))
    common = dict(registry=reg, backbone=backbone, data_dir=data_dir, composition=composition, ranker=ranker,
                  n_examples=n_examples, align_pairs=align_pairs, allow_other_backbone=allow_other_backbone, log=log)
    if evaluate:
        res = evaluate_runs(grids, **common)
        lines, obj = render_evaluation(res), res
    else:
        if not target:
            raise XtlError("which target?", where="--target", fix="e.g. xtl suggest --target sib200 --languages sw,yo")
        s = run_suggest(target, langs(languages) or [], candidates=candidates, runs=grids, **common)
        lines, obj = s.render(), s.as_dict()
    if out:
        import json

        from ..io import atomic_write_text
        from ..studies.tables import jsonable

        atomic_write_text(out, "\n".join(lines) + "\n")
        atomic_write_text(out.with_suffix(".json"), json.dumps(jsonable(obj), indent=2, ensure_ascii=False) + "\n")
    if as_json:
        from ..studies.tables import jsonable

        print_json(jsonable(obj))
        return
    for line in lines:
        console.print(line, highlight=False, markup=False)


if __name__ == "__main__":  # `python -m adapters_xtl.cli.suggest ...`, the same as `xtl suggest ...`
    import sys

    from rich.console import Console

    from ..errors import XtlError

    try:
        app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        app.command()(suggest)
        app(standalone_mode=False)
    except XtlError as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
