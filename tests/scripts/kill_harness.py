"""SIGKILL at random moments (and at the exact windows that used to lose or double work) during
training, a grid run and registry saves; after each kill the same work runs again to the end,
and then nothing may be broken:

- 0 corrupt files: every JSON parses, every safetensors and checkpoint loads, `registry verify`
  reports nothing but harmless temp leftovers (and nothing at all after `--fix`);
- 0 duplicate or lost rows in results.jsonl (compared with an uninterrupted run);
- the final weights (every registered module) identical to those of an uninterrupted run;
- no second version of a grid module.

Plus concurrency: two grid runs started at once on one folder (one runs, the other is refused
naming the PID), and two `xtl run` processes from the command line.

Workers are forked from a forkserver that imported torch and the library once, so a trial costs
the work, not the imports. Run it as a script (prints the table) or through
tests/test_kill.py (CI):

    python tests/scripts/kill_harness.py [--seed N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
for p in (str(TESTS), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

# imported here so that the forkserver (which preloads this module) holds them before it forks
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from adapters_xtl.backbone import load_backbone  # noqa: E402
from adapters_xtl.errors import XtlError  # noqa: E402
from adapters_xtl.evaluation import read_results  # noqa: E402
from adapters_xtl.io import TMP_PREFIX  # noqa: E402
from adapters_xtl.pipeline import train_module  # noqa: E402
from adapters_xtl.recipe import expand, load_recipe  # noqa: E402
from adapters_xtl.runner import run_plan  # noqa: E402
from adapters_xtl.store.layout import WEIGHTS  # noqa: E402
from adapters_xtl.store.manifest import BackboneFingerprint, Manifest  # noqa: E402
from adapters_xtl.store.registry import Registry  # noqa: E402
from adapters_xtl.store.verify import check, verify  # noqa: E402
from adapters_xtl.trainer import TrainConfig  # noqa: E402


def _preload() -> None:
    """What a worker's first training imports lazily (peft, the model code): imported here, once."""
    import peft  # noqa: F401
    import transformers.models.xlm_roberta.modeling_xlm_roberta  # noqa: F401

    import adapters_xtl.compress  # noqa: F401
    import adapters_xtl.embedded  # noqa: F401
    from adapters_xtl.methods import get_method

    get_method("lora")


_preload()

TRAIN_CFG = dict(steps=12, batch_size=8, eval_every=3, checkpoint_every=2, lr=5e-3, log_every=3)
REGISTRY_SAVES = 8

# scenario -> kill points: "random" (a uniform moment of an uninterrupted run's duration) or an
# exact window, made exact by a hook in the worker that SIGKILLs it there
PLAN = {
    "train": ["random"] * 5 + ["mid-checkpoint", "before-register"],
    "run": ["random"] * 6 + ["before-cell-record", "before-rows", "mid-rows", "mid-checkpoint"],
    "registry": ["random"] * 4 + ["before-rename", "before-index"],
}


@dataclass
class Trial:
    scenario: str
    kill: str
    at: float | None = None  # seconds after the start, for random kills
    state: str = ""  # what was on disk when the kill landed
    outcome: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# -- workers (run in forked children) ---------------------------------------------------------------


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill_point(kill: str) -> None:
    """Patch the worker so that it SIGKILLs itself exactly at `kill`."""
    import adapters_xtl.io as xio
    import adapters_xtl.runner as runner

    if kill == "mid-checkpoint":  # the second checkpoint: half its temp file written, then the kill
        real, n = torch.save, {"calls": 0}

        def save(obj, f, *a, **k):
            n["calls"] += 1
            if n["calls"] == 2 and isinstance(f, (str, Path)) and str(f).endswith("checkpoint.pt"):
                real(obj, f, *a, **k)
                with open(f, "r+b") as fh:
                    fh.truncate(os.path.getsize(f) // 2)
                _die()
            return real(obj, f, *a, **k)

        torch.save = save
    elif kill == "before-register":
        real_save = Registry.save
        Registry.save = lambda self, *a, **k: _die() or real_save(self, *a, **k)
    elif kill == "before-cell-record":  # the cell's module is registered, its record not yet written
        real_json = runner._atomic_json
        runner._atomic_json = lambda path, obj: _die() if path.parent.name == "cells" else real_json(path, obj)
    elif kill in ("before-rows", "mid-rows"):
        def append(path, rows):
            if rows and kill == "mid-rows":
                with open(path, "ab") as f:
                    f.write(json.dumps(rows[0]).encode()[:30])
                    f.flush()
                    os.fsync(f.fileno())
            if rows:
                _die()

        runner.append_results = append
    elif kill == "before-rename":  # the third save's weights are in their temp file, not renamed
        real_replace, n = xio.os.replace, {"calls": 0}

        def replace(src, dst):
            if str(dst).endswith(WEIGHTS):
                n["calls"] += 1
                if n["calls"] == 3:
                    _die()
            return real_replace(src, dst)

        xio.os.replace = replace
    elif kill == "before-index":  # the third version is renamed in, the index not yet updated
        real_update, n = Registry._update_index, {"calls": 0}

        def update(self, *a, **k):
            n["calls"] += 1
            if n["calls"] == 3:
                _die()
            return real_update(self, *a, **k)

        Registry._update_index = update


def _work_train(root: Path, backbone: str) -> None:
    bb = load_backbone(backbone)
    train_module(bb, str(root.parent / "task-train" / "task.yaml"), name="killtrain", method_config={"dropout": 0.1},
                 train_config=TrainConfig(**TRAIN_CFG), registry=Registry(root / "registry"),
                 checkpoint_dir=root / "out" / "checkpoint", eval_languages=["en", "de"], eval_limit=8)


def _work_run(root: Path, backbone: str) -> None:
    from rich.console import Console

    plan = expand(load_recipe(root / "grid.yaml"))
    run_plan(plan, root / "run", registry=Registry(root / "registry"), backbone=load_backbone(backbone),
             console=Console(file=open(os.devnull, "w")), progress=lambda event: None)


def _fingerprint() -> BackboneFingerprint:
    return BackboneFingerprint(model_id="kill-harness", weights_sha256="ab" * 32, quantization="none")


def _tensors(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return {"layer.0.lora_A": torch.randn(64, 256, generator=g), "head.bias": torch.randn(3, generator=g)}


def _work_registry(root: Path, backbone: str) -> None:
    """Save REGISTRY_SAVES versions (some already there after a kill); log each finished save."""
    reg = Registry(root / "registry")
    done = {line.split()[0] for line in _lines(root / "saved.log")}
    for i in range(REGISTRY_SAVES):
        if str(i) in done:
            continue
        man = Manifest(name=f"reg-{i % 2}", task="toy", format="classification", method="lora",
                       head={"type": "classification", "num_labels": 3}, backbone=_fingerprint(), seed=i)
        saved = reg.save(man, _tensors(i))
        with open(root / "saved.log", "a") as f:
            f.write(f"{i} {saved.name} {saved.version}\n")
            f.flush()
            os.fsync(f.fileno())


WORK = {"train": _work_train, "run": _work_run, "registry": _work_registry}


def _worker(scenario: str, root: str, backbone: str, kill: str | None) -> None:
    torch.set_num_threads(1)  # one thread: the same sums in the same order in every process
    os.environ.setdefault("XTL_THROUGHPUT", str(Path(root) / "throughput.jsonl"))
    if kill and kill != "random":
        _install_kill_point(kill)
    try:
        WORK[scenario](Path(root), backbone)
    except XtlError as e:
        (Path(root) / f"refused-{os.getpid()}.txt").write_text(str(e))
        sys.exit(2)


# -- the parent ---------------------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    try:
        return [x for x in path.read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


def _noop() -> None:
    pass


def _context():
    """A forkserver that imported this module (torch, the library) once; started here, so the
    first trial's timing does not include it."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["kill_harness"])
    # the server does not get our sys.path (Python 3.11 drops it): it finds this module by PYTHONPATH
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(TESTS), str(REPO)] + ([old] if old else []))
    try:
        p = ctx.Process(target=_noop)
        p.start()
        p.join()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    return ctx


def _start(ctx, scenario, root, backbone, kill=None):
    p = ctx.Process(target=_worker, args=(scenario, str(root), str(backbone), kill))
    p.start()
    return p


def _run_to_end(ctx, scenario, root, backbone, kill=None, timeout=300) -> int:
    p = _start(ctx, scenario, root, backbone, kill)
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return -999
    return p.exitcode


def _prepare(root: Path, backbone: Path, scenario: str) -> None:
    """A trial folder; the task data is shared by all trials (cell keys hash the task's path)."""
    from test_core import write_toy_task

    root.mkdir(parents=True)
    shared = root.parent / f"task-{scenario}"
    if scenario == "train" and not shared.exists():
        write_toy_task(shared, n_train=48)
    if scenario == "run":
        task = shared / "task.yaml" if shared.exists() else write_toy_task(shared, n_train=32)
        (root / "grid.yaml").write_text(yaml.safe_dump({
            "name": "kill", "backbone": str(backbone), "method": "lora", "method_config": {"dropout": 0.1},
            "seeds": [1], "train": {"steps": 6, "batch_size": 8, "eval_every": 2, "lr": 0.005, "log_every": 2},
            "intermediate": [{"task": str(task), "name": "ia"}], "targets": [{"task": str(task), "eval_limit": 8}],
            "compositions": ["single", "stack"],
        }))


def _registry_weights(reg_root: Path) -> dict[str, dict[str, torch.Tensor]]:
    """name -> the weights of its newest version (what a later composition would load)."""
    reg = Registry(reg_root)
    out = {}
    for name in reg.names():
        out[name] = load_file(str(reg.path(name, reg.versions(name)[-1]) / WEIGHTS))
    return out


def _state(scenario: str, root: Path) -> str:
    """What the kill left on disk, in a few words (the kill point, seen from the files)."""
    reg = Registry(root / "registry")
    versions = sum(len(reg.versions(n)) for n in reg.names()) if (root / "registry").is_dir() else 0
    ckpts = []
    for c in sorted(root.glob("**/checkpoint.pt")):
        try:
            ckpts.append(str(torch.load(c, weights_only=True)["step"]))
        except Exception:
            ckpts.append("unreadable")
    if scenario == "train":
        return f"ckpt step {ckpts[0] if ckpts else '-'}, {versions} registered"
    if scenario == "run":
        cells = len(list((root / "run" / "cells").glob("*.json")))
        rows = len(read_results(root / "run" / "results.jsonl"))
        return f"ckpts {'/'.join(ckpts) or '-'}, {versions} modules, {cells}/2 cells, {rows} rows"
    return f"{len(_lines(root / 'saved.log'))}/{REGISTRY_SAVES} saved, {versions} versions"


def _corrupt_files(root: Path) -> tuple[list[str], int]:
    """Files that do not load (temp leftovers excepted: they are counted, not parsed)."""
    bad, leftovers = [], 0
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if p.name.startswith(TMP_PREFIX) or any(part.startswith(TMP_PREFIX) for part in p.relative_to(root).parts):
            leftovers += 1
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text(encoding="utf-8"))
            elif p.suffix == ".jsonl":
                for line in p.read_text(encoding="utf-8").splitlines():
                    json.loads(line)
            elif p.suffix == ".safetensors":
                load_file(str(p))
            elif p.suffix == ".pt":
                torch.load(p, weights_only=True)
        except Exception as e:
            bad.append(f"{p.relative_to(root)}: {type(e).__name__}")
    return bad, leftovers


def _check(scenario: str, root: Path, ref: Path, trial: Trial) -> None:
    bad, leftovers = _corrupt_files(root)
    trial.problems += [f"corrupt {b}" for b in bad]
    reg = Registry(root / "registry")
    # leftovers and a stale index (a cache, behind by the version a kill caught between its rename
    # and the index update) are the documented harmless outcomes; everything else is damage
    damage = [str(p) for p in check(reg) if p.kind not in ("leftover", "index")]
    trial.problems += [f"verify: {p}" for p in damage]
    fixed_then = verify(reg, fix=True) and verify(reg)
    trial.problems += [f"verify after --fix: {p}" for p in fixed_then or []]
    got, want = _registry_weights(root / "registry"), _registry_weights(ref / "registry")
    if got.keys() != want.keys():
        trial.problems.append(f"modules {sorted(got)} != {sorted(want)}")
    for name in got.keys() & want.keys():
        if got[name].keys() != want[name].keys() or not all(torch.equal(got[name][k], want[name][k]) for k in got[name]):
            trial.problems.append(f"{name}: final weights differ from the uninterrupted run")
    extra = ""
    if scenario == "run":
        rows = read_results(root / "run" / "results.jsonl")
        keys = [(r["cell"], r["language"], r["metric"]) for r in rows]
        if len(keys) != len(set(keys)):
            trial.problems.append(f"{len(keys) - len(set(keys))} duplicate rows")
        ref_rows = {(r["cell"], r["language"], r["metric"]): r["score"]
                    for r in read_results(ref / "run" / "results.jsonl")}
        lost = ref_rows.keys() - set(keys)
        if lost:
            trial.problems.append(f"{len(lost)} rows lost")
        if {k: r["score"] for k, r in zip(keys, rows)} != ref_rows and not lost:
            trial.problems.append("scores differ from the uninterrupted run")
        second = [n for n in reg.names() if len(reg.versions(n)) > 1]
        if second:
            trial.problems.append(f"second versions of {second}")
        extra = f", {len(rows)} rows"
    if scenario == "registry":
        for line in _lines(root / "saved.log"):
            i, name, version = line.split()
            w = load_file(str(reg.path(name, version) / WEIGHTS))
            if not all(torch.equal(w[k], v) for k, v in _tensors(int(i)).items()):
                trial.problems.append(f"save {i} ({name}@{version}) lost or changed")
    versions = sum(len(reg.versions(n)) for n in reg.names())
    trial.outcome = (f"{'OK' if trial.ok else 'FAIL'}: {len(bad)} corrupt, {leftovers} temp left, "
                     f"{versions} versions{extra}")


def concurrency_trial(ctx, base: Path, backbone: Path, ref: Path) -> Trial:
    """Two grid runs started together on one folder: one runs, one is refused naming the PID."""
    trial = Trial("run", "2 runs at once")
    root = base / "concurrent"
    _prepare(root, backbone, "run")
    a, b = _start(ctx, "run", root, backbone), _start(ctx, "run", root, backbone)
    a.join(300)
    b.join(300)
    codes = sorted([a.exitcode, b.exitcode])
    refusals = [p.read_text() for p in root.glob("refused-*.txt")]
    trial.state = f"exit codes {codes}"
    if codes != [0, 2] or len(refusals) != 1:
        trial.problems.append(f"expected one run and one refusal, got exit codes {codes}")
    elif "already running in this folder" not in refusals[0] or str(root / "run") not in refusals[0]:
        trial.problems.append(f"unclear refusal: {refusals[0][:200]}")
    elif f"PID {a.pid if b.exitcode == 2 else b.pid}" not in refusals[0]:
        trial.problems.append(f"refusal does not name the running PID: {refusals[0][:200]}")
    _check("run", root, ref, trial)
    return trial


def cli_concurrency_trial(base: Path, backbone: Path, ref: Path) -> Trial:
    """Two `xtl run` command lines on one folder at once: exit 0 and exit 2 with a clear message."""
    trial = Trial("run", "2 `xtl run` CLIs")
    root = base / "cli"
    _prepare(root, backbone, "run")
    env = {**os.environ, "XTL_THROUGHPUT": str(root / "throughput.jsonl"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "from adapters_xtl.cli import entry; entry()", "run", str(root / "grid.yaml"), "--out", str(root / "run"),
           "--registry", str(root / "registry")]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (root / "run" / "plan.json").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the first holds the lock once it wrote plan.json
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    out_first = first.communicate(timeout=300)[0]
    trial.state = f"exit codes {first.returncode}, {second.returncode}"
    text = second.stdout + second.stderr
    if first.returncode != 0:
        trial.problems.append(f"the first run failed: {out_first[-300:]}")
    if second.returncode != 2 or "already running in this folder" not in text or f"PID {first.pid}" not in text:
        trial.problems.append(f"the second run was not refused clearly (exit {second.returncode}): {text[-300:]}")
    if "Traceback" in text:
        trial.problems.append("the refusal printed a traceback")
    _check("run", root, ref, trial)
    return trial


def run_trials(base: Path, backbone: Path, *, seed: int = 0, out=None, cli: bool = True) -> list[Trial]:
    """Every trial of PLAN plus the concurrency trials; returns them (see `summary`)."""
    base, backbone = Path(base), Path(backbone)
    rng = random.Random(seed)
    ctx = _context()
    trials: list[Trial] = []
    log = (lambda s: print(s, file=out, flush=True)) if out else (lambda s: None)
    for scenario, kills in PLAN.items():
        ref = base / f"{scenario}-reference"
        _prepare(ref, backbone, scenario)
        t0 = time.perf_counter()
        code = _run_to_end(ctx, scenario, ref, backbone)
        duration = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"the uninterrupted {scenario} run failed (exit {code})")
        log(f"{scenario}: uninterrupted run {duration:.1f}s")
        for i, kill in enumerate(kills):
            root = base / f"{scenario}-{i}"
            _prepare(root, backbone, scenario)
            trial = Trial(scenario, kill)
            if kill == "random":
                trial.at = rng.uniform(0.05, 1.0) * duration
                p = _start(ctx, scenario, root, backbone)
                p.join(trial.at)
                finished = not p.is_alive()
                if not finished:
                    os.kill(p.pid, signal.SIGKILL)
                p.join()
                if finished:
                    trial.kill = "random (finished first)"
            else:
                code = _run_to_end(ctx, scenario, root, backbone, kill)
                if code != -signal.SIGKILL:
                    trial.problems.append(f"the kill point was never reached (exit {code})")
            trial.state = _state(scenario, root)
            code = _run_to_end(ctx, scenario, root, backbone)
            if code != 0:
                trial.problems.append(f"the rerun failed (exit {code})")
            _check(scenario, root, ref, trial)
            trials.append(trial)
            log(f"  {scenario:8s} {trial.kill:24s} {trial.state:45s} {trial.outcome} {'; '.join(trial.problems)}")
    ref = base / "run-reference"
    trials.append(concurrency_trial(ctx, base, backbone, ref))
    log(f"  concurrency: {trials[-1].state} {trials[-1].outcome} {'; '.join(trials[-1].problems)}")
    if cli:
        trials.append(cli_concurrency_trial(base, backbone, ref))
        log(f"  cli concurrency: {trials[-1].state} {trials[-1].outcome} {'; '.join(trials[-1].problems)}")
    return trials


def summary(trials: list[Trial]) -> str:
    """A markdown table of the trials and the totals."""
    lines = ["| # | scenario | kill point | at (s) | on disk at the kill | outcome |", "|---|---|---|---|---|---|"]
    for i, t in enumerate(trials, 1):
        at = f"{t.at:.2f}" if t.at is not None else ""
        outcome = t.outcome + (f" ({'; '.join(t.problems)})" if t.problems else "")
        lines.append(f"| {i} | {t.scenario} | {t.kill} | {at} | {t.state} | {outcome} |")
    ok = sum(t.ok for t in trials)
    lines.append(f"\n{len(trials)} trials, {ok} clean, {len(trials) - ok} with problems")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="keep the trial folders here (default: a temp folder, removed)")
    ap.add_argument("--no-cli", action="store_true", help="skip the two-`xtl run` trial (two full imports)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from conftest import build_tiny_backbone

    with contextlib.ExitStack() as stack:
        base = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="xtl-kill-")))
        if args.keep:
            shutil.rmtree(base, ignore_errors=True)
        backbone = build_tiny_backbone(base / "tiny-xlmr")
        t0 = time.perf_counter()
        trials = run_trials(base, backbone, seed=args.seed, out=sys.stdout, cli=not args.no_cli)
        print(summary(trials))
        print(f"{time.perf_counter() - t0:.0f}s")
    return 0 if all(t.ok for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
