"""One unit of work on a loaded backbone: train a task module (optionally on top of others),
score it zero-shot, register it. The CLI, recipes and the grid runner all go through here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .backbone import Backbone
from .data import check_languages, load_examples, resolved_revisions
from .errors import XtlError
from .evaluation import append_results, evaluate, result_rows
from .formats.intervals import score_intervals
from .store.manifest import Manifest
from .methods import get_method
from .compose import Block, Continue, Language, as_block
from .cost import non_embedding_params, record_eval_throughput, record_throughput  # noqa: F401
from .model import TaskModel
from .session import ModuleSession, compose_into, load_module_into, parse_ref, swap_clock  # noqa: F401
from .store.registry import Registry
from .tasks import TaskSpec, get_task, training_task
from .trainer import TrainConfig, TrainResult, train, training_record


@dataclass
class TrainedModule:
    manifest: Manifest
    result: TrainResult
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    trainable_params: int = 0
    total_params: int = 0
    predictions: dict[str, list] = field(default_factory=dict)  # language -> per-example rows (statistics)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)  # language -> metric -> Interval

    @property
    def name(self) -> str:
        """The pinned registry reference, `name@version`: what compositions and `load_module` take."""
        return f"{self.manifest.name}@{self.manifest.version}"


def default_main_metric(spec: TaskSpec) -> str:
    if spec.main_metric:
        return spec.main_metric
    if spec.format == "tagging":
        from .formats.tagging import tagging_kind

        return "f1" if tagging_kind(spec) == "ner" else "accuracy"
    return {"classification": "accuracy", "retrieval": "accuracy", "span_qa": "f1",
            "multiple_choice": "accuracy"}[spec.format]


def train_module(
    backbone: Backbone,
    task: str | TaskSpec,
    *,
    name: str,
    method: str = "lora",
    method_config: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    registry: Registry | None = None,
    composition: Block | dict | None = None,
    init_from: str | None = None,
    eval_languages: list[str] | None = None,
    eval_limit: int | None = None,
    data_dir: Path | None = None,
    results_path: Path | None = None,
    checkpoint_dir: Path | None = None,
    recipe_hash: str | None = None,
    progress=None,
    extra_manifest: dict[str, Any] | None = None,
    predictions_path: Path | None = None,
) -> TrainedModule:
    """Train one module on the task's English data (on top of a composition of frozen
    intermediate modules), score it on every language, register it.

    `init_from=NAME` is shorthand for `composition={"kind": "continue", "modules": [NAME]}`.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    cfg = train_config or TrainConfig.resolve(spec)
    method_obj = get_method(method)
    mcfg = method_obj.make_config(method_config)
    registry = registry or Registry()
    block = Continue(init_from) if init_from else as_block(composition)
    if not model_format_trainable(spec):
        raise XtlError(f"task {spec.name!r} ({spec.format}) has no training", where="task",
                       fix="retrieval tasks evaluate a module directly: use `xtl eval`")
    train_task = training_task(spec)

    # data first: bad data fails before any weights move, test data of every language included
    train_ex = load_examples(train_task, "train", train_task.train_language, data_dir)
    if spec.format != "retrieval":
        check_languages(spec, eval_languages or list(spec.languages), data_dir)
    dev_split = "validation" if ("validation" in train_task.splits or train_task.id_split) else None
    dev_ex = load_examples(train_task, dev_split, train_task.train_language, data_dir, limit=cfg.eval_examples) if dev_split else None
    # MAD-X: the training language's module while training, each target language's when scored
    session_langs = ([train_task.train_language, *(eval_languages or spec.languages)]
                     if isinstance(block, Language) else None)

    with ModuleSession.new(backbone, name, method, mcfg, composition=block, registry=registry, seed=cfg.seed,
                           languages=session_langs) as session:
        if session.language_manifests:
            from .language import check_no_test_text

            check_no_test_text(spec, spec.eval_split, session.language_manifests,
                               eval_languages or list(spec.languages), data_dir)
        model = session.task_model(spec)
        fmt = model.format
        tok = backbone.tokenizer
        train_feats = fmt.encode(train_ex, spec, tok, train=True)
        dev_feats = fmt.encode(dev_ex, spec, tok, train=False) if dev_ex else None
        trainable = session.trainable()
        total = backbone.total_params() + sum(p.numel() for p in model.head.parameters())
        result = train(model, trainable, train_feats, dev_feats, dev_ex, cfg, checkpoint_dir=checkpoint_dir,
                       main_metric=default_main_metric(spec), progress=progress, description=name)
        session.train_mode(False)
        record_throughput(backbone, method, train_task.name, cfg, result)
        preds: dict[str, list] = {}
        scores = _timed_evaluate(backbone, method, model, spec, eval_languages, preds, data_dir=data_dir,
                                 limit=eval_limit, session=session)
        intervals = score_intervals(spec, scores, preds)
        manifest = session.manifest(
            name=name, task=spec.name, format=spec.format, head=fmt.head_config(spec), trainable=trainable,
            recipe_hash=recipe_hash, steps=cfg.steps, seed=cfg.seed, train_examples=result.train_examples,
            **_score_fields(scores, eval_limit), data_revisions=resolved_revisions(),
            training=training_record(cfg, result, padding_waste=round(result.padding_waste, 4)),
            **(extra_manifest or {}),
        )
        manifest = session.save(registry, manifest, trainable)
        n_train = manifest.trainable_params
    if predictions_path:
        from .evaluation import write_predictions

        write_predictions(predictions_path, f"{manifest.name}@{manifest.version}", spec.name, preds)
    if results_path:
        append_results(results_path, result_rows(f"{manifest.name}@{manifest.version}", spec.name, scores,
                                                 intervals=intervals, method=method, seed=cfg.seed, steps=cfg.steps,
                                                 composition=composition_label(block), **_limit_field(eval_limit)))
    return TrainedModule(manifest, result, scores, n_train, total, preds, intervals)


def _score_fields(scores: dict, limit: int | None) -> dict:
    """Manifest scores come from full evaluations only: a score on the first N examples is kept
    apart, with its N, so a quick look never passes for the module's result."""
    if limit is None:
        return {"scores": scores}
    return {"scores": {}, "limited_scores": {"limit": limit, "scores": scores}}


def _limit_field(limit: int | None) -> dict:
    return {} if limit is None else {"limit": limit}


def composition_label(block: Block) -> str:
    """The composition as results rows and reports name it: its kind, `+madx` on language modules."""
    return f"{block.inner.kind}+madx" if isinstance(block, Language) else block.kind


def evaluate_languages(session: ModuleSession | None, model, spec: TaskSpec, languages, *,
                       predictions: dict | None = None, **kw) -> dict[str, dict[str, float]]:
    """`evaluate`, language by language on a Language composition: each language is scored with
    its own language module below the task modules (MAD-X's zero-shot swap); then the first
    language's module is active again."""
    if session is None or not isinstance(session.block, Language):
        return evaluate(model, spec, languages, predictions=predictions, **kw)
    out: dict[str, dict[str, float]] = {}
    for lang in languages or list(spec.languages):
        session.use_language(lang)
        out.update(evaluate(model, spec, [lang], predictions=predictions, **kw))
    if session.languages:
        session.use_language(session.languages[0])
    return out


def _timed_evaluate(backbone: Backbone, method: str, model, spec: TaskSpec, languages, examples: dict,
                    session: ModuleSession | None = None, **kw):
    """`evaluate` (per-example rows into `examples`), with its speed added to the measurement log
    (the dry-run prices evaluation)."""
    t0 = time.perf_counter()
    scores = evaluate_languages(session, model, spec, languages, predictions=examples, **kw)
    n = sum(len(rows) for rows in examples.values())
    record_eval_throughput(backbone, method, spec.name, len(scores), n, time.perf_counter() - t0)
    return scores


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
    predictions_path: Path | None = None,
    predictions: dict | None = None,
) -> dict[str, dict[str, float]]:
    """Score a registry module, with the composition it was trained in (or, with module=None,
    the bare backbone for retrieval). A dict `predictions` receives the per-example rows of each
    language (what intervals and paired gains are computed from)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    registry = registry or Registry()
    t0 = time.perf_counter()
    if module is None:
        if spec.format != "retrieval":
            raise XtlError(f"task {spec.name!r} needs a trained module", where="--module",
                           fix="train one with `xtl train` first")
        model = TaskModel(backbone, spec)
        preds: dict = predictions if predictions is not None else {}
        scores = evaluate(model, spec, languages, data_dir=data_dir, limit=limit, predictions=preds)
        label = f"backbone:{backbone.fingerprint.model_id}"
    else:
        if languages is None:  # on language modules: the languages it has modules for
            pinned = as_block(registry.manifest(*parse_ref(module)).composition)
            languages = list(pinned.languages) if isinstance(pinned, Language) and pinned.languages else None
        langs = list(languages or spec.languages)
        with ModuleSession.saved_module(backbone, registry, module, allow_backbone_mismatch=allow_backbone_mismatch,
                                        languages=langs) as session:
            man = session.manifest_saved
            if session.language_manifests:
                from .language import check_no_test_text

                check_no_test_text(spec, spec.eval_split, session.language_manifests, langs, data_dir)
            model = session.task_model(spec)
            preds = predictions if predictions is not None else {}
            scores = evaluate_languages(session, model, spec, languages, data_dir=data_dir, limit=limit,
                                        predictions=preds)
        label = f"{man.name}@{man.version}"
        if update_registry and spec.name == man.task and limit is None:  # full evaluations only
            registry.update_scores(man.name, man.version, scores)
    if predictions_path:
        from .evaluation import write_predictions

        write_predictions(predictions_path, label, spec.name, preds)
    if results_path:
        append_results(results_path, result_rows(label, spec.name, scores, intervals=score_intervals(spec, scores, preds),
                                                 seconds=round(time.perf_counter() - t0, 2), **_limit_field(limit)))
    return scores
