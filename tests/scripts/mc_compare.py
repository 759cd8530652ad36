"""Ours vs the peer (issue 20): a table from the JSON lines of mc_curve.py and mc_peer.py.

    python tests/scripts/mc_compare.py /tmp/ours.jsonl /tmp/peer.jsonl [--setting SUBSTRING]

Per task: each run's accuracy with its Wilson 95% interval, the mean over seeds, and the
difference ours - peer with a paired bootstrap 95% interval (examples resampled within each seed,
runs paired by seed on the same held-out examples).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path


def load(paths: list[Path], setting: str | None) -> list[dict]:
    out = []
    for p in paths:
        for line in open(p):
            r = json.loads(line)
            if r["label"] != "peer" and setting and setting not in r.get("setting", ""):
                continue
            out.append(r)
    return out


def paired_diff(pairs: list[tuple[list[int], list[int]]], n_boot: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of (acc_a - acc_b), with a bootstrap interval (percent)."""
    rng = random.Random(seed)

    def stat(samples):
        return 100 * sum(sum(a) / len(a) - sum(b) / len(b) for a, b in samples) / len(samples)

    point = stat(pairs)
    boots = []
    for _ in range(n_boot):
        s = []
        for a, b in pairs:
            idx = [rng.randrange(len(a)) for _ in a]
            s.append(([a[i] for i in idx], [b[i] for i in idx]))
        boots.append(stat(s))
    boots.sort()
    return point, boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--setting", default=None, help="only our runs whose setting contains this")
    args = ap.parse_args()
    runs = load(args.files, args.setting)
    by = defaultdict(dict)
    for r in runs:
        by[(r["task"], "peer" if r["label"] == "peer" else "ours")][r["seed"]] = r
    print("| task | system | seed | steps | batch | lr | head_lr | accuracy [95% CI] | loss last | s/step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (task, system), seeds in sorted(by.items()):
        for seed, r in sorted(seeds.items()):
            lo, hi = r["test_ci95"]
            print(f"| {task} | {system} | {seed} | {r['steps']} | {r['batch_size']} | {r['lr']} | {r.get('head_lr') or '-'} "
                  f"| {r['test_acc']:.1f} [{lo:.1f}, {hi:.1f}] (n={r['test_n']}) | {r['loss_last']} | {r['s_per_step']} |")
        mean = sum(r["test_acc"] for r in seeds.values()) / len(seeds)
        print(f"| {task} | {system} | mean of {len(seeds)} | | | | | {mean:.1f} | | |")
    print()
    for task in sorted({t for t, _ in by}):
        ours, peer = by.get((task, "ours"), {}), by.get((task, "peer"), {})
        common = sorted(set(ours) & set(peer))
        if not common:
            continue
        pairs = []
        for s in common:
            a, b = ours[s], peer[s]
            assert a["ids"] == b["ids"], f"{task} seed {s}: the runs scored different examples"
            pairs.append((a["correct"], b["correct"]))
        d, lo, hi = paired_diff(pairs)
        print(f"{task}: ours - peer = {d:+.1f} points [{lo:+.1f}, {hi:+.1f}] (paired bootstrap, seeds {common})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
