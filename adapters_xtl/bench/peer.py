"""Our trainer next to the script a user would write with peft + transformers `Trainer`: the
same LoRA training on the same data, one side after the other in this process, timed and
metered the same way. `_peer_imports` loads both sides' libraries first so neither side is
charged for the other's imports.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ..cost import device_name
from ..errors import XtlError
from .attach import _attach_for_bench
from .memory import MemoryMeter, release_memory


def _peer_imports() -> None:
    try:
        import accelerate  # noqa: F401  (Trainer needs it)
    except Exception as e:
        raise XtlError(f"the peer comparison needs accelerate ({e})", where="--peer", fix="pip install 'accelerate>=1.0'") from e
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers.trainer  # noqa: F401

    from .. import trainer  # noqa: F401
    from ..formats import get_format

    get_format("classification")


def peer_compare(backbone: str = "xlmr-e5-small", *, steps: int = 30, batch: int = 16, lr: float = 2e-3, seed: int = 42,
                 device: str | None = None, r: int = 8, alpha: int = 16, dropout: float = 0.1,
                 progress: Callable[[str], None] | None = None, task: str = "demo-topic",
                 data_dir: Path | None = None, embeddings: str = "full") -> dict:
    """The same LoRA training (backbone, demo-topic data, batch, max length, lr, steps, LoRA r/alpha/
    dropout/targets) through our trainer and through a plain peft + transformers `Trainer` script,
    in this process, one after the other. Throughput is timed from the end of the first step to the
    end of the last on both sides; peak memory is reset before each side (CUDA max allocated; on
    CPU the peak RSS, also given as the increase over the RSS at the start of that side).
    Each side keeps its own defaults otherwise (ours: warmup 10%, weight decay 0.01, length
    buckets, TrainConfig's precision and dropout defaults; Trainer: no warmup, no weight decay,
    random batches, fp32). `embeddings` is our side's backbone option (compress.load_compressed;
    `trimmed` keeps the pieces of the English train and dev texts both sides train and score on)."""
    from ..backbone import pick_device, resolve_backbone
    from ..compress import load_compressed
    from ..data import load_examples
    from ..formats.base import padding_waste
    from ..tasks import get_task
    from ..trainer import TrainConfig, train

    say = progress or (lambda s: None)
    dev = pick_device(device)
    # import both sides' libraries first: lazy imports inside a timed/metered window would be
    # charged to whichever side runs first
    _peer_imports()
    spec = get_task(task)
    if spec.format != "classification" or "text_pair" in spec.columns:
        raise XtlError(f"--peer-task {task!r} is {spec.format}{' with sentence pairs' if 'text_pair' in spec.columns else ''}",
                       where="--peer-task", fix="name a single-sentence classification task (demo-topic, sib200, sst2-local)")
    train_ex = load_examples(spec, "train", spec.train_language, data_dir)
    dev_ex = load_examples(spec, "validation", spec.train_language, data_dir, limit=200)
    labels = list(spec.labels)
    targets = ["query", "key", "value", "dense"]
    meter = MemoryMeter(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    # ---- ours ------------------------------------------------------------------------------
    say("ours: adapters_xtl.train")
    release_memory(dev)
    start_mem = meter.start()
    t_load = time.perf_counter()
    bb = load_compressed(backbone, "none", str(dev), embeddings=embeddings,
                         texts=lambda: [e[k] for e in train_ex + dev_ex for k in ("text",) if e.get(k)])
    model, _, _, trainable = _attach_for_bench(
        bb, "lora", {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets}, "xtl_peer", spec)
    fmt = model.format
    torch.manual_seed(seed)
    feats = fmt.encode(train_ex, spec, bb.tokenizer, train=True)
    dev_feats = fmt.encode(dev_ex, spec, bb.tokenizer, train=False)
    load_s = time.perf_counter() - t_load
    marks: dict[int, float] = {}

    def on_step(done: int) -> None:
        sync()
        marks[done] = time.perf_counter()

    cfg = TrainConfig(steps=steps, batch_size=batch, lr=lr, eval_every=10**9, log_every=steps, seed=seed)
    train_settings = {k: getattr(cfg, k) for k in ("precision", "backbone_dropout", "module_dropout")}
    res = train(model, trainable, feats, None, None, cfg, on_step=on_step)
    ours_peak = meter.peak()
    window = marks[steps] - marks[1] if steps > 1 else res.seconds
    ours_acc = fmt.score(model, dev_feats, dev_ex, spec, batch_size=2 * batch)["accuracy"]
    ours = {"samples_per_s": batch * max(1, steps - 1) / window, "train_s": res.seconds, "load_s": load_s,
            "peak_mem_bytes": ours_peak, "mem_increase_bytes": ours_peak - start_mem, "dev_accuracy": ours_acc,
            "padding_waste": res.padding_waste, "trainable_params": sum(p.numel() for p in trainable.values()),
            "final_loss": res.history[-1]["loss"] if res.history else None}
    lengths = [len(f["input_ids"]) for f in feats]
    del model, bb, trainable, res
    release_memory(dev)

    # ---- the peer: what a user writes with peft + transformers ------------------------------
    say("peer: peft + transformers Trainer")
    from datasets import Dataset, disable_progress_bars, enable_progress_bars
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoTokenizer, DataCollatorWithPadding, PrinterCallback, Trainer, TrainerCallback,
                              TrainingArguments, XLMRobertaForSequenceClassification)
    from transformers.utils import logging as hf_logging

    start_mem = meter.start()
    t_load = time.perf_counter()
    _, source = resolve_backbone(backbone)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        torch.manual_seed(seed)
        base = XLMRobertaForSequenceClassification.from_pretrained(source, num_labels=len(labels))
    finally:
        hf_logging.set_verbosity(verbosity)
    peft_cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                          target_modules=r".*encoder\.layer\.\d+\..*(query|key|value|dense)$")
    pmodel = get_peft_model(base, peft_cfg)
    label_id = {l: i for i, l in enumerate(labels)}

    def to_ds(ex):
        ds = Dataset.from_dict({"text": [e["text"] for e in ex], "label": [label_id[e["label"]] for e in ex]})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=spec.max_length), batched=True)

    disable_progress_bars()
    try:
        train_ds, dev_ds = to_ds(train_ex), to_ds(dev_ex)
    finally:
        enable_progress_bars()
    peer_marks: dict[int, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            sync()
            peer_marks[state.global_step] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="xtl-peer-") as td:
        args = TrainingArguments(output_dir=td, per_device_train_batch_size=batch, per_device_eval_batch_size=2 * batch,
                                 learning_rate=lr, max_steps=steps, seed=seed, report_to=[], save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, use_cpu=dev.type == "cpu")
        trainer = Trainer(model=pmodel, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                          data_collator=DataCollatorWithPadding(tokenizer), callbacks=[Timer()])
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict
        peer_load_s = time.perf_counter() - t_load
        out = trainer.train()
        peer_peak = meter.peak()
        pred = trainer.predict(dev_ds)
    peer_acc = 100.0 * float((pred.predictions.argmax(-1) == pred.label_ids).mean())
    pwindow = peer_marks[steps] - peer_marks[1] if steps > 1 else out.metrics["train_runtime"]
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    peer = {"samples_per_s": batch * max(1, steps - 1) / pwindow, "train_s": out.metrics.get("train_runtime"),
            "load_s": peer_load_s, "peak_mem_bytes": peer_peak, "mem_increase_bytes": peer_peak - start_mem,
            "dev_accuracy": peer_acc,
            "padding_waste": padding_waste(lengths, [idx[i:i + batch] for i in range(0, len(idx), batch)]),
            "trainable_params": sum(p.numel() for p in pmodel.parameters() if p.requires_grad),
            "final_loss": out.metrics.get("train_loss")}
    del trainer, pmodel, base
    release_memory(dev)
    return {
        "backbone": backbone, "device": device_name(dev), "task": spec.name, "train_examples": len(train_ex),
        "dev_examples": len(dev_ex), "steps": steps, "batch": batch, "lr": lr, "max_length": spec.max_length,
        "lora": {"r": r, "alpha": alpha, "dropout": dropout, "targets": targets}, "mem_kind": meter.kind,
        "ours_settings": {**train_settings, "embeddings": embeddings},
        "ours": ours, "peer": peer,
        "speedup_samples_per_s": ours["samples_per_s"] / peer["samples_per_s"],
        "peak_mem_ratio": ours["peak_mem_bytes"] / peer["peak_mem_bytes"] if peer["peak_mem_bytes"] else None,
        "mem_increase_ratio": (ours["mem_increase_bytes"] / peer["mem_increase_bytes"]
                               if peer["mem_increase_bytes"] > 0 else None),
        "note": "peer padding waste is that of random batches of the same size (its sampler's order is not replayed)",
    }
