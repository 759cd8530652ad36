"""`xtl train`: one module on English data, zero-shot scores per language, registered.

Every option is checked before the backbone loads (`check_train_options`); training keeps
resumable checkpoints in `<checkpoint-dir>/<name>-<settings hash>` (default: `checkpoints/` next
to `--results`), so a killed `xtl train` run again with the same options resumes where it stopped
and ends with the same weights; the folder is removed once the module is registered.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

import typer

from .. import checks
from ..errors import XtlError
from ..tracking import check_tracker
from .common import (console, json_output, langs, method_config_json, print_json, progress,
                     registry as open_registry, scores_table, tracker_for)


def train(
    task: str = typer.Option(..., help="catalog task name or path to a task YAML"),
    method: str = typer.Option("lora", help="lora | bottleneck"),
    backbone: str = typer.Option("xlmr-e5-small", help="xlmr-e5-small, xlm-roberta-base/large, a Hub id or a folder"),
    quantization: str = typer.Option("none", help="none | 8bit | 4bit"),
    embeddings: str = typer.Option("full", help="word embeddings: full | trimmed | 8bit | 4bit | trimmed+8bit | "
                                                "trimmed+4bit (trimmed keeps the pieces of the task's data)"),
    precision: Optional[str] = typer.Option(None, help="fp32 | bf16 | auto (default: the task's, else auto)"),
    backbone_dropout: Optional[str] = typer.Option(None, help="frozen backbone's dropout while training: a number "
                                                              "or built (default: the task's, else 0)"),
    module_dropout: Optional[str] = typer.Option(None, help="the module's dropout while training: a number or built "
                                                            "(default: the task's, else built, the method's own)"),
    name: Optional[str] = typer.Option(None, help="registry name (default <task>-<method>)"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps (>= 1; default: the task's)"),
    batch_size: Optional[int] = typer.Option(None, help="examples per step (>= 1)"),
    lr: Optional[float] = typer.Option(None, help="learning rate (> 0)"),
    seed: int = typer.Option(42),
    eval_every: Optional[int] = typer.Option(None, help="steps between dev evaluations (>= 1)"),
    max_train_examples: Optional[int] = typer.Option(None, help="training examples at most (>= 1)"),
    method_config: Optional[str] = typer.Option(None, help='JSON object, e.g. \'{"r": 16}\''),
    init_from: Optional[str] = typer.Option(None, help="registry module to start from (STILTs continue), NAME[@VERSION]"),
    languages: Optional[str] = typer.Option(None, help="comma-separated evaluation languages (default: all)"),
    eval_limit: Optional[int] = typer.Option(None, help="evaluation examples per language (>= 1; default: all)"),
    data_dir: Optional[Path] = typer.Option(None, help="folder with local data (default $XTL_DATA or ../shared/data)"),
    results: Path = typer.Option(Path("xtl-out/results.jsonl"), help="results file to append to"),
    checkpoint_dir: Optional[Path] = typer.Option(
        None, help="where training checkpoints go (default: checkpoints/ next to --results); a rerun of the same "
                   "command resumes from them; removed once the module is registered"),
    registry: Optional[Path] = typer.Option(None, help="registry folder (default $XTL_REGISTRY or ./registry)"),
    device: Optional[str] = typer.Option(None),
    tracker: Optional[str] = typer.Option(None, "--tracker", help="tensorboard | trackio | mlflow | wandb (default: "
                                          "none); see docs/tracking.md"),
    tracker_dir: Optional[Path] = typer.Option(None, "--tracker-dir", help="where the tracker writes (default: "
                                               "tracking/ next to --results)"),
    as_json: bool = typer.Option(False, "--json", help="print the registered module and its scores as one JSON "
                                 "object; progress and tables go to stderr"),
):
    """Train a task module on English data, evaluate it zero-shot on every language, register it."""
    with json_output(as_json):
        _train(**{k: v for k, v in locals().items() if k != "as_json"}, as_json=as_json)


def _train(*, task, method, backbone, quantization, embeddings, precision, backbone_dropout, module_dropout, name,
           steps, batch_size, lr, seed, eval_every, max_train_examples, method_config, init_from, languages,
           eval_limit, data_dir, results, checkpoint_dir, registry, device, tracker, tracker_dir, as_json):
    from ..api import Continue, train as api_train
    from ..backbone import pick_device
    from ..compress import cost_notes, load_compressed, task_texts

    spec, cfg, method_obj, name, init_ref = check_train_options(
        task=task, method=method, backbone=backbone, quantization=quantization, embeddings=embeddings,
        precision=precision, backbone_dropout=backbone_dropout, module_dropout=module_dropout, name=name, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every, max_train_examples=max_train_examples,
        method_config=method_config, init_from=init_from, languages=languages, eval_limit=eval_limit,
        data_dir=data_dir, results=results, checkpoint_dir=checkpoint_dir, registry=registry, device=device)
    tracker = check_tracker(tracker, "--tracker")
    tracker_dir = tracker_dir or results.parent / "tracking"
    checks.output_dir(tracker_dir if tracker else None, "--tracker-dir")
    ckpt = checkpoint_folder(checkpoint_dir or results.parent / "checkpoints", name, spec=spec, method=method,
                             method_obj=method_obj, cfg=cfg, backbone=backbone, quantization=quantization,
                             init_ref=init_ref, data_dir=data_dir, embeddings=embeddings)
    t0 = time.perf_counter()
    for note in cost_notes(pick_device(device), quantization, embeddings, cfg.precision):
        console.print(f"[yellow]note:[/] {note}")  # once, before anything slow starts
    bb = load_compressed(backbone, quantization, device, embeddings=embeddings, warn=False,
                         texts=lambda: task_texts([(spec, langs(languages))], data_dir))
    emb = f", embeddings {embeddings}" if embeddings != "full" else ""
    console.print(f"backbone {bb.fingerprint.short()} ({bb.total_params() / 1e6:.1f}M params{emb}) in "
                  f"{time.perf_counter() - t0:.1f}s")
    reg = open_registry(registry)
    console.print(f"checkpoints in {ckpt}" + (" (resuming)" if ckpt.exists() else ""))
    config = {"task": spec.name, "method": method, "backbone": backbone, **cfg.model_dump()}
    with tracker_for(tracker, tracker_dir, project=spec.name, config=config) as track, progress() as report:
        tm = api_train(bb, spec, method=method_obj, compose=Continue(init_ref) if init_ref else None, registry=reg,
                       config=cfg, name=name, languages=langs(languages), eval_limit=eval_limit, data_dir=data_dir,
                       results=results, checkpoint_dir=ckpt, progress=report, tracker=track)
    shutil.rmtree(ckpt, ignore_errors=True)  # the module is registered: its checkpoints are done
    console.print(f"trainable parameters: {tm.trainable_params:,} ({100 * tm.trainable_params / tm.total_params:.2f}% of {tm.total_params:,})")
    resumed = f", resumed from step {tm.result.resumed_from}" if tm.result.resumed_from else ""
    console.print(f"trained {cfg.steps} steps in {tm.result.seconds:.1f}s ({tm.result.seconds / max(1, cfg.steps):.2f} s/step), "
                  f"best dev step {tm.result.best_step}, padding waste {100 * tm.result.padding_waste:.1f}%{resumed}")
    console.print(scores_table(f"{tm.manifest.name} v{tm.manifest.version} on {spec.name} (zero-shot)", tm.scores))
    console.print(f"registered {tm.manifest.name} v{tm.manifest.version} in {reg.root}; results appended to {results}"
                  + (f"; {tracker} logs in {tracker_dir}" if tracker else ""))
    if as_json:
        print_json({"module": tm.name, "task": spec.name, "method": method, "backbone": bb.fingerprint.short(),
                    "registry": str(reg.root), "steps": cfg.steps, "seconds": round(tm.result.seconds, 2),
                    "best_step": tm.result.best_step, "resumed_from": tm.result.resumed_from,
                    "trainable_params": tm.trainable_params, "scores": tm.scores, "results": str(results),
                    "tracker": tracker, "tracker_dir": str(tracker_dir) if tracker else None})


def check_train_options(*, task, method, backbone, quantization, name, steps, batch_size, lr, seed, eval_every,
                        max_train_examples, method_config, init_from, languages, eval_limit, data_dir, results,
                        checkpoint_dir, registry, device, embeddings="full", precision=None, backbone_dropout=None,
                        module_dropout=None):
    """Every option of `xtl train`, checked before anything loads or is written: returns (task
    spec, TrainConfig, method config, module name, pinned `init_from` or None)."""
    from ..methods import get_method
    from ..pipeline import model_format_trainable
    from ..tasks import get_task
    from ..trainer import TrainConfig

    given = dict(steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
                 max_train_examples=max_train_examples)
    for key, value in given.items():
        checks.train_setting(key, value, "--" + key.replace("_", "-"))
    checks.at_least(eval_limit, 1, "--eval-limit", fix="examples per language to evaluate, or leave it out for all")
    spec = get_task(task)
    if not model_format_trainable(spec):
        raise XtlError(f"task {spec.name!r} ({spec.format}) has no training", where="--task",
                       fix="retrieval tasks evaluate a module directly: use `xtl eval`")
    cfg = TrainConfig.resolve(spec, dict(given, seed=seed, precision=precision, backbone_dropout=backbone_dropout,
                                         module_dropout=module_dropout),
                              where="--steps/--batch-size/--lr/--precision/... or the task's defaults")
    mcfg = method_config_json(method_config)
    method_obj = get_method(method).make_config(mcfg, where="--method-config")
    for lang in langs(languages) or []:
        spec.language_code(lang)
    checks.quantization(quantization, "--quantization")
    checks.embeddings(embeddings, "--embeddings")
    checks.backbone(backbone, "--backbone")
    checks.device(device)
    name = checks.module_name(name or f"{spec.name}-{method}", "--name")
    checks.registry_root(registry, "--registry", write=True)
    init_ref = None
    if init_from:
        ref_name, version = checks.module_ref(init_from, "--init-from")
        man = open_registry(registry).manifest(ref_name, version)  # unknown module or version: now
        init_ref = f"{man.name}@{man.version}"
    checks.input_dir(data_dir, "--data-dir")
    checks.output_file(results, "--results")
    checks.output_dir(checkpoint_dir or results.parent / "checkpoints", "--checkpoint-dir")
    return spec, cfg, method_obj, name, init_ref


def checkpoint_folder(root: Path, name: str, *, spec, method, method_obj, cfg, backbone, quantization, init_ref,
                      data_dir, embeddings: str = "full") -> Path:
    """`<root>/<name>-<hash>`: the hash covers everything that decides the trained weights, so a
    rerun of the same command resumes and a changed one (other steps, task, backbone, starting
    module) starts afresh instead of resuming someone else's run."""
    from ..store.manifest import config_hash

    key = config_hash({"task": spec.model_dump(mode="json"), "method": method,
                       "method_config": method_obj.model_dump(), "train": cfg.model_dump(), "backbone": backbone,
                       "quantization": quantization, "init_from": init_ref,
                       **({"embeddings": embeddings} if embeddings != "full" else {}),
                       "data_dir": str(data_dir.resolve()) if data_dir else None})
    return root / f"{name}-{key[:12]}"
