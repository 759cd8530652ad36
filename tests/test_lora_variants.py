"""peft's LoRA variants (DoRA, rsLoRA, PiSSA, OLoRA, layers_to_transform, rank/alpha patterns) and
IA3 as our modules: each trains on the toy task, saves, reloads with identical predictions,
exports to a folder that plain peft loads and predicts the same with, and imports back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from adapters_xtl.backbone import load_backbone
from adapters_xtl.errors import XtlError
from adapters_xtl.methods import get_method
from adapters_xtl.methods.lora import LoraSettings
from adapters_xtl.model import attach_new
from adapters_xtl.pipeline import evaluate_module, train_module
from adapters_xtl.store.convert import export_module
from adapters_xtl.store.interop import HEAD_CONFIG, HEAD_WEIGHTS, peft_tensors
from adapters_xtl.store.registry import Registry
from adapters_xtl.store.sharing import import_module
from adapters_xtl.trainer import TrainConfig
from test_core import write_toy_task
from test_interop import IDS, MASK, bare, fresh_encoder, ours

VARIANTS = {
    "dora": ("lora", {"use_dora": True}),
    "rslora": ("lora", {"use_rslora": True, "r": 4, "alpha": 8}),
    "pissa": ("lora", {"init_lora_weights": "pissa", "r": 4, "alpha": 4}),
    "olora": ("lora", {"init_lora_weights": "olora", "r": 4, "alpha": 4}),
    "layers-patterns": ("lora", {"layers_to_transform": [1], "rank_pattern": {"query": 4},
                                 "alpha_pattern": {"value": 32}}),
    "ia3": ("ia3", {}),
}
# enough steps for the tiny random XLM-R to learn the toy task (about a second per module)
LEARN = TrainConfig(steps=120, batch_size=16, eval_every=120, lr=3e-3, log_every=20)


@pytest.fixture(scope="module")
def trained(tiny_backbone_dir, tmp_path_factory):
    """Every variant trained once by our pipeline, in one registry."""
    root = tmp_path_factory.mktemp("variants")
    task = write_toy_task(root / "toy")
    reg = Registry(root / "registry")
    out = {}
    for name, (method, cfg) in VARIANTS.items():
        bb = load_backbone(str(tiny_backbone_dir))
        tc = LEARN.model_copy(update={"lr": 1e-2}) if method == "ia3" else LEARN  # IA3 wants a larger rate
        out[name] = train_module(bb, str(task), name=name, method=method, method_config=cfg, registry=reg,
                                 train_config=tc, predictions_path=root / f"{name}.jsonl")
    return reg, task, out, root


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_saves_and_reloads_with_identical_predictions(tiny_backbone_dir, trained, variant, tmp_path):
    reg, task, tms, root = trained
    tm = tms[variant]
    method, cfg = VARIANTS[variant]
    losses = [h["loss"] for h in tm.result.history if "loss" in h]
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2]) - 0.02, losses  # the loss falls
    man = reg.manifest(variant)
    assert man.method == method and all(man.method_config[k] == v for k, v in cfg.items())
    bb = load_backbone(str(tiny_backbone_dir))
    assert not torch.allclose(ours(bb, reg, variant), bare(bb), atol=1e-4)  # the module does something
    again = evaluate_module(bb, variant, str(task), registry=reg, update_registry=False,
                            predictions_path=tmp_path / "again.jsonl")
    assert again == tm.scores
    before, after = _rows(root / f"{variant}.jsonl"), _rows(tmp_path / "again.jsonl")
    assert [(r["id"], r["language"], r["prediction"]) for r in after] == [
        (r["id"], r["language"], r["prediction"]) for r in before]
    # PiSSA/OLoRA trained as W x - s B0 A0 x + s B A x and reload as the stored rank-2r LoRA:
    # the same function, summed in another order (float rounding, ~1e-7)
    assert [r["score"] for r in after] == pytest.approx([r["score"] for r in before], abs=1e-6)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_exports_to_peft_predicts_the_same_there_and_imports_back(tiny_backbone_dir, trained, variant,
                                                                         tmp_path):
    from peft import PeftModel

    reg, task, _, _ = trained
    out = export_module(reg, variant, tmp_path / "peft", fmt="peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    man = reg.manifest(variant)
    if variant == "ia3":
        assert cfg["peft_type"] == "IA3" and cfg["feedforward_modules"] == ["output.dense"]
    else:
        mc = man.method_config
        assert cfg["peft_type"] == "LORA" and cfg["use_dora"] == bool(mc.get("use_dora"))
        assert cfg["use_rslora"] == bool(mc.get("use_rslora")) and cfg["init_lora_weights"] is True
        assert cfg["layers_to_transform"] == mc.get("layers_to_transform")
        assert cfg["rank_pattern"] == mc.get("rank_pattern", {}) and cfg["alpha_pattern"] == mc.get("alpha_pattern", {})
        # PiSSA / OLoRA go out as the plain LoRA they are: rank 2r, the same scaling
        k = 2 if variant in ("pissa", "olora") else 1
        assert (cfg["r"], cfg["lora_alpha"]) == (k * mc["r"], k * mc["alpha"])
    peft_model = PeftModel.from_pretrained(fresh_encoder(tiny_backbone_dir), str(out)).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    bb = load_backbone(str(tiny_backbone_dir))
    mine = ours(bb, reg, variant)
    assert torch.allclose(theirs, mine, atol=1e-5), (theirs - mine).abs().max()

    # back into the registry: our own export keeps the exact config and weights ...
    back = import_module(reg, out, task=str(task), backbone=bb, name=f"back-{variant}")
    assert back.method == man.method and back.method_config == man.method_config
    a, b = reg.load(variant)[1], reg.load(back.name)[1]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # ... and the bare peft folder (no xtl_head files) is read from peft's config alone
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    (plain / HEAD_CONFIG).unlink()
    (plain / HEAD_WEIGHTS).unlink()
    m = import_module(reg, plain, task=str(task), backbone=bb, name=f"plain-{variant}")
    assert m.head == {} and m.method == man.method
    assert torch.allclose(ours(bb, reg, m.name), mine, atol=1e-6)


@pytest.mark.parametrize("how", ["pissa", "olora"])
def test_residual_inits_compute_what_peft_computes_and_leave_the_backbone_alone(tiny_backbone_dir, tmp_path, how):
    """peft's PiSSA/OLoRA replace W by W - s B0 A0; ours keeps W and a frozen companion. Same
    initial A/B, same outputs for any A/B, and the saved form is peft's own conversion to LoRA."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    targets = ["query", "value"]
    bb = load_backbone(str(tiny_backbone_dir))
    before = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    m = get_method("lora")
    attach_new(bb, "lora", m.make_config({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets,
                                         "init_lora_weights": how}), "res")
    m.activate(bb, ["res"], trainable=["res"])  # the initialisation runs here, once
    for n, p in bb.model.named_parameters():  # base weights are bit for bit what they were
        if "lora_" not in n:
            assert torch.equal(p, before[n.replace(".base_layer", "")]), n
    with torch.no_grad():
        start = bb.model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    m.deactivate(bb)
    assert torch.allclose(start, bare(bb), atol=1e-5)  # a residual init starts as the identity

    peft_model = get_peft_model(fresh_encoder(tiny_backbone_dir),
                                LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                           init_lora_weights=how))
    peft_model.peft_config["default"].init_lora_weights = True  # peft's recipe for the later conversion
    peft_model.save_pretrained(str(tmp_path / "init"))
    mine = {n: p for n, p in bb.model.named_parameters() if ".lora_" in n and ".res." in n}
    theirs = {n: p for n, p in peft_model.named_parameters() if ".lora_" in n}
    assert len(mine) == len(theirs) == 8
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in mine.items():
            t = theirs["base_model.model." + n.replace(".res.", ".default.")]
            assert torch.allclose(p, t, atol=1e-5), n  # the same initialisation
            t.add_(torch.randn(t.shape, generator=g) * 0.1)  # "training"
            p.copy_(t)
    m.activate(bb, ["res"], trainable=[])
    with torch.no_grad():
        a = bb.model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        b = peft_model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    peft_model.save_pretrained(str(tmp_path / "final"), path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    converted = load_file(str(tmp_path / "final" / "adapter_model.safetensors"))
    stored = peft_tensors(m.state_dict(bb, "res"))
    assert set(stored) == set(converted)
    for k in stored:
        assert torch.allclose(stored[k], converted[k], atol=1e-5), k


def test_variants_on_a_quantized_backbone(tiny_backbone_dir):
    """PiSSA is refused on 4-bit (peft needs float weights); OLoRA initialises from the
    dequantized weight and leaves the packed one as it was; DoRA runs on it."""
    bb = load_backbone(str(tiny_backbone_dir), "4bit", device="cpu")
    m = get_method("lora")
    with pytest.raises(XtlError, match="(?s)needs a full-precision backbone; this one is 4bit.*olora"):
        attach_new(bb, "lora", {"init_lora_weights": "pissa", "target_modules": ["query"]}, "p")
    packed = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    with torch.no_grad():
        plain = bb.model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    attach_new(bb, "lora", {"init_lora_weights": "olora", "r": 2, "dropout": 0.0, "target_modules": ["query"]}, "o")
    m.activate(bb, ["o"], trainable=["o"])
    for n, p in bb.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, packed[n.replace(".base_layer", "")]), n  # the 4-bit weights are untouched
    assert any(p.abs().sum() > 0 for n, p in m.named_parameters(bb, "o").items() if "lora_B" in n)  # B0 != 0
    with torch.no_grad():
        assert torch.allclose(bb.model(input_ids=IDS, attention_mask=MASK).last_hidden_state, plain, atol=1e-4)
    m.deactivate(bb)
    attach_new(bb, "lora", {"use_dora": True, "r": 2, "target_modules": ["query"]}, "d")
    with torch.no_grad():
        for n, p in m.named_parameters(bb, "d").items():
            p.add_(torch.randn_like(p) * 0.3)
    m.activate(bb, ["d"], trainable=[])
    layer = bb.model.encoder.layer[0].attention.self.query
    x = torch.randn(3, 32)
    with torch.no_grad():  # the 4-bit layer with DoRA: its base output rescaled and shifted, per row
        assert not torch.allclose(layer(x), layer.get_base_layer()(x), atol=1e-2)


def test_peft_scaling_follows_rslora_and_the_patterns(tiny_backbone_dir):
    bb = load_backbone(str(tiny_backbone_dir))
    attach_new(bb, "lora", {"r": 4, "alpha": 8, "use_rslora": True, "layers_to_transform": [1],
                            "rank_pattern": {"query": 2}, "alpha_pattern": {"value": 6}}, "v")
    layers = {n: mod for n, mod in bb.model.named_modules() if hasattr(mod, "lora_A") and "v" in mod.lora_A}
    assert layers and all(n.startswith("encoder.layer.1.") for n in layers)  # layer 0 is left alone
    for n, layer in layers.items():
        r = 2 if n.endswith("query") else 4
        alpha = 6 if n.endswith("value") else 8
        assert layer.r["v"] == r and layer.scaling["v"] == pytest.approx(alpha / r ** 0.5), n


@pytest.mark.parametrize("raw,match", [
    ({"use_dora": True, "init_lora_weights": "pissa"}, "DoRA's magnitude"),
    ({"init_lora_weights": "loftq"}, "is not offered"),
    ({"layers_to_transform": [-1]}, "layer indices"),
    ({"rank_pattern": {"query": 0}}, "positive integer"),
    ({"rank_pattern": {"(": 2}}, "not a regular expression"),
])
def test_lora_settings_refuse_what_peft_or_our_backbone_cannot_do(raw, match):
    with pytest.raises(XtlError, match=match):
        get_method("lora").make_config(raw)


def test_settings_that_do_not_fit_the_backbone_are_refused_before_peft_runs(tiny_backbone_dir):
    bb = load_backbone(str(tiny_backbone_dir))
    with pytest.raises(XtlError, match=r"layers_to_transform \[5\] out of range.*0\.\.1"):
        attach_new(bb, "lora", {"layers_to_transform": [0, 5]}, "x")
    with pytest.raises(XtlError, match=r"rank_pattern\['quer'\] matches none"):
        attach_new(bb, "lora", {"rank_pattern": {"quer": 2}}, "x")
    with pytest.raises(XtlError, match="feedforward_modules"):
        get_method("ia3").make_config({"target_modules": ["key"], "feedforward_modules": ["output.dense"]})
    assert not [n for n, _ in bb.model.named_parameters() if "lora_" in n]


def test_a_plain_lora_config_reads_and_dumps_as_before():
    """Manifests, cache keys and recipe hashes of plain LoRA modules must not change."""
    dumped = LoraSettings().model_dump()
    assert dumped == {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}
    assert LoraSettings(alpha=16.0).model_dump()["alpha"] == 16 and type(LoraSettings(alpha=16.0).alpha) is int
    assert LoraSettings(use_dora=True).model_dump()["use_dora"] is True


def test_import_dora_and_rslora_from_a_peft_script(tiny_backbone_dir, tmp_path, registry):
    """What a user's peft script saves (no longer refused): same outputs here as in peft."""
    from peft import LoraConfig, get_peft_model

    from test_interop import write_retrieval_task

    torch.manual_seed(1)
    model = get_peft_model(fresh_encoder(tiny_backbone_dir),
                           LoraConfig(r=4, lora_alpha=8, use_dora=True, use_rslora=True, target_modules=["query", "value"],
                                      layers_to_transform=1, rank_pattern={"value": 2}))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(str(tmp_path / "p"))
    model.eval()
    bb = load_backbone(str(tiny_backbone_dir))
    m = import_module(registry, tmp_path / "p", task=str(write_retrieval_task(tmp_path / "ret")), backbone=bb,
                      name="dora-script")
    assert m.method_config == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"],
                               "use_dora": True, "use_rslora": True, "layers_to_transform": [1],
                               "rank_pattern": {"value": 2}}
    with torch.no_grad():
        theirs = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert torch.allclose(ours(bb, registry, "dora-script"), theirs, atol=1e-5)


def test_dora_and_residual_init_compositions_train_and_reload(tiny_backbone_dir, tmp_path, registry):
    from test_core import FAST

    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    dora, pissa = {"use_dora": True, "r": 4}, {"init_lora_weights": "pissa", "r": 4, "alpha": 4}
    for name, cfg in (("d1", dora), ("d2", dora), ("p1", pissa)):
        train_module(bb, str(task), name=name, method="lora", method_config=cfg, registry=registry, train_config=FAST)
    for name, cfg, comp in (("d-stack", dora, {"kind": "stack", "modules": ["d1", "d2"]}),
                            ("d-fuse", dora, {"kind": "fuse", "modules": ["d1", "d2"]}),
                            ("d-cont", dora, {"kind": "continue", "modules": ["d1"]}),
                            ("p-stack", pissa, {"kind": "stack", "modules": ["d1", "p1"]}),
                            ("p-cont", pissa, {"kind": "continue", "modules": ["p1"]})):
        tm = train_module(bb, str(task), name=name, method="lora", method_config=cfg, registry=registry,
                          train_config=FAST, composition=comp)
        again = evaluate_module(bb, name, str(task), registry=registry, update_registry=False)
        assert again == tm.scores, name
    # continuing from a PiSSA module trains the stored rank-2r LoRA it is
    assert registry.load("p-cont")[1]["module.encoder.layer.0.attention.self.query.lora_A.__module__.weight"].shape[0] == 8
    with pytest.raises(XtlError, match="cannot merge DoRA modules"):
        train_module(bb, str(task), name="d-merge", method="lora", method_config=dora, registry=registry,
                     train_config=FAST, composition={"kind": "merge", "modules": ["d1", "d2"]})


def test_cli_trains_variants_from_method_config_and_exports_them(tiny_backbone_dir, tmp_path, capsys):
    from adapters_xtl.cli import main

    task = write_toy_task(tmp_path / "toy")
    reg = tmp_path / "reg"
    common = ["--task", str(task), "--backbone", str(tiny_backbone_dir), "--steps", "6", "--batch-size", "8",
              "--registry", str(reg), "--results", str(tmp_path / "r.jsonl")]
    assert main(["train", *common, "--name", "cli-dora", "--method-config",
                 '{"use_dora": true, "use_rslora": true, "r": 4, "layers_to_transform": [1]}']) == 0
    assert main(["train", *common, "--name", "cli-ia3", "--method", "ia3"]) == 0
    assert main(["train", *common, "--name", "cli-bad", "--method-config", '{"init_lora_weights": "loftq"}']) == 2
    assert "init_lora_weights" in capsys.readouterr().err
    r = Registry(reg)
    assert r.manifest("cli-dora").method_config["use_dora"] is True and r.manifest("cli-ia3").method == "ia3"
    for name in ("cli-dora", "cli-ia3"):
        assert main(["registry", "export", name, str(tmp_path / name), "--format", "peft", "--registry", str(reg)]) == 0
        assert (tmp_path / name / "adapter_model.safetensors").is_file()
