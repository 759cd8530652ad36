"""Issue 18's step knobs on tiny random XLM-Rs: bf16 autocast with fp32 loss/parameters/optimizer
state, backbone and module dropout set for training and put back, embeddings as a backbone option
(trimmed, 4-bit) through `xtl train`, and the one-line notes about configurations that cost time
for nothing. No timings (those are `xtl bench`'s)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch

from adapters_xtl import speed
from adapters_xtl.errors import XtlError
from adapters_xtl.trainer import TrainConfig, train
from conftest import build_tiny_backbone
from test_core import write_toy_task


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny64-precision"), hidden=64)


def _lora_model(folder, method="lora", config=None):
    from adapters_xtl.backbone import load_backbone
    from adapters_xtl.bench.attach import _attach_for_bench
    from adapters_xtl.tasks import get_task

    bb = load_backbone(str(folder))
    spec = get_task("demo-topic")
    att = _attach_for_bench(bb, method, config or {}, "xtl_t", spec)
    return bb, spec, att


def _features(bb, spec, n=32):
    from adapters_xtl.formats import get_format

    ex = [{"text": f"the cat {'sat ' * (i % 5)}on a mat {i}", "label": spec.labels[i % len(spec.labels)]}
          for i in range(n)]
    return get_format(spec.format).encode(ex, spec, bb.tokenizer, train=True)


# ------------------------------------------------------------------------------ settings
def test_precision_and_dropout_are_checked_training_settings():
    cfg = TrainConfig.resolve(None, {"precision": "bf16", "backbone_dropout": 0, "module_dropout": 0.05})
    assert (cfg.precision, cfg.backbone_dropout, cfg.module_dropout) == ("bf16", 0.0, 0.05)
    with pytest.raises(XtlError) as e:
        TrainConfig.resolve(None, {"precision": "fp16"})
    assert "precision" in str(e.value) and "fp32, bf16, auto" in e.value.fix
    with pytest.raises(XtlError) as e:
        TrainConfig.resolve(None, {"backbone_dropout": 1.0})
    assert "backbone_dropout=1.0" in str(e.value)
    with pytest.raises(XtlError):
        TrainConfig.resolve(None, {"module_dropout": True})  # a bool is not a probability
    # defaults: no dropout in the frozen backbone, the method's own in the module; "built" restores
    assert (TrainConfig().backbone_dropout, TrainConfig().module_dropout) == (0.0, None)
    built = TrainConfig.resolve(None, {"backbone_dropout": 0.2}, {"backbone_dropout": "built"})
    assert built.backbone_dropout is None


def test_auto_precision_follows_the_hardware(monkeypatch):
    assert speed.autocast_dtype("fp32", "cpu") is None
    assert speed.autocast_dtype("bf16", "cpu") is torch.bfloat16
    monkeypatch.delenv("XTL_CPU_BF16", raising=False)
    monkeypatch.setattr(speed, "cpu_has_fast_bf16", lambda: False)
    assert speed.autocast_dtype("auto", "cpu") is None
    monkeypatch.setattr(speed, "cpu_has_fast_bf16", lambda: True)
    assert speed.autocast_dtype("auto", "cpu") is torch.bfloat16
    monkeypatch.setenv("XTL_CPU_BF16", "0")  # results meant to match another CPU's stay fp32
    assert speed.autocast_dtype("auto", "cpu") is None
    monkeypatch.setattr(speed, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setenv("XTL_CPU_BF16", "1")
    assert speed.autocast_dtype("auto", "cpu") is torch.bfloat16
    with pytest.raises(XtlError):
        speed.autocast_dtype("fp8", "cpu")


def test_to_fp32_casts_nested_outputs():
    out = speed.to_fp32({"logits": torch.ones(2, dtype=torch.bfloat16), "ids": torch.ones(2, dtype=torch.long),
                         "pair": (torch.zeros(1, dtype=torch.bfloat16), 3)})
    assert out["logits"].dtype == torch.float32 and out["ids"].dtype == torch.long
    assert out["pair"][0].dtype == torch.float32 and out["pair"][1] == 3


# ------------------------------------------------------------------------------ dropout
@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_dropout_overrides_split_backbone_from_module_and_restore(tiny64, method):
    bb, _, att = _lora_model(tiny64, method, {"dropout": 0.3} if method == "lora" else {})
    sites = speed.dropout_sites(bb.model)
    assert sites["backbone"] and sites["module"]
    attrs = {a for _, a in sites["backbone"]}
    assert "p" in attrs and "dropout_prob" in attrs  # nn.Dropout and SDPA's dropout_p
    before = [(m, a, getattr(m, a)) for side in sites.values() for m, a in side]
    with speed.dropout_overrides(bb.model, backbone=0.0, module=0.2):
        assert all(getattr(m, a) == 0.0 for m, a in sites["backbone"])
        assert all(getattr(m, a) == 0.2 for m, a in sites["module"])
    assert all(getattr(m, a) == v for m, a, v in before)
    with pytest.raises(RuntimeError), speed.dropout_overrides(bb.model, module=0.0):
        raise RuntimeError("boom")
    assert all(getattr(m, a) == v for m, a, v in before)  # also after an error


def test_no_dropout_makes_a_training_forward_deterministic(tiny64):
    bb, spec, att = _lora_model(tiny64)
    feats = _features(bb, spec, 8)
    batch = att.model.format.collate(feats, att.model.pad_id)
    att.model.train()
    att.model.head.eval()  # the task head's own dropout is neither the backbone's nor the module's
    with speed.dropout_overrides(bb.model, backbone=0.0, module=0.0), torch.no_grad():
        a, b = att.model(batch), att.model(batch)
        att.model.eval()
        c = att.model(batch)
        att.model.train()
        att.model.head.eval()
    logits = [x["logits"] if isinstance(x, dict) else x for x in (a, b, c)]
    assert torch.equal(logits[0], logits[1]) and torch.allclose(logits[0], logits[2], atol=1e-6)
    with torch.no_grad():  # as built (0.1 everywhere): two training forwards differ
        d, e = att.model(batch), att.model(batch)
    d, e = (x["logits"] if isinstance(x, dict) else x for x in (d, e))
    assert not torch.equal(d, e)


# ------------------------------------------------------------------------------ bf16 training
def test_bf16_training_keeps_parameters_state_and_loss_in_fp32(tiny64):
    bb, spec, att = _lora_model(tiny64)
    feats = _features(bb, spec)
    before = {n: p.detach().clone() for n, p in att.trainable.items()}
    seen = {}
    fmt = att.model.format
    loss = fmt.loss

    def spy(out, batch):
        value = loss(out, batch)
        seen["dtype"] = value.dtype
        return value

    fmt.loss = spy
    try:
        cfg = TrainConfig(steps=4, batch_size=8, eval_every=100, precision="bf16", backbone_dropout=0.0,
                          module_dropout=0.0)
        res = train(att.model, att.trainable, feats, None, None, cfg)
    finally:
        del fmt.loss
    assert seen["dtype"] == torch.float32
    assert all(p.dtype == torch.float32 for p in att.trainable.values())
    assert any(not torch.equal(before[n], p) for n, p in att.trainable.items())  # it trained
    assert all(h["loss"] == h["loss"] for h in res.history)  # finite
    drops = speed.dropout_sites(bb.model)
    assert all(getattr(m, a) > 0 for m, a in drops["backbone"])  # the shared backbone is as built again


def test_bf16_and_fp32_steps_agree_closely(tiny64):
    """bf16 autocast changes rounding, not the step: the first loss agrees to bf16 precision."""
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        bb, spec, att = _lora_model(tiny64)
        cfg = TrainConfig(steps=1, batch_size=8, eval_every=100, log_every=1, precision=precision,
                          backbone_dropout=0.0, module_dropout=0.0)
        losses[precision] = train(att.model, att.trainable, _features(bb, spec), None, None, cfg).history[0]["loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.03)


# ------------------------------------------------------------------------------ embeddings option
def test_load_compressed_and_cost_notes(tiny64):
    from adapters_xtl.compress import TrimmedBackbone, cost_notes, embedding_bytes, load_compressed

    cpu = torch.device("cpu")
    assert cost_notes(cpu, "4bit", "full") and "trimmed+4bit" in cost_notes(cpu, "4bit", "full")[0]
    assert cost_notes(cpu, "4bit", "trimmed+4bit") == []
    assert cost_notes(cpu, "none", "full", "fp32") == []
    with pytest.warns(UserWarning, match="dequantizes"):
        load_compressed(str(tiny64), "4bit", "cpu")
    full = load_compressed(str(tiny64), "none", "cpu")
    calls = []
    trimmed = load_compressed(str(tiny64), "none", "cpu", embeddings="trimmed+4bit",
                              texts=lambda: calls.append(1) or ["the cat sat on the mat"])
    assert isinstance(trimmed, TrimmedBackbone) and calls == [1]
    assert embedding_bytes(trimmed) < embedding_bytes(full) / 4
    four = load_compressed(str(tiny64), "none", "cpu", embeddings="4bit", texts=lambda: calls.append(2) or [])
    assert calls == [1]  # texts are read only to trim
    assert type(four.model.get_input_embeddings()).__name__ == "XtlEmbedding4bit"


def test_task_texts_cover_train_dev_and_each_evaluated_language(tmp_path):
    from adapters_xtl.compress import task_texts
    from adapters_xtl.tasks import get_task

    spec = get_task(str(write_toy_task(tmp_path / "toy")))
    texts = task_texts([(spec, ["de"])])
    assert len(texts) == 64 + 16 + 20 and all(isinstance(t, str) and t for t in texts)


def test_xtl_train_with_compressed_embeddings_and_bf16(tiny64, tmp_path, monkeypatch):
    from adapters_xtl.cli import main

    monkeypatch.chdir(tmp_path)
    task = write_toy_task(tmp_path / "toy")
    argv = ["train", "--task", str(task), "--backbone", str(tiny64), "--name", "m", "--steps", "4", "--eval-every", "2",
            "--batch-size", "8", "--languages", "en,de", "--quantization", "4bit", "--embeddings", "trimmed+4bit",
            "--precision", "bf16", "--backbone-dropout", "0", "--module-dropout", "0",
            "--registry", str(tmp_path / "reg"), "--results", str(tmp_path / "results.jsonl")]
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        rc = main(argv)
    assert rc == 0, out.getvalue()
    text = out.getvalue()
    assert "embeddings trimmed+4bit" in text and "registered m v1" in text
    assert "note:" not in text  # 4-bit with compressed embeddings: nothing to warn about
    from adapters_xtl.store.registry import Registry

    training = Registry(tmp_path / "reg").manifest("m").training
    assert training["config"]["precision"] == "bf16" and training["computed_in"] == "bf16"
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        rc = main(argv[:argv.index("--embeddings")] + ["--embeddings", "full"] + argv[argv.index("--embeddings") + 2:]
                  + ["--steps", "2"])
    assert rc == 0, out.getvalue()
    assert out.getvalue().count("note:") == 1 and "dequantizes" in out.getvalue()  # said once, at start
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        rc = main(argv[:argv.index("--embeddings")] + ["--embeddings", "trimmed+2bit"])
    assert rc == 2 and "--embeddings" in out.getvalue()


def test_a_quantized_load_gives_back_the_fp32_pages_it_read(tiny64):
    """The 4-bit load reads every Linear weight through the safetensors mapping; those pages are
    dropped afterwards (the model still runs: a mapped tensor reads its pages back)."""
    from adapters_xtl.backbone import load_backbone, release_file_pages

    bb = load_backbone(str(tiny64), "4bit")
    assert release_file_pages(str(tiny64)) > 0  # the file is still mapped (embeddings), so advised
    assert release_file_pages(str(tiny64) + "-elsewhere") == 0
    ids = torch.tensor([[0, 5, 6, 2]])
    with torch.no_grad():
        out = bb.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert torch.isfinite(out).all()
