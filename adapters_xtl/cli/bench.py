"""`xtl bench`: flags in, rich tables and a JSON file out. The measuring lives in the `bench`
package, the FLOP count and the matmul peak in cost.py.

Registered in cli.py with `app.command()(bench)`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import XtlError

# piped into a log, rich would wrap the wide tables at 80 columns
console = Console(width=None if sys.stdout.isatty() else 200)


def _list(s: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def _bools(s: str, where: str) -> list[bool]:
    out = []
    for x in _list(s) or []:
        if x.lower() in ("on", "true", "yes", "1"):
            out.append(True)
        elif x.lower() in ("off", "false", "no", "0"):
            out.append(False)
        else:
            raise XtlError(f"{x!r} is not on/off", where=where, fix="e.g. off,on")
    return out or [False]


def _ints(s: str, where: str) -> list[int]:
    try:
        out = [int(x) for x in _list(s) or []]
    except ValueError:
        raise XtlError(f"{s!r} is not a list of integers", where=where, fix="e.g. 128,256,384") from None
    for n in out:
        if n < 1:
            raise XtlError(f"{s!r} has {n}: every entry must be at least 1", where=where, fix="e.g. 128,256,384")
    return out


def _dropouts(s: Optional[str], where: str) -> list[Optional[float]]:
    """`built,0,0.05` -> [None, 0.0, 0.05] (`built`: the backbone's / method's own dropout)."""
    out: list[Optional[float]] = []
    for x in _list(s) or []:
        if x.lower() in ("built", "default", "none"):
            out.append(None)
            continue
        try:
            v = float(x)
        except ValueError:
            raise XtlError(f"{x!r} is not a dropout probability", where=where, fix="e.g. built,0 or 0.1") from None
        if not 0 <= v < 1:
            raise XtlError(f"dropout {x} is not in [0, 1)", where=where, fix="e.g. built,0 or 0.1")
        out.append(v)
    return out


def check_bench_options(*, shapes, methods, quant, seq, batch, steps, warmup, grad_ckpt, optimizer, embeddings, attn,
                        compile, backbone, peer_steps, peer_batch, peer_task, peak_size, peak_flops, timeout, json_path,
                        data_dir, device, peer, emb, padding, all_sections, precision=None, backbone_dropout=None,
                        module_dropout=None, peer_embeddings="full") -> None:
    """Every flag of `xtl bench`, before the matmul peak is measured or a configuration runs: a
    typo in the last axis must not cost the minutes the first ones take."""
    from .. import checks
    from ..backbone import QUANTIZATIONS
    from ..bench import SHAPES
    from ..compress import OPTIMIZERS, parse_embeddings_mode
    from ..errors import did_you_mean
    from ..methods import method_names

    checks.device(device)
    for n, where in ((batch, "--batch"), (steps, "--steps"), (peak_size, "--peak-size"), (peer_steps, "--peer-steps"),
                     (peer_batch, "--peer-batch")):
        checks.at_least(n, 1, where)
    checks.at_least(warmup, 0, "--warmup")
    checks.positive_number(timeout, "--timeout", fix="seconds per configuration, e.g. 600")
    checks.positive_number(peak_flops, "--peak-flops", fix="the device's peak FLOP/s, e.g. 1e14, or leave it out to measure")
    if seq:
        _ints(seq, "--seq")
    _bools(grad_ckpt, "--grad-ckpt")
    _bools(compile, "--compile")
    for m in _list(methods) or []:
        if m not in method_names():
            raise XtlError(f"unknown method {m!r}", where="--methods", fix=did_you_mean(m, method_names()))
    for q in _list(quant) or []:
        if q not in QUANTIZATIONS:
            raise XtlError(f"unknown quantization {q!r}", where="--quant", fix=did_you_mean(q, QUANTIZATIONS))
    for o in _list(optimizer) or []:
        if o not in OPTIMIZERS:
            raise XtlError(f"unknown optimizer {o!r}", where="--optimizer", fix=did_you_mean(o, OPTIMIZERS))
    for e in _list(embeddings) or []:
        try:
            parse_embeddings_mode(e)
        except XtlError as err:
            raise XtlError(checks.message_of(err), where="--embeddings", fix=err.fix) from None
    from ..speed import PRECISIONS

    for pr in _list(precision) or []:
        if pr not in PRECISIONS:
            raise XtlError(f"unknown precision {pr!r}", where="--precision", fix=did_you_mean(pr, PRECISIONS))
    _dropouts(backbone_dropout, "--backbone-dropout")
    _dropouts(module_dropout, "--module-dropout")
    try:
        parse_embeddings_mode(peer_embeddings)
    except XtlError as err:
        raise XtlError(checks.message_of(err), where="--peer-embeddings", fix=err.fix) from None
    for a in _list(attn) or []:
        if a not in ("sdpa", "eager"):
            raise XtlError(f"unknown attention {a!r}", where="--attn", fix="sdpa | eager")
    for sh in _list(shapes) or []:
        if sh not in SHAPES and not Path(sh).expanduser().is_dir() and "/" not in sh and not sh.startswith("xlm-roberta"):
            raise XtlError(f"unknown bench shape {sh!r}", where="--shapes",
                           fix=did_you_mean(sh, SHAPES) + ", or a backbone folder / Hub id")
    if peer or emb or all_sections:
        checks.backbone(backbone, "--backbone")
    if peer or all_sections:
        from ..tasks import get_task

        get_task(peer_task)
    if padding or all_sections:
        checks.input_dir(data_dir, "--data-dir")
    checks.output_file(json_path, "--json")


def _gib(n) -> str:
    return f"{n / 2**30:.2f} GiB" if isinstance(n, (int, float)) else ""


def _size(n) -> str:
    if not isinstance(n, (int, float)):
        return ""
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} B"


def _num(x, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else ""


def results_table(title: str, rows: list[dict], *, label: bool = False) -> Table:
    """One row per configuration; `config` is shape/method/quant/batch x seq/extras (BenchConfig.key)."""
    t = Table(title=title)
    cols = (["measure"] if label else []) + ["config", "step s", "samples/s", "tokens/s", "TFLOP/s", "MFU", "peak mem",
                                             "trainable", "module", "status"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("measure", "config", "status") else "right",
                     overflow="fold" if c in ("measure", "config", "status") else "ellipsis",
                     no_wrap=c not in ("measure", "config", "status"))
    for r in rows:
        ok = r.get("status") == "ok"
        vals = [r.get("key", ""), _num(r.get("step_s"), ".3f"), _num(r.get("samples_per_s"), ".2f"),
                _num(r.get("tokens_per_s"), ",.0f"), _num((r.get("achieved_flops") or 0) / 1e12, ".3f") if ok else "",
                f"{100 * r['mfu']:.1f}%" if ok and r.get("mfu") is not None else "",
                _gib(r.get("peak_mem_bytes")), _num(r.get("trainable_params"), ","), _size(r.get("module_bytes")),
                "ok" if ok else f"[yellow]{r.get('status', '')[:80]}"]
        t.add_row(*(([r.get("label", "")] if label else []) + vals))
    return t


def padding_table(rows: list[dict]) -> Table:
    t = Table(title="padding waste (share of processed positions that are padding)")
    keys = sorted({k for r in rows for k in r if k.startswith("waste_")})
    for c in ["data", "examples", "mean len", "p95", "max"] + [k.replace("waste_", "") for k in keys]:
        t.add_column(c, justify="left" if c == "data" else "right")
    for r in rows:
        if r.get("status") != "ok":
            t.add_row(r["data"], "", "", "", "", *([""] * len(keys)))
            continue
        t.add_row(r["data"], str(r["examples"]), f"{r['mean_len']:.1f}", str(r["p95_len"]), str(r["max_len"]),
                  *(f"{100 * r[k]:.1f}%" for k in keys))
    return t


def embeddings_table(e: dict) -> Table:
    t = Table(title=f"word embeddings of {e['backbone']} ({e['vocab']:,} rows, {_size(e['full_bytes'])}); "
                    f"pooled outputs on {e['texts']} demo texts vs full precision")
    for c in ("embeddings", "size", "row rel. error", "row mean cos", "pooled rel. error", "pooled min cos"):
        t.add_column(c, justify="left" if c == "embeddings" else "right")
    for q in e["quantized"]:
        t.add_row(f"{q['bits']}-bit ({q['quant_type']})", _size(q["bytes"]), f"{q['rel_error']:.4f}",
                  f"{q['mean_cosine']:.5f}", f"{q['pooled_rel_error']:.4f}", f"{q['pooled_min_cosine']:.5f}")
    tr = e["trimmed"]
    t.add_row(f"trimmed ({tr['rows_kept']:,} rows kept, coverage {100 * tr['coverage']:.0f}%)", _size(tr["bytes"]),
              "0", "1", f"max |diff| {tr['pooled_max_abs_diff']:.1e}", "")
    return t


def peer_table(p: dict) -> Table:
    t = Table(title=f"LoRA on {p['backbone']}, {p.get('task', 'demo-topic')}, {p['steps']} steps x batch {p['batch']} ({p['device']})")
    for c in ("", "samples/s", "peak mem", "mem increase", "dev accuracy", "padding waste", "trainable"):
        t.add_column(c, justify="left" if not c else "right")
    for side, name in (("ours", "adapters_xtl.trainer"), ("peer", "peft + Trainer")):
        s = p[side]
        t.add_row(name, f"{s['samples_per_s']:.2f}", _gib(s["peak_mem_bytes"]), _gib(s["mem_increase_bytes"]),
                  f"{s['dev_accuracy']:.1f}", f"{100 * s['padding_waste']:.1f}%", f"{s['trainable_params']:,}")
    mr = p.get("mem_increase_ratio")
    t.add_row("[bold]ours / peer", f"{p['speedup_samples_per_s']:.2f}x", f"{p['peak_mem_ratio']:.2f}x",
              f"{mr:.2f}x" if mr else "", "", "", "")
    return t


def bench(
    shapes: Optional[str] = typer.Option(None, help="e5-small,base,large (base/large: random weights in the XLM-R "
                                                    "shape) or backbone folders; default: e5-small on CPU, all on GPU"),
    methods: str = typer.Option("lora,bottleneck", help="lora,bottleneck"),
    quant: Optional[str] = typer.Option(None, help="none,8bit,4bit (default: none on CPU, all three on GPU)"),
    seq: Optional[str] = typer.Option(None, help="sequence lengths, e.g. 128,256,384 (default 128 on CPU, all three on GPU)"),
    batch: Optional[int] = typer.Option(None, help="batch size (default 8 on CPU, 32 on GPU)"),
    steps: Optional[int] = typer.Option(None, help="measured steps per configuration (default 3 on CPU, 10 on GPU)"),
    warmup: Optional[int] = typer.Option(None, help="untimed steps first (default 1 on CPU, 2 on GPU)"),
    grad_ckpt: str = typer.Option("off", help="gradient checkpointing: off | on | off,on"),
    optimizer: str = typer.Option("adamw", help="adamw,adamw8bit,paged_adamw8bit"),
    embeddings: str = typer.Option("full", help="full,trimmed,8bit,4bit,trimmed+8bit,trimmed+4bit"),
    attn: str = typer.Option("sdpa", help="sdpa,eager"),
    compile: str = typer.Option("off", help="torch.compile: off | on | off,on"),
    precision: Optional[str] = typer.Option(None, help="fp32,bf16,auto (default: the trainer's, auto)"),
    backbone_dropout: Optional[str] = typer.Option(None, help="frozen backbone's dropout while training: built,0,... "
                                                              "(default: the trainer's)"),
    module_dropout: Optional[str] = typer.Option(None, help="trained module's dropout: built,0,... (default: the trainer's)"),
    grid: bool = typer.Option(False, "--grid", help="run the grid even when a section flag is given"),
    memory: bool = typer.Option(False, "--memory", help="memory measures one at a time: XLM-R large + LoRA, 32 x 128 "
                                                        "(--shapes/--batch/--seq override)"),
    speed: bool = typer.Option(False, "--speed", help="SDPA vs eager attention, torch.compile (e5-small + LoRA)"),
    padding: bool = typer.Option(False, "--padding", help="padding waste of random vs length-bucketed batches"),
    peer: bool = typer.Option(False, "--peer", help="our trainer vs a plain peft + transformers Trainer script"),
    emb: bool = typer.Option(False, "--embeddings-report", help="error and size of 8/4-bit and trimmed embeddings "
                                                                "(xlmr-e5-small, demo texts)"),
    gpu: bool = typer.Option(False, "--gpu", help="issue 18's GPU rows: XLM-R large + LoRA 32 x 128 in bf16, + 4-bit, "
                                                  "checkpointing, trimmed 4-bit embeddings; the e5-small grid "
                                                  "(--shapes LARGE,SMALL override the two shapes)"),
    all_sections: bool = typer.Option(False, "--all", help="grid, memory, speed, padding and peer"),
    backbone: str = typer.Option("xlmr-e5-small", help="the real backbone of --peer and --embeddings-report"),
    peer_steps: int = typer.Option(30, help="training steps of --peer"),
    peer_batch: int = typer.Option(16, help="batch size of --peer"),
    peer_task: str = typer.Option("demo-topic", help="single-sentence classification task of --peer (demo-topic, sib200, sst2-local)"),
    peer_embeddings: str = typer.Option("full", help="our side's embeddings in --peer: full | trimmed | trimmed+4bit ... "
                                                     "(trimmed keeps the pieces of the task's English train/dev data)"),
    peak_size: Optional[int] = typer.Option(None, help="matmul size for the peak measurement (default 2048 CPU, 8192 GPU)"),
    peak_flops: Optional[float] = typer.Option(None, help="use this peak FLOP/s instead of measuring it"),
    in_process: bool = typer.Option(False, "--in-process", help="no subprocess per configuration (faster; peak memory "
                                                                "then accumulates)"),
    timeout: Optional[float] = typer.Option(None, help="seconds per configuration before it is reported as failed"),
    json_path: Path = typer.Option(Path("xtl-out/bench.json"), "--json", help="where to write the results"),
    data_dir: Optional[Path] = typer.Option(None, help="local data for --padding (default $XTL_DATA or ../shared/data)"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda if available)"),
):
    """Measure training speed and memory of task modules on this machine; print tables, write JSON."""
    from .. import bench as B
    from ..backbone import pick_device
    from ..cost import device_name, measure_peak_flops

    check_bench_options(shapes=shapes, methods=methods, quant=quant, seq=seq, batch=batch, steps=steps, warmup=warmup,
                        grad_ckpt=grad_ckpt, optimizer=optimizer, embeddings=embeddings, attn=attn, compile=compile,
                        backbone=backbone, peer_steps=peer_steps, peer_batch=peer_batch, peer_task=peer_task,
                        peak_size=peak_size, peak_flops=peak_flops, timeout=timeout, json_path=json_path,
                        data_dir=data_dir, device=device, peer=peer, emb=emb, padding=padding, all_sections=all_sections,
                        precision=precision, backbone_dropout=backbone_dropout, module_dropout=module_dropout,
                        peer_embeddings=peer_embeddings)
    dev = pick_device(device)
    run_grid = grid or all_sections or not (memory or speed or padding or peer or emb or gpu)
    out: dict = {}
    console.print(f"[bold]xtl bench[/] on {device_name(dev)}")
    need_peak = run_grid or memory or speed or gpu or all_sections
    peak = None
    if need_peak:
        if peak_flops:
            peak = {"flops": peak_flops, "dtype": "given", "size": None, "device": device_name(dev)}
        else:
            peak = measure_peak_flops(dev, size=peak_size)
        console.print(f"measured matmul peak: {peak['flops'] / 1e12:.3f} TFLOP/s ({peak['dtype']}, n={peak['size']})")
    out["meta"] = B.bench_meta(dev, peak)
    pf = peak["flops"] if peak else None
    pf16 = None
    if need_peak and dev.type == "cpu" and not peak_flops and B.bf16_rows_possible(_list(precision),
                                                                                   speed or gpu or all_sections):
        import torch

        peak16 = measure_peak_flops(dev, size=peak_size, dtype=torch.bfloat16)
        pf16 = peak16["flops"]
        out["meta"]["peak_bf16"] = peak16
        console.print(f"measured bf16 matmul peak: {pf16 / 1e12:.3f} TFLOP/s (the MFU denominator of bf16 rows)")

    def save():
        B.write_json(json_path, out)

    def progress(rec: dict) -> None:
        console.print(f"  {rec.get('key')}: {rec.get('status')}"
                      + (f", {rec['step_s']:.3f} s/step, peak {_gib(rec['peak_mem_bytes'])}" if rec.get("status") == "ok" else ""))
        save()

    if run_grid:
        d = B.default_axes(dev)
        configs = B.expand_grid(
            shapes=_list(shapes) or d["shapes"], methods=_list(methods) or d["methods"], quant=_list(quant) or d["quant"],
            seq=_ints(seq, "--seq") if seq else d["seq"], batch=batch or d["batch"], steps=steps or d["steps"],
            warmup=warmup if warmup is not None else d["warmup"], grad_ckpt=_bools(grad_ckpt, "--grad-ckpt"),
            optimizer=_list(optimizer) or ["adamw"], embeddings=_list(embeddings) or ["full"],
            attn=_list(attn) or ["sdpa"], compile=_bools(compile, "--compile"), device=str(dev),
            precision=_list(precision), backbone_dropout=_dropouts(backbone_dropout, "--backbone-dropout") or None,
            module_dropout=_dropouts(module_dropout, "--module-dropout") or None)
        console.print(f"grid: {len(configs)} configurations")
        out["grid"] = []
        B.run_configs(configs, peak_flops=pf, peak_flops_bf16=pf16, isolated=not in_process, timeout=timeout,
                      on_result=lambda r: (out["grid"].append(r), progress(r)))
        console.print(results_table("training step, per configuration", out["grid"]))
    first_shape = (_list(shapes) or [None])[0]
    first_seq = _ints(seq, "--seq")[0] if seq else None

    def preset_kw(**kw):
        return {k: v for k, v in kw.items() if v is not None}

    if memory or all_sections:
        kw = preset_kw(shape=first_shape, batch=batch, seq=first_seq, steps=steps, warmup=warmup)
        configs = B.memory_configs(dev, **kw)
        console.print(f"memory: {len(configs)} configurations")
        out["memory"] = []
        B.run_configs(configs, peak_flops=pf, peak_flops_bf16=pf16, isolated=not in_process, timeout=timeout,
                      on_result=lambda r: (out["memory"].append(r), progress(r)))
        console.print(results_table("memory measures, one at a time", out["memory"], label=True))
    if speed or all_sections:
        kw = preset_kw(shape=first_shape, batch=batch, seq=first_seq, steps=steps, warmup=warmup)
        configs = B.speed_configs(dev, **kw)
        out["speed"] = []
        B.run_configs(configs, peak_flops=pf, peak_flops_bf16=pf16, isolated=not in_process, timeout=timeout,
                      on_result=lambda r: (out["speed"].append(r), progress(r)))
        console.print(results_table("attention implementation and torch.compile", out["speed"], label=True))
    if gpu:
        pair = _list(shapes) or ["large"]
        kw = preset_kw(large=pair[0], small=pair[1] if len(pair) > 1 else None, batch=batch, seq=first_seq,
                       steps=steps, warmup=warmup)
        configs = B.gpu_configs(dev, **kw)
        if dev.type != "cuda":
            console.print("[yellow]note:[/] --gpu on a CPU: the rows run, but their figures are not the GPU's")
        out["gpu"] = []
        B.run_configs(configs, peak_flops=pf, peak_flops_bf16=pf16, isolated=not in_process, timeout=timeout,
                      on_result=lambda r: (out["gpu"].append(r), progress(r)))
        console.print(results_table("GPU rows (issue 18): XLM-R large + LoRA and the e5-small grid", out["gpu"], label=True))
    if padding or all_sections:
        from ..backbone import resolve_backbone
        from transformers import AutoTokenizer

        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a spurious regex warning about Mistral tokenizers
        try:
            tok = AutoTokenizer.from_pretrained(resolve_backbone("xlmr-e5-small")[1])
        finally:
            hf_logging.set_verbosity(verbosity)
        out["padding"] = B.padding_report(tok, data_dir=data_dir)
        save()
        console.print(padding_table(out["padding"]))
    if emb or all_sections:
        out["embeddings"] = B.embedding_report(backbone, device=str(dev))
        save()
        console.print(embeddings_table(out["embeddings"]))
    if peer or all_sections:
        out["peer"] = B.peer_compare(backbone, steps=peer_steps, batch=peer_batch, device=str(dev),
                                     progress=lambda s: console.print(f"  {s}"), task=peer_task, data_dir=data_dir,
                                     embeddings=peer_embeddings)
        save()
        console.print(peer_table(out["peer"]))
    save()
    console.print(f"results written to {json_path}")
