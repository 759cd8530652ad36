"""`xtl bench`: what a training step of a task module costs on this machine (CPU or CUDA).

Sections (each a function here; `cli_bench.py` only parses flags and prints):
- `measure_peak_flops`: the device's measured matmul peak (a timed large matmul; fp32 on CPU,
  bf16 on CUDA, the dtype our trainer computes in), the denominator of MFU.
- the grid (`expand_grid` + `run_configs`): per backbone shape x method x quantization x sequence
  length (x the memory/speed measures of `compress.py`): step time, samples/s, tokens/s, counted
  FLOPs and MFU, peak memory, trainable parameters, module size on disk. Every configuration runs
  in its own subprocess (`python -m adapters_xtl.bench --worker`) so peak memory does not
  accumulate across configurations.
- `memory_configs` / `speed_configs`: presets, one measure at a time against a baseline.
- `padding_report`: padding waste of length-bucketed vs random batches on real length
  distributions.
- `peer_compare`: the same LoRA training through our trainer and through the plain
  peft + transformers `Trainer` script a user would write.
- `project_grid`: hours for a grid of trainings from a measured throughput.

Backbone shapes: `e5-small` is the real xlmr-e5-small; `base` and `large` are XLM-R base/large
*shapes* with random weights (no download): built once with `XLMRobertaConfig`, saved as
safetensors with the XLM-R tokenizer into `$XTL_CACHE/bench-shapes/`, and loaded through
`load_backbone`, so 8-bit/4-bit go through exactly the bitsandbytes path real backbones take.
Any other name `load_backbone` accepts (a folder, a Hub id) works too.

The FLOP count is analytic (`count_step_flops`); see docs/benchmarks.md for the formula.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from pydantic import BaseModel, ConfigDict

from .errors import XtlError, did_you_mean

SCHEMA_VERSION = 1

# hidden, layers, heads, FFN (XLM-R base and large); vocabulary and positions as the real models
RANDOM_SHAPES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
REAL_SHAPES = {"e5-small": "xlmr-e5-small"}
SHAPES = tuple(REAL_SHAPES) + tuple(RANDOM_SHAPES)
_SHAPE_FOLDER_VERSION = "v1"

# where each method puts trainable weights inside an encoder layer (see count_step_flops)
POINTS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


class BenchConfig(BaseModel):
    """One measured configuration (also the message a worker subprocess receives)."""

    model_config = ConfigDict(extra="forbid")

    shape: str = "e5-small"
    method: str = "lora"
    quant: str = "none"
    seq: int = 128
    batch: int = 16
    steps: int = 3  # measured optimizer steps
    warmup: int = 1  # steps run before timing (lazy init, bnb repacking, compilation)
    grad_ckpt: bool = False
    optimizer: str = "adamw"
    embeddings: str = "full"
    attn: str = "sdpa"
    compile: bool = False
    method_config: dict[str, Any] = {}
    device: str | None = None
    seed: int = 0
    label: str = ""  # preset rows: which measure this row shows
    peak_flops: float | None = None  # filled by the parent from measure_peak_flops
    trim_texts: list[str] | None = None  # trimming corpus; None = the demo data (7 languages)

    def key(self) -> str:
        extras = [k for k, on in (("ckpt", self.grad_ckpt), ("compile", self.compile)) if on]
        if self.optimizer != "adamw":
            extras.append(self.optimizer)
        if self.embeddings != "full":
            extras.append(f"emb:{self.embeddings}")
        if self.attn != "sdpa":
            extras.append(f"attn:{self.attn}")
        return "/".join([self.shape, self.method, self.quant, f"b{self.batch}xs{self.seq}"] + extras)


# ---------------------------------------------------------------------------------------- memory
def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    v = _proc_status("VmRSS")
    if v is not None:
        return v
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # best effort off Linux


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM; resettable with `reset_peak_rss`)."""
    v = _proc_status("VmHWM")
    if v is not None:
        return v
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory over a window: CUDA max allocated, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"
        self.scope = "window"

    def current(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return rss_bytes()

    def start(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not reset_peak_rss():
            self.scope = "process"  # could not reset: the peak covers the whole process
        return self.current()

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return peak_rss_bytes()


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
    """Best observed FLOP/s of a square matmul: fp32 on CPU, bf16 (fp16 without bf16) on CUDA."""
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
    reps = max(1, min(50, int(0.25 / one)))  # ~0.25 s per timed chunk
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


# ------------------------------------------------------------------------------------ FLOP count
def trainable_points(method: str, method_config: dict | None = None) -> set[str]:
    """Which sites of every encoder layer hold trainable weights for a method."""
    cfg = method_config or {}
    if method == "lora":
        from .methods.lora import LoraSettings

        targets = cfg.get("target_modules", LoraSettings().target_modules)
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
    if method == "bottleneck":
        # seq_bn (Pfeiffer): one adapter after the FFN output; double_seq_bn (Houlsby): also after attention
        return {"attn_out", "ffn_out"} if cfg.get("variant") == "double_seq_bn" else {"ffn_out"}
    return set(POINTS)  # unknown method: assume every site (upper bound)


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


# -------------------------------------------------------------------------------------- shapes
def shape_source(shape: str) -> str:
    """What `load_backbone` gets for a bench shape (random shapes are materialized on first use)."""
    if shape in REAL_SHAPES:
        return REAL_SHAPES[shape]
    if shape in RANDOM_SHAPES:
        return str(materialize_random_shape(shape))
    p = Path(shape).expanduser()
    if p.is_dir() or "/" in shape or shape.startswith("xlm-roberta"):
        return shape
    raise XtlError(f"unknown bench shape {shape!r}", where="--shapes",
                   fix=did_you_mean(shape, SHAPES) + ", or a backbone folder / Hub id")


def materialize_random_shape(shape: str, cache_dir: Path | None = None) -> Path:
    """XLM-R base/large *shape* with random weights (seed 0) as a from_pretrained folder, once."""
    from filelock import FileLock

    from .embedded import build_e5_small, default_cache_dir

    root = (cache_dir or default_cache_dir()) / "bench-shapes"
    folder = root / f"xlmr-{shape}-random-{_SHAPE_FOLDER_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{folder.name}.lock")):
        if (folder / "xtl_build.json").exists():
            return folder
        from transformers import XLMRobertaConfig, XLMRobertaModel

        e5 = build_e5_small()  # the real XLM-R tokenizer (250,002 pieces)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=root))
        try:
            cfg = XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1,
                                   pad_token_id=1, bos_token_id=0, eos_token_id=2, **RANDOM_SHAPES[shape])
            torch.manual_seed(0)
            XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(tmp, safe_serialization=True)
            for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (e5 / f).exists():
                    shutil.copy(e5 / f, tmp / f)
            (tmp / "xtl_build.json").write_text(json.dumps({
                "id": f"xlmr-{shape}-random", "folder_format": folder.name,
                # identifies the weights without hashing GBs: seed-0 init of this config
                "weights_sha256": f"random-init-{_SHAPE_FOLDER_VERSION}:{shape}:seed0",
                "note": "random weights in the XLM-R shape, for benchmarks only",
            }, indent=2))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------------- demo texts
def demo_texts() -> list[str]:
    """Every text of the bundled demo data (English train/dev, 7 test languages)."""
    import csv

    root = Path(__file__).parent / "demo_data"
    out = []
    for f in sorted(root.glob("*/*.tsv")):
        with open(f, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                out.extend(v for k, v in row.items() if k not in ("id", "label") and v)
    return out


# -------------------------------------------------------------------------------- one config
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

    from .backbone import load_backbone, pick_device
    from .compress import apply_embeddings, embedding_bytes, enable_gradient_checkpointing, make_optimizer
    from .compress import optimizer_state_bytes, parse_embeddings_mode
    from .methods import get_method
    from .model import TaskModel, attach_new, join_weights
    from .tasks import get_task

    dev = pick_device(cfg.device)
    rec: dict[str, Any] = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops"})}
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
    method = get_method(cfg.method)
    mcfg = attach_new(bb, cfg.method, cfg.method_config, "xtl_bench")
    method.activate(bb, ["xtl_bench"], trainable=["xtl_bench"])
    if cfg.grad_ckpt:
        enable_gradient_checkpointing(bb)
    spec = get_task("demo-topic")  # a classification head (5 labels); the data are synthetic
    model = TaskModel(bb, spec)
    fmt = model.format
    trainable = {f"module.{n}": p for n, p in method.named_parameters(bb, "xtl_bench").items()}
    trainable.update({f"head.{n}": p for n, p in model.head.named_parameters()})
    for p in trainable.values():
        p.requires_grad_(True)
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
    use_bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    fwd = torch.compile(model) if cfg.compile else model

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step(i: int) -> torch.Tensor:
        b = batches[i % len(batches)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = fwd(b)
        loss = fmt.loss(out, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    _release_memory(dev)  # transient copies of loading/trimming/quantizing go back to the OS first
    mem_loaded = meter.start()  # the training window starts here (weights already resident)
    sync()
    t = time.perf_counter()
    losses = []
    for i in range(cfg.warmup):
        losses.append(step(i))
    sync()
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(cfg.warmup, cfg.warmup + cfg.steps):
        losses.append(step(i))
    sync()
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
    rec.update({
        "status": "ok" if all(math.isfinite(x) for x in loss_vals) else "error: non-finite loss",
        "dims": {"hidden": int(mc.hidden_size), "layers": int(mc.num_hidden_layers), "heads": int(mc.num_attention_heads),
                 "ffn": int(mc.intermediate_size), "vocab": vocab, "full_vocab": full_vocab},
        "attn_impl": getattr(bb.model.config, "_attn_implementation", None),
        "load_s": load_s,
        "warmup_s": warm_s,
        "step_s": step_s,
        "samples_per_s": cfg.batch / step_s,
        "tokens_per_s": real_tokens / step_s,
        "real_tokens_per_step": real_tokens,
        "flops_per_step": flops["total"],
        "flops_breakdown": flops,
        "achieved_flops": achieved,
        "peak_flops": cfg.peak_flops,
        "mfu": (achieved / cfg.peak_flops) if cfg.peak_flops else None,
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
    base = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops"})}
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
        rec = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops"}), "status": f"oom: {str(e)[:200]}"}
    except XtlError as e:
        rec = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops"}), "status": f"error: {e}"}
    except Exception as e:  # recorded, not raised: one broken configuration must not end a grid
        rec = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops"}),
               "status": f"error: {type(e).__name__}: {str(e)[:300]}"}
    tmp = out_path + ".tmp"
    Path(tmp).write_text(json.dumps(rec, default=str))
    os.replace(tmp, out_path)
    return 0


# ------------------------------------------------------------------------------------ grids
def default_axes(device: torch.device) -> dict:
    """Defaults: a few minutes on a small CPU; the full grid on a GPU."""
    if device.type == "cuda":
        return dict(shapes=["e5-small", "base", "large"], methods=["lora", "bottleneck"], quant=["none", "8bit", "4bit"],
                    seq=[128, 256, 384], batch=32, steps=10, warmup=2)
    return dict(shapes=["e5-small"], methods=["lora", "bottleneck"], quant=["none"], seq=[128], batch=8, steps=3, warmup=1)


def expand_grid(*, shapes: list[str], methods: list[str], quant: list[str], seq: list[int], batch: int, steps: int,
                warmup: int = 1, grad_ckpt: list[bool] = (False,), optimizer: list[str] = ("adamw",),
                embeddings: list[str] = ("full",), attn: list[str] = ("sdpa",), compile: list[bool] = (False,),
                device: str | None = None, method_config: dict | None = None) -> list[BenchConfig]:
    from .backbone import QUANTIZATIONS
    from .compress import OPTIMIZERS, parse_embeddings_mode
    from .methods import method_names

    for m in methods:
        if m not in method_names():
            raise XtlError(f"unknown method {m!r}", where="--methods", fix=did_you_mean(m, method_names()))
    for q in quant:
        if q not in QUANTIZATIONS:
            raise XtlError(f"unknown quantization {q!r}", where="--quant", fix=did_you_mean(q, QUANTIZATIONS))
    for o in optimizer:
        if o not in OPTIMIZERS:
            raise XtlError(f"unknown optimizer {o!r}", where="--optimizer", fix=did_you_mean(o, OPTIMIZERS))
    for e in embeddings:
        parse_embeddings_mode(e)
    out = []
    for sh in shapes:
        for m in methods:
            for q in quant:
                for s in seq:
                    for gc in grad_ckpt:
                        for o in optimizer:
                            for e in embeddings:
                                for a in attn:
                                    for c in compile:
                                        out.append(BenchConfig(shape=sh, method=m, quant=q, seq=s, batch=batch, steps=steps,
                                                               warmup=warmup, grad_ckpt=gc, optimizer=o, embeddings=e,
                                                               attn=a, compile=c, device=device,
                                                               method_config=method_config or {}))
    return out


def memory_configs(device: torch.device, *, shape: str = "large", method: str = "lora", batch: int = 32, seq: int = 128,
                   steps: int = 3, warmup: int = 1) -> list[BenchConfig]:
    """Baseline, each memory measure alone, and all together (XLM-R large + LoRA, 32 x 128)."""
    base = dict(shape=shape, method=method, batch=batch, seq=seq, steps=steps, warmup=warmup, device=str(device))
    cuda = device.type == "cuda"
    rows = [
        ("baseline", {}),
        ("gradient checkpointing", {"grad_ckpt": True}),
        ("8-bit AdamW", {"optimizer": "adamw8bit"}),
        ("paged 8-bit AdamW", {"optimizer": "paged_adamw8bit"}),
        ("trimmed vocabulary", {"embeddings": "trimmed"}),
        ("8-bit embeddings", {"embeddings": "8bit"}),
        ("4-bit embeddings", {"embeddings": "4bit"}),
        ("8-bit backbone", {"quant": "8bit"}),
        ("4-bit backbone", {"quant": "4bit"}),
        ("all: 4-bit + trimmed 4-bit embeddings + checkpointing + 8-bit optimizer",
         {"quant": "4bit", "embeddings": "trimmed+4bit", "grad_ckpt": True,
          "optimizer": "paged_adamw8bit" if cuda else "adamw8bit"}),
    ]
    return [BenchConfig(**base, **over, label=label) for label, over in rows]


def speed_configs(device: torch.device, *, shape: str = "e5-small", method: str = "lora", batch: int = 16, seq: int = 128,
                  steps: int = 3, warmup: int = 2) -> list[BenchConfig]:
    """SDPA (what load_backbone gets by default) vs eager attention, and torch.compile."""
    base = dict(shape=shape, method=method, batch=batch, seq=seq, steps=steps, warmup=warmup, device=str(device))
    rows = [("sdpa (default)", {}), ("eager attention", {"attn": "eager"}), ("sdpa + torch.compile", {"compile": True})]
    return [BenchConfig(**base, **over, label=label) for label, over in rows]


def run_configs(configs: list[BenchConfig], *, peak_flops: float | None, isolated: bool = True,
                timeout: float | None = None, on_result: Callable[[dict], None] | None = None) -> list[dict]:
    out = []
    for cfg in configs:
        cfg = cfg.model_copy(update={"peak_flops": peak_flops})
        if cfg.shape in RANDOM_SHAPES:
            materialize_random_shape(cfg.shape)  # once, here, not raced by workers
        if isolated:
            rec = run_isolated(cfg, timeout=timeout)
        else:
            try:
                rec = run_config(cfg)
            except XtlError as e:
                rec = {"key": cfg.key(), **cfg.model_dump(exclude={"trim_texts", "peak_flops"}), "status": f"error: {e}"}
            rec["mem_scope"] = "in-process (peaks may include earlier configurations)"
        out.append(rec)
        remember_throughput(cfg, rec)
        if on_result:
            on_result(rec)
    return out


# the backbones whose training speed a shape stands for (the planner prices recipes by name)
SHAPE_BACKBONES = {"e5-small": "xlmr-e5-small", "base": "xlm-roberta-base", "large": "xlm-roberta-large"}


def remember_throughput(cfg: BenchConfig, rec: dict) -> None:
    """A plain configuration (no memory or speed measure switched on) measures how fast this
    device trains that backbone: record it where `xtl run --dry-run` prices plans
    (throughput.py), so the paper grid's estimate on this machine uses the measured speed of the
    XLM-R large shape instead of a guessed MFU. FLOPs per step use the planner's own count
    (4 x non-embedding parameters x tokens), so its FLOP/s are comparable."""
    from . import throughput
    from .runner import NON_EMBEDDING_PARAMS

    name = SHAPE_BACKBONES.get(cfg.shape)
    plain = (not cfg.grad_ckpt and cfg.optimizer == "adamw" and cfg.embeddings == "full" and cfg.attn == "sdpa"
             and not cfg.compile and not cfg.method_config
             and cfg.warmup >= 1)  # an unwarmed first step carries one-time costs (allocation, bnb repacking)
    if not name or not plain or rec.get("status") != "ok" or not rec.get("step_s"):
        return
    tokens = cfg.batch * cfg.seq
    try:
        throughput.record({"backbone": name, "quantization": cfg.quant, "method": cfg.method,
                           "device": torch.device(cfg.device or "cpu").type,
                           "task": f"bench:b{cfg.batch}xs{cfg.seq}", "batch_size": cfg.batch, "steps": cfg.steps,
                           "seconds_per_step": rec["step_s"], "tokens_per_step": tokens,
                           "flops_per_step": 4.0 * NON_EMBEDDING_PARAMS[name] * tokens, "source": "xtl bench"})
    except OSError:
        pass


# ------------------------------------------------------------------------------------ padding
def _shared_length_sources(data_dir: Path | None) -> list[tuple[str, Callable[[], list]]]:
    """(name, loader) of real English training text; loaders return texts or (text, pair) tuples."""
    import csv

    from .tasks import default_data_dir

    root = Path(data_dir) if data_dir else default_data_dir()

    def tsv(path: Path, cols: list[int], header: bool, limit: int = 20000):
        def load():
            rows = []
            with open(path, newline="", encoding="utf-8") as f:
                r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                if header:
                    next(r, None)
                for row in r:
                    if len(row) > max(cols):
                        rows.append(tuple(row[c] for c in cols) if len(cols) > 1 else row[cols[0]])
                    if len(rows) >= limit:
                        break
            return rows
        return load

    out = []
    for name, rel, cols, header in (("sst2 train", "sst2/train.tsv", [0], True),
                                    ("xnli dev en (pairs)", "xnli/dev-en.tsv", [0, 1], False),
                                    ("paws-x dev en (pairs)", "paws-x/dev-en.tsv", [0, 1], False)):
        if (root / rel).exists():
            out.append((name, tsv(root / rel, cols, header)))
    return out


def padding_report(tokenizer, *, batch_sizes: Iterable[int] = (16, 32), max_length: int = 128, seed: int = 0,
                   data_dir: Path | None = None, include_shared: bool = True) -> list[dict]:
    """Padding waste on real length distributions: random batches (what `DataCollatorWithPadding`
    over a shuffled set gives), our length-bucketed batches, and padding every row to max_length."""
    from .data import load_examples
    from .formats.base import length_bucketed_batches, padding_waste
    from .tasks import get_task

    from .data import source_path

    sources: list[tuple[str, Callable[[], list]]] = []
    for task in ("demo-sentiment", "demo-nli", "demo-topic", "sib200"):
        def load(task=task):
            spec = get_task(task)
            src = spec.source_for("train")
            path = source_path(src, spec, spec.train_language, data_dir) if src.path else None
            if path is None or not path.exists():  # local data only: this report never reaches the Hub
                raise FileNotFoundError(f"no local file {path}")
            ex = load_examples(spec, "train", spec.train_language, data_dir)
            if "text_pair" in spec.columns:
                return [(e["text"], e.get("text_pair") or "") for e in ex]
            return [e["text"] for e in ex]
        sources.append((f"{task} train (en)", load))
    if include_shared:
        sources += _shared_length_sources(data_dir)
    rows = []
    for name, load in sources:
        try:
            items = load()
        except Exception as e:  # missing local data: reported, not fatal
            rows.append({"data": name, "status": f"skipped: {str(e).splitlines()[0][:120]}"})
            continue
        if not items:
            continue
        if isinstance(items[0], tuple):
            enc = tokenizer([a for a, _ in items], [b for _, b in items], truncation=True, max_length=max_length)
        else:
            enc = tokenizer(list(items), truncation=True, max_length=max_length)
        lengths = [len(x) for x in enc["input_ids"]]
        srt = sorted(lengths)
        row = {"data": name, "status": "ok", "examples": len(lengths), "mean_len": sum(lengths) / len(lengths),
               "p50_len": srt[len(srt) // 2], "p95_len": srt[min(len(srt) - 1, int(0.95 * len(srt)))], "max_len": srt[-1],
               "max_length": max_length}
        rng = random.Random(seed)
        for b in batch_sizes:
            idx = list(range(len(lengths)))
            rng.shuffle(idx)
            rand = [idx[i:i + b] for i in range(0, len(idx), b)]
            row[f"waste_random_b{b}"] = padding_waste(lengths, rand)
            row[f"waste_bucketed_b{b}"] = padding_waste(lengths, length_bucketed_batches(lengths, b, seed=seed))
        row["waste_pad_to_max"] = 1.0 - sum(lengths) / (max_length * len(lengths))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- embeddings
def embedding_report(backbone: str = "xlmr-e5-small", *, texts: list[str] | None = None, device: str | None = None,
                     rows: int = 20000) -> dict:
    """What the embedding measures cost in accuracy and save in bytes, on a real backbone.

    quantization: row error of the quantized matrix (a sample of `rows` rows) and the error of
    mean-pooled last hidden states on `texts` (default: the demo data, 7 languages) against the
    full-precision backbone; trimming: rows kept for `texts` and the bytes saved."""
    from .backbone import load_backbone
    from .compress import embedding_bytes, embedding_quantization_error, quantize_embeddings, trim_vocabulary
    from .formats.base import pool

    texts = texts if texts is not None else demo_texts()

    def pooled(bb) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                enc = bb.tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
                enc = {k: v.to(bb.device) for k, v in enc.items()}
                h = bb.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                outs.append(pool(h.float(), enc["attention_mask"], "mean").cpu())
        return torch.cat(outs)

    full = load_backbone(backbone, "none", device)
    ref = pooled(full)
    out: dict[str, Any] = {"backbone": backbone, "texts": len(texts), "full_bytes": embedding_bytes(full),
                           "vocab": int(full.model.get_input_embeddings().num_embeddings), "quantized": []}
    w = full.model.get_input_embeddings().weight
    for bits in (8, 4):
        row = embedding_quantization_error(w, bits, rows=rows)
        bb = load_backbone(backbone, "none", device)
        sizes = quantize_embeddings(bb, bits)
        got = pooled(bb)
        cos = torch.nn.functional.cosine_similarity(got, ref, dim=1)
        row.update({"bytes": sizes["bytes_after"], "pooled_rel_error": float((got - ref).norm() / ref.norm()),
                    "pooled_min_cosine": float(cos.min()), "pooled_mean_cosine": float(cos.mean())})
        out["quantized"].append(row)
        del bb
    tb = trim_vocabulary(load_backbone(backbone, "none", device), texts)
    got = pooled(tb)
    out["trimmed"] = {"rows_kept": tb.vocab_size, "bytes": embedding_bytes(tb), "coverage": tb.coverage(texts),
                      "pooled_max_abs_diff": float((got - ref).abs().max())}
    return out


# ------------------------------------------------------------------------------------ the peer
def _peer_imports() -> None:
    try:
        import accelerate  # noqa: F401  (Trainer needs it)
    except Exception as e:
        raise XtlError(f"the peer comparison needs accelerate ({e})", where="--peer", fix="pip install 'accelerate>=1.0'") from e
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers.trainer  # noqa: F401

    from . import train  # noqa: F401
    from .formats import get_format

    get_format("classification")


def _release_memory(dev: torch.device) -> None:
    """Give freed memory back (CUDA cache; glibc's heap via malloc_trim) before the next side."""
    import ctypes
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def peer_compare(backbone: str = "xlmr-e5-small", *, steps: int = 30, batch: int = 16, lr: float = 2e-3, seed: int = 42,
                 device: str | None = None, r: int = 8, alpha: int = 16, dropout: float = 0.1,
                 progress: Callable[[str], None] | None = None, task: str = "demo-topic",
                 data_dir: Path | None = None) -> dict:
    """The same LoRA training (backbone, demo-topic data, batch, max length, lr, steps, LoRA r/alpha/
    dropout/targets) through our trainer and through a plain peft + transformers `Trainer` script,
    in this process, one after the other. Throughput is timed from the end of the first step to the
    end of the last on both sides; peak memory is reset before each side (CUDA max allocated; on
    CPU the peak RSS, also given as the increase over the RSS at the start of that side).
    Each side keeps its own defaults otherwise (ours: warmup 10%, weight decay 0.01, length
    buckets, bf16 autocast on CUDA; Trainer: no warmup, no weight decay, random batches, fp32)."""
    from .backbone import load_backbone, pick_device, resolve_backbone
    from .data import load_examples
    from .formats.base import padding_waste
    from .methods import get_method
    from .model import TaskModel, attach_new
    from .tasks import get_task
    from .train import TrainConfig, train

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
    _release_memory(dev)
    start_mem = meter.start()
    t_load = time.perf_counter()
    bb = load_backbone(backbone, "none", str(dev))
    attach_new(bb, "lora", {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets}, "xtl_peer")
    lora = get_method("lora")
    lora.activate(bb, ["xtl_peer"], trainable=["xtl_peer"])
    model = TaskModel(bb, spec)
    fmt = model.format
    torch.manual_seed(seed)
    feats = fmt.encode(train_ex, spec, bb.tokenizer, train=True)
    dev_feats = fmt.encode(dev_ex, spec, bb.tokenizer, train=False)
    trainable = {f"module.{n}": p for n, p in lora.named_parameters(bb, "xtl_peer").items()}
    trainable.update({f"head.{n}": p for n, p in model.head.named_parameters()})
    for p in trainable.values():
        p.requires_grad_(True)
    load_s = time.perf_counter() - t_load
    marks: dict[int, float] = {}

    def on_step(done: int) -> None:
        sync()
        marks[done] = time.perf_counter()

    cfg = TrainConfig(steps=steps, batch_size=batch, lr=lr, eval_every=10**9, log_every=steps, seed=seed)
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
    _release_memory(dev)

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
    _release_memory(dev)
    return {
        "backbone": backbone, "device": device_name(dev), "task": spec.name, "train_examples": len(train_ex),
        "dev_examples": len(dev_ex), "steps": steps, "batch": batch, "lr": lr, "max_length": spec.max_length,
        "lora": {"r": r, "alpha": alpha, "dropout": dropout, "targets": targets}, "mem_kind": meter.kind,
        "ours": ours, "peer": peer,
        "speedup_samples_per_s": ours["samples_per_s"] / peer["samples_per_s"],
        "peak_mem_ratio": ours["peak_mem_bytes"] / peer["peak_mem_bytes"] if peer["peak_mem_bytes"] else None,
        "mem_increase_ratio": (ours["mem_increase_bytes"] / peer["mem_increase_bytes"]
                               if peer["mem_increase_bytes"] > 0 else None),
        "note": "peer padding waste is that of random batches of the same size (its sampler's order is not replayed)",
    }


# ------------------------------------------------------------------------------- grid economics
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
    """tokens/s of the matching bench row (a bench JSON dict or its `grid` list); the hook the grid
    runner's `--dry-run` uses to turn a plan into hours."""
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


# ------------------------------------------------------------------------------------ the report
def bench_meta(device: torch.device, peak: dict | None) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "peft", "adapters", "bitsandbytes"):
        try:
            versions[pkg] = md.version(pkg)
        except Exception:
            versions[pkg] = None
    return {"schema": SCHEMA_VERSION, "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "device": device_name(device), "device_type": device.type, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "versions": versions, "peak": peak}


def write_json(path: Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    print("usage: python -m adapters_xtl.bench --worker CONFIG.json RESULT.json (use `xtl bench`)", file=sys.stderr)
    sys.exit(2)
