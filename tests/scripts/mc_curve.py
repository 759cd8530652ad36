"""Learning curves of a multiple-choice task through our own training path (issue 20).

A plain script (pytest does not collect tests/scripts/). Each setting trains one LoRA module with
`pipeline.train_module` on the real backbone and records, at a few steps of the run, accuracy on
the held-out side of the task and on training examples, plus the training loss. Checkpoint
selection is switched off (the local MC tasks' dev set is their test half, so selecting on it
would report the best of several looks at the test set): every number is the state at that step.

    flock /tmp/xtl-heavy.lock python tests/scripts/mc_curve.py --task commonsenseqa-local \
        --batch-size 8 --eval-limit 300 --train-eval 200 --out /work/notes/issue20-curve.jsonl \
        steps=150,lr=2e-3 steps=150,lr=5e-4,head_lr=1e-2 steps=150,lr=5e-4,head_lr=1e-2,pooling=cls

A setting is comma-separated `key=value`: steps, lr, head_lr, pooling (mean|cls), seed,
warmup_ratio, weight_decay, r, alpha, max_train (a random subset
of that many training examples: the overfit check). One JSON line per setting goes to --out; per-example
correctness of the last evaluation goes with it (for paired comparisons, see mc_compare.py).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (100 * (c - h), 100 * (c + h))


def parse_setting(s: str) -> dict:
    out = {}
    for part in s.split(","):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip() if k.strip() == "pooling" else float(v) if any(c in v for c in ".e") else int(v)
    return out


def accuracy_rows(model, spec, examples, batch_size) -> list[dict]:
    fmt = model.format
    feats = fmt.encode(examples, spec, model.tokenizer, train=False)
    rows: list[dict] = []
    was = model.training
    model.eval()
    fmt.score(model, feats, examples, spec, batch_size, keep=rows)
    model.train(was)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-limit", type=int, default=300)
    ap.add_argument("--train-eval", type=int, default=200, help="training examples scored (0: none)")
    ap.add_argument("--evals", type=int, default=3, help="evaluations per run (evenly spaced, the last at the end)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a core shared with another job)")
    ap.add_argument("--label", default="ours")
    ap.add_argument("--registry", type=Path, default=None, help="keep the trained modules here (default: a temp dir)")
    ap.add_argument("--transfer", default="", help="comma-separated MC tasks to score each module on zero-shot")
    ap.add_argument("--transfer-limit", type=int, default=300)
    ap.add_argument("settings", nargs="+")
    args = ap.parse_args()
    import signal

    def said(sig, frame):  # a shared machine: say why a run stopped
        print(f"stopped by signal {sig}", flush=True)
        sys.exit(128 + sig)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, said)

    from adapters_xtl import pipeline
    from adapters_xtl.backbone import load_backbone
    from adapters_xtl.data import load_examples
    from adapters_xtl.store.registry import Registry
    from adapters_xtl.tasks import get_task
    from adapters_xtl.trainer import TrainConfig

    torch.set_num_threads(args.threads)
    bb = load_backbone("xlmr-e5-small")
    base = get_task(args.task)
    test_ex = load_examples(base, base.eval_split, "en", args.data_dir, limit=args.eval_limit)
    all_train = load_examples(base, "train", "en", args.data_dir)
    print(f"{args.task}: {len(all_train)} training examples, {len(test_ex)} test examples scored", flush=True)

    orig_train = pipeline.train
    for s in args.settings:
        st = parse_setting(s)
        spec = base.model_copy(update={"pooling": st.get("pooling", base.pooling)})
        steps = int(st.get("steps", 150))
        seed = int(st.get("seed", 42))
        sub = int(st["max_train"]) if "max_train" in st else None
        # the subset train() samples (same rng, same population size): score exactly those
        train_ex = random.Random(seed).sample(all_train, sub) if sub and sub < len(all_train) else all_train
        train_ex = train_ex[: args.train_eval]
        cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=st.get("lr", 1e-3), head_lr=st.get("head_lr"),
                          seed=seed, max_train_examples=sub, warmup_ratio=st.get("warmup_ratio", 0.1),
                          weight_decay=st.get("weight_decay", 0.01), eval_every=steps, eval_examples=1,
                          log_every=10)
        at = sorted({round(steps * (i + 1) / args.evals) for i in range(args.evals)})
        curve: list[dict] = []
        last_rows: list[dict] = []

        def train_no_selection(model, trainable, train_feats, dev_feats, dev_ex, cfg_, **kw):
            t_eval = [0.0]

            def hook(done: int) -> None:
                nonlocal last_rows
                if done not in at:
                    return
                t0 = time.perf_counter()
                rows = accuracy_rows(model, spec, test_ex, 32)
                tr = accuracy_rows(model, spec, train_ex, 32) if train_ex else []
                acc = 100 * sum(r["gold"] == r["prediction"] for r in rows) / len(rows)
                tacc = 100 * sum(r["gold"] == r["prediction"] for r in tr) / len(tr) if tr else None
                curve.append({"step": done, "test": round(acc, 2), "train": None if tacc is None else round(tacc, 2)})
                last_rows = rows
                t_eval[0] += time.perf_counter() - t0
                print(f"  step {done}: test {acc:.1f} train {tacc}", flush=True)

            res = orig_train(model, trainable, train_feats, None, None, cfg_, on_step=hook, **kw)
            res.seconds -= t_eval[0]
            res.step_seconds = max(0.0, res.step_seconds - t_eval[0])
            return res

        pipeline.train = train_no_selection
        t0 = time.perf_counter()
        transfer = {}
        with tempfile.TemporaryDirectory() as tmp:
            registry = Registry(args.registry or Path(tmp))
            mc = {"r": int(st.get("r", 8)), "alpha": int(st.get("alpha", 16))}
            name = f"{args.task}-{args.label}-s{seed}-" + "-".join(p.replace("=", "") for p in s.split(","))
            name = name[:96]
            tm = pipeline.train_module(bb, spec, name=name, method="lora", method_config=mc, train_config=cfg,
                                       registry=registry, eval_languages=["en"], eval_limit=1,
                                       data_dir=args.data_dir)
            pipeline.train = orig_train
            wall = time.perf_counter() - t0
            for other in filter(None, args.transfer.split(",")):
                t1 = time.perf_counter()
                o_spec = get_task(other).model_copy(update={"pooling": spec.pooling})
                sc = pipeline.evaluate_module(bb, f"{tm.manifest.name}@{tm.manifest.version}", o_spec,
                                              registry=registry, languages=["en"], data_dir=args.data_dir,
                                              limit=args.transfer_limit, update_registry=False)
                n_o = min(args.transfer_limit, len(load_examples(o_spec, o_spec.eval_split, "en", args.data_dir)))
                acc_o = sc["en"]["accuracy"]
                transfer[other] = {"acc": round(acc_o, 2), "n": n_o,
                                   "ci95": [round(x, 1) for x in wilson(round(acc_o * n_o / 100), n_o)],
                                   "seconds": round(time.perf_counter() - t1, 1)}
                print(f"  zero-shot on {other}: {transfer[other]}", flush=True)
        losses = [h["loss"] for h in tm.result.history if "loss" in h]
        k = sum(r["gold"] == r["prediction"] for r in last_rows)
        rec = {
            "label": args.label, "task": args.task, "setting": s, "steps": steps, "batch_size": args.batch_size,
            "lr": cfg.lr, "head_lr": cfg.head_lr, "pooling": spec.pooling, "seed": cfg.seed, "method_config": mc,
            "train_examples": tm.result.train_examples, "curve": curve,
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last": round(sum(losses[-2:]) / len(losses[-2:]), 4) if losses else None,
            "losses": [round(l, 3) for l in losses],
            "test_acc": round(100 * k / len(last_rows), 2), "test_ci95": [round(x, 1) for x in wilson(k, len(last_rows))],
            "test_n": len(last_rows), "s_per_step": round(tm.result.step_seconds / steps, 3), "wall_s": round(wall, 1),
            "correct": [int(r["gold"] == r["prediction"]) for r in last_rows],
            "ids": [r["id"] for r in last_rows], "transfer": transfer,
            "module": f"{tm.manifest.name}@{tm.manifest.version}" if args.registry else None,
        }
        print(json.dumps({k_: v for k_, v in rec.items() if k_ not in ("correct", "ids", "losses")}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
