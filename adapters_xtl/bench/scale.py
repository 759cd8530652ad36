"""What the Ray executor costs and what it buys: one grid run by each executor configuration,
wall time of the whole run (backbone loads, intermediate modules, every cell, the commits).

    python -m adapters_xtl.bench.scale --out /tmp/scale [--configs local,ray:1x2,ray:1x1,ray:2x1]
        [--json docs/figures/scale.json] [--cells-steps 20] [--seeds 2]

Configurations: `local` (this process, torch on `--local-threads` threads), `ray:WxC` (W
workers of C CPUs each, C torch threads). Ray is started once before the timings (with
`ray.init(num_cpus=...)`, as a cluster `ray start --head` made would be there already) and its
start time is reported apart. Each configuration gets a fresh run folder and registry, so every
one trains the same intermediate modules and cells. `--json` keeps the rows of earlier calls
(run one configuration per call to stay inside a time limit) and prints the ratios:
overhead = ray:1xN / local (N = the local threads), scaling = ray:1x1 / ray:2x1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import yaml


def grid_recipe(backbone: str, steps: int, seeds: int, eval_limit: int) -> dict:
    """Two intermediates and one target (the bundled demo tasks) in single, stack and continue:
    5 cells and 2 modules per seed."""
    return {"name": "scale-bench", "backbone": backbone, "method": "lora", "method_config": {"r": 8, "alpha": 16},
            "seeds": list(range(1, seeds + 1)),
            "train": {"steps": steps, "batch_size": 16, "lr": 0.002, "eval_every": steps, "log_every": steps},
            "intermediate": [{"task": "demo-sentiment"}, {"task": "demo-nli"}],
            "targets": [{"task": "demo-topic", "languages": ["en", "de", "fr"], "eval_limit": eval_limit}],
            "compositions": ["single", "stack", "continue"]}


def parse_config(text: str) -> dict:
    if text == "local":
        return {"name": "local"}
    try:
        kind, shape = text.split(":")
        w, c = shape.split("x")
        if kind != "ray":
            raise ValueError
        return {"name": text, "workers": int(w), "cpus": int(c)}
    except ValueError:
        raise SystemExit(f"--configs: {text!r} is not local or ray:WORKERSxCPUS (e.g. ray:2x1)") from None


def run_one(cfg: dict, recipe_path: Path, out: Path, local_threads: int) -> dict:
    import torch
    from rich.console import Console

    from ..executors import LocalExecutor
    from ..executors.ray import RayExecutor
    from ..recipe import expand, load_recipe
    from ..store.registry import Registry

    plan = expand(load_recipe(recipe_path))
    folder = out / cfg["name"].replace(":", "-")
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    console = Console(file=sys.stderr, width=160)
    if cfg["name"] == "local":
        torch.set_num_threads(local_threads)
        executor = LocalExecutor(console=console)
    else:
        executor = RayExecutor(cfg["workers"], cpus_per_worker=cfg["cpus"], console=console)
    t0 = time.perf_counter()
    executor.run(plan, folder / "run", registry=Registry(folder / "registry"), progress=lambda ev: None)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (folder / "run" / "results.jsonl").read_text().splitlines()]
    return {"config": cfg["name"], "wall_s": round(wall, 2), "cells": len(plan.cells), "modules": len(plan.modules),
            "rows": len(rows), "threads": local_threads if cfg["name"] == "local" else cfg["cpus"],
            **({"workers": cfg["workers"], "stats": {k: v for k, v in executor.stats.items() if k != "failed"}}
               if cfg["name"] != "local" else {})}


def ratios(rows: dict, local_threads: int) -> dict:
    out = {}
    if "local" in rows and f"ray:1x{local_threads}" in rows:
        out["overhead_ray_1_worker_vs_local"] = round(rows[f"ray:1x{local_threads}"]["wall_s"] / rows["local"]["wall_s"], 3)
    if "ray:1x1" in rows and "ray:2x1" in rows:
        out["scaling_2_workers_vs_1"] = round(rows["ray:1x1"]["wall_s"] / rows["ray:2x1"]["wall_s"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="scratch folder (runs and registries)")
    ap.add_argument("--configs", default="local,ray:1x2,ray:1x1,ray:2x1")
    ap.add_argument("--backbone", default="xlmr-e5-small")
    ap.add_argument("--steps", type=int, default=20, help="training steps of every module")
    ap.add_argument("--seeds", type=int, default=2, help="5 cells per seed")
    ap.add_argument("--eval-limit", type=int, default=40)
    ap.add_argument("--local-threads", type=int, default=2)
    ap.add_argument("--ray-cpus", type=int, default=2, help="num_cpus of the Ray started here")
    ap.add_argument("--json", type=Path, help="JSON file to add the rows to (kept across calls)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    configs = [parse_config(c.strip()) for c in args.configs.split(",") if c.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    recipe_path = args.out / "grid.yaml"
    recipe_path.write_text(yaml.safe_dump(grid_recipe(args.backbone, args.steps, args.seeds, args.eval_limit)))
    doc = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    doc.setdefault("rows", {})
    doc["grid"] = {"backbone": args.backbone, "steps": args.steps, "seeds": args.seeds, "eval_limit": args.eval_limit,
                   "recipe": grid_recipe(args.backbone, args.steps, args.seeds, args.eval_limit)}
    doc["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    if any(c["name"] != "local" for c in configs):
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, object_store_memory=256 * 1024 ** 2,
                 log_to_driver=False, configure_logging=False)
        doc["ray_start_s"] = round(time.perf_counter() - t0, 2)
        doc["ray_version"] = ray.__version__
    for cfg in configs:
        row = run_one(cfg, recipe_path, args.out, args.local_threads)
        row["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        doc["rows"][cfg["name"]] = row
        print(json.dumps(row), file=sys.stderr, flush=True)
    doc["ratios"] = ratios(doc["rows"], args.local_threads)
    text = json.dumps(doc, indent=2)
    if args.json:
        from ..io import atomic_write_text

        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
