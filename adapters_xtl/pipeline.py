"""One unit of work on a loaded backbone: train a task module (optionally on top of others),
score it zero-shot, register it. The CLI, recipes and the grid runner all go through here.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backbone import Backbone
from .data import load_examples
from .errors import XtlError
from .evaluate import append_results, evaluate, result_rows
from .manifest import Manifest, library_versions
from .methods import get_method
from .methods.base import count_parameters
from .compose import Composition, ComposedState, setup as compose_setup
from .model import TaskModel, attach_new, attach_saved, slot_name, split_weights
from .registry import Registry
from .tasks import TaskSpec, get_task
from .train import TrainConfig, TrainResult, train


@dataclass
class TrainedModule:
    manifest: Manifest
    result: TrainResult
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    trainable_params: int = 0
    total_params: int = 0


class SwapClock:
    """Seconds spent putting modules on and taking them off the loaded backbone: reading them
    from the registry, attaching, composing, tearing down. A grid keeps one backbone and swaps
    modules per cell; the runner reports this time next to the cell's, because a swap that is
    not negligible would argue for another design (one process per cell)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def measure(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0

    def add_since(self, t0: float) -> None:
        self.seconds += time.perf_counter() - t0

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s


swap_clock = SwapClock()


def default_main_metric(spec: TaskSpec) -> str:
    if spec.main_metric:
        return spec.main_metric
    if spec.format == "tagging":
        from .formats.tagging import tagging_kind

        return "f1" if tagging_kind(spec) == "ner" else "accuracy"
    return {"classification": "accuracy", "retrieval": "accuracy", "span_qa": "f1",
            "multiple_choice": "accuracy"}[spec.format]


def load_module_into(backbone: Backbone, registry: Registry, name: str, *, version: str | None = None,
                     allow_backbone_mismatch: bool = False) -> tuple[Manifest, str, dict]:
    """Put a registry module into the backbone under a fresh slot; return (manifest, slot, head weights)."""
    man, tensors = registry.load(name, version, expect_backbone=backbone.fingerprint,
                                 allow_backbone_mismatch=allow_backbone_mismatch)
    slot = slot_name(f"{man.name}_v{man.version}")
    module_w, head_w = split_weights(tensors)
    method = get_method(man.method)
    if any(method.key_marker(slot) in n for n, _ in backbone.model.named_parameters()):
        return man, slot, head_w  # already loaded (the grid runner reuses it)
    attach_saved(backbone, man.method, man.method_config, module_w, slot)
    return man, slot, head_w


def _split_all(tensors: dict) -> tuple[dict, dict, dict]:
    module_w, head_w = split_weights(tensors)
    extra = {k: v for k, v in tensors.items() if k.startswith("fusion.")}
    return module_w, head_w, extra


def compose_into(backbone: Backbone, registry: Registry, comp: Composition, method: str, target_slot: str,
                 target_config: dict, *, allow_backbone_mismatch: bool = False) -> tuple[ComposedState, list[Manifest]]:
    """Load a composition's intermediate modules from the registry and arrange them around the
    (already added) target slot. Checks that the modules fit together before anything trains."""
    mans, slots = [], []
    for ref in comp.modules:  # check every module before loading any
        name, _, version = ref.partition("@")
        man = registry.manifest(name, version or None)
        if man.method != method:
            raise XtlError(f"intermediate module {ref!r} is {man.method}; the target module is {method}",
                           where="composition", fix="compose modules of one method (train the intermediate with it)")
        if comp.kind in ("fuse", "merge") and method == "lora" and \
                man.method_config.get("target_modules") != target_config.get("target_modules"):
            raise XtlError(f"{comp.kind} needs LoRA modules on the same layers: {ref!r} targets "
                           f"{man.method_config.get('target_modules')}, the target {target_config.get('target_modules')}",
                           where="composition", fix="train them with the same target_modules")
        if comp.kind == "continue" and man.method_config != target_config:
            raise XtlError(f"cannot continue from {ref!r}: it is {man.method} {man.method_config}, "
                           f"the target is {method} {target_config}", where="composition",
                           fix="use the same method and method_config")
    for ref in comp.modules:
        name, _, version = ref.partition("@")
        man, slot, _ = load_module_into(backbone, registry, name, version=version or None,
                                        allow_backbone_mismatch=allow_backbone_mismatch)
        mans.append(man)
        slots.append(slot)
    if comp.kind == "continue":
        m = get_method(method)
        m.load_state_dict(backbone, target_slot, m.state_dict(backbone, slots[0]))
    state = compose_setup(backbone, comp, method, target_slot, slots, target_config.get("target_modules"))
    return state, mans


def train_module(
    backbone: Backbone,
    task: str | TaskSpec,
    *,
    name: str,
    method: str = "lora",
    method_config: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    registry: Registry | None = None,
    composition: Composition | dict | None = None,
    init_from: str | None = None,
    eval_languages: list[str] | None = None,
    eval_limit: int | None = None,
    data_dir: Path | None = None,
    results_path: Path | None = None,
    checkpoint_dir: Path | None = None,
    recipe_hash: str | None = None,
    progress=None,
    extra_manifest: dict[str, Any] | None = None,
) -> TrainedModule:
    """Train one module on the task's English data (on top of a composition of frozen
    intermediate modules), score it on every language, register it.

    `init_from=NAME` is shorthand for `composition={"kind": "continue", "modules": [NAME]}`.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    cfg = train_config or TrainConfig(**spec.defaults.get("train", {}))
    method_obj = get_method(method)
    mcfg = method_obj.make_config(method_config)
    registry = registry or Registry()
    if init_from:
        composition = {"kind": "continue", "modules": [init_from]}
    comp = composition if isinstance(composition, Composition) else Composition.from_dict(composition)
    if not model_format_trainable(spec):
        raise XtlError(f"task {spec.name!r} ({spec.format}) has no training", where="task",
                       fix="retrieval tasks evaluate a module directly: use `xtl eval`")
    train_task = get_task(spec.train_task) if spec.train_task else spec

    # data first: bad data fails before any weights move
    train_ex = load_examples(train_task, "train", train_task.train_language, data_dir)
    dev_split = "validation" if ("validation" in train_task.splits or train_task.id_split) else None
    dev_ex = load_examples(train_task, dev_split, train_task.train_language, data_dir, limit=cfg.eval_examples) if dev_split else None

    slot = slot_name(f"{name}_training")
    from .train import set_seed

    state = None
    try:
        with swap_clock.measure():
            method_obj.remove(backbone, slot)
            set_seed(cfg.seed)  # the seed decides the module's and the head's initialisation too
            attach_new(backbone, method, mcfg, slot)
            state, inter_mans = compose_into(backbone, registry, comp, method, slot, mcfg.model_dump())
            state.activate(backbone, train=True)
        model = TaskModel(backbone, spec)
        fmt = model.format
        tok = backbone.tokenizer
        train_feats = fmt.encode(train_ex, spec, tok, train=True)
        dev_feats = fmt.encode(dev_ex, spec, tok, train=False) if dev_ex else None
        trainable = {f"module.{n}": p for n, p in method_obj.named_parameters(backbone, slot).items()}
        trainable.update({f"head.{n}": p for n, p in model.head.named_parameters()})
        trainable.update(state.extra_parameters(backbone))
        for p in trainable.values():
            p.requires_grad_(True)
        n_train = count_parameters(trainable.values())
        total = backbone.total_params() + count_parameters(model.head.parameters())
        result = train(model, trainable, train_feats, dev_feats, dev_ex, cfg, checkpoint_dir=checkpoint_dir,
                       main_metric=default_main_metric(spec), progress=progress, description=name)
        state.activate(backbone, train=False)
        record_throughput(backbone, method, train_task.name, cfg, result)
        scores = evaluate(model, spec, eval_languages, data_dir=data_dir, limit=eval_limit)
        weights = {n: p.detach().cpu() for n, p in trainable.items() if not n.startswith("module.")}
        weights.update({f"module.{k}": v for k, v in method_obj.state_dict(backbone, slot).items()})
        comp_record = comp.to_dict()
        if comp.modules:
            comp_record["modules"] = [f"{m.name}@{m.version}" for m in inter_mans]
        manifest = Manifest(
            name=name,
            task=spec.name,
            format=spec.format,
            method=method,
            method_config=mcfg.model_dump(),
            head=fmt.head_config(spec),
            composition=comp_record,
            backbone=backbone.fingerprint,
            recipe_hash=recipe_hash,
            steps=cfg.steps,
            seed=cfg.seed,
            train_examples=result.train_examples,
            scores=scores,
            trainable_params=n_train,
            library_versions=library_versions(),
            training={"config": cfg.model_dump(), "best_step": result.best_step, "best_dev": result.best_score,
                      "seconds": round(result.seconds, 2), "padding_waste": round(result.padding_waste, 4)},
            **(extra_manifest or {}),
        )
        manifest = registry.save(manifest, weights)
        if results_path:
            append_results(results_path, result_rows(f"{manifest.name}@{manifest.version}", spec.name, scores,
                                                     method=method, seed=cfg.seed, steps=cfg.steps,
                                                     composition=comp.kind))
        return TrainedModule(manifest, result, scores, n_train, total)
    finally:
        with swap_clock.measure():
            if state is not None:
                state.teardown(backbone)
            method_obj.remove(backbone, slot)


def non_embedding_params(backbone: Backbone) -> int:
    """Parameters a token's FLOPs scale with: everything but the embedding lookups."""
    emb = backbone.model.get_input_embeddings() if hasattr(backbone.model, "get_input_embeddings") else None
    skip = {id(p) for p in emb.parameters()} if emb is not None else set()
    base = getattr(backbone.model, "embeddings", None)
    if base is not None:
        skip |= {id(p) for p in base.parameters()}
    n = 0
    for p in backbone.model.parameters():
        if id(p) in skip:
            continue
        qs = getattr(p, "quant_state", None)
        n += int(torch.Size(qs.shape).numel()) if qs is not None else p.numel()
    return n


def record_throughput(backbone: Backbone, method: str, task: str, cfg: TrainConfig, result) -> None:
    """Remember how fast this machine trained (see throughput.py): the dry-run prices grids
    from it. Never fails a training run."""
    from . import throughput

    steps = result.steps - result.resumed_from
    if steps <= 0 or result.step_seconds <= 0:
        return
    try:
        tokens_per_step = result.tokens / steps
        throughput.record({
            "backbone": backbone.fingerprint.model_id, "quantization": backbone.quantization, "method": method,
            "device": backbone.device.type, "task": task, "batch_size": cfg.batch_size, "steps": steps,
            "seconds_per_step": result.step_seconds / steps, "tokens_per_step": tokens_per_step,
            "flops_per_step": 4.0 * non_embedding_params(backbone) * tokens_per_step,
        })
    except OSError:
        pass


def model_format_trainable(spec: TaskSpec) -> bool:
    from .formats import get_format

    return get_format(spec.format).trainable


def evaluate_module(
    backbone: Backbone,
    module: str | None,
    task: str | TaskSpec,
    *,
    registry: Registry | None = None,
    languages: list[str] | None = None,
    data_dir: Path | None = None,
    limit: int | None = None,
    results_path: Path | None = None,
    allow_backbone_mismatch: bool = False,
    update_registry: bool = True,
) -> dict[str, dict[str, float]]:
    """Score a registry module, with the composition it was trained in (or, with module=None,
    the bare backbone for retrieval)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    registry = registry or Registry()
    t0 = time.perf_counter()
    if module is None:
        if spec.format != "retrieval":
            raise XtlError(f"task {spec.name!r} needs a trained module", where="--module",
                           fix="train one with `xtl train` first")
        model = TaskModel(backbone, spec)
        scores = evaluate(model, spec, languages, data_dir=data_dir, limit=limit)
        label = f"backbone:{backbone.fingerprint.model_id}"
    else:
        name, _, version = module.partition("@")
        t_swap = time.perf_counter()
        man, tensors = registry.load(name, version or None, expect_backbone=backbone.fingerprint,
                                     allow_backbone_mismatch=allow_backbone_mismatch)
        module_w, head_w, extra_w = _split_all(tensors)
        prefix = f"heads.{spec.name}."  # a multi-task module keeps one head per task
        if not head_w and any(k.startswith(prefix) for k in tensors):
            head_w = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        comp = Composition.from_dict(man.composition)
        if comp.kind == "continue":  # the weights already hold what was continued from
            comp = Composition()
        method_obj = get_method(man.method)
        slot = slot_name(f"{man.name}_v{man.version}_eval")
        state = None
        try:
            method_obj.remove(backbone, slot)
            attach_saved(backbone, man.method, man.method_config, module_w, slot)
            state, _ = compose_into(backbone, registry, comp, man.method, slot, man.method_config,
                                    allow_backbone_mismatch=allow_backbone_mismatch)
            if extra_w:
                state.load_extra(backbone, extra_w)
            state.activate(backbone, train=False)
            swap_clock.add_since(t_swap)
            t_swap = None
            model = TaskModel(backbone, spec)
            if spec.format != "retrieval":
                if man.task != spec.name and spec.name not in man.head.get("tasks", []) and \
                        man.head.get("labels") != (spec.labels and list(spec.labels)):
                    raise XtlError(
                        f"module {module!r} was trained on {man.task!r}; its head does not fit task {spec.name!r}",
                        where="--task", fix=f"evaluate it on {man.task!r} or a task with the same labels",
                    )
                if not head_w:
                    raise XtlError(f"module {module!r} has no task head (imported without one?)", where="--module",
                                   fix="train a head for it: use it as an intermediate module in `xtl train`/a recipe")
                model.head.load_state_dict(head_w)
            scores = evaluate(model, spec, languages, data_dir=data_dir, limit=limit)
        finally:
            if t_swap is not None:  # attaching failed: the clock still stops
                swap_clock.add_since(t_swap)
            with swap_clock.measure():
                if state is not None:
                    state.teardown(backbone)
                method_obj.remove(backbone, slot)
        label = f"{man.name}@{man.version}"
        if update_registry and spec.name == man.task:
            registry.update_scores(man.name, man.version, scores)
    if results_path:
        append_results(results_path, result_rows(label, spec.name, scores, seconds=round(time.perf_counter() - t0, 2)))
    return scores
