"""Language modules (MAD-X): MLM training on unlabeled text, a task module on top of them, the
swap per target language, reloading from the registry, the recipe axis, and bad input."""

from __future__ import annotations

import pytest
import torch

from adapters_xtl.backbone import load_backbone
from adapters_xtl.compose import Block, Language, Single, Stack
from adapters_xtl.errors import XtlError
from adapters_xtl.inference import TaskModule
from adapters_xtl.language import evaluate_language, make_head, train_language
from adapters_xtl.methods import get_method
from adapters_xtl.pipeline import evaluate_module, train_module
from adapters_xtl.store.registry import Registry

from conftest import TINY_TEXT
from test_core import FAST, write_toy_task

LM_FAST = {"steps": 24, "batch_size": 8, "lr": 5e-3, "eval_every": 8, "log_every": 4}


@pytest.fixture()
def texts(tmp_path):
    """Two unlabeled corpora (no sentence of the toy task's test split)."""
    en = tmp_path / "en.txt"
    en.write_text("\n".join(TINY_TEXT[:14] * 6), encoding="utf-8")
    de = tmp_path / "de.txt"
    de.write_text("\n".join(["der Hund läuft im Park", "es regnet heute", "kula chakula kizuri"] * 30), encoding="utf-8")
    return {"en": en, "de": de}


def test_language_block_validates_and_round_trips():
    block = Language({"en": "mlm-en@1", "de": None}) + Stack("inter-a")
    assert block.kind == "language" and block.inner == Stack("inter-a") and block.modules == ["inter-a"]
    assert Block.from_dict(block.to_dict()) == block
    assert Language("sw", "yo").languages == {"sw": None, "yo": None}
    assert Language() == Language("madx") and Language().inner == Single()
    assert block.with_modules(["inter-a@3"]).inner == Stack("inter-a@3")
    with pytest.raises(XtlError, match="not a language code"):
        Language({"Swahili!": "x"})
    with pytest.raises(XtlError, match="one language block"):
        Language(then=Language())
    with pytest.raises(XtlError, match="already has a composition"):
        (Language() + Stack("a")) + Stack("b")
    with pytest.raises(XtlError, match="ia3 modules do not support the composition 'language'"):
        get_method("ia3").check_language_modules({})


def test_bottleneck_language_module_trains_with_an_invertible_adapter_and_reloads(tiny_backbone_dir, texts, registry):
    bb = load_backbone(str(tiny_backbone_dir))
    lm = train_language(bb, "sw", texts["en"], registry=registry, train_config=LM_FAST)
    man = lm.manifest
    assert man.task == "mlm:sw" and man.method == "bottleneck" and man.method_config["variant"] == "seq_bn_inv"
    # the MLM loss on the held-out lines (same masks before and after) fell
    assert lm.dev_after["loss"] < lm.dev_before["loss"]
    losses = [h["loss"] for h in lm.result.history if "loss" in h]
    assert losses[-1] < losses[0]
    # no pretrained LM head in the tiny backbone: a fresh transform, tied decoder, trained, and said so
    assert man.head["transform"] == "fresh" and man.head["trained"] and "tied" in man.head["decoder"]
    _, tensors = registry.load(man.name)
    assert any(k.startswith("module.invertible_adapters.__module__.") for k in tensors)
    assert {"head.dense.weight", "head.layer_norm.weight", "head.bias"} <= set(tensors)
    assert man.language_module["text"]["sources"][0]["source"] == "file"
    # a reload (another backbone instance) scores the same text identically
    first = evaluate_language(bb, lm.name, texts["de"], registry=registry)
    again = evaluate_language(load_backbone(str(tiny_backbone_dir)), lm.name, texts["de"], registry=registry)
    assert first == pytest.approx(again)
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_pretrained_lm_head_is_used_frozen(tmp_path):
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    from conftest import build_tiny_backbone

    folder = build_tiny_backbone(tmp_path / "tiny-mlm")
    cfg = XLMRobertaConfig.from_pretrained(folder)
    torch.manual_seed(1)
    XLMRobertaForMaskedLM(cfg).save_pretrained(folder)  # the checkpoint now holds lm_head.*
    bb = load_backbone(str(folder))
    head, info = make_head(bb)
    assert info["transform"] == "pretrained" and not info["trained"]
    assert not any(p.requires_grad for p in head.parameters())
    mlm = XLMRobertaForMaskedLM.from_pretrained(folder)
    assert torch.equal(head.dense.weight, mlm.lm_head.dense.weight)


@pytest.mark.parametrize("method", ["bottleneck", "lora"])
def test_task_module_on_language_modules_swaps_per_language_and_reloads(tiny_backbone_dir, tmp_path, texts,
                                                                          registry, method):
    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    en = train_language(bb, "en", texts["en"], method=method, registry=registry, train_config=LM_FAST)
    de = train_language(bb, "de", texts["de"], method=method, registry=registry, train_config=LM_FAST)
    inter = train_module(bb, str(task), name="inter", method=method, registry=registry, train_config=FAST)
    tm = train_module(bb, str(task), name="t-madx", method=method, registry=registry, train_config=FAST,
                      composition=Language() + Stack(inter.name), eval_languages=["en", "de"])
    comp = tm.manifest.composition
    assert comp["kind"] == "language" and comp["modules"] == [inter.name]
    assert comp["languages"] == {"en": en.name, "de": de.name}  # looked up in the registry, then pinned
    # the de test copy equals the en one: only the language module differs between the two scores
    assert tm.predictions["en"] != tm.predictions["de"]
    # evaluated again from the registry: the same composition, the same swap, the same scores
    again = evaluate_module(bb, tm.name, str(task), registry=registry, languages=["en", "de"], update_registry=False)
    for lang, ms in tm.scores.items():
        assert again[lang] == pytest.approx(ms), lang
    # predicting: the language picks the module, and equals what evaluation predicted
    with TaskModule(bb, registry, tm.name, task=str(task)) as mod:
        assert mod.languages == ["de", "en"]
        with pytest.raises(XtlError, match="say which language"):
            mod.predict(["the cat"])
        from adapters_xtl.data import load_examples
        from adapters_xtl.tasks import get_task

        examples = load_examples(get_task(str(task)), "test", "de")
        for lang in ("de", "en"):
            out = mod.predict([e["text"] for e in examples], language=lang)
            rows = tm.predictions[lang]
            assert [o["label"] for o in out] == [r["prediction"] for r in rows]
            assert [o["score"] for o in out] == pytest.approx([r["score"] for r in rows], abs=1e-5)
        with pytest.raises(XtlError, match="no language module for 'fr'"):
            mod.predict(["x"], language="fr")
    # and from the command line: `xtl predict --language` picks the same module
    import io
    import json
    from contextlib import redirect_stderr, redirect_stdout

    from adapters_xtl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(["predict", "--module", tm.name, "--task", str(task), "--backbone", str(tiny_backbone_dir),
                   "--registry", str(registry.root), "--language", "de", "--json",
                   *[a for e in examples for a in ("--text", e["text"])]])
    assert rc == 0, err.getvalue()
    assert [p["label"] for p in json.loads(out.getvalue())] == [r["prediction"] for r in tm.predictions["de"]]
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_language_composition_refusals(tiny_backbone_dir, tmp_path, texts, registry):
    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    train_language(bb, "en", texts["en"], registry=registry, train_config=LM_FAST)
    # no module for de: refused before training, naming the language and how to make one
    with pytest.raises(XtlError, match=r"(?s)no bottleneck language module for 'de'.*train-language --lang de"):
        train_module(bb, str(task), name="t", method="bottleneck", registry=registry, train_config=FAST,
                     composition=Language(), eval_languages=["en", "de"])
    # a task module is not a language module
    inter = train_module(bb, str(task), name="inter", method="bottleneck", registry=registry, train_config=FAST)
    with pytest.raises(XtlError, match="is not a language module"):
        train_module(bb, str(task), name="t", method="bottleneck", registry=registry, train_config=FAST,
                     composition=Language({"de": inter.name}), eval_languages=["en", "de"])


def test_language_module_that_read_the_test_text_is_refused(tiny_backbone_dir, tmp_path, texts, registry):
    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    # the task's test split is never training text, named by task
    with pytest.raises(XtlError, match=r"test split of 'toy-sentiment' in 'de' is the text .* evaluated on") as e:
        train_language(bb, "de", f"{task}:test", registry=registry, train_config=LM_FAST)
    assert "another split" in e.value.fix
    # its train split is accepted as text (the record says where it came from) ...
    from_task = train_language(bb, "en", f"{task}:train", registry=Registry(tmp_path / "other"), train_config=LM_FAST)
    assert from_task.manifest.language_module["text"]["sources"] == [
        {"source": "task", "task": "toy-sentiment", "split": "train", "language": "en"}]
    # ... and a file that copies test sentences is refused when it would be evaluated with them
    train_language(bb, "en", texts["en"], registry=registry, train_config=LM_FAST)
    test_lines = [line.split("\t")[1] for line in (tmp_path / "toy" / "test.tsv").read_text().splitlines()[1:]]
    leaky = tmp_path / "leaky.txt"
    leaky.write_text("\n".join(["es regnet heute"] * 30 + test_lines[:3]), encoding="utf-8")
    train_language(bb, "de", leaky, registry=registry, train_config=LM_FAST)
    with pytest.raises(XtlError, match=r"has read toy-sentiment's test text in 'de': \d+ of its lines") as e:
        train_module(bb, str(task), name="t", method="bottleneck", registry=registry, train_config=FAST,
                     composition=Language(), eval_languages=["en", "de"])
    assert "other text" in e.value.fix


def test_train_language_bad_input(tiny_backbone_dir, tmp_path, registry):
    bb = load_backbone(str(tiny_backbone_dir))
    good = tmp_path / "ok.txt"
    good.write_text("kula chakula kizuri\n" * 50, encoding="utf-8")
    with pytest.raises(XtlError, match="unknown language code 'xq'"):
        train_language(bb, "xq", good, registry=registry)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(XtlError, match="no text"):
        train_language(bb, "sw", empty, registry=registry)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café chakula\n".encode("latin-1"))
    with pytest.raises(XtlError, match="not UTF-8 text"):
        train_language(bb, "sw", latin, registry=registry)
    with pytest.raises(XtlError, match="neither a file nor a task"):
        train_language(bb, "sw", tmp_path / "missing.txt", registry=registry)
    with pytest.raises(XtlError, match="bottleneck or lora modules, not 'ia3'"):
        train_language(bb, "sw", good, method="ia3", registry=registry)
    assert registry.names() == []  # nothing half-written


def test_cli_train_language_and_its_errors(tiny_backbone_dir, tmp_path):
    from adapters_xtl.cli import main

    reg = tmp_path / "reg"
    text = tmp_path / "sw.txt"
    text.write_text("\n".join(TINY_TEXT), encoding="utf-8")
    base = ["train-language", "--backbone", str(tiny_backbone_dir), "--registry", str(reg)]
    assert main(base + ["--lang", "sw", "--text", str(text), "--steps", "4", "--batch-size", "4"]) == 0
    assert Registry(reg).manifest("mlm-sw-bottleneck").task == "mlm:sw"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe broken")
    for args in (["--lang", "xq", "--text", str(text)], ["--lang", "sw", "--text", str(bad)],
                 ["--lang", "sw", "--text", str(tmp_path / "none.txt")], ["--lang", "sw", "--text", "sib200:test"],
                 ["--lang", "sw", "--text", str(text), "--steps", "0"]):
        assert main(base + args) == 2, args


def test_recipe_language_modules_axis(tmp_path):
    from adapters_xtl.recipe import Recipe, expand

    recipe = Recipe(name="madx", targets=[{"task": "sib200", "languages": ["en", "sw"]}],
                    compositions=["single"], language_modules=["none", "madx", {"en": "mlm-en@1", "sw": "mlm-sw@2"}])
    cells = expand(recipe).cells
    assert [c.composition for c in cells] == ["single", "single+madx", "single+madx"]
    assert len({c.key for c in cells}) == 3
    assert Block.from_dict(cells[1].composition_spec) == Language()
    assert Block.from_dict(cells[2].composition_spec) == Language({"en": "mlm-en@1", "sw": "mlm-sw@2"})
    plain = Recipe(name="madx", targets=[{"task": "sib200"}])
    assert plain.language_modules == ["none"] and expand(plain).cells[0].composition == "single"
    with pytest.raises(Exception, match="not a language code"):
        Recipe(name="x", targets=[{"task": "sib200"}], language_modules=[{"Swahili!": "m"}])


def test_grid_with_and_without_language_modules_reports_both(tiny_backbone_dir, tmp_path, texts, registry):
    import yaml

    from adapters_xtl.evaluation import read_results
    from adapters_xtl.recipe import check_recipe, expand, load_recipe
    from adapters_xtl.reporting import score_table
    from adapters_xtl.runner import run_plan

    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    for lang in ("en", "de"):
        train_language(bb, lang, texts[lang], method="lora", registry=registry, train_config=LM_FAST)
    r = tmp_path / "madx.yaml"
    r.write_text(yaml.safe_dump({
        "name": "madx", "backbone": str(tiny_backbone_dir), "method": "lora",
        "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "lr": 0.005, "log_every": 3},
        "targets": [{"task": str(task), "languages": ["en", "de"]}], "compositions": ["single"],
        "language_modules": ["none", "madx"]}))
    plan = expand(load_recipe(r))
    rows = read_results(run_plan(plan, tmp_path / "run", registry=registry, backbone=bb))
    assert {row["composition"] for row in rows} == {"single", "single+madx"}
    assert all(row["ci_low"] <= row["score"] <= row["ci_high"] for row in rows if row["metric"] == "accuracy")
    table = score_table(rows)["toy-sentiment"]
    assert ("single+madx", "none") in table["rows"] and ("single+madx", "none") in table["gain"]
    madx = [m for m in registry.list() if (m.composition or {}).get("kind") == "language"]
    assert len(madx) == 1 and set(madx[0].composition["languages"]) == {"en", "de"}
    # a method without language modules is refused when the recipe is checked
    r.write_text(r.read_text().replace("method: lora", "method: ia3"))
    with pytest.raises(XtlError, match="cannot run on language modules"):
        check_recipe(load_recipe(r))
