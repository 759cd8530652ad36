"""The training loop, top to bottom (after nanoGPT): one module + one head on a frozen backbone.

AdamW with linear warmup/decay, gradient accumulation, evaluation every N steps with best-state
selection on the English dev set, and resumable checkpoints: one file per checkpoint, replaced
atomically, holding every generator's state (checkpoint.py), so a resumed run ends bit-identical
to an uninterrupted one. Batches are length-bucketed; their order is a pure function of
(seed, epoch), so a resumed run replays exactly the batches it had not seen. The loss is read back to the host only when it is printed.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .checkpoint import LOCK, clean_leftovers, load_checkpoint, restore_rng, rng_state, save_checkpoint
from .errors import XtlError, did_you_mean
from .formats.base import length_bucketed_batches, padding_waste, to_device
from .io import LockHeld, exclusive_lock
from .store.manifest import config_hash
from .progress import emit
from .speed import attention_backend, autocast, autocast_dtype, dropout_overrides, to_fp32


# what each setting must be, said the way a fix reads ("set lr to ...")
_FIELD_RULES = {
    "steps": "an integer >= 1 (optimizer steps)",
    "batch_size": "an integer >= 1 (examples per optimizer step, a multiple of grad_accum)",
    "grad_accum": "an integer >= 1 that divides batch_size (micro-batches per step)",
    "lr": "a number > 0, e.g. 1e-3 for adapters",
    "head_lr": "a number > 0, or leave it out (then lr is used for the head too)",
    "weight_decay": "a number >= 0, e.g. 0.01",
    "warmup_ratio": "a number from 0 to 1 (the fraction of steps with a rising learning rate)",
    "max_grad_norm": "a number >= 0 (0 switches gradient clipping off)",
    "eval_every": "an integer >= 1 (steps between dev evaluations)",
    "eval_examples": "an integer >= 1, or leave it out for every dev example",
    "max_train_examples": "an integer >= 1, or leave it out for every training example",
    "seed": "an integer >= 0",
    "log_every": "an integer >= 1 (steps between loss lines)",
    "checkpoint_every": "an integer >= 1, or leave it out (then every eval_every steps)",
    "gradient_checkpointing": "true or false",
    "optimizer": "one of adamw, adamw8bit, paged_adamw8bit",
    "precision": "one of fp32, bf16, auto (bf16 where the CPU/GPU multiplies bf16 natively)",
    "backbone_dropout": "a number from 0 to 1 (below 1), or built for the backbone's own (0.1 in XLM-R); default 0",
    "module_dropout": "a number from 0 to 1 (below 1), or built (the default) for the method's own setting",
}
_POS = dict(allow_inf_nan=False)


class TrainConfig(BaseModel):
    """Training settings, checked when built: an impossible value is one `XtlError` naming the
    field, the value and the fix, never a pydantic traceback, and never a silent fallback (a step
    count of 0 would register an untrained module; a negative rate would train backwards)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(200, ge=0)  # optimizer steps; 0 only where asked for (`allow_untrained`)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0, **_POS)  # adapter-appropriate (full fine-tuning would use 1e-5)
    head_lr: float | None = Field(None, gt=0, **_POS)
    weight_decay: float = Field(0.01, ge=0, **_POS)
    warmup_ratio: float = Field(0.1, ge=0, le=1, **_POS)
    max_grad_norm: float = Field(1.0, ge=0, **_POS)
    eval_every: int = Field(50, ge=1)
    eval_examples: int | None = Field(500, ge=1)  # English dev examples used for checkpoint selection
    max_train_examples: int | None = Field(None, ge=1)
    seed: int = Field(42, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)  # default: every eval
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~30% more time
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] = "adamw"  # 8-bit/paged: bitsandbytes
    # bf16 autocast (speed.py): loss, gradients and optimizer state stay fp32
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    # dropout of the frozen backbone / of the trained module while training (None: as built);
    # 0 draws no masks (speed.py). Backbone 0: 1.3x faster LoRA steps in fp32 at no accuracy cost
    # on SIB-200; the module's own dropout stays the method's setting (docs/benchmarks.md)
    backbone_dropout: float | None = Field(0.0, ge=0, lt=1, **_POS)
    module_dropout: float | None = Field(None, ge=0, lt=1, **_POS)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, v, info):
        # pydantic reads `steps: true` as 1 and `lr: yes` as 1.0; a bool is never a count or a rate
        if isinstance(v, bool) and info.field_name != "gradient_checkpointing":
            raise ValueError("a true/false value is not a number here")
        return v

    @field_validator("backbone_dropout", "module_dropout", mode="before")
    @classmethod
    def _built(cls, v):
        # "built": the dropout the backbone/module was built with (a null in a layer means "not given")
        return None if isinstance(v, str) and v.strip().lower() == "built" else v

    @model_validator(mode="wrap")
    @classmethod
    def _one_clear_error(cls, data, handler, info):
        context = info.context or {}
        where = context.get("where", "TrainConfig")
        try:
            cfg = handler(data)
        except ValidationError as e:
            raise _config_error(e, where) from None
        if cfg.steps == 0 and not context.get("allow_untrained"):
            raise XtlError("invalid training setting: steps=0: a module needs at least one training step (0 would "
                           "register an untrained module)", where=where, fix=f"set steps to {_FIELD_RULES['steps']}")
        if cfg.batch_size % cfg.grad_accum:
            raise XtlError(f"batch_size={cfg.batch_size} is not a multiple of grad_accum={cfg.grad_accum}", where=where,
                           fix="batch_size is the examples per optimizer step, split into grad_accum equal "
                           f"micro-batches: e.g. batch_size {cfg.grad_accum * max(1, cfg.batch_size // cfg.grad_accum)}")
        return cfg

    @classmethod
    def resolve(cls, task=None, *layers: "dict | None", where: str = "train",
                allow_untrained: bool = False) -> "TrainConfig":
        """The one place training settings are layered: the task's YAML `defaults.train` <
        each later layer (a recipe's `train:`, an entry's, command-line flags). `None` values in a
        layer mean "not given" and leave the layer below in force. Bad values: one XtlError.
        `allow_untrained` admits `steps: 0`, for a deliberate untrained baseline (the steps
        study's step-0 intermediate); everywhere else 0 steps is a mistake."""
        raw: dict = {}
        if task is not None:
            raw.update(task.defaults.get("train", {}))
        for layer in layers:
            if layer is not None and not isinstance(layer, Mapping):
                raise XtlError(f"training settings must be a mapping of field: value, got {type(layer).__name__}",
                               where=where, fix=f"e.g. {{steps: 200, lr: 1e-3}}; fields: {', '.join(cls.model_fields)}")
            raw.update({k: v for k, v in (layer or {}).items() if v is not None})
        return cls.model_validate(raw, context={"where": where, "allow_untrained": allow_untrained})


def _config_error(e: ValidationError, where: str) -> XtlError:
    """Every problem of one ValidationError in one message: `field=value: what is wrong`."""
    problems, fixes = [], []
    for err in e.errors():
        name = ".".join(str(x) for x in err["loc"] if not isinstance(x, int)) or "(settings)"
        field = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            problems.append(f"{name!r} is not a training setting")
            fixes.append(did_you_mean(field, TrainConfig.model_fields))
            continue
        problems.append(f"{name}={err.get('input')!r}: {err['msg'].removeprefix('Value error, ')}")
        if field in _FIELD_RULES:
            fixes.append(f"set {field} to {_FIELD_RULES[field]}")
    label = "invalid training setting" if len(problems) == 1 else "invalid training settings"
    return XtlError(f"{label}: {'; '.join(dict.fromkeys(problems))}", where=where,
                    fix="; ".join(dict.fromkeys(fixes)) or f"training fields: {', '.join(TrainConfig.model_fields)}")


@dataclass
class TrainResult:
    steps: int
    best_step: int
    best_score: float | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    padding_waste: float = 0.0
    train_examples: int = 0
    resumed_from: int = 0
    tokens: int = 0  # real (unpadded) tokens in the batches of the steps this call ran
    step_seconds: float = 0.0  # wall time of the optimizer steps alone (no dev evaluation, no checkpoints)
    computed_in: str = "fp32"  # what `precision` resolved to on this device ("auto" differs by machine)


def training_record(cfg: "TrainConfig", result: TrainResult, **extra) -> dict:
    """The manifest's `training` entry: the settings, what `precision` computed in, the best step."""
    return {"config": cfg.model_dump(), "computed_in": result.computed_in, "best_step": result.best_step,
            "best_dev": result.best_score, "seconds": round(result.seconds, 2), **extra}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train(
    model,
    trainable: dict[str, torch.nn.Parameter],
    train_features: list[dict],
    dev_features: list[dict] | None,
    dev_examples: list[dict] | None,
    cfg: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    main_metric: str = "accuracy",
    progress=None,
    description: str = "train",
    on_step=None,
    batches_fn=None,
) -> TrainResult:
    """Train the parameters in `trainable` (name -> parameter); leave the best state loaded.

    With `checkpoint_dir` the run is resumable: a checkpoint is written every `checkpoint_every`
    (default `eval_every`) steps and at the end, and a later call with the same settings, data
    and parameters continues from it, ending in the weights an uninterrupted run ends in. The
    folder is locked meanwhile: a second trainer on it is refused (XtlError)."""
    if checkpoint_dir is None:
        return _train(model, trainable, train_features, dev_features, dev_examples, cfg, checkpoint_dir=None,
                      main_metric=main_metric, progress=progress, description=description, on_step=on_step,
                      batches_fn=batches_fn)
    checkpoint_dir = Path(checkpoint_dir)
    with ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(checkpoint_dir / LOCK))
        except LockHeld as e:
            raise XtlError(f"another process (PID {e.pid or 'unknown'}) is training with the checkpoint folder "
                           f"{checkpoint_dir}", where=str(checkpoint_dir),
                           fix="wait for it to finish, or give this run its own output folder; the lock goes "
                           "away by itself when that process ends") from None
        clean_leftovers(checkpoint_dir)
        return _train(model, trainable, train_features, dev_features, dev_examples, cfg, checkpoint_dir=checkpoint_dir,
                      main_metric=main_metric, progress=progress, description=description, on_step=on_step,
                      batches_fn=batches_fn)


def _train(model, trainable, train_features, dev_features, dev_examples, cfg, *, checkpoint_dir, main_metric,
           progress, description, on_step, batches_fn) -> TrainResult:
    fmt = model.format
    device = model.device
    set_seed(cfg.seed)
    if cfg.max_train_examples and len(train_features) > cfg.max_train_examples:
        rng = random.Random(cfg.seed)
        train_features = rng.sample(train_features, cfg.max_train_examples)
    lengths = [len(f["input_ids"]) for f in train_features]
    micro = cfg.batch_size // cfg.grad_accum  # TrainConfig checks that grad_accum divides batch_size
    epoch_batches = {}

    def batches_of(epoch: int):
        if epoch not in epoch_batches:
            epoch_batches.clear()
            epoch_batches[epoch] = (batches_fn(epoch) if batches_fn else
                                    length_bucketed_batches(lengths, micro, seed=cfg.seed * 1000 + epoch))
        return epoch_batches[epoch]

    n_batches = len(batches_of(0))
    waste = padding_waste(lengths, batches_of(0))

    # -- optimizer: module parameters and head, decay on matrices only ------------------------
    head_names = {n for n in trainable if n.startswith("head.")}
    groups = []
    for is_head in (False, True):
        lr = (cfg.head_lr or cfg.lr) if is_head else cfg.lr
        decay = [p for n, p in trainable.items() if (n in head_names) == is_head and p.ndim >= 2]
        no_decay = [p for n, p in trainable.items() if (n in head_names) == is_head and p.ndim < 2]
        groups += [
            {"params": decay, "weight_decay": cfg.weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr},
        ]
    groups = [g for g in groups if g["params"]]
    from .compress import gradient_checkpointing, make_optimizer

    optimizer = make_optimizer(groups, cfg.optimizer, device)  # adamw: fused on CUDA, foreach on CPU
    warmup = int(cfg.steps * cfg.warmup_ratio)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    # -- resume: one checkpoint file holds everything of one step (checkpoint.py) ---------------
    run_key = config_hash({"cfg": cfg.model_dump(), "n": len(train_features), "params": sorted(trainable)})
    best_state: dict[str, torch.Tensor] | None = None
    best_score, best_step, start, history = None, 0, 0, []
    running = torch.zeros((), device=device)
    since_log = 0
    state = load_checkpoint(checkpoint_dir, run_key) if checkpoint_dir else None
    if state is not None:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(state["weights"][n].to(p.device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        start, best_score, best_step, history = state["step"], state["best_score"], state["best_step"], state["history"]
        best_state = state["best"]
        running.fill_(state["running_loss"])
        since_log = state["since_log"]
    resumed_from = start

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in trainable.items()}

    aside = 0.0  # seconds spent on dev evaluation and checkpoints: kept out of step_seconds
    tokens = 0

    def evaluate_dev(step: int) -> None:
        nonlocal best_score, best_step, best_state
        if not dev_features:
            return
        model.eval()
        scores = fmt.score(model, dev_features, dev_examples, model.spec, batch_size=cfg.batch_size * 2)
        model.train()
        score = scores.get(main_metric, next(iter(scores.values())))
        history.append({"step": step, "dev": scores})
        emit(progress, "advance", description, step, cfg.steps, **{f"dev_{main_metric}": score})  # trackers log it
        if best_score is None or score > best_score:
            best_score, best_step, best_state = score, step, snapshot()

    def checkpoint(step: int) -> None:
        save_checkpoint(checkpoint_dir, {
            "run_key": run_key,
            "step": step,
            "weights": snapshot(),
            "best": best_state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "best_score": best_score,
            "best_step": best_step,
            "history": history,
            "running_loss": running.item(),  # the loss summed since the last log line
            "since_log": since_log,
        })

    # -- the loop --------------------------------------------------------------------------------
    params = list(trainable.values())
    model.train()
    t0 = time.perf_counter()
    emit(progress, "start", description, start, cfg.steps)
    def _run_steps() -> None:
        nonlocal since_log, running, aside, tokens
        for step in range(start, cfg.steps):
            for k in range(cfg.grad_accum):
                idx = step * cfg.grad_accum + k
                b = batches_of(idx // n_batches)[idx % n_batches]
                tokens += sum(lengths[i] for i in b)
                batch = to_device(fmt.collate([train_features[i] for i in b], model.pad_id), device)
                with attention_backend(cfg.precision, device):
                    with autocast(cfg.precision, device):
                        out = model(batch)
                    loss = fmt.loss(to_fp32(out), batch) / cfg.grad_accum  # the loss in fp32
                    loss.backward()
                running += loss.detach()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            since_log += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                avg = (running / since_log).item()  # the only host sync in the loop
                running.zero_()
                since_log = 0
                if not math.isfinite(avg):
                    raise XtlError(f"loss became {avg} at step {done}", where=description, fix="lower the learning rate")
                lr_now = scheduler.get_last_lr()[0]
                history.append({"step": done, "loss": avg, "lr": lr_now})
                emit(progress, "advance", description, done, cfg.steps, loss=avg, lr=lr_now)
            t_aside = time.perf_counter()
            if done % cfg.eval_every == 0 or done == cfg.steps:
                evaluate_dev(done)
            if checkpoint_dir and (done % (cfg.checkpoint_every or cfg.eval_every) == 0 or done == cfg.steps):
                checkpoint(done)
            aside += time.perf_counter() - t_aside
            if on_step is not None:
                on_step(done)  # hooks: grid progress, and tests that simulate a crash

    with ExitStack() as during:  # the shared backbone goes back to how it was, also on error
        during.enter_context(gradient_checkpointing(model.backbone, cfg.gradient_checkpointing))
        during.enter_context(dropout_overrides(model.backbone.model, backbone=cfg.backbone_dropout,
                                               module=cfg.module_dropout))
        _run_steps()

    emit(progress, "end", description, cfg.steps, cfg.steps)
    if best_state is not None:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(best_state[n].to(p.device))
    model.eval()
    elapsed = time.perf_counter() - t0
    return TrainResult(
        computed_in="bf16" if autocast_dtype(cfg.precision, device) is not None else "fp32",
        steps=cfg.steps,
        best_step=best_step if best_state is not None else cfg.steps,
        best_score=best_score,
        history=history,
        seconds=elapsed,
        padding_waste=waste,
        train_examples=len(train_features),
        resumed_from=resumed_from,
        tokens=tokens,
        step_seconds=max(0.0, elapsed - aside),
    )
