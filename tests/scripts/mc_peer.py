"""The peer for issue 20: the multiple-choice script a user would write with transformers + peft.

A plain script (pytest does not collect tests/scripts/), independent of adapters_xtl on purpose:
it reads the data files itself, builds `XLMRobertaForMultipleChoice` (XLM-R's own head: the <s>
state through a dense+tanh pooler, dropout, linear -> one score per choice) from the same
xlmr-e5-small folder, wraps it with a peft LoRA of the same shape as ours (r, alpha, dropout, the
q/k/v/dense Linears of every encoder layer; the pooler and classifier train in full, as
`modules_to_save`), and trains with AdamW + linear warmup/decay + clipping, one learning rate
for everything. Same examples (the tasks' id split, recomputed here), same steps, batch, max
length and seed as our run it is compared with; the held-out examples scored are the first
`--eval-limit` of the held-out side, in file order, as `mc_curve.py` scores them.

    flock /tmp/xtl-heavy.lock python tests/scripts/mc_peer.py --task commonsenseqa-local \
        --steps 150 --batch-size 8 --lr 5e-4 --seed 1 --eval-limit 300 --out /tmp/peer.jsonl

Writes one JSON line per run (accuracy, Wilson 95% interval, per-example correctness); pair it
with ours using mc_compare.py.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

TASKS = {  # name -> (file under the data folder, train fraction of the id split, max length)
    "commonsenseqa-local": ("commonsenseqa/dev_rand_split.jsonl", 0.7, 64),
    "cosmosqa-local": ("cosmosqa/valid.csv", 0.8, 128),
}


def read(task: str, data: Path) -> list[dict]:
    """[{id, first, seconds: [..], label}] in file order."""
    rel, _, _ = TASKS[task]
    out = []
    if rel.endswith(".jsonl"):
        for line in open(data / rel, encoding="utf-8"):
            if line.strip():
                r = json.loads(line)
                texts, letters = r["choices"]["text"], r["choices"]["label"]
                out.append({"id": r["id"], "first": r["question"], "seconds": texts,
                            "label": letters.index(r["answerKey"])})
    else:
        with open(data / rel, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                q = r["question"].strip()
                out.append({"id": r["id"], "first": r["context"].strip(),
                            "seconds": [f"{q} {r[f'answer{j}'].strip()}" for j in range(4)], "label": int(r["label"])})
    return out


def id_split(rows: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    def h(i):
        return int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    return [r for r in rows if h(r["id"]) < fraction], [r for r in rows if h(r["id"]) >= fraction]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    w = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (100 * (c - w), 100 * (c + w))


def batch_of(rows, tok, max_length):
    k = len(rows[0]["seconds"])
    firsts = [r["first"] for r in rows for _ in range(k)]
    seconds = [s for r in rows for s in r["seconds"]]
    enc = tok(firsts, seconds, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {key: v.view(len(rows), k, -1) for key, v in enc.items() if key in ("input_ids", "attention_mask")}, \
        torch.tensor([r["label"] for r in rows])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--eval-limit", type=int, default=300)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("XTL_DATA", "../shared/data")))
    ap.add_argument("--model-dir", type=Path, default=None, help="the xlmr-e5-small HF folder (default: build/cache it)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a core shared with another job)")
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, XLMRobertaForMultipleChoice, get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    model_dir = args.model_dir
    if model_dir is None:  # the same offline folder our backbone loads (the only adapters_xtl use)
        from adapters_xtl.embedded import build_e5_small

        model_dir = build_e5_small()
    _, fraction, max_length = TASKS[args.task]
    train_rows, test_rows = id_split(read(args.task, args.data_dir), fraction)
    test_rows = test_rows[: args.eval_limit]
    print(f"{args.task}: {len(train_rows)} train, {len(test_rows)} test scored", flush=True)

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf_logging.set_verbosity_error()  # "some weights newly initialized": the pooler and classifier, as expected
    model = XLMRobertaForMultipleChoice.from_pretrained(model_dir)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, bias="none",
                      target_modules=r".*encoder\.layer\.\d+\..*(query|key|value|dense)",
                      modules_to_save=["pooler", "classifier"])
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * args.steps), args.steps)

    order: list[int] = []
    rng = random.Random(args.seed)
    model.train()
    losses, t0 = [], time.perf_counter()
    for step in range(args.steps):
        if len(order) < args.batch_size:
            fresh = list(range(len(train_rows)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[: args.batch_size], order[args.batch_size:]
        inputs, labels = batch_of([train_rows[i] for i in idx], tok, max_length)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 10 == 0:
            print(f"  step {step + 1}: loss {sum(losses[-10:]) / 10:.4f}", flush=True)
    train_s = time.perf_counter() - t0

    model.eval()
    correct = []
    with torch.inference_mode():
        for i in range(0, len(test_rows), 32):
            rows = test_rows[i: i + 32]
            inputs, labels = batch_of(rows, tok, max_length)
            pred = model(**inputs).logits.argmax(-1)
            correct += (pred == labels).int().tolist()
    k, n = sum(correct), len(correct)
    tail = [sum(losses[j: j + 10]) / len(losses[j: j + 10]) for j in range(0, len(losses), 10)]
    rec = {"label": "peer", "task": args.task, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           "seed": args.seed, "trainable_params": trainable, "train_examples": len(train_rows),
           "loss_first": round(tail[0], 4), "loss_last": round(sum(tail[-2:]) / len(tail[-2:]), 4),
           "losses": [round(x, 3) for x in tail], "test_acc": round(100 * k / n, 2),
           "test_ci95": [round(x, 1) for x in wilson(k, n)], "test_n": n,
           "s_per_step": round(train_s / args.steps, 3), "correct": correct, "ids": [r["id"] for r in test_rows]}
    print(json.dumps({a: b for a, b in rec.items() if a not in ("correct", "ids", "losses")}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
