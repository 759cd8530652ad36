"""One intermediate module trained on a mix of intermediate tasks (the paper's multi-task variant).

Every batch comes from one task (its own format, collation and head); which task comes next is
drawn with probability proportional to its number of training examples (each capped at `cap`,
as in T5's examples-proportional mixing) or uniformly. The shared module is what later
compositions use; the per-task heads are saved too (`heads.<task>.*`), so the module can be
evaluated on each of its tasks.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from .data import load_examples
from .errors import XtlError
from .evaluation import evaluate
from .formats.base import Format, length_bucketed_batches
from .methods import get_method
from .model import TaskModel
from .session import ModuleSession
from .store.registry import Registry
from .tasks import TaskSpec, get_task
from .trainer import TrainConfig, train, training_record


def mixing_weights(sizes: list[int], sampling: str, cap: int | None) -> list[float]:
    if sampling == "uniform":
        return [1.0 / len(sizes)] * len(sizes)
    capped = [min(n, cap) if cap else n for n in sizes]
    total = sum(capped)
    return [c / total for c in capped]


class MixtureFormat(Format):
    """Dispatches collation, loss and scoring to the format of each batch's task."""

    name = "mixture"

    def __init__(self, formats: list[Format], specs: list[TaskSpec], main_metrics: list[str]):
        self.formats, self.specs, self.main_metrics = formats, specs, main_metrics

    def collate(self, features, pad_id):
        t = features[0]["_task"]
        batch = self.formats[t].collate(features, pad_id)
        batch["_task"] = t
        return batch

    def loss(self, outputs, batch):
        return self.formats[batch["_task"]].loss(outputs, batch)

    def score(self, model, features, examples, spec, batch_size, lang=None):
        """Mean over tasks of each task's main dev metric (what checkpoint selection uses)."""
        vals = []
        for t, fmt in enumerate(self.formats):
            feats = [f for f in features if f["_task"] == t]
            exs = [e for e in examples if e["_task"] == t]
            if not feats:
                continue
            model.current = t
            s = fmt.score(model.for_task(t), feats, exs, self.specs[t], batch_size)
            vals.append(s[self.main_metrics[t]])
        model.current = None
        return {"mean_main": sum(vals) / len(vals)}


class MultiTaskModel(torch.nn.Module):
    """A backbone (with the shared module active) and one head per task."""

    def __init__(self, backbone, specs: list[TaskSpec], fmt: MixtureFormat):
        super().__init__()
        self.backbone = backbone
        self.models = torch.nn.ModuleList([TaskModel(backbone, s) for s in specs])
        self.format = fmt
        self.spec = specs[0]
        self.current = None

    device = property(lambda self: self.backbone.device)
    tokenizer = property(lambda self: self.backbone.tokenizer)
    pad_id = property(lambda self: self.backbone.tokenizer.pad_token_id)

    def for_task(self, t: int) -> TaskModel:
        return self.models[t]

    def forward(self, batch):
        t = batch.get("_task", self.current)
        return self.models[t](batch)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.model.train(mode)
        return self


def mixed_batches(task_of: list[int], lengths: list[int], batch_size: int, weights: list[float], seed: int):
    """An epoch's batch order: each task's own length-bucketed batches, interleaved by drawing
    the next task from `weights`; the epoch ends when the drawn task runs out of batches."""
    def make(epoch: int) -> list[list[int]]:
        rng = random.Random(seed * 7919 + epoch)
        per_task = {}
        for t in sorted(set(task_of)):
            idx = [i for i, x in enumerate(task_of) if x == t]
            bs = length_bucketed_batches([lengths[i] for i in idx], batch_size, seed=seed * 31 + epoch + t)
            per_task[t] = [[idx[j] for j in b] for b in bs]
        cursor = {t: 0 for t in per_task}
        tasks = sorted(per_task)
        total = sum(len(b) for b in per_task.values())
        out = []
        while len(out) < total:
            t = rng.choices(tasks, weights=[weights[x] for x in tasks])[0]
            if cursor[t] >= len(per_task[t]):
                cursor[t] = 0
                rng.shuffle(per_task[t])
            out.append(per_task[t][cursor[t]])
            cursor[t] += 1
        return out

    return make


def train_multitask_module(
    backbone,
    tasks: list[str],
    *,
    name: str,
    method: str = "lora",
    method_config: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    registry: Registry | None = None,
    sampling: str = "proportional",
    cap: int | None = None,
    data_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    recipe_hash: str | None = None,
    progress=None,
    extra_manifest: dict[str, Any] | None = None,
):
    from .pipeline import TrainedModule, default_main_metric

    if len(tasks) < 2:
        raise XtlError("a multi-task module mixes two or more tasks", where="multitask")
    specs = [get_task(t) for t in tasks]
    cfg = train_config or TrainConfig()
    registry = registry or Registry()
    m = get_method(method)
    mcfg = m.make_config(method_config)
    formats, feats, dev_feats, dev_ex, sizes = [], [], [], [], []
    for t, spec in enumerate(specs):
        if not spec.splits.get("train") and not spec.id_split:
            raise XtlError(f"task {spec.name!r} has no training data", where="multitask")
        ex = load_examples(spec, "train", spec.train_language, data_dir)
        if cap and len(ex) > cap:
            ex = random.Random(cfg.seed).sample(ex, cap)
        from .formats import get_format

        fmt = get_format(spec.format)
        f = fmt.encode(ex, spec, backbone.tokenizer, train=True)
        for x in f:
            x["_task"] = t
        formats.append(fmt)
        feats += f
        sizes.append(len(f))
        if "validation" in spec.splits or spec.id_split:
            dx = load_examples(spec, "validation", spec.train_language, data_dir, limit=cfg.eval_examples)
            df = fmt.encode(dx, spec, backbone.tokenizer, train=False)
            for x in df:
                x["_task"] = t
            for x in dx:
                x["_task"] = t
            dev_feats += df
            dev_ex += dx
    mixture = MixtureFormat(formats, specs, [default_main_metric(s) for s in specs])
    weights = mixing_weights(sizes, sampling, cap)

    with ModuleSession.new(backbone, name, method, mcfg, registry=registry, seed=cfg.seed) as session:
        model = MultiTaskModel(backbone, specs, mixture)
        trainable = session.trainable(heads={f"heads.{spec.name}": tm.head for spec, tm in zip(specs, model.models)})
        batcher = mixed_batches([f["_task"] for f in feats], [len(f["input_ids"]) for f in feats],
                                cfg.batch_size, weights, cfg.seed)
        result = train(model, trainable, feats, dev_feats or None, dev_ex or None, cfg, checkpoint_dir=checkpoint_dir,
                       main_metric="mean_main", progress=progress, description=name, batches_fn=batcher)
        session.train_mode(False)
        scores = {}
        for spec, tm in zip(specs, model.models):
            s = evaluate(tm, spec, [spec.train_language], data_dir=data_dir,
                         limit=cfg.eval_examples) if spec.eval_split in spec.splits or spec.id_split else {}
            for lang, ms in s.items():
                scores.setdefault(lang, {}).update({f"{spec.name}/{k}": v for k, v in ms.items()})
        manifest = session.manifest(
            name=name, task="mt:" + "+".join(tasks), format="mixture", head={"kind": "multitask", "tasks": tasks},
            trainable=trainable, recipe_hash=recipe_hash, steps=cfg.steps, seed=cfg.seed, train_examples=len(feats),
            scores=scores,
            multitask={"tasks": tasks, "sampling": sampling, "cap": cap, "weights": [round(w, 4) for w in weights]},
            training=training_record(cfg, result),
            **(extra_manifest or {}),
        )
        manifest = session.save(registry, manifest, trainable)
        return TrainedModule(manifest, result, scores, manifest.trainable_params, backbone.total_params())

