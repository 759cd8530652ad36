"""Training-loss curves of LoRA and its peft variants on the toy task, through our own training path.

A plain script (pytest does not collect tests/scripts/). Each variant trains one module per seed
with `pipeline.train_module` on a tiny random XLM-R (tests/conftest.py) and the toy sentiment
task (tests/test_core.py); the mean training loss over the seeds is written as JSON lines and
drawn as one SVG (no plotting library needed), with the final dev-free test accuracy per seed.

    flock /tmp/xtl-heavy.lock python tests/scripts/lora_variants_curve.py --steps 200 --seeds 1,2,3 \
        --out /work/notes/h6-variants.jsonl --svg /work/notes/h6-dora-vs-lora.svg lora dora
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

VARIANTS = {
    "lora": ("lora", {}),
    "dora": ("lora", {"use_dora": True}),
    "rslora": ("lora", {"use_rslora": True}),
    "pissa": ("lora", {"init_lora_weights": "pissa"}),
    "olora": ("lora", {"init_lora_weights": "olora"}),
    "ia3": ("ia3", {}),
}
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def svg(curves: dict[str, list[tuple[int, float]]], title: str, w: int = 520, h: int = 300) -> str:
    pad_l, pad_b, pad_t, pad_r = 48, 36, 28, 110
    xs = [x for c in curves.values() for x, _ in c]
    ys = [y for c in curves.values() for _, y in c]
    x0, x1, y0, y1 = 0, max(xs), 0.0, max(ys) * 1.05
    sx = lambda x: pad_l + (x - x0) / (x1 - x0) * (w - pad_l - pad_r)  # noqa: E731
    sy = lambda y: h - pad_b - (y - y0) / (y1 - y0) * (h - pad_b - pad_t)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="12">{title}</text>',
           f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - pad_r}" y2="{h - pad_b}" stroke="black"/>',
           f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{h - pad_b}" stroke="black"/>',
           f'<text x="{(w - pad_r + pad_l) / 2}" y="{h - 6}" text-anchor="middle">optimizer step</text>',
           f'<text x="12" y="{(h - pad_b + pad_t) / 2}" transform="rotate(-90 12 {(h - pad_b + pad_t) / 2})" '
           f'text-anchor="middle">training loss (mean over seeds)</text>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{pad_l - 4}" y="{sy(y) + 4}" text-anchor="end">{y:.2f}</text>')
        x = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{sx(x)}" y="{h - pad_b + 14}" text-anchor="middle">{int(x)}</text>')
    for k, (name, c) in enumerate(curves.items()):
        col = COLOURS[k % len(COLOURS)]
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in c)
        out.append(f'<polyline fill="none" stroke="{col}" stroke-width="2" points="{pts}"/>')
        out.append(f'<text x="{w - pad_r + 8}" y="{pad_t + 16 * k + 10}" fill="{col}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--svg", type=Path)
    args = ap.parse_args()

    from adapters_xtl.backbone import load_backbone
    from adapters_xtl.pipeline import train_module
    from adapters_xtl.store.registry import Registry
    from adapters_xtl.trainer import TrainConfig
    from conftest import build_tiny_backbone
    from test_core import write_toy_task

    tmp = Path(tempfile.mkdtemp(prefix="xtl-variants-"))
    folder = build_tiny_backbone(tmp / "tiny")
    task = write_toy_task(tmp / "toy")
    reg = Registry(tmp / "registry")
    seeds = [int(s) for s in args.seeds.split(",")]
    curves, rows = {}, []
    for v in args.variants:
        method, mcfg = VARIANTS[v]
        per_seed, accs, secs = [], [], []
        for seed in seeds:
            cfg = TrainConfig(steps=args.steps, batch_size=16, eval_every=args.steps, lr=args.lr, log_every=10, seed=seed)
            t0 = time.perf_counter()
            tm = train_module(load_backbone(str(folder)), str(task), name=f"{v}-s{seed}", method=method,
                              method_config=mcfg, registry=reg, train_config=cfg)
            secs.append(time.perf_counter() - t0)
            per_seed.append([(h["step"], h["loss"]) for h in tm.result.history if "loss" in h])
            accs.append(tm.scores["en"]["accuracy"])
        steps = [s for s, _ in per_seed[0]]
        mean = [statistics.fmean(c[i][1] for c in per_seed) for i in range(len(steps))]
        curves[v] = list(zip(steps, mean))
        rows.append({"variant": v, "method": method, "method_config": mcfg, "steps": args.steps, "lr": args.lr,
                     "seeds": seeds, "loss_mean": curves[v], "test_accuracy_en": accs,
                     "trainable_params": tm.manifest.trainable_params, "seconds_per_run": round(statistics.fmean(secs), 2)})
        print(f"{v:7s} loss {mean[0]:.3f} -> {mean[-1]:.3f}  test acc (en) {accs}  "
              f"{tm.manifest.trainable_params} trainable  {statistics.fmean(secs):.1f}s/run")
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.svg:
        args.svg.write_text(svg(curves, f"toy task, tiny XLM-R, {len(seeds)} seeds, lr {args.lr}"))


if __name__ == "__main__":
    main()
