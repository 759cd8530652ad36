"""The training loop, top to bottom (after nanoGPT): one module + one head on a frozen backbone.

AdamW with linear warmup/decay, gradient accumulation, evaluation every N steps with best-state
selection on the English dev set, and resumable checkpoints written atomically. Batches are
length-bucketed; their order is a pure function of (seed, epoch), so a resumed run replays
exactly the batches it had not seen. The loss is read back to the host only when it is printed.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from typing import Literal

from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from .formats.base import length_bucketed_batches, padding_waste, to_device
from .store.manifest import config_hash
from .progress import emit


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = 200  # optimizer steps
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3  # adapter-appropriate (full fine-tuning would use 1e-5)
    head_lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int = 50
    eval_examples: int | None = 500  # English dev examples used for checkpoint selection
    max_train_examples: int | None = None
    seed: int = 42
    log_every: int = 10
    checkpoint_every: int | None = None  # default: every eval
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~30% more time
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] = "adamw"  # 8-bit/paged: bitsandbytes

    @classmethod
    def resolve(cls, task=None, *layers: "dict | None", where: str = "train") -> "TrainConfig":
        """The one place training settings are layered: the task's YAML `defaults.train` <
        each later layer (a recipe's `train:`, an entry's, command-line flags). `None` values in a
        layer mean "not given" and leave the layer below in force."""
        from pydantic import ValidationError

        from .errors import XtlError

        raw: dict = {}
        if task is not None:
            raw.update(task.defaults.get("train", {}))
        for layer in layers:
            raw.update({k: v for k, v in (layer or {}).items() if v is not None})
        try:
            return cls(**raw)
        except ValidationError as e:
            first = e.errors()[0]
            name = ".".join(str(x) for x in first["loc"])
            raise XtlError(f"invalid training setting {name}={first.get('input')!r}: {first['msg']}", where=where,
                           fix=f"training fields: {', '.join(cls.model_fields)}") from None


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


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
    """Train the parameters in `trainable` (name -> parameter); leave the best state loaded."""
    fmt = model.format
    device = model.device
    set_seed(cfg.seed)
    if cfg.max_train_examples and len(train_features) > cfg.max_train_examples:
        rng = random.Random(cfg.seed)
        train_features = rng.sample(train_features, cfg.max_train_examples)
    lengths = [len(f["input_ids"]) for f in train_features]
    micro = cfg.batch_size // cfg.grad_accum if cfg.batch_size % cfg.grad_accum == 0 else cfg.batch_size
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

    # -- resume ----------------------------------------------------------------------------------
    run_key = config_hash({"cfg": cfg.model_dump(), "n": len(train_features), "params": sorted(trainable)})
    best_state: dict[str, torch.Tensor] | None = None
    best_score, best_step, start, history = None, 0, 0, []
    state_path = checkpoint_dir / "trainer_state.pt" if checkpoint_dir else None
    if state_path and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("run_key") == run_key:
            weights = load_file(str(checkpoint_dir / "last.safetensors"))
            with torch.no_grad():
                for n, p in trainable.items():
                    p.copy_(weights[n].to(p.device))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            start, best_score, best_step, history = state["step"], state["best_score"], state["best_step"], state["history"]
            if (checkpoint_dir / "best.safetensors").exists():
                best_state = load_file(str(checkpoint_dir / "best.safetensors"))
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
        if best_score is None or score > best_score:
            best_score, best_step, best_state = score, step, snapshot()
            if checkpoint_dir:
                _atomic_save_tensors(best_state, checkpoint_dir / "best.safetensors")

    def checkpoint(step: int) -> None:
        if not checkpoint_dir:
            return
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save_tensors(snapshot(), checkpoint_dir / "last.safetensors")
        _atomic_torch_save(
            {
                "run_key": run_key,
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "best_score": best_score,
                "best_step": best_step,
                "history": history,
            },
            state_path,
        )

    # -- the loop --------------------------------------------------------------------------------
    params = list(trainable.values())
    model.train()
    t0 = time.perf_counter()
    emit(progress, "start", description, start, cfg.steps)
    running = torch.zeros((), device=device)
    since_log = 0
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    def _run_steps() -> None:
        nonlocal since_log, running, aside, tokens
        for step in range(start, cfg.steps):
            for k in range(cfg.grad_accum):
                idx = step * cfg.grad_accum + k
                b = batches_of(idx // n_batches)[idx % n_batches]
                tokens += sum(lengths[i] for i in b)
                batch = to_device(fmt.collate([train_features[i] for i in b], model.pad_id), device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    out = model(batch)
                loss = fmt.loss(out, batch) / cfg.grad_accum
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
                    from .errors import XtlError

                    raise XtlError(f"loss became {avg} at step {done}", where=description, fix="lower the learning rate")
                history.append({"step": done, "loss": avg, "lr": scheduler.get_last_lr()[0]})
                emit(progress, "advance", description, done, cfg.steps, loss=avg)
            t_aside = time.perf_counter()
            if done % cfg.eval_every == 0 or done == cfg.steps:
                evaluate_dev(done)
            if checkpoint_dir and (done % (cfg.checkpoint_every or cfg.eval_every) == 0 or done == cfg.steps):
                checkpoint(done)
            aside += time.perf_counter() - t_aside
            if on_step is not None:
                on_step(done)  # hooks: grid progress, and tests that simulate a crash

    checkpointing = gradient_checkpointing(model.backbone, cfg.gradient_checkpointing)
    checkpointing.__enter__()
    try:
        _run_steps()
    finally:
        checkpointing.__exit__(None, None, None)

    emit(progress, "end", description, cfg.steps, cfg.steps)
    if best_state is not None:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(best_state[n].to(p.device))
    model.eval()
    elapsed = time.perf_counter() - t0
    return TrainResult(
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
