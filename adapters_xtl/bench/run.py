"""Measuring one configuration: `run_config` times the trainer's step on synthetic full-length
batches and counts its FLOPs (cost.py); `run_isolated` runs it in a fresh subprocess
(`python -m adapters_xtl.bench --worker CONFIG.json RESULT.json`, see `__main__.py`) so peak
memory does not accumulate across configurations and a crash or OOM becomes a row;
`run_configs` runs a list and logs each plain row's speed for the dry-run
(`remember_throughput`).
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .. import cost
from ..cost import count_step_flops, device_name, trainable_points
from ..errors import XtlError
from ..io import atomic_write_json
from ..speed import attention_backend, autocast, autocast_dtype, dropout_overrides, to_fp32
from .attach import _attach_for_bench
from .config import BenchConfig
from .memory import MemoryMeter, release_memory
from .shapes import RANDOM_SHAPES, SHAPE_BACKBONES, demo_texts, materialize_random_shape, shape_source


def _use_eager_attention(model) -> None:
    """Switch a loaded XLM-R from SDPA to the eager attention (same parameters)."""
    from transformers.models.xlm_roberta import modeling_xlm_roberta as m

    for mod in model.modules():
        if type(mod) is m.XLMRobertaSdpaSelfAttention:
            mod.__class__ = m.XLMRobertaSelfAttention
    model.config._attn_implementation = "eager"
    if hasattr(model, "attn_implementation"):
        model.attn_implementation = "eager"


def _synthetic_batches(n: int, batch: int, seq: int, vocab_ids: torch.Tensor, num_labels: int, bos: int, eos: int,
                       seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = vocab_ids[torch.randint(0, len(vocab_ids), (batch, seq), generator=g)]
        ids[:, 0] = bos
        ids[:, -1] = eos
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "labels": torch.randint(0, num_labels, (batch,), generator=g)})
    return out


def _param_groups(trainable: dict[str, torch.nn.Parameter], lr: float, weight_decay: float) -> list[dict]:
    """As train.py: decay on matrices only."""
    decay = [p for p in trainable.values() if p.ndim >= 2]
    no_decay = [p for p in trainable.values() if p.ndim < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay, "lr": lr},
                        {"params": no_decay, "weight_decay": 0.0, "lr": lr}) if g["params"]]


def run_config(cfg: BenchConfig) -> dict:
    """Measure one configuration in this process (use `run_isolated` for clean peak memory)."""
    from safetensors.torch import save_file

    from ..backbone import load_backbone, pick_device, release_file_pages
    from ..compress import apply_embeddings, embedding_bytes, make_optimizer, optimizer_state_bytes
    from ..compress import parse_embeddings_mode
    from ..model import join_weights
    from ..tasks import get_task

    dev = pick_device(cfg.device)
    rec: dict[str, Any] = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops", "peak_flops_bf16"})}
    rec["device"] = device_name(dev)
    if cfg.optimizer == "paged_adamw8bit" and dev.type != "cuda":
        return {**rec, "status": "n/a: paged optimizers need CUDA"}
    if cfg.compile and cfg.quant != "none":
        return {**rec, "status": "n/a: torch.compile is measured without bitsandbytes layers"}
    parse_embeddings_mode(cfg.embeddings)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    meter = MemoryMeter(dev)
    meter.start()
    t0 = time.perf_counter()
    bb = load_backbone(shape_source(cfg.shape), cfg.quant, str(dev))
    if cfg.attn == "eager":
        _use_eager_attention(bb.model)
    elif cfg.attn != "sdpa":
        raise XtlError(f"unknown attention {cfg.attn!r}", where="--attn", fix="sdpa | eager")
    full_vocab = int(bb.model.get_input_embeddings().num_embeddings)
    texts = cfg.trim_texts if cfg.trim_texts is not None else (demo_texts() if "trimmed" in cfg.embeddings else None)
    bb = apply_embeddings(bb, cfg.embeddings, texts)
    if cfg.embeddings != "full":
        release_file_pages()  # as compress.load_compressed, what train/run use
    spec = get_task("demo-topic")  # a classification head (5 labels); the data are synthetic
    model, method, mcfg, trainable = _attach_for_bench(bb, cfg.method, cfg.method_config, "xtl_bench", spec,
                                                       grad_ckpt=cfg.grad_ckpt)
    fmt = model.format
    params = list(trainable.values())
    opt = make_optimizer(_param_groups(trainable, 1e-3, 0.01), cfg.optimizer, dev)
    load_s = time.perf_counter() - t0

    # inputs: random ids from the (possibly trimmed) vocabulary, full length: every token is real
    tok = bb.tokenizer
    specials = set(tok.all_special_ids)
    vocab = int(bb.model.get_input_embeddings().num_embeddings)
    vocab_ids = torch.tensor([i for i in range(vocab) if i not in specials], dtype=torch.long)
    n_batches = min(cfg.warmup + cfg.steps, 4)
    batches = [
        {k: v.to(dev) for k, v in b.items()}
        for b in _synthetic_batches(n_batches, cfg.batch, cfg.seq, vocab_ids, len(spec.labels),
                                    tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id,
                                    tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id, cfg.seed)
    ]
    real_tokens = int(batches[0]["attention_mask"].sum())
    dtype = autocast_dtype(cfg.precision, dev)
    fwd = torch.compile(model) if cfg.compile else model

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step(i: int) -> torch.Tensor:
        b = batches[i % len(batches)]
        with attention_backend(cfg.precision, dev):
            with autocast(cfg.precision, dev):
                out = fwd(b)
            loss = fmt.loss(to_fp32(out), b)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    drop = dropout_overrides(bb.model, backbone=cfg.backbone_dropout, module=cfg.module_dropout)
    drop.__enter__()  # the worker owns this backbone to its end: as the trainer sets it while training
    release_memory(dev)  # transient copies of loading/trimming/quantizing go back to the OS first
    mem_loaded = meter.start()  # the training window starts here (weights already resident)
    sync()
    t = time.perf_counter()
    losses = []
    for i in range(cfg.warmup):
        losses.append(step(i))
    sync()
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    step_times = []
    for i in range(cfg.warmup, cfg.warmup + cfg.steps):
        t_step = time.perf_counter()
        losses.append(step(i))
        sync()  # CUDA: a no-op between steps of one stream in wall time; CPU: nothing
        step_times.append(time.perf_counter() - t_step)
    measured_s = time.perf_counter() - t
    peak = meter.peak()
    loss_vals = [float(x) for x in torch.stack(losses).float().cpu()]
    step_s = measured_s / max(1, cfg.steps)

    # counted FLOPs
    mc = bb.model.config
    head_params = sum(p.numel() for p in model.head.parameters())
    adapter_params = sum(p.numel() for n, p in trainable.items() if n.startswith("module."))
    flops = count_step_flops(hidden=int(mc.hidden_size), layers=int(mc.num_hidden_layers), ffn=int(mc.intermediate_size),
                             batch=cfg.batch, seq=cfg.seq, points=trainable_points(cfg.method, mcfg.model_dump()),
                             adapter_params=adapter_params, head_params=head_params)

    # module size on disk: what the registry writes (module weights + head, safetensors)
    with tempfile.TemporaryDirectory() as td:
        weights = join_weights(method.state_dict(bb, "xtl_bench"), {n: p for n, p in model.head.state_dict().items()})
        path = Path(td) / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
        module_bytes = path.stat().st_size

    achieved = flops["total"] / step_s if step_s > 0 else float("nan")
    # MFU against the peak of the dtype the matmuls ran in (CUDA: the measured peak is bf16 already)
    peak_flops = cfg.peak_flops_bf16 if dtype is not None and dev.type == "cpu" and cfg.peak_flops_bf16 else cfg.peak_flops
    peak_dtype = "bf16" if dev.type == "cuda" or (dtype is not None and cfg.peak_flops_bf16) else "fp32"
    rec.update({
        "status": "ok" if all(math.isfinite(x) for x in loss_vals) else "error: non-finite loss",
        "dims": {"hidden": int(mc.hidden_size), "layers": int(mc.num_hidden_layers), "heads": int(mc.num_attention_heads),
                 "ffn": int(mc.intermediate_size), "vocab": vocab, "full_vocab": full_vocab},
        "attn_impl": getattr(bb.model.config, "_attn_implementation", None),
        "load_s": load_s,
        "warmup_s": warm_s,
        "step_s": step_s,
        # the median step: robust to a burst of load on a shared machine (ratios in the docs use it)
        "step_s_median": sorted(step_times)[len(step_times) // 2] if step_times else None,
        "step_s_min": min(step_times) if step_times else None,
        "samples_per_s": cfg.batch / step_s,
        "tokens_per_s": real_tokens / step_s,
        "real_tokens_per_step": real_tokens,
        "flops_per_step": flops["total"],
        "flops_breakdown": flops,
        "achieved_flops": achieved,
        "peak_flops": peak_flops,
        "peak_dtype": peak_dtype,
        "compute_dtype": "bf16" if dtype is not None else "fp32",
        "mfu": (achieved / peak_flops) if peak_flops else None,
        "peak_mem_bytes": peak,
        "mem_after_load_bytes": mem_loaded,
        "mem_kind": meter.kind,
        "mem_scope": meter.scope,
        "trainable_params": sum(p.numel() for p in params),
        "backbone_params": bb.total_params(),
        "module_bytes": module_bytes,
        "optimizer_state_bytes": optimizer_state_bytes(opt),
        "embedding_bytes": embedding_bytes(bb),
        "loss_first": loss_vals[0] if loss_vals else None,
        "loss_last": loss_vals[-1] if loss_vals else None,
    })
    return rec


def run_isolated(cfg: BenchConfig, timeout: float | None = None) -> dict:
    """`run_config` in a fresh Python process (its own peak memory); never raises for a failed config."""
    base = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops", "peak_flops_bf16"})}
    with tempfile.TemporaryDirectory(prefix="xtl-bench-") as td:
        cfg_path, out_path = Path(td) / "config.json", Path(td) / "result.json"
        cfg_path.write_text(cfg.model_dump_json())
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        try:
            p = subprocess.run([sys.executable, "-m", "adapters_xtl.bench", "--worker", str(cfg_path), str(out_path)],
                               capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {**base, "status": f"error: timed out after {timeout:.0f}s"}
        if out_path.exists():
            return json.loads(out_path.read_text())
        tail = (p.stderr or p.stdout or "").strip().splitlines()[-3:]
        return {**base, "status": f"error: worker exit {p.returncode}: {' | '.join(tail)[-400:]}"}


def _worker_main(cfg_path: str, out_path: str) -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    cfg = BenchConfig.model_validate_json(Path(cfg_path).read_text())
    try:
        rec = run_config(cfg)
    except torch.cuda.OutOfMemoryError as e:
        rec = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops", "peak_flops_bf16"}), "status": f"oom: {str(e)[:200]}"}
    except XtlError as e:
        rec = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops", "peak_flops_bf16"}), "status": f"error: {e}"}
    except Exception as e:  # recorded, not raised: one broken configuration must not end a grid
        rec = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops", "peak_flops_bf16"}),
               "status": f"error: {type(e).__name__}: {str(e)[:300]}"}
    atomic_write_json(out_path, rec, indent=None, default=str)  # the parent reads it only if whole
    return 0


def run_configs(configs: list[BenchConfig], *, peak_flops: float | None, isolated: bool = True,
                timeout: float | None = None, on_result: Callable[[dict], None] | None = None,
                peak_flops_bf16: float | None = None) -> list[dict]:
    out = []
    for cfg in configs:
        cfg = cfg.model_copy(update={"peak_flops": peak_flops, "peak_flops_bf16": peak_flops_bf16})
        if cfg.shape in RANDOM_SHAPES:
            materialize_random_shape(cfg.shape)  # once, here, not raced by workers
        if isolated:
            rec = run_isolated(cfg, timeout=timeout)
        else:
            try:
                rec = run_config(cfg)
            except XtlError as e:
                rec = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops", "peak_flops_bf16"}), "status": f"error: {e}"}
            rec["mem_scope"] = "in-process (peaks may include earlier configurations)"
        out.append(rec)
        remember_throughput(cfg, rec)
        if on_result:
            on_result(rec)
    return out


def _trainer_defaults(cfg: BenchConfig) -> bool:
    """The row trains as `train` does by default (precision and dropout)."""
    from ..trainer import TrainConfig

    d = TrainConfig.model_fields
    return all(getattr(cfg, k) == d[k].default for k in ("precision", "backbone_dropout", "module_dropout"))


def remember_throughput(cfg: BenchConfig, rec: dict) -> None:
    """A plain configuration (no memory or speed measure switched on) measures how fast this
    device trains that backbone: record it where `xtl run --dry-run` prices plans
    (throughput.py), so the paper grid's estimate on this machine uses the measured speed of the
    XLM-R large shape instead of a guessed MFU. The row's FLOPs are `cost.step_flops`, the count
    training runs log and the planner prices jobs with, so its FLOP/s are comparable."""
    name = SHAPE_BACKBONES.get(cfg.shape)
    plain = (not cfg.grad_ckpt and cfg.optimizer == "adamw" and cfg.embeddings == "full" and cfg.attn == "sdpa"
             and not cfg.compile and not cfg.method_config and _trainer_defaults(cfg)
             and cfg.warmup >= 1)  # an unwarmed first step carries one-time costs (allocation, bnb repacking)
    if not name or not plain or rec.get("status") != "ok" or not rec.get("step_s"):
        return
    cost.log_measurement(backbone=name, quantization=cfg.quant, method=cfg.method,
                         device=torch.device(cfg.device or "cpu").type, task=f"bench:b{cfg.batch}xs{cfg.seq}",
                         batch_size=cfg.batch, steps=cfg.steps, seconds_per_step=rec["step_s"],
                         tokens_per_step=cfg.batch * cfg.seq, non_embedding=cost.NON_EMBEDDING_PARAMS[name],
                         source="xtl bench")
