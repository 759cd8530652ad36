"""`xtl bench` on tiny random XLM-Rs: the FLOP count of cost.py, one configuration end to end (CLI,
subprocess, JSON), presets, padding report, the peer comparison, grid projection. No absolute
timings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from adapters_xtl import bench as B
from adapters_xtl import cost as C
from adapters_xtl.errors import XtlError
from conftest import build_tiny_backbone


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny64-bench"), hidden=64)


# ------------------------------------------------------------------------------ FLOP count
def test_flop_count_matches_hand_computation():
    # H=4, F=8, L=2, B=1, S=2 (T=2); LoRA on every Linear; 10 adapter and 3 head parameters
    f = C.count_step_flops(hidden=4, layers=2, ffn=8, batch=1, seq=2, points=C.POINTS, adapter_params=10, head_params=3)
    # Linear weights per layer 4*16 + 2*32 = 128, two layers: 256; forward 2*256*2
    assert f["encoder_linear_params"] == 256
    assert f["forward_linear"] == 1024
    assert f["forward_attention"] == 4 * 1 * 2 * 2 * 4 * 2 == 128
    # layer 0: no input grads for q/k/v (the embeddings are frozen): out 2*2*16 + FFN 2*2*32*2 = 320
    # layer 1: + q/k/v input grads 3*2*2*16 = 192 -> 512
    assert f["backward_linear"] == 320 + 512
    # attention backward 8*B*S^2*H per layer (dP, dV, dQ, dK)
    assert f["backward_attention"] == 2 * 8 * 1 * 4 * 4 == 256
    assert f["adapters"] == 6 * 10 * 2 and f["head"] == 6 * 3 * 1
    assert f["total"] == 1024 + 128 + 832 + 256 + 120 + 18 == 2378
    # a bottleneck after the FFN only: layer 0 needs no backward at all, layer 1 all of it
    g = C.count_step_flops(hidden=4, layers=2, ffn=8, batch=1, seq=2, points={"ffn_out"}, adapter_params=10, head_params=3)
    assert g["backward_linear"] == 512 and g["backward_attention"] == 128
    # head only: no backward through the encoder
    h = C.count_step_flops(hidden=4, layers=2, ffn=8, batch=1, seq=2, points=set(), adapter_params=0, head_params=3)
    assert h["backward_linear"] == h["backward_attention"] == 0


def test_trainable_points():
    assert C.trainable_points("lora") == set(C.POINTS)
    assert C.trainable_points("lora", {"target_modules": ["query", "value"]}) == {"query", "value"}
    assert C.trainable_points("lora", {"target_modules": ["intermediate.dense"]}) == {"ffn_in"}
    assert C.trainable_points("bottleneck") == {"ffn_out"}
    assert C.trainable_points("bottleneck", {"variant": "double_seq_bn"}) == {"attn_out", "ffn_out"}


@pytest.mark.parametrize("method,mcfg", [("lora", {}), ("lora", {"target_modules": ["query", "value"]}),
                                         ("bottleneck", {}), ("bottleneck", {"variant": "double_seq_bn"})])
def test_flop_count_matches_torch_flop_counter(tiny64, method, mcfg):
    """The analytic count against torch's FlopCounterMode on the real autograd graph of a step."""
    from torch.utils.flop_counter import FlopCounterMode

    from adapters_xtl.backbone import load_backbone
    from adapters_xtl.methods import get_method
    from adapters_xtl.model import TaskModel
    from adapters_xtl.tasks import get_task

    bb = load_backbone(str(tiny64), device="cpu")
    m = get_method(method)
    cfg = m.make_config(mcfg)
    m.add(bb, "mod", cfg)
    m.activate(bb, ["mod"], trainable=["mod"])
    model = TaskModel(bb, get_task("demo-topic"))
    adapter = list(m.named_parameters(bb, "mod").values())
    for p in adapter + list(model.head.parameters()):
        p.requires_grad_(True)
    b, s = 4, 32
    ids = torch.randint(5, 80, (b, s))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 5, (b,))}
    model.train()
    with FlopCounterMode(display=False) as fc:
        model.format.loss(model(batch), batch).backward()
    c = bb.model.config
    est = C.count_step_flops(hidden=c.hidden_size, layers=c.num_hidden_layers, ffn=c.intermediate_size, batch=b, seq=s,
                             points=C.trainable_points(method, cfg.model_dump()),
                             adapter_params=sum(p.numel() for p in adapter),
                             head_params=sum(p.numel() for p in model.head.parameters()))
    assert est["total"] == pytest.approx(fc.get_total_flops(), rel=0.02)


# ------------------------------------------------------------------------------ one config, end to end
FIELDS = ("key", "shape", "method", "quant", "seq", "batch", "steps", "status", "dims", "load_s", "warmup_s", "step_s",
          "samples_per_s", "tokens_per_s", "real_tokens_per_step", "flops_per_step", "flops_breakdown",
          "achieved_flops", "peak_flops", "mfu", "peak_mem_bytes", "mem_after_load_bytes", "mem_kind", "mem_scope",
          "trainable_params", "backbone_params", "module_bytes", "optimizer_state_bytes", "embedding_bytes",
          "loss_first", "loss_last", "attn_impl")


def test_bench_cli_one_tiny_config_end_to_end(tiny64, tmp_path):
    """Through the CLI: measured peak, one configuration in its own subprocess, the JSON file."""
    import typer
    from typer.testing import CliRunner

    from adapters_xtl.cli.bench import bench

    app = typer.Typer()
    app.command()(bench)
    app.command("noop")(lambda: None)  # two commands: typer keeps `bench` as a sub-command
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "--shapes", str(tiny64), "--methods", "lora", "--quant", "none",
                                   "--seq", "16", "--batch", "2", "--steps", "2", "--warmup", "1",
                                   "--peak-size", "256", "--json", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    meta = data["meta"]
    assert meta["peak"]["flops"] > 0 and meta["peak"]["dtype"] == "float32" and meta["device_type"] == "cpu"
    assert meta["versions"]["torch"]
    (r,) = data["grid"]
    assert r["status"] == "ok", r["status"]
    for f in FIELDS:
        assert f in r, f
    assert r["mem_scope"] == "window"  # measured in its own process, window reset after loading
    assert r["step_s"] > 0 and r["warmup_s"] > 0
    assert r["samples_per_s"] == pytest.approx(2 / r["step_s"])
    assert r["real_tokens_per_step"] == 2 * 16
    assert r["tokens_per_s"] == pytest.approx(32 / r["step_s"])
    # MFU against the peak of the dtype the step ran in (the trainer's default precision, auto)
    assert r["peak_flops"] == (meta["peak_bf16"]["flops"] if r["compute_dtype"] == "bf16" else meta["peak"]["flops"])
    assert r["achieved_flops"] == pytest.approx(r["flops_per_step"] / r["step_s"])
    assert 0 < r["mfu"] < 1
    assert r["peak_mem_bytes"] >= r["mem_after_load_bytes"] > 0
    assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])
    # trainable = LoRA r=8 on q,k,v,attn-out,FFN-in,FFN-out in 2 layers + the head (dense + out)
    h, f = 64, 128
    lora = 2 * 8 * ((h + h) * 4 + (h + f) + (f + h))
    head = h * h + h + h * 5 + 5
    assert r["trainable_params"] == lora + head
    assert 4 * r["trainable_params"] < r["module_bytes"] < 4 * r["trainable_params"] + 64 * 1024
    expect = C.count_step_flops(hidden=h, layers=2, ffn=f, batch=2, seq=16, points=C.POINTS, adapter_params=lora,
                                head_params=head)
    assert r["flops_per_step"] == expect["total"]
    assert "configuration" in res.output  # the table was printed


def test_measures_in_process_and_not_applicable(tiny64):
    cfgs = [B.BenchConfig(shape=str(tiny64), method="bottleneck", quant="4bit", seq=16, batch=2, steps=1,
                          grad_ckpt=True, optimizer="adamw8bit", embeddings="trimmed+4bit", device="cpu"),
            B.BenchConfig(shape=str(tiny64), seq=16, batch=2, steps=1, optimizer="paged_adamw8bit", device="cpu"),
            B.BenchConfig(shape="no-such-shape", device="cpu")]
    seen = []
    rows = B.run_configs(cfgs, peak_flops=1e12, isolated=False, on_result=seen.append)
    assert len(seen) == 3
    ok, paged, bad = rows
    assert ok["status"] == "ok", ok["status"]
    assert ok["dims"]["vocab"] < ok["dims"]["full_vocab"]  # trimmed to the demo data's pieces
    assert ok["key"].endswith("ckpt/adamw8bit/emb:trimmed+4bit")
    assert paged["status"].startswith("n/a")
    assert bad["status"].startswith("error") and "unknown bench shape" in bad["status"]


def test_presets_and_grid_expansion():
    cpu = torch.device("cpu")
    mem = B.memory_configs(cpu)
    assert mem[0].label == "baseline" and mem[0].shape == "large" and (mem[0].batch, mem[0].seq) == (32, 128)
    assert {c.label for c in mem} >= {"gradient checkpointing", "8-bit AdamW", "trimmed vocabulary", "4-bit backbone"}
    assert mem[-1].optimizer == "adamw8bit" and mem[-1].grad_ckpt and mem[-1].quant == "4bit"
    speed = B.speed_configs(cpu)
    assert [c.attn for c in speed][-2:] == ["eager", "sdpa"] and speed[-1].compile
    old = next(c for c in speed if c.label.startswith("fp32, dropout as built"))
    assert (old.precision, old.backbone_dropout, old.module_dropout) == ("fp32", None, None)
    assert {(c.precision, c.backbone_dropout, c.module_dropout) for c in speed} >= {
        ("bf16", None, None), ("fp32", 0.0, None), ("fp32", None, 0.0), ("fp32", 0.0, 0.0), ("bf16", 0.0, 0.0)}
    steps = B.expand_grid(shapes=["e5-small"], methods=["lora"], quant=["none"], seq=[128], batch=4, steps=1,
                          precision=["fp32", "bf16"], backbone_dropout=[None, 0.0], module_dropout=[0.0])
    assert len({c.key() for c in steps}) == 4 and all("moddrop:0" in c.key() or c.module_dropout is None for c in steps)
    with pytest.raises(XtlError, match="unknown precision"):
        B.expand_grid(shapes=["e5-small"], methods=["lora"], quant=["none"], seq=[128], batch=4, steps=1,
                      precision=["fp8"])
    gpu = B.gpu_configs(torch.device("cuda"))
    large = [c for c in gpu if c.shape == "large"]
    assert all((c.batch, c.seq, c.method) == (32, 128, "lora") for c in large)
    assert any(c.quant == "4bit" and c.grad_ckpt and c.embeddings == "trimmed+4bit" for c in large)
    grid5 = [c for c in gpu if c.shape == "e5-small"]
    assert grid5 or all(c.shape == "small" for c in gpu[6:])
    grid5 = grid5 or gpu[6:]
    assert {(c.method, c.quant, c.seq) for c in grid5} == {(m, q, s) for m in ("lora", "bottleneck")
                                                          for q in ("none", "4bit") for s in (128, 256)}
    grid = B.expand_grid(shapes=["e5-small", "base"], methods=["lora", "bottleneck"], quant=["none", "4bit"],
                         seq=[128, 256], batch=4, steps=1)
    assert len(grid) == 16 and len({c.key() for c in grid}) == 16
    with pytest.raises(XtlError, match="unknown method"):
        B.expand_grid(shapes=["e5-small"], methods=["prefix"], quant=["none"], seq=[128], batch=4, steps=1)
    with pytest.raises(XtlError, match="unknown quantization"):
        B.expand_grid(shapes=["e5-small"], methods=["lora"], quant=["3bit"], seq=[128], batch=4, steps=1)
    with pytest.raises(XtlError, match="unknown bench shape"):
        B.shape_source("huge")


def test_random_shape_is_materialized_once_and_loads_quantized(tmp_path, monkeypatch):
    """base/large are built the same way: here a 1-layer shape with the real XLM-R vocabulary."""
    from adapters_xtl.backbone import load_backbone

    monkeypatch.setitem(B.RANDOM_SHAPES, "mini",
                        dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128))
    folder = B.materialize_random_shape("mini", cache_dir=tmp_path)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert B.materialize_random_shape("mini", cache_dir=tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    bb = load_backbone(str(folder), "4bit", device="cpu")
    assert bb.model.config.vocab_size == 250002 and bb.fingerprint.weights_sha256.startswith("random-init")
    r = B.run_config(B.BenchConfig(shape=str(folder), quant="4bit", seq=16, batch=2, steps=1, device="cpu"))
    assert r["status"] == "ok", r["status"]


# ------------------------------------------------------------------------------ padding, peer, economics
def test_padding_report_bucketing_beats_random(tiny64, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny64))
    rows = B.padding_report(tok, batch_sizes=(8,), data_dir=tmp_path)  # no local data: demo sets only
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["data"] for r in ok} >= {"demo-sentiment train (en)", "demo-nli train (en)", "demo-topic train (en)"}
    assert any(r["status"].startswith("skipped") for r in rows)  # sib200 without local files: never the Hub
    for r in ok:
        assert 0 <= r["waste_bucketed_b8"] < r["waste_random_b8"] < r["waste_pad_to_max"] < 1


def test_peer_comparison_runs_both_sides(tiny64):
    pytest.importorskip("accelerate")
    p = B.peer_compare(str(tiny64), steps=3, batch=4, device="cpu")
    for side in ("ours", "peer"):
        s = p[side]
        assert s["samples_per_s"] > 0 and s["peak_mem_bytes"] > 0
        assert 0 <= s["dev_accuracy"] <= 100
    # the same LoRA (r, targets) on both sides; the heads differ by construction (ours: mean pooling)
    h, f = 64, 128
    lora = 2 * 8 * ((h + h) * 4 + (h + f) + (f + h))
    head = h * h + h + h * 5 + 5  # dense + out, in both heads
    assert p["ours"]["trainable_params"] == lora + head
    assert p["peer"]["trainable_params"] == lora + head
    assert p["speedup_samples_per_s"] > 0 and p["peak_mem_ratio"] > 0
    assert p["ours"]["padding_waste"] < p["peer"]["padding_waste"]
    with pytest.raises(XtlError, match="sentence pairs"):
        B.peer_compare(str(tiny64), steps=1, batch=2, device="cpu", task="demo-nli")


def test_project_grid():
    tokens = C.tokens_per_training(steps=1000, batch_size=32, mean_tokens_per_example=40, padding_waste=0.2)
    assert tokens == pytest.approx(1000 * 32 * 40 / 0.8)
    g = C.project_grid(100, tokens, 20000.0, overhead_s_per_training=30, workers=4, price_per_hour=2.0)
    per = tokens / 20000 + 30
    assert g["seconds_per_training"] == pytest.approx(per)
    assert g["device_hours"] == pytest.approx(100 * per / 3600)
    assert g["wall_hours"] == pytest.approx(g["device_hours"] / 4)
    assert g["cost"] == pytest.approx(g["device_hours"] * 2.0)
    rows = {"grid": [{"status": "ok", "shape": "large", "method": "lora", "quant": "4bit", "seq": 128, "tokens_per_s": 5e3}]}
    assert C.throughput_from(rows, shape="large", method="lora", quant="4bit", seq=128) == 5e3
    with pytest.raises(XtlError, match="no bench row"):
        C.throughput_from(rows, shape="base", method="lora")
    with pytest.raises(XtlError):
        C.project_grid(1, 1.0, 0.0)


def test_plain_shape_configurations_price_the_planner(tmp_path, monkeypatch):
    """`xtl bench` on the large shape tells `xtl run --dry-run` how fast XLM-R large trains here;
    configurations with a memory or speed measure switched on, failures and folders do not."""
    from adapters_xtl import throughput

    monkeypatch.setenv("XTL_THROUGHPUT", str(tmp_path / "t.jsonl"))
    ok = {"status": "ok", "step_s": 2.0}
    B.remember_throughput(B.BenchConfig(shape="large", batch=8, seq=128, device="cpu"), ok)
    B.remember_throughput(B.BenchConfig(shape="large", grad_ckpt=True, device="cpu"), ok)
    B.remember_throughput(B.BenchConfig(shape="large", embeddings="4bit", device="cpu"), ok)
    B.remember_throughput(B.BenchConfig(shape="large", warmup=0, device="cpu"), ok)
    B.remember_throughput(B.BenchConfig(shape="base", device="cpu"), {"status": "oom: ..."})
    B.remember_throughput(B.BenchConfig(shape=str(tmp_path), device="cpu"), ok)
    (row,) = throughput.read()
    assert row["backbone"] == "xlm-roberta-large" and row["device"] == "cpu" and row["quantization"] == "none"
    assert row["seconds_per_step"] == 2.0 and row["tokens_per_step"] == 8 * 128
    cost = C.step_cost([row], backbone="xlm-roberta-large", quantization="none", method="lora",
                       device="cpu", task="xnli", batch_size=32, flops_per_step=2 * row["flops_per_step"],
                       guess_flops_per_s=1.0)
    assert cost.source == "flops" and cost.seconds == 4.0


def test_bf16_rows_use_the_bf16_peak_and_dropout_is_set(tiny64):
    cfgs = [B.BenchConfig(shape=str(tiny64), seq=16, batch=2, steps=1, device="cpu", precision=p,
                          backbone_dropout=0.0, module_dropout=0.0) for p in ("fp32", "bf16")]
    fp32, bf16 = B.run_configs(cfgs, peak_flops=1e11, peak_flops_bf16=3e11, isolated=False)
    assert fp32["status"] == bf16["status"] == "ok"
    assert (fp32["compute_dtype"], fp32["peak_flops"]) == ("fp32", 1e11)
    assert (bf16["compute_dtype"], bf16["peak_flops"], bf16["peak_dtype"]) == ("bf16", 3e11, "bf16")
    assert bf16["mfu"] == pytest.approx(bf16["achieved_flops"] / 3e11)
    assert bf16["key"].endswith("/bf16/moddrop:0")  # backbone dropout 0 is the default: not in the key


def test_gpu_section_runs_on_cpu_with_tiny_shapes(tiny64, tmp_path):
    """`xtl bench --gpu` is prepared without a GPU: every row runs on a tiny shape, JSON written."""
    import typer
    from typer.testing import CliRunner

    from adapters_xtl.cli.bench import bench

    app = typer.Typer()
    app.command()(bench)
    app.command("noop")(lambda: None)
    out = tmp_path / "gpu.json"
    res = CliRunner().invoke(app, ["bench", "--gpu", "--shapes", f"{tiny64},{tiny64}", "--seq", "16", "--batch", "2",
                                   "--steps", "1", "--warmup", "0", "--in-process", "--peak-flops", "1e11",
                                   "--json", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert "grid" not in data and len(data["gpu"]) == 14
    assert all(r["status"] == "ok" for r in data["gpu"]), [r["status"] for r in data["gpu"]]
    assert all(r["peak_mem_bytes"] > 0 and r["mfu"] > 0 for r in data["gpu"])
    small = next(r for r in data["gpu"] if r["embeddings"] == "trimmed+4bit")
    assert small["quant"] == "4bit" and small["grad_ckpt"] and small["dims"]["vocab"] < small["dims"]["full_vocab"]
    assert "not the GPU's" in res.output
