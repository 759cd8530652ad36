"""`xtl predict`: run a registry module on new text (a string, or a JSONL/TSV file)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import typer

from .. import checks
from ..errors import XtlError
from .common import console, print_json, registry as open_registry


def read_inputs(path: Path) -> list:
    """JSONL (one object or string per line) or TSV (a header row naming the fields; one column
    means plain text)."""
    if not path.is_file():
        raise XtlError(f"input file {str(path)!r} not found", where="--file", fix="give a .jsonl or .tsv file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise XtlError(f"{path} is not UTF-8 text (byte {e.start})", where="--file", fix="save it as UTF-8") from None
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise XtlError(f"line {i} is not JSON: {e.msg}", where=f"{path}:{i}", fix="one JSON object per line") from None
        return out
    if path.suffix == ".tsv":
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
        if rows and len(rows[0]) == 1:
            return [next(iter(r.values())) for r in rows]
        return rows
    raise XtlError(f"unknown input format {path.suffix!r}", where="--file", fix="use .jsonl or .tsv")


def predict(
    module: str = typer.Option(..., help="registry module NAME[@VERSION]"),
    text: Optional[list[str]] = typer.Option(None, help="an input text (repeatable); a pair as 'first<TAB>second'"),
    file: Optional[Path] = typer.Option(None, help="inputs: .jsonl (objects with the task's fields, or strings) or .tsv"),
    out: Optional[Path] = typer.Option(None, help="write predictions here as JSONL (default: print)"),
    task: Optional[str] = typer.Option(None, help="the task (default: the module's; required for multi-task modules)"),
    backbone: str = typer.Option("xlmr-e5-small"),
    quantization: Optional[str] = typer.Option(None, help="default: the module's own"),
    batch_size: int = typer.Option(32),
    registry: Optional[Path] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="print predictions as JSON"),
    language: Optional[str] = typer.Option(None, "--language", help="the inputs' language: picks the language "
                                           "module of a module trained on language modules (MAD-X)"),
    device: Optional[str] = typer.Option(None),
):
    """Predict with a trained module: labels + probabilities, tags per word, answer spans, chosen options or embeddings."""
    from ..api import Backbone

    if not text and not file:
        raise XtlError("nothing to predict", where="--text/--file", fix="pass --text 'a sentence' or --file inputs.jsonl")
    checks.at_least(batch_size, 1, "--batch-size", fix="inputs per forward pass, e.g. 32")
    inputs = list(text or []) + (read_inputs(file) if file else [])
    if quantization is not None:
        checks.quantization(quantization, "--quantization")
    checks.device(device)
    checks.registry_root(registry, "--registry", write=False)
    reg = open_registry(registry)
    man = reg.manifest(*checks.module_ref(module, "--module"))  # unknown module/version: before loading anything
    if task:
        from ..tasks import get_task

        get_task(task)
    checks.output_file(out, "--out")
    if backbone == "xlmr-e5-small" and man.backbone.model_id not in ("xlmr-e5-small",):
        backbone = man.backbone.model_id  # the module's own backbone unless one is named
    checks.backbone(backbone, "--backbone")
    bb = Backbone.load(backbone, quantization or man.backbone.quantization, device)
    with reg.load_module(module, backbone=bb, task=task) as mod:
        preds = mod.predict(inputs, batch_size=batch_size, language=language)
    if out:
        from ..io import atomic_write_text

        atomic_write_text(out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
        console.print(f"{len(preds)} predictions of {mod.name} written to {out}")
    elif as_json:
        print_json(preds)
    else:
        for inp, p in zip(inputs, preds):
            shown = {k: v for k, v in p.items() if k not in ("probabilities", "embedding", "scores")}
            console.print(f"{str(inp)[:60]!r} -> {json.dumps(shown, ensure_ascii=False)}", highlight=False)
