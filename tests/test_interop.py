"""Import from and export to peft / adapters: round trips that the other library checks itself."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from adapters_xtl.backbone import load_backbone
from adapters_xtl.errors import XtlError
from adapters_xtl.methods import get_method
from adapters_xtl.pipeline import evaluate_module, load_module_into, train_module
from adapters_xtl.store.convert import export_module
from adapters_xtl.store.interop import HEAD_CONFIG, HEAD_WEIGHTS, read_folder, require_head
from adapters_xtl.store.registry import Registry
from adapters_xtl.store.sharing import import_module
from adapters_xtl.tasks import get_task
from test_core import FAST, write_toy_task

IDS = torch.tensor([[0, 5, 6, 7, 8, 9, 2, 1, 1], [0, 11, 12, 13, 14, 15, 16, 17, 2]])
MASK = (IDS != 1).long()


def fresh_encoder(folder: Path):
    from transformers import XLMRobertaModel

    return XLMRobertaModel.from_pretrained(str(folder), add_pooling_layer=False).eval()


def ours(bb, registry: Registry, name: str) -> torch.Tensor:
    """last_hidden_state of our backbone with the registry module active."""
    man, slot, _ = load_module_into(bb, registry, name)
    method = get_method(man.method)
    method.activate(bb, [slot], trainable=[])
    try:
        with torch.no_grad():
            return bb.model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    finally:
        method.deactivate(bb)
        method.remove(bb, slot)


def bare(bb) -> torch.Tensor:
    with torch.no_grad():
        return bb.model(input_ids=IDS, attention_mask=MASK).last_hidden_state


def write_retrieval_task(root: Path) -> Path:
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    words = "the cat sat on mat dog runs in park good film great acting terrible food rain morning".split()
    lines = [" ".join(rng.sample(words, 6)) for _ in range(10)]
    (root / "x.xx").write_text("\n".join(lines) + "\n")
    (root / "x.en").write_text("\n".join(reversed(lines)) + "\n")
    y = root / "t.yaml"
    y.write_text(f"""
name: toy-retrieval
format: retrieval
columns: {{text: text}}
splits:
  test: {{path: "{root}/x.{{code}}", file_format: lines}}
  test_pivot: {{path: "{root}/x.en", file_format: lines}}
languages: {{xx: xx}}
""")
    return y


@pytest.fixture(scope="module")
def trained(tiny_backbone_dir, tmp_path_factory):
    """One LoRA and one bottleneck module trained by our pipeline (few steps) in one registry."""
    root = tmp_path_factory.mktemp("interop")
    task = write_toy_task(root / "toy")
    reg = Registry(root / "registry")
    for method in ("lora", "bottleneck"):
        bb = load_backbone(str(tiny_backbone_dir))
        train_module(bb, str(task), name=f"toy-{method}", method=method, registry=reg, train_config=FAST)
    return reg, task


# ---------------------------------------------------------------------------------------- export


def test_export_lora_loads_in_peft_with_equal_outputs(tiny_backbone_dir, trained, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    reg, _ = trained
    out = export_module(reg, "toy-lora", tmp_path / "peft", fmt="peft")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", HEAD_CONFIG, HEAD_WEIGHTS]
    cfg = json.loads((out / "adapter_config.json").read_text())
    man = reg.manifest("toy-lora")
    assert cfg["peft_type"] == "LORA" and cfg["r"] == man.method_config["r"]
    assert cfg["lora_alpha"] == man.method_config["alpha"] and cfg["lora_dropout"] == man.method_config["dropout"]
    assert sorted(cfg["target_modules"]) == sorted(man.method_config["target_modules"])
    assert cfg["base_model_name_or_path"] == man.backbone.model_id and cfg["bias"] == "none"
    keys = list(load_file(str(out / "adapter_model.safetensors")))
    assert keys and all(k.startswith("base_model.model.encoder.layer.") and k.endswith(("lora_A.weight", "lora_B.weight"))
                        for k in keys)

    peft_model = PeftModel.from_pretrained(fresh_encoder(tiny_backbone_dir), str(out)).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    bb = load_backbone(str(tiny_backbone_dir))
    mine = ours(bb, reg, "toy-lora")
    assert not torch.allclose(mine, bare(bb), atol=1e-4)  # the module does something
    assert torch.allclose(theirs, mine, atol=1e-5), (theirs - mine).abs().max()


def test_export_bottleneck_loads_in_adapters_with_equal_outputs(tiny_backbone_dir, trained, tmp_path):
    import adapters

    reg, _ = trained
    out = export_module(reg, "toy-bottleneck", tmp_path / "ad", fmt="adapters")
    assert {"adapter_config.json", "adapter.safetensors", "pytorch_adapter.bin", HEAD_CONFIG,
            HEAD_WEIGHTS} == {p.name for p in out.iterdir()}
    bb = load_backbone(str(tiny_backbone_dir))
    mine = ours(bb, reg, "toy-bottleneck")
    assert not torch.allclose(mine, bare(bb), atol=1e-4)

    # our folder mirrors what adapters' own save_adapter writes for the same config
    ref_model = fresh_encoder(tiny_backbone_dir)
    adapters.init(ref_model)
    ref_model.add_adapter("toy_bottleneck", config=read_folder(out).original_config["config"])
    ref_model.save_adapter(str(tmp_path / "ref"), "toy_bottleneck")
    ref_cfg = json.loads((tmp_path / "ref" / "adapter_config.json").read_text())
    our_cfg = json.loads((out / "adapter_config.json").read_text())
    assert our_cfg["config"] == ref_cfg["config"]
    assert {k: v for k, v in our_cfg.items() if k != "model_name"} == {k: v for k, v in ref_cfg.items() if k != "model_name"}
    ref_keys = set(torch.load(tmp_path / "ref" / "pytorch_adapter.bin", weights_only=True))
    assert set(torch.load(out / "pytorch_adapter.bin", weights_only=True)) == ref_keys

    for kwargs in ({}, {"use_safetensors": True}):  # pytorch_adapter.bin, then adapter.safetensors
        model = fresh_encoder(tiny_backbone_dir)
        adapters.init(model)
        info: dict = {}
        name = model.load_adapter(str(out), loading_info=info, **kwargs)
        assert name == "toy_bottleneck" and not info.get("missing_keys") and not info.get("unexpected_keys")
        model.set_active_adapters(name)
        model.eval()
        with torch.no_grad():
            theirs = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        assert torch.allclose(theirs, mine, atol=1e-5), (kwargs, (theirs - mine).abs().max())


def test_export_refuses_wrong_format_and_a_non_empty_folder(trained, tmp_path):
    reg, _ = trained
    with pytest.raises(XtlError, match="(?s)lora module.*--format peft"):
        export_module(reg, "toy-lora", tmp_path / "x", fmt="adapters")
    with pytest.raises(XtlError, match="unknown export format"):
        export_module(reg, "toy-lora", tmp_path / "x", fmt="onnx")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(XtlError, match="not empty"):
        export_module(reg, "toy-lora", tmp_path / "full", fmt="peft")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    export_module(reg, "toy-lora", tmp_path / "full", fmt="peft", overwrite=True)
    assert not (tmp_path / "full" / "keep.txt").exists() and (tmp_path / "full" / "adapter_config.json").exists()


@pytest.mark.parametrize("method,fmt", [("lora", "peft"), ("bottleneck", "adapters")])
def test_export_then_import_gives_back_the_same_module(tiny_backbone_dir, trained, tmp_path, method, fmt):
    reg, task = trained
    out = export_module(reg, f"toy-{method}", tmp_path / fmt, fmt=fmt)
    bb = load_backbone(str(tiny_backbone_dir))
    back = import_module(reg, out, task=str(task), backbone=bb, name=f"back-{method}")
    orig_m, orig_t = reg.load(f"toy-{method}")
    new_m, new_t = reg.load(back.name)
    assert (new_m.method, new_m.method_config, new_m.head, new_m.task) == (
        orig_m.method, orig_m.method_config, orig_m.head, orig_m.task)
    assert new_m.backbone == orig_m.backbone
    assert new_m.imported["library"] == fmt and new_m.imported["head"] == "adapters_xtl"
    assert set(new_t) == set(orig_t)
    for k in orig_t:
        assert torch.equal(new_t[k], orig_t[k]), k
    # the imported copy scores like the original
    a = evaluate_module(bb, f"toy-{method}", str(task), registry=reg, update_registry=False)
    b = evaluate_module(bb, back.name, str(task), registry=reg, update_registry=False)
    assert a == b


# ---------------------------------------------------------------------------------------- import


def peft_script_lora(folder: Path, out: Path, **lora_kwargs):
    """What a user's plain peft script does: wrap XLMRobertaModel, (train), save_pretrained."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(fresh_encoder(folder), LoraConfig(**lora_kwargs))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    model.save_pretrained(str(out))
    return model.eval()


def test_import_lora_from_a_peft_script(tiny_backbone_dir, tmp_path, registry):
    peft_model = peft_script_lora(tiny_backbone_dir, tmp_path / "p", r=4, lora_alpha=8, lora_dropout=0.05,
                                  target_modules=["value", "query"])
    task = write_retrieval_task(tmp_path / "ret")
    bb = load_backbone(str(tiny_backbone_dir))
    m = import_module(registry, tmp_path / "p", task=str(task), backbone=bb, name="peft-script")
    assert m.method == "lora"
    assert m.method_config == {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["query", "value"]}
    assert m.head == {} and m.imported["library"] == "peft" and m.imported["source"]["path"].endswith("p")
    assert m.backbone == bb.fingerprint and m.trainable_params == 2 * 2 * (4 * 32 + 32 * 4)
    assert "imported" in (registry.root / "peft-script" / m.version / "README.md").read_text()
    with torch.no_grad():
        theirs = peft_model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    mine = ours(bb, registry, "peft-script")
    assert not torch.allclose(mine, bare(bb), atol=1e-4)
    assert torch.allclose(theirs, mine, atol=1e-5), (theirs - mine).abs().max()
    # evaluated through the pipeline: retrieval needs no head
    scores = evaluate_module(bb, "peft-script", str(task), registry=registry)
    assert set(scores) == {"xx"} and 0 <= scores["xx"]["accuracy"] <= 100
    assert registry.manifest("peft-script").scores == scores


def test_imported_module_gets_a_head_by_training_on_top(tiny_backbone_dir, tmp_path, registry):
    peft_script_lora(tiny_backbone_dir, tmp_path / "p", r=4, lora_alpha=8, target_modules=["query", "value"])
    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    m = import_module(registry, tmp_path / "p", task=str(task), backbone=bb, name="headless")
    assert m.head == {}
    spec = get_task(str(task))
    with pytest.raises(XtlError, match="(?s)no task head.*imported from peft.*--init-from headless"):
        require_head(m, {}, spec)
    tm = train_module(bb, str(task), name="with-head", method="lora", method_config=m.method_config,
                      registry=registry, train_config=FAST, init_from="headless")
    assert tm.manifest.head["labels"] == ["positive", "negative"]
    assert set(evaluate_module(bb, "with-head", str(task), registry=registry)) == {"en", "de"}


def test_eval_of_a_headless_module_on_classification_says_so(tiny_backbone_dir, tmp_path, registry):
    peft_script_lora(tiny_backbone_dir, tmp_path / "p", r=4, lora_alpha=8, target_modules=["query"])
    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    import_module(registry, tmp_path / "p", task=str(task), backbone=bb, name="headless")
    with pytest.raises(XtlError, match="no task head"):
        evaluate_module(bb, "headless", str(task), registry=registry)


def test_import_adapters_folder_with_its_classification_head(tiny_backbone_dir, tmp_path, registry):
    """A seq_bn adapter + classification head saved by adapters' flex-head model: same logits here."""
    from adapters import SeqBnConfig, XLMRobertaAdapterModel

    from adapters_xtl.model import TaskModel

    torch.manual_seed(2)
    model = XLMRobertaAdapterModel.from_pretrained(str(tiny_backbone_dir))
    model.add_adapter("sent", config=SeqBnConfig(reduction_factor=4, non_linearity="relu"))
    # label order differs from the task's on purpose: rows must be reordered on import
    model.add_classification_head("sent", num_labels=2, id2label={0: "negative", 1: "positive"})
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "adapters.sent" in n or "heads.sent" in n:
                p.normal_(0, 0.2)
    model.save_adapter(str(tmp_path / "a"), "sent", with_head=True)
    model.set_active_adapters("sent")
    model.eval()
    with torch.no_grad():
        theirs = model(input_ids=IDS, attention_mask=MASK).logits

    task = write_toy_task(tmp_path / "toy", extra_yaml="pooling: cls")
    spec = get_task(str(task))
    bb = load_backbone(str(tiny_backbone_dir))
    m = import_module(registry, tmp_path / "a", task=str(task), backbone=bb, name="from-adapters")
    assert m.method == "bottleneck"
    assert m.method_config == {"variant": "seq_bn", "reduction_factor": 4, "non_linearity": "relu"}
    assert m.head["labels"] == ["positive", "negative"] and m.imported["head"] == "adapters"
    man, slot, head_w = load_module_into(bb, registry, "from-adapters")
    get_method("bottleneck").activate(bb, [slot], trainable=[])
    tm = TaskModel(bb, spec).eval()
    tm.head.load_state_dict(head_w)
    with torch.no_grad():
        mine = tm({"input_ids": IDS, "attention_mask": MASK})
    assert torch.allclose(mine, theirs[:, [1, 0]], atol=1e-5), (mine, theirs)
    # --no-head keeps only the adapter
    m2 = import_module(registry, tmp_path / "a", task=str(task), backbone=bb, name="no-head", include_head=False)
    assert m2.head == {} and not [k for k in registry.load("no-head")[1] if k.startswith("head.")]


# ---------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("change,match", [
    ({"bias": "all"}, "bias='all'"),
    ({"init_lora_weights": "pissa"}, "(?s)residual base weight.*path_initial_model_for_weight_conversion"),
    ({"init_lora_weights": "olora"}, "residual base weight"),
    ({"init_lora_weights": "loftq"}, "residual base weight"),
    ({"layers_pattern": "blocks"}, "layers_pattern='blocks'"),
    ({"target_modules": ".*query"}, "regular expression"),
    ({"peft_type": "PREFIX_TUNING"}, "only LORA and IA3"),
    ({"some_future_switch": True}, "unknown to adapters_xtl"),
])
def test_unsupported_peft_configs_are_refused(tiny_backbone_dir, tmp_path, change, match):
    peft_script_lora(tiny_backbone_dir, tmp_path / "p", r=4, lora_alpha=8, target_modules=["query"])
    cfg_path = tmp_path / "p" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(change)
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(XtlError, match=match):
        read_folder(tmp_path / "p")


def test_dora_weights_are_refused_even_when_the_config_hides_them(tiny_backbone_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    peft_script_lora(tiny_backbone_dir, tmp_path / "p", r=4, lora_alpha=8, target_modules=["query"])
    w = load_file(str(tmp_path / "p" / "adapter_model.safetensors"))
    w["base_model.model.encoder.layer.0.attention.self.query.lora_magnitude_vector"] = torch.ones(32)
    save_file(w, str(tmp_path / "p" / "adapter_model.safetensors"))
    with pytest.raises(XtlError, match="DoRA"):
        read_folder(tmp_path / "p")


def _save_adapters(folder: Path, out: Path, config) -> None:
    import adapters

    model = fresh_encoder(folder)
    adapters.init(model)
    model.add_adapter("x", config=config)
    model.save_adapter(str(out), "x")


@pytest.mark.parametrize("config,match", [
    ("par_bn", "unsupported adapter configuration"),
    ("lora", "not supported"),
    ("prefix_tuning", "not supported"),
    ("compacter", "unsupported adapter configuration"),
])
def test_unsupported_adapters_configs_are_refused(tiny_backbone_dir, tmp_path, config, match):
    from adapters import CompacterConfig

    if config == "compacter":
        config = CompacterConfig(reduction_factor=4)
    _save_adapters(tiny_backbone_dir, tmp_path / "a", config)
    with pytest.raises(XtlError, match=match):
        read_folder(tmp_path / "a")


def test_double_seq_bn_is_recognised(tiny_backbone_dir, tmp_path):
    from adapters import DoubleSeqBnConfig

    _save_adapters(tiny_backbone_dir, tmp_path / "a", DoubleSeqBnConfig(reduction_factor=8))
    fm = read_folder(tmp_path / "a")
    assert fm.method_config == {"variant": "double_seq_bn", "reduction_factor": 8, "non_linearity": "swish"}


class _Boom:
    def __reduce__(self):
        import os

        return (os.makedirs, ("/tmp/xtl-pwned-by-pickle",))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tiny_backbone_dir, tmp_path):
    import shutil

    shutil.rmtree("/tmp/xtl-pwned-by-pickle", ignore_errors=True)
    _save_adapters(tiny_backbone_dir, tmp_path / "a", "seq_bn")
    good = torch.load(tmp_path / "a" / "pytorch_adapter.bin", weights_only=True)
    assert read_folder(tmp_path / "a").module  # a plain tensor .bin is converted
    torch.save({**good, "evil": _Boom()}, tmp_path / "a" / "pytorch_adapter.bin")
    with pytest.raises(XtlError, match=r"(?s)refusing pytorch_adapter.bin.*weights_only=True"):
        read_folder(tmp_path / "a")
    assert not Path("/tmp/xtl-pwned-by-pickle").exists()


def test_weights_that_do_not_fit_the_backbone_are_refused_at_import(tiny_backbone_dir, tmp_path, registry):
    from safetensors.torch import load_file, save_file

    peft_script_lora(tiny_backbone_dir, tmp_path / "p", r=4, lora_alpha=8, target_modules=["query"])
    w = load_file(str(tmp_path / "p" / "adapter_model.safetensors"))
    key = next(k for k in w if k.endswith("lora_A.weight"))
    w[key] = torch.zeros(4, 48)  # wrong hidden size
    save_file(w, str(tmp_path / "p" / "adapter_model.safetensors"))
    task = write_retrieval_task(tmp_path / "ret")
    with pytest.raises(XtlError, match="shape"):
        import_module(registry, tmp_path / "p", task=str(task), backbone=load_backbone(str(tiny_backbone_dir)))
    assert registry.names() == []


def test_import_source_must_exist_or_be_a_repo_id(tiny_backbone_dir, tmp_path, registry):
    task = write_retrieval_task(tmp_path / "ret")
    bb = load_backbone(str(tiny_backbone_dir))
    with pytest.raises(XtlError, match="neither an existing folder nor a Hub repo id"):
        import_module(registry, "../../no-such/place", task=str(task), backbone=bb)
    with pytest.raises(XtlError, match="is not a folder"):
        import_module(registry, "/etc/passwd", task=str(task), backbone=bb)
    (tmp_path / "empty").mkdir()
    with pytest.raises(XtlError, match="no adapter_config.json"):
        import_module(registry, tmp_path / "empty", task=str(task), backbone=bb)


# ---------------------------------------------------------------------------------------- CLI


def test_cli_export_and_import(tiny_backbone_dir, trained, tmp_path, capsys):
    from adapters_xtl.cli import main

    reg, task = trained
    out = tmp_path / "exp"
    assert main(["registry", "export", "toy-lora", str(out), "--format", "peft", "--registry", str(reg.root)]) == 0
    assert "exported toy-lora" in capsys.readouterr().out
    assert (out / "adapter_model.safetensors").is_file()
    # the adapter config names the tiny backbone folder, so --backbone may be left out
    assert main(["registry", "import", str(out), "--task", str(task), "--name", "cli-back",
                 "--registry", str(reg.root)]) == 0
    assert "imported cli-back" in capsys.readouterr().out
    _, a = reg.load("toy-lora")
    _, b = reg.load("cli-back")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # user errors: exit code 2 and one message
    assert main(["registry", "export", "toy-lora", str(tmp_path / "y"), "--format", "adapters",
                 "--registry", str(reg.root)]) == 2
    assert "--format peft" in capsys.readouterr().err
    assert main(["registry", "import", str(tmp_path / "nothing-here"), "--task", str(task), "--backbone",
                 str(tiny_backbone_dir), "--registry", str(reg.root)]) == 2
    assert "neither an existing folder nor a Hub repo id" in capsys.readouterr().err
