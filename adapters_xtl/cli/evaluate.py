"""`xtl eval`: a registry module (or the bare backbone, for retrieval) scored per language."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .. import checks
from ..errors import XtlError
from .common import console, json_output, langs, print_json, registry as open_registry, scores_table


def eval_cmd(
    task: str = typer.Option(...),
    module: Optional[str] = typer.Option(None, help="registry module NAME[@VERSION] (omit for retrieval with the bare backbone)"),
    backbone: str = typer.Option("xlmr-e5-small"),
    quantization: str = typer.Option("none"),
    languages: Optional[str] = typer.Option(None),
    limit: Optional[int] = typer.Option(None, help="examples per language (>= 1; default: all)"),
    data_dir: Optional[Path] = typer.Option(None),
    results: Path = typer.Option(Path("xtl-out/results.jsonl")),
    save_predictions: Optional[Path] = typer.Option(
        None, "--save-predictions", help="also write one JSON line per test example (id, language, gold, prediction, score)"),
    registry: Optional[Path] = typer.Option(None),
    allow_backbone_mismatch: bool = typer.Option(False, help="load a module trained on another backbone/quantization"),
    device: Optional[str] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="print the scores as one JSON object (messages go to stderr)"),
):
    """Evaluate a registry module (or the bare backbone, for retrieval) zero-shot per language."""
    with json_output(as_json):
        _eval(task=task, module=module, backbone=backbone, quantization=quantization, languages=languages, limit=limit,
              data_dir=data_dir, results=results, save_predictions=save_predictions, registry=registry,
              allow_backbone_mismatch=allow_backbone_mismatch, device=device, as_json=as_json)


def _eval(*, task, module, backbone, quantization, languages, limit, data_dir, results, save_predictions, registry,
          allow_backbone_mismatch, device, as_json):
    from ..api import Backbone
    from ..pipeline import evaluate_module
    from ..tasks import get_task

    # every option before the backbone loads: nothing is scored, appended or updated on a bad one
    checks.at_least(limit, 1, "--limit", fix="examples per language to evaluate, or leave it out for all")
    spec = get_task(task)
    for lang in langs(languages) or []:
        spec.language_code(lang)
    checks.quantization(quantization, "--quantization")
    checks.backbone(backbone, "--backbone")
    checks.device(device)
    checks.registry_root(registry, "--registry", write=bool(module))  # eval records its scores in the module
    reg = open_registry(registry)
    if module:
        reg.manifest(*checks.module_ref(module, "--module"))  # unknown module or version
    elif spec.format != "retrieval":
        raise XtlError(f"task {spec.name!r} ({spec.format}) needs a trained module", where="--module",
                       fix="pass --module NAME or NAME@VERSION (train one with `xtl train`); only retrieval tasks "
                           "score the bare backbone")
    checks.input_dir(data_dir, "--data-dir")
    checks.output_file(results, "--results")
    checks.output_file(save_predictions, "--save-predictions")
    bb = Backbone.load(backbone, quantization, device)
    t0 = time.perf_counter()
    scores = evaluate_module(bb, module, spec, registry=reg, languages=langs(languages), data_dir=data_dir,
                             limit=limit, results_path=results, allow_backbone_mismatch=allow_backbone_mismatch,
                             predictions_path=save_predictions)
    seconds = time.perf_counter() - t0
    console.print(scores_table(f"{module or 'backbone'} on {spec.name} ({seconds:.1f}s)", scores))
    console.print(f"results appended to {results}" + (f"; predictions in {save_predictions}" if save_predictions else ""))
    if as_json:
        print_json({"module": module, "task": spec.name, "backbone": bb.fingerprint.short(), "limit": limit,
                    "scores": scores, "seconds": round(seconds, 3), "results": str(results),
                    "predictions": str(save_predictions) if save_predictions else None})
