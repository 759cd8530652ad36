"""`xtl train`: one module on English data, zero-shot scores per language, registered."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import XtlError
from .common import console, langs, progress, registry as open_registry, scores_table


def train(
    task: str = typer.Option(..., help="catalog task name or path to a task YAML"),
    method: str = typer.Option("lora", help="lora | bottleneck"),
    backbone: str = typer.Option("xlmr-e5-small", help="xlmr-e5-small, xlm-roberta-base/large, a Hub id or a folder"),
    quantization: str = typer.Option("none", help="none | 8bit | 4bit"),
    name: Optional[str] = typer.Option(None, help="registry name (default <task>-<method>)"),
    steps: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    seed: int = typer.Option(42),
    eval_every: Optional[int] = typer.Option(None),
    max_train_examples: Optional[int] = typer.Option(None),
    method_config: Optional[str] = typer.Option(None, help='JSON, e.g. \'{"r": 16}\''),
    init_from: Optional[str] = typer.Option(None, help="registry module to start from (STILTs continue), NAME[@VERSION]"),
    languages: Optional[str] = typer.Option(None, help="comma-separated evaluation languages (default: all)"),
    eval_limit: Optional[int] = typer.Option(None, help="evaluation examples per language"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with local data (default $XTL_DATA or ../shared/data)"),
    results: Path = typer.Option(Path("xtl-out/results.jsonl"), help="results file to append to"),
    registry: Optional[Path] = typer.Option(None, help="registry folder (default $XTL_REGISTRY or ./registry)"),
    device: Optional[str] = typer.Option(None),
):
    """Train a task module on English data, evaluate it zero-shot on every language, register it."""
    from ..api import Backbone, Continue, train as api_train
    from ..tasks import get_task
    from ..trainer import TrainConfig

    spec = get_task(task)
    cfg = TrainConfig.resolve(spec, dict(steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
                                         max_train_examples=max_train_examples, seed=seed), where="options")
    try:
        mcfg = json.loads(method_config) if method_config else {}
    except json.JSONDecodeError as e:
        raise XtlError(f"--method-config is not JSON: {e}", where="--method-config") from None
    from ..methods import get_method

    method_obj = get_method(method).make_config(mcfg, where="--method-config")
    for lang in langs(languages) or []:
        spec.language_code(lang)
    t0 = time.perf_counter()
    bb = Backbone.load(backbone, quantization, device)
    console.print(f"backbone {bb.fingerprint.short()} ({bb.total_params() / 1e6:.1f}M params) in {time.perf_counter() - t0:.1f}s")
    reg = open_registry(registry)
    with progress() as report:
        tm = api_train(bb, spec, method=method_obj, compose=Continue(init_from) if init_from else None, registry=reg,
                       config=cfg, name=name, languages=langs(languages), eval_limit=eval_limit, data_dir=data_dir,
                       results=results, progress=report)
    console.print(f"trainable parameters: {tm.trainable_params:,} ({100 * tm.trainable_params / tm.total_params:.2f}% of {tm.total_params:,})")
    console.print(f"trained {cfg.steps} steps in {tm.result.seconds:.1f}s ({tm.result.seconds / max(1, cfg.steps):.2f} s/step), "
                  f"best dev step {tm.result.best_step}, padding waste {100 * tm.result.padding_waste:.1f}%")
    console.print(scores_table(f"{tm.manifest.name} v{tm.manifest.version} on {spec.name} (zero-shot)", tm.scores))
    console.print(f"registered {tm.manifest.name} v{tm.manifest.version} in {reg.root}; results appended to {results}")
