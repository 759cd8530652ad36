"""What training costs, in one place: `xtl bench` (MFU of a measured step), `xtl run --dry-run`
(hours of a plan) and every training run (the row it adds to the measurement log) all count
FLOPs, time the matmul peak and price steps with the functions below, so their numbers agree.

Two FLOP counts, for two questions:
- `count_step_flops`: the analytic count of one step on a frozen encoder from its dimensions and
  the method's trainable sites (checked against torch's FlopCounterMode); the numerator of the
  bench's MFU. See docs/benchmarks.md for the formula.
- `step_flops` (4 x non-embedding parameters x tokens): its leading term, the unit of the
  measurement log (throughput.py). The planner knows a backbone by name, not its dimensions, and
  a logged row's FLOP/s only has to be comparable with the job it prices: both are counted with
  this one function.

Pricing a job (`step_cost`), from the closest measurement this machine has:
1. ``task``: the same backbone, quantization, method, device and task: seconds/step, scaled
   linearly by batch size;
2. ``flops``: the same backbone, quantization, method and device on any task: its achieved
   FLOP/s applied to the job's `step_flops`;
3. ``guess``: nothing measured: the measured matmul peak x an assumed MFU. A FLOP-count guess
   is off by an order of magnitude on small backbones (real MFU varies 10x between a laptop
   CPU and an H100, and padded lengths differ from the task's max length), hence the log.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from . import throughput
from .errors import XtlError

if TYPE_CHECKING:
    from .backbone import Backbone
    from .recipe import Plan
    from .trainer import TrainConfig

# where each method puts trainable weights inside an encoder layer (see count_step_flops)
POINTS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")

# non-embedding parameters of the backbones a recipe names (embeddings are lookups, not FLOPs)
NON_EMBEDDING_PARAMS = {"xlmr-e5-small": 21.3e6, "xlm-roberta-base": 85.1e6, "xlm-roberta-large": 302.6e6}
DEFAULT_NON_EMBEDDING_PARAMS = 85.1e6  # an unknown name is priced as XLM-R base


# ------------------------------------------------------------------------------------ peak FLOP/s
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def measure_peak_flops(device: torch.device | str | None = None, *, size: int | None = None,
                       dtype: torch.dtype | None = None, seconds: float = 2.0) -> dict:
    """Best observed FLOP/s of a square matmul: fp32 on CPU, bf16 (fp16 without bf16) on CUDA,
    the dtype our trainer computes in. Timed in chunks of up to 0.25 s (at least three)."""
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        if dev.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    n = size or (8192 if dev.type == "cuda" else 2048)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, dtype)
    b = torch.randn(n, n, generator=g).to(dev, dtype)
    flop = 2.0 * n**3

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    torch.mm(a, b)
    sync()
    t = time.perf_counter()
    torch.mm(a, b)
    sync()
    one = max(time.perf_counter() - t, 1e-6)
    chunk = min(0.25, seconds / 3)
    reps = max(1, min(50, int(chunk / one)))
    best, t_end = 0.0, time.perf_counter() + seconds
    chunks = 0
    while chunks < 3 or time.perf_counter() < t_end:
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync()
        best = max(best, flop * reps / (time.perf_counter() - t))
        chunks += 1
        if chunks >= 40:
            break
    return {"flops": best, "dtype": str(dtype).replace("torch.", ""), "size": n, "device": device_name(dev)}


def measured_peak_flops(seconds: float = 0.3, device: torch.device | str | None = None) -> float:
    """A quick matmul peak in FLOP/s (small matrices, `seconds` of timing): what the dry-run
    guesses from when nothing was measured."""
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return measure_peak_flops(dev, size=2048 if dev.type == "cuda" else 512, seconds=seconds)["flops"]


# ------------------------------------------------------------------------------------ FLOP count
def trainable_points(method: str, method_config: dict | None = None) -> set[str]:
    """Which sites of every encoder layer hold trainable weights for a method."""
    cfg = method_config or {}
    if method == "lora":
        from .methods.lora import LoraSettings

        return _target_points(cfg.get("target_modules", LoraSettings().target_modules))
    if method == "ia3":  # learned vectors scaling the outputs of its targets (inputs, for feed-forward ones)
        from .methods.ia3 import IA3Settings

        return _target_points(cfg.get("target_modules", IA3Settings().target_modules))
    if method == "bottleneck":
        # seq_bn (Pfeiffer): one adapter after the FFN output; double_seq_bn (Houlsby): also after attention
        return {"attn_out", "ffn_out"} if cfg.get("variant") == "double_seq_bn" else {"ffn_out"}
    return set(POINTS)  # unknown method: assume every site (upper bound)


def _target_points(targets) -> set[str]:
    """peft target module names (suffix-matched, as peft does) -> the layer sites they touch."""
    pts: set[str] = set()
    for t in targets:
        t = t.strip(".")
        if t.endswith("query"):
            pts.add("query")
        elif t.endswith("key"):
            pts.add("key")
        elif t.endswith("value"):
            pts.add("value")
        elif t.endswith("attention.output.dense"):
            pts.add("attn_out")
        elif t.endswith("intermediate.dense"):
            pts.add("ffn_in")
        elif t.endswith("output.dense"):
            pts |= {"attn_out", "ffn_out"}
        elif t.endswith("dense"):
            pts |= {"attn_out", "ffn_in", "ffn_out"}
    return pts


def _layer_backward(H: int, F: int, B: int, S: int, points: set[str], x_needs_grad: bool) -> tuple[float, float, bool]:
    """(linear activation-grad FLOPs, attention backward FLOPs, does the layer output need grad)
    for one encoder layer whose frozen weights get no gradient. A frozen Linear's input gradient
    (dX = dY W, 2*T*in*out FLOPs) is computed only if its input depends on a trainable weight."""
    T = B * S
    lin = 0.0
    if x_needs_grad:
        lin += 3 * 2 * T * H * H  # dX of the query, key and value projections
    q = x_needs_grad or "query" in points
    k = x_needs_grad or "key" in points
    v = x_needs_grad or "value" in points
    # scores = Q K^T and context = P V, each 2*B*S*S*H forward; backward: dP (if Q or K needs
    # grad), dV, dQ, dK: 2*B*S*S*H each
    attn = 2.0 * B * S * S * H * ((q or k) + v + q + k)
    ctx = q or k or v
    if ctx:
        lin += 2 * T * H * H  # dX of attention.output.dense
    h1 = ctx or "attn_out" in points
    if h1:
        lin += 2 * T * H * F  # dX of intermediate.dense (FFN in)
    inter = h1 or "ffn_in" in points
    if inter:
        lin += 2 * T * F * H  # dX of output.dense (FFN out)
    out = inter or "ffn_out" in points
    return lin, attn, out


def count_step_flops(*, hidden: int, layers: int, ffn: int, batch: int, seq: int, points: Iterable[str],
                     adapter_params: int, head_params: int) -> dict:
    """FLOPs of one training step of a task module on a frozen encoder (see docs/benchmarks.md).

    forward:   2*N*T (the encoder's Linear weights N = L*(4H^2 + 2HF), T = B*S tokens)
             + 4*B*S^2*H*L (attention scores and weighted sum)
    backward:  activation gradients only (frozen weights get no weight gradient): 2*T*in*out per
               Linear whose input depends on a trainable weight, plus the attention backward
               (up to 8*B*S^2*H per layer); the part of the first layer below its first trainable
               site is skipped, as autograd skips it
    adapters:  6*P_adapter*T (forward, weight grads, input grads), head: 6*P_head*B (pooled)
    Embedding lookups, layer norms, softmax, activations, dropout and the optimizer are not
    counted (elementwise, as in the usual MFU convention). Counted on every position (B*S).
    """
    H, F, L, B, S = hidden, ffn, layers, batch, seq
    pts = set(points)
    T = B * S
    n_lin = L * (4 * H * H + 2 * H * F)
    fwd_lin = 2.0 * n_lin * T
    fwd_attn = 4.0 * B * S * S * H * L
    bwd_lin = bwd_attn = 0.0
    needs = False
    for _ in range(L):
        if not needs and not pts:
            continue
        lin, attn, needs = _layer_backward(H, F, B, S, pts, needs)
        bwd_lin += lin
        bwd_attn += attn
    adapters = 6.0 * adapter_params * T
    head = 6.0 * head_params * B
    total = fwd_lin + fwd_attn + bwd_lin + bwd_attn + adapters + head
    return {"forward_linear": fwd_lin, "forward_attention": fwd_attn, "backward_linear": bwd_lin,
            "backward_attention": bwd_attn, "adapters": adapters, "head": head, "total": total,
            "encoder_linear_params": n_lin}


def step_flops(non_embedding: float, tokens: float) -> float:
    """FLOPs of a step as the measurement log counts them: 4 N per token (forward 2N, backward
    through the activations 2N, no weight gradients on a frozen backbone)."""
    return 4.0 * non_embedding * tokens


def named_non_embedding_params(backbone: str) -> float:
    """Non-embedding parameters of a backbone known only by its recipe name."""
    return NON_EMBEDDING_PARAMS.get(backbone, DEFAULT_NON_EMBEDDING_PARAMS)


def non_embedding_params(backbone: Backbone) -> int:
    """Parameters a token's FLOPs scale with: everything but the embedding lookups."""
    emb = backbone.model.get_input_embeddings() if hasattr(backbone.model, "get_input_embeddings") else None
    skip = {id(p) for p in emb.parameters()} if emb is not None else set()
    base = getattr(backbone.model, "embeddings", None)
    if base is not None:
        skip |= {id(p) for p in base.parameters()}
    n = 0
    for p in backbone.model.parameters():
        if id(p) in skip:
            continue
        qs = getattr(p, "quant_state", None)
        n += int(torch.Size(qs.shape).numel()) if qs is not None else p.numel()
    return n


# ------------------------------------------------------------------------- the measurement log
def log_measurement(*, backbone: str, quantization: str, method: str, device: str, task: str, batch_size: int,
                    steps: int, seconds_per_step: float, tokens_per_step: float, non_embedding: float,
                    **extra: Any) -> None:
    """Append one measured training speed to throughput.jsonl, its FLOPs counted by `step_flops`.
    Never fails the run that measured it (an unwritable cache only loses the row)."""
    try:
        throughput.record({
            "backbone": backbone, "quantization": quantization, "method": method, "device": device, "task": task,
            "batch_size": batch_size, "steps": steps, "seconds_per_step": seconds_per_step,
            "tokens_per_step": tokens_per_step, "flops_per_step": step_flops(non_embedding, tokens_per_step), **extra,
        })
    except OSError:
        pass


def record_throughput(backbone: Backbone, method: str, task: str, cfg: TrainConfig, result) -> None:
    """Remember how fast this machine trained (real tokens, optimizer steps only): the dry-run
    prices grids from it. Never fails a training run."""
    steps = result.steps - result.resumed_from
    if steps <= 0 or result.step_seconds <= 0:
        return
    log_measurement(backbone=backbone.fingerprint.model_id, quantization=backbone.quantization, method=method,
                    device=backbone.device.type, task=task, batch_size=cfg.batch_size, steps=steps,
                    seconds_per_step=result.step_seconds / steps, tokens_per_step=result.tokens / steps,
                    non_embedding=non_embedding_params(backbone))


def record_eval_throughput(backbone: Backbone, method: str, task: str, languages: int, examples: int,
                           seconds: float) -> None:
    """Remember how fast this machine scored a task (examples over all languages, forward passes
    and metrics): the dry-run prices a cell's evaluation from it (about 40% of a small cell).
    Stored in the same log as training steps with `kind: eval`, one "step" per example."""
    if examples <= 0 or seconds <= 0:
        return
    try:
        throughput.record({
            "kind": "eval", "backbone": backbone.fingerprint.model_id, "quantization": backbone.quantization,
            "method": method, "device": backbone.device.type, "task": task, "steps": examples,
            "seconds_per_step": seconds / examples, "examples_per_language": examples / max(1, languages),
            "flops_per_step": 2 * non_embedding_params(backbone) * _tokens_per_example(task),
        })
    except OSError:
        pass


def _tokens_per_example(task: str) -> float:
    from .tasks import get_task

    try:
        return get_task(task).max_length / 2
    except Exception:
        return 64.0


# ---------------------------------------------------------------------------------- pricing
@dataclass
class StepCost:
    seconds: float
    source: str  # "task" | "flops" | "guess"


def step_cost(rows: Iterable[dict[str, Any]], *, backbone: str, quantization: str, method: str, device: str,
              task: str, batch_size: int, flops_per_step: float, guess_flops_per_s: float | None) -> StepCost:
    """Seconds one optimizer step of this job should take here (see the module docstring).

    Of several matching measurements the most recent ones count (the median of the last five),
    so an old run on a busy machine does not price a quiet one forever.
    """
    want = {"backbone": backbone, "quantization": quantization, "method": method, "device": device}
    same = [r for r in rows if r.get("kind", "train") == "train" and all(r.get(k) == v for k, v in want.items())]
    same_task = [r for r in same if r.get("task") == task]
    if same_task:
        per = [r["seconds_per_step"] * batch_size / max(1, r.get("batch_size", batch_size)) for r in same_task[-5:]]
        return StepCost(_median(per), "task")
    rates = [r["flops_per_step"] / r["seconds_per_step"] for r in same[-5:] if r.get("flops_per_step")]
    if rates:
        return StepCost(flops_per_step / _median(rates), "flops")
    return StepCost(flops_per_step / guess_flops_per_s if guess_flops_per_s else float("nan"), "guess")


# an unmeasured evaluation is priced for this many examples per language (a typical test split)
GUESS_EVAL_EXAMPLES = 1000


def eval_cost(rows: Iterable[dict[str, Any]], *, backbone: str, quantization: str, method: str, device: str,
              task: str, languages: int, limit: int | None, flops_per_example: float,
              guess_flops_per_s: float | None) -> StepCost:
    """Seconds to score one cell on `languages` languages (`limit` examples each when set),
    priced like `step_cost`: the same task measured here, else this machine's evaluation FLOP/s,
    else the matmul peak."""
    want = {"backbone": backbone, "quantization": quantization, "method": method, "device": device}
    same = [r for r in rows if r.get("kind") == "eval" and all(r.get(k) == v for k, v in want.items())]
    same_task = [r for r in same if r.get("task") == task][-5:]
    per_lang = (_median([r.get("examples_per_language", GUESS_EVAL_EXAMPLES) for r in same_task])
                if same_task else GUESS_EVAL_EXAMPLES)
    examples = languages * (min(limit, per_lang) if limit else per_lang)
    if same_task:
        return StepCost(examples * _median([r["seconds_per_step"] for r in same_task]), "task")
    rates = [r["flops_per_step"] / r["seconds_per_step"] for r in same[-5:] if r.get("flops_per_step")]
    if rates:
        return StepCost(examples * flops_per_example / _median(rates), "flops")
    return StepCost(examples * flops_per_example / guess_flops_per_s if guess_flops_per_s else float("nan"), "guess")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def estimate_hours(plan: Plan, info: dict, *, mfu: float = 0.3, peak: float | None = None,
                   device: str | None = None, cache_dir: Path | None = None) -> dict:
    """Time of the work still to run (`info` is `runner.describe`): training and evaluation,
    priced from this machine's measured runs.

    Each training job (a module to train, a cell whose module is not trained yet) is priced by
    `step_cost` with `step_flops` of batch x half the task's max length tokens; each cell still to
    run also pays its evaluation (`eval_cost`), including a cell whose training finished before a
    kill (`info["cells_trained"]`). A guess is the matmul peak of this device x `mfu`. `sources`
    counts how each job was priced, so the user sees how much is guessed.
    """
    from .tasks import get_task
    from .trainer import TrainConfig

    n = named_non_embedding_params(plan.recipe.backbone)
    dev = (device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]
    rows = throughput.read(cache_dir)
    todo = set(info["modules_to_train"])
    cached, trained = info.get("cached_keys", set()), info.get("cells_trained", set())
    cells = [c for c in plan.cells if c.key not in cached]
    jobs = [(m.train, m.task.split(":")[-1].split("+")[0]) for m in plan.modules if m.name in todo]
    jobs += [(c.train, c.target) for c in cells if c.key not in trained and get_task(c.target).format != "retrieval"]
    common = dict(backbone=plan.recipe.backbone, quantization=plan.recipe.quantization, method=plan.recipe.method,
                  device=dev)

    def guessed(price, **key):
        nonlocal peak
        cost = price(rows, **key, guess_flops_per_s=None)
        if cost.source == "guess":
            peak = peak or measured_peak_flops(device=dev)  # timed only when something must be guessed
            cost = price(rows, **key, guess_flops_per_s=peak * mfu)
        sources[cost.source] += 1
        return cost.seconds

    tokens, seconds, eval_seconds = 0.0, 0.0, 0.0
    sources = {"task": 0, "flops": 0, "guess": 0}
    for train, task in jobs:
        spec = get_task(task)
        batch = train.get("batch_size", 16)
        steps = train.get("steps", TrainConfig().steps)
        step_tokens = batch * spec.max_length / 2
        tokens += steps * step_tokens
        seconds += steps * guessed(step_cost, **common, task=spec.train_task or spec.name, batch_size=batch,
                                   flops_per_step=step_flops(n, step_tokens))
    for c in cells:
        spec = get_task(c.target)
        eval_seconds += guessed(eval_cost, **common, task=spec.name, languages=len(c.languages or spec.languages),
                                limit=c.eval_limit, flops_per_example=2 * n * spec.max_length / 2)
    return {"training_tokens": tokens, "peak_tflops": (peak or 0) / 1e12, "assumed_mfu": mfu,
            "hours": (seconds + eval_seconds) / 3600, "train_hours": seconds / 3600, "eval_hours": eval_seconds / 3600,
            "sources": sources, "jobs": len(jobs), "evaluations": len(cells), "device": dev}


# ------------------------------------------------------------------------------- grid projection
def tokens_per_training(steps: int, batch_size: int, mean_tokens_per_example: float, padding_waste: float = 0.0) -> float:
    """Processed (padded) tokens of one training: steps * batch * mean length / (1 - waste)."""
    return steps * batch_size * mean_tokens_per_example / max(1e-9, 1.0 - padding_waste)


def project_grid(n_trainings: int, tokens_per_training: float, measured_tokens_per_s: float, *,
                 overhead_s_per_training: float = 0.0, workers: int = 1, price_per_hour: float | None = None) -> dict:
    """Time (and cost) of a grid of trainings from a measured throughput (bench `tokens_per_s` of
    the same shape/method/quantization at a similar length). `overhead_s_per_training` covers
    evaluation, module swaps and saving; `workers` trainings run in parallel (one per GPU)."""
    if measured_tokens_per_s <= 0:
        raise XtlError("measured throughput must be positive", where="project_grid")
    train_s = tokens_per_training / measured_tokens_per_s
    per = train_s + overhead_s_per_training
    device_hours = n_trainings * per / 3600.0
    out = {"n_trainings": n_trainings, "seconds_per_training": per, "train_seconds_per_training": train_s,
           "device_hours": device_hours, "wall_hours": device_hours / max(1, workers), "workers": workers}
    if price_per_hour is not None:
        out["cost"] = device_hours * price_per_hour
    return out


def throughput_from(results: list[dict] | dict, *, shape: str, method: str, quant: str = "none", seq: int | None = None,
                    **match: Any) -> float:
    """tokens/s of the matching bench row (a bench JSON dict or its `grid` list), for `project_grid`."""
    rows = results.get("grid", []) + results.get("memory", []) + results.get("speed", []) if isinstance(results, dict) else results
    for r in rows:
        if r.get("status") != "ok" or r.get("shape") != shape or r.get("method") != method or r.get("quant") != quant:
            continue
        if seq is not None and r.get("seq") != seq:
            continue
        if all(r.get(k) == v for k, v in match.items()):
            return float(r["tokens_per_s"])
    raise XtlError(f"no bench row for {shape}/{method}/{quant}" + (f"/seq {seq}" if seq else ""), where="bench results",
                   fix="run `xtl bench` with that shape, method and quantization")
