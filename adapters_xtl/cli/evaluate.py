"""`xtl eval`: a registry module (or the bare backbone, for retrieval) scored per language."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .common import console, langs, registry as open_registry, scores_table


def eval_cmd(
    task: str = typer.Option(...),
    module: Optional[str] = typer.Option(None, help="registry module NAME[@VERSION] (omit for retrieval with the bare backbone)"),
    backbone: str = typer.Option("xlmr-e5-small"),
    quantization: str = typer.Option("none"),
    languages: Optional[str] = typer.Option(None),
    limit: Optional[int] = typer.Option(None, help="examples per language"),
    data_dir: Optional[Path] = typer.Option(None),
    results: Path = typer.Option(Path("xtl-out/results.jsonl")),
    save_predictions: Optional[Path] = typer.Option(
        None, "--save-predictions", help="also write one JSON line per test example (id, language, gold, prediction, score)"),
    registry: Optional[Path] = typer.Option(None),
    allow_backbone_mismatch: bool = typer.Option(False, help="load a module trained on another backbone/quantization"),
    device: Optional[str] = typer.Option(None),
):
    """Evaluate a registry module (or the bare backbone, for retrieval) zero-shot per language."""
    from ..api import Backbone
    from ..pipeline import evaluate_module
    from ..session import parse_ref
    from ..tasks import get_task

    spec = get_task(task)
    for lang in langs(languages) or []:
        spec.language_code(lang)
    reg = open_registry(registry)
    if module:
        reg.manifest(*parse_ref(module))  # unknown module or version: fail before loading the backbone
    bb = Backbone.load(backbone, quantization, device)
    t0 = time.perf_counter()
    scores = evaluate_module(bb, module, spec, registry=reg, languages=langs(languages), data_dir=data_dir,
                             limit=limit, results_path=results, allow_backbone_mismatch=allow_backbone_mismatch,
                             predictions_path=save_predictions)
    console.print(scores_table(f"{module or 'backbone'} on {spec.name} ({time.perf_counter() - t0:.1f}s)", scores))
    console.print(f"results appended to {results}" + (f"; predictions in {save_predictions}" if save_predictions else ""))
