"""`xtl train-language`: a language module (MAD-X) trained with masked language modelling on
unlabeled text, registered as task `mlm:<lang>`; `xtl.Language(...)` (or a recipe's
`language_modules:`) puts it below task modules.

Every option is checked before the backbone loads; the text is read (and refused: not UTF-8,
empty, a task's test split) before any weights move.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .. import checks
from ..errors import XtlError
from .common import console, method_config_json, progress, registry as open_registry


def train_language(
    lang: str = typer.Option(..., "--lang", help="language code as the tasks use it (sw, yo; or swh_Latn)"),
    text: list[str] = typer.Option(..., "--text", help="a UTF-8 text file (one sentence per line) or TASK[:SPLIT] "
                                                       "(its unlabeled text; never its test split); repeatable"),
    method: str = typer.Option("bottleneck", help="bottleneck (adapters' seq_bn_inv, MAD-X) | lora"),
    backbone: str = typer.Option("xlmr-e5-small", help="xlmr-e5-small, xlm-roberta-base/large, a Hub id or a folder"),
    quantization: str = typer.Option("none", help="none | 8bit | 4bit"),
    name: Optional[str] = typer.Option(None, help="registry name (default mlm-<lang>-<method>)"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps (>= 1; default 200)"),
    batch_size: Optional[int] = typer.Option(None, help="sequences per step (>= 1; default 16)"),
    lr: Optional[float] = typer.Option(None, help="learning rate (> 0; default 5e-4)"),
    seed: int = typer.Option(42),
    eval_every: Optional[int] = typer.Option(None, help="steps between held-out MLM evaluations (>= 1)"),
    max_length: int = typer.Option(128, help="tokens per line at most"),
    method_config: Optional[str] = typer.Option(None, help='JSON object, e.g. \'{"reduction_factor": 4}\''),
    data_dir: Optional[Path] = typer.Option(None, help="folder with local data, for TASK text"),
    registry: Optional[Path] = typer.Option(None, help="registry folder (default $XTL_REGISTRY or ./registry)"),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="resumable training checkpoints (kept until registered)"),
    device: Optional[str] = typer.Option(None),
):
    """Train a language module with masked language modelling on unlabeled text and register it."""
    from ..api import Backbone, train_language as api_train_language
    from ..language import LANGUAGE_METHODS, language_code, language_train_config, read_text

    code = language_code(lang)
    if method not in LANGUAGE_METHODS:
        raise XtlError(f"language modules are {' or '.join(LANGUAGE_METHODS)} modules, not {method!r}",
                       where="--method", fix="--method bottleneck (MAD-X) or --method lora")
    given = dict(steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every)
    for key, value in given.items():
        checks.train_setting(key, value, "--" + key.replace("_", "-"))
    cfg = language_train_config({**{k: v for k, v in given.items() if v is not None}, "seed": seed})
    checks.at_least(max_length, 8, "--max-length", fix="tokens per line, e.g. 128")
    mcfg = method_config_json(method_config, '{"reduction_factor": 4}')
    from ..language import DEFAULT_METHOD_CONFIG
    from ..methods import get_method

    get_method(method).make_config({**DEFAULT_METHOD_CONFIG[method], **mcfg}, where="--method-config")
    name = checks.module_name(name or f"mlm-{code}-{method}", "--name")
    checks.quantization(quantization, "--quantization")
    checks.backbone(backbone, "--backbone")
    checks.device(device)
    checks.registry_root(registry, "--registry", write=True)
    checks.input_dir(data_dir, "--data-dir")
    if checkpoint_dir is not None:
        checks.output_dir(checkpoint_dir, "--checkpoint-dir")
    corpus = read_text(text, code, data_dir)  # bad text fails before the backbone loads
    console.print(f"text: {corpus.record['lines']} lines in {code} from "
                  + ", ".join(r.get("path") or f"{r['task']}:{r['split']}" for r in corpus.record["sources"]))

    t0 = time.perf_counter()
    bb = Backbone.load(backbone, quantization, device)
    console.print(f"backbone {bb.fingerprint.short()} in {time.perf_counter() - t0:.1f}s")
    reg = open_registry(registry)
    with progress() as report:
        lm = api_train_language(bb, code, text, method=get_method(method).make_config(mcfg) if mcfg else method,
                                registry=reg, config=cfg, name=name, data_dir=data_dir, max_length=max_length,
                                checkpoint_dir=checkpoint_dir, progress=report)
    r = lm.result
    console.print(f"trained {cfg.steps} steps in {r.seconds:.1f}s ({r.seconds / max(1, cfg.steps):.2f} s/step) on "
                  f"{lm.manifest.train_examples} lines; LM head: {lm.manifest.head['transform']} transform, decoder "
                  f"{lm.manifest.head['decoder']}")
    if lm.dev_before:
        console.print(f"held-out MLM ({lm.manifest.language_module['dev_lines']} lines): loss "
                      f"{lm.dev_before['loss']:.3f} -> {lm.dev_after['loss']:.3f}, masked-token accuracy "
                      f"{lm.dev_before['accuracy']:.1f}% -> {lm.dev_after['accuracy']:.1f}%")
    console.print(f"registered {lm.manifest.name} v{lm.manifest.version} (task {lm.manifest.task}) in {reg.root}")
