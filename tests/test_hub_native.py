"""Pushed modules are ordinary peft / adapters repos: plain peft or adapters code, with no
adapters_xtl, loads them from the (local) Hub and predicts what `TaskModule.predict` predicts."""

from __future__ import annotations

import ast
import re
import warnings

import pytest
import torch

from adapters_xtl.backbone import load_backbone
from adapters_xtl.inference import TaskModule
from adapters_xtl.pipeline import train_module
from adapters_xtl.store.registry import Registry
from adapters_xtl.store.sharing import push
from adapters_xtl.trainer import TrainConfig
from test_core import write_toy_task
from test_hub import LocalHub, hub  # noqa: F401  (the fixture)

QUICK = TrainConfig(steps=6, batch_size=8, eval_every=6, lr=2e-2, log_every=3)
TEXTS = ["the cat sat on the mat", "terrible food and bad service", "good film great acting in the park", "a dog"]


@pytest.fixture(scope="module")
def bench(tiny_backbone_dir, tmp_path_factory):
    """One registry with a LoRA / bottleneck module per head kind, trained a few steps."""
    from test_span_qa import write_task as write_qa_task
    from test_tagging_mc import write_ner_task

    root = tmp_path_factory.mktemp("native")
    reg = Registry(root / "registry")
    cls_task = write_toy_task(root / "cls", extra_yaml="pooling: cls")
    mean_task = write_toy_task(root / "mean")
    ner_task = write_ner_task(root / "ner")
    (root / "qa").mkdir()
    qa_task = write_qa_task(root / "qa", "tiny-squad")
    # one backbone per library (peft's LoRA, its IA3 and adapters each wrap the same layers)
    bbs = {m: load_backbone(str(tiny_backbone_dir)) for m in ("lora", "ia3", "bottleneck")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, task, method, data_dir in (("cls-lora", cls_task, "lora", None), ("mean-lora", mean_task, "lora", None),
                                             ("ner-lora", ner_task, "lora", None), ("qa-lora", qa_task, "lora", root / "qa"),
                                             ("cls-bn", cls_task, "bottleneck", None), ("cls-ia3", cls_task, "ia3", None),
                                             ("ner-bn", ner_task, "bottleneck", None)):
            train_module(bbs[method], str(task), name=name, method=method, registry=reg, train_config=QUICK,
                         **({"data_dir": data_dir} if data_dir else {}))
    return reg, bbs, {"cls": cls_task, "mean": mean_task, "ner": ner_task, "qa": qa_task}


def xtl_predict(bench, name, task, inputs):
    reg, bbs, _ = bench
    bb = bbs[reg.manifest(name).method]
    with TaskModule(bb, reg, name, task=str(task)) as tm:
        return tm.predict(inputs)


def xtl_logits(bench, name, task, batch):
    reg, bbs, _ = bench
    bb = bbs[reg.manifest(name).method]
    with TaskModule(bb, reg, name, task=str(task)) as tm:
        tm.model.eval()
        with torch.no_grad():
            return tm.model({k: v.to(bb.device) for k, v in batch.items()}).cpu()


def tokenizer(tiny_backbone_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_backbone_dir))


def python_blocks(card_text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card_text, flags=re.S)


# ------------------------------------------------------------------------------------ peft


def test_peft_sequence_classification_from_the_hub_predicts_like_xtl(hub, bench, tiny_backbone_dir):  # noqa: F811
    from peft import PeftModel
    from transformers import XLMRobertaForSequenceClassification

    reg, _, tasks = bench
    push(reg, "cls-lora", repo_id="xtl-lab/cls-lora")
    files = hub.files("xtl-lab/cls-lora")
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "weights.safetensors",
            "README.md"} <= set(files)
    assert not [f for f in files if f.startswith(("peft/", "xtl_head"))]  # the head is peft's, at the root

    labels = ["positive", "negative"]
    base = XLMRobertaForSequenceClassification.from_pretrained(
        str(tiny_backbone_dir), num_labels=2, id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    model = PeftModel.from_pretrained(base, "xtl-lab/cls-lora").eval()
    batch = tokenizer(tiny_backbone_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    ours = xtl_predict(bench, "cls-lora", tasks["cls"], TEXTS)
    for p, o in zip(probs, ours):
        assert model.config.id2label[int(p.argmax())] == o["label"]
        assert p.tolist() == pytest.approx([o["probabilities"][x] for x in labels], abs=1e-5)
    # the trained head is what peft loaded (not a fresh one): its weights equal ours
    head = reg.load("cls-lora")[1]
    assert torch.equal(model.base_model.model.classifier.modules_to_save["default"].out_proj.weight,
                       head["head.out.weight"])


def test_an_ia3_classifier_loads_with_peft_and_predicts_like_xtl(hub, bench, tiny_backbone_dir):  # noqa: F811
    from peft import PeftModel
    from transformers import XLMRobertaForSequenceClassification

    reg, _, tasks = bench
    push(reg, "cls-ia3", repo_id="xtl-lab/cls-ia3")
    model = PeftModel.from_pretrained(
        XLMRobertaForSequenceClassification.from_pretrained(str(tiny_backbone_dir), num_labels=2), "xtl-lab/cls-ia3").eval()
    assert model.peft_config["default"].peft_type.value == "IA3"
    with torch.no_grad():
        probs = model(**tokenizer(tiny_backbone_dir)(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)
    ours = xtl_predict(bench, "cls-ia3", tasks["cls"], TEXTS)
    for p, o in zip(probs, ours):
        assert p.tolist() == pytest.approx([o["probabilities"][x] for x in ("positive", "negative")], abs=1e-5)


def test_the_cards_peft_snippet_runs_and_agrees(hub, bench, tiny_backbone_dir):  # noqa: F811
    """The card's own code, with the local backbone folder for its `path/to/backbone`."""
    reg, _, tasks = bench
    push(reg, "cls-lora", repo_id="xtl-lab/cls-snippet")
    from huggingface_hub import ModelCard

    card = ModelCard(hub.files("xtl-lab/cls-snippet")["README.md"].decode())
    assert "base_model" not in card.data.to_dict()  # a local backbone folder has no Hub id
    assert "has no `base_model`" in card.text
    code = python_blocks(card.text)[-1].replace("path/to/backbone", str(tiny_backbone_dir))
    assert "PeftModel.from_pretrained(model, \"xtl-lab/cls-snippet\")" in code
    scope: dict = {}
    exec(compile(code, "card", "exec"), scope)
    model, tok = scope["model"], scope["tokenizer"]
    with torch.no_grad():
        probs = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)
    ours = xtl_predict(bench, "cls-lora", tasks["cls"], TEXTS)
    assert [model.config.id2label[int(p.argmax())] for p in probs] == [o["label"] for o in ours]


def test_a_mean_pooled_head_rides_beside_and_the_card_applies_it(hub, bench, tiny_backbone_dir):  # noqa: F811
    reg, _, tasks = bench
    push(reg, "mean-lora", repo_id="xtl-lab/mean-lora")
    files = hub.files("xtl-lab/mean-lora")
    assert {"adapter_config.json", "adapter_model.safetensors", "xtl_head.safetensors", "xtl_head.json"} <= set(files)
    from huggingface_hub import ModelCard

    card = ModelCard(files["README.md"].decode())
    assert "mean-pooled states" in card.text
    code = python_blocks(card.text)[-1].replace("path/to/backbone", str(tiny_backbone_dir))
    scope: dict = {}
    exec(compile(code, "card", "exec"), scope)
    probs = scope["predict"](TEXTS)
    ours = xtl_predict(bench, "mean-lora", tasks["mean"], TEXTS)
    for p, o in zip(probs, ours):
        assert p.tolist() == pytest.approx([o["probabilities"][x] for x in ("positive", "negative")], abs=1e-5)


def test_peft_token_classification_predicts_like_xtl(hub, bench, tiny_backbone_dir):  # noqa: F811
    from peft import PeftModel
    from transformers import XLMRobertaForTokenClassification

    reg, _, tasks = bench
    push(reg, "ner-lora", repo_id="xtl-lab/ner-lora")
    labels = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    base = XLMRobertaForTokenClassification.from_pretrained(str(tiny_backbone_dir), num_labels=len(labels),
                                                            id2label=dict(enumerate(labels)))
    model = PeftModel.from_pretrained(base, "xtl-lab/ner-lora").eval()
    sentences = [["Anna", "sat", "in", "Paris"], ["Hund", "sat", "in", "New", "York"]]
    tok = tokenizer(tiny_backbone_dir)
    ours = xtl_predict(bench, "ner-lora", tasks["ner"], [{"tokens": s} for s in sentences])
    for words, o in zip(sentences, ours):
        enc = tok(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]
        first = [enc.word_ids().index(i) for i in range(len(words))]
        assert [labels[int(logits[t].argmax())] for t in first] == o["tags"]
        ref = xtl_logits(bench, "ner-lora", tasks["ner"], {"input_ids": enc["input_ids"],
                                                          "attention_mask": enc["attention_mask"]})[0]
        assert torch.allclose(logits, ref, atol=1e-5)


def test_peft_question_answering_gives_our_span_logits(hub, bench, tiny_backbone_dir):  # noqa: F811
    from peft import PeftModel
    from transformers import XLMRobertaForQuestionAnswering

    reg, _, tasks = bench
    push(reg, "qa-lora", repo_id="xtl-lab/qa-lora")
    model = PeftModel.from_pretrained(XLMRobertaForQuestionAnswering.from_pretrained(str(tiny_backbone_dir)),
                                      "xtl-lab/qa-lora").eval()
    tok = tokenizer(tiny_backbone_dir)
    enc = tok(["what is it?", "who runs?"], ["the dog runs in the park", "a cat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    ref = xtl_logits(bench, "qa-lora", tasks["qa"], {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    real = enc["attention_mask"].bool()
    assert torch.allclose(out.start_logits[real], ref[..., 0][real], atol=1e-5)
    assert torch.allclose(out.end_logits[real], ref[..., 1][real], atol=1e-5)


# ------------------------------------------------------------------------------------ adapters


def test_adapters_classification_from_the_hub_predicts_like_xtl(hub, bench, tiny_backbone_dir):  # noqa: F811
    from adapters import AutoAdapterModel

    reg, _, tasks = bench
    push(reg, "cls-bn", repo_id="xtl-lab/cls-bn")
    files = hub.files("xtl-lab/cls-bn")
    assert {"adapter_config.json", "head_config.json", "pytorch_adapter.bin", "pytorch_model_head.bin"} <= set(files)
    model = AutoAdapterModel.from_pretrained(str(tiny_backbone_dir))
    name = model.load_adapter("xtl-lab/cls-bn", set_active=True)
    model.eval()
    batch = tokenizer(tiny_backbone_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    ours = xtl_predict(bench, "cls-bn", tasks["cls"], TEXTS)
    assert name == "cls_bn"
    assert model.heads[name].config["label2id"] == {"positive": 0, "negative": 1}
    for p, o in zip(probs, ours):
        assert p.tolist() == pytest.approx([o["probabilities"][x] for x in ("positive", "negative")], abs=1e-5)


def test_adapters_tagging_head_gives_our_logits(hub, bench, tiny_backbone_dir):  # noqa: F811
    from adapters import AutoAdapterModel

    reg, _, tasks = bench
    push(reg, "ner-bn", repo_id="xtl-lab/ner-bn")
    model = AutoAdapterModel.from_pretrained(str(tiny_backbone_dir))
    model.load_adapter("xtl-lab/ner-bn", set_active=True)
    model.eval()
    enc = tokenizer(tiny_backbone_dir)(["Anna sat in Paris", "Hund sat"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    ref = xtl_logits(bench, "ner-bn", tasks["ner"], dict(enc))
    real = enc["attention_mask"].bool()
    assert torch.allclose(logits[real], ref[real], atol=1e-5)


# ------------------------------------------------------------------------------------ cards


def test_card_snippets_compile_for_every_kind(bench):
    from adapters_xtl.store.card import render_card
    from adapters_xtl.store.native import plan

    reg, _, _ = bench
    for m in reg.list():
        tensors = reg.load(m.name)[1]
        m = m.model_copy(update={"hub": {"repo_id": f"xtl-lab/{m.name}", "revision": "a" * 40}})
        m.__pydantic_extra__["card"] = {"native": plan(m, tensors).to_dict()}
        for block in python_blocks(render_card(m)):
            ast.parse(block)


def _xnli_manifest(**kw):
    from adapters_xtl.store.manifest import BackboneFingerprint, Manifest

    fields = dict(name="xnli-lora", task="xnli", format="classification", method="lora",
                  head={"kind": "classification", "labels": ["entailment", "neutral", "contradiction"],
                        "pooling": "cls"},
                  backbone=BackboneFingerprint(model_id="xlmr-e5-small", weights_sha256="ab" * 32),
                  scores={"en": {"accuracy": 80.0}, "de": {"accuracy": 71.5}, "sw": {"accuracy": 61.25},
                          "avg": {"accuracy": 70.9}})
    return Manifest(**{**fields, **kw})


def test_card_metadata_is_what_huggingface_hub_reads(registry):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData, metadata_eval_result

    from adapters_xtl.store.card import parse_front_matter, render_card
    from adapters_xtl.store.cardfacts import card_facts
    from adapters_xtl.store.native import NativePlan

    m = _xnli_manifest(hub={"repo_id": "my-lab/xnli-lora", "revision": "c" * 40})
    native = NativePlan("peft", model_class="XLMRobertaForSequenceClassification", task_type="SEQ_CLS",
                        head_in_library=True, labels=m.head["labels"])
    m.__pydantic_extra__["card"] = card_facts(registry, m, native.to_dict())
    text = render_card(m)
    card = ModelCard(text)
    data = card.data
    assert (data.library_name, data.base_model, data.base_model_relation, data.pipeline_tag) == (
        "peft", "intfloat/multilingual-e5-small", "adapter", "text-classification")
    assert data.datasets == ["nyu-mll/glue", "facebook/xnli"]  # MNLI trains it, XNLI scores it
    assert data.license == "other" and data.license_name == "cc-by-nc-4.0-and-mit-and-other"
    assert data.language == ["en", "de", "sw"] and "lora" in data.tags
    by_lang = {r.dataset_config: r for r in data.eval_results}
    assert set(by_lang) == {"en", "de", "sw"}  # one per language and metric; no average
    de = by_lang["de"]
    assert isinstance(de, EvalResult) and (de.dataset_type, de.dataset_split, de.metric_type, de.metric_value) == (
        "facebook/xnli", "test", "accuracy", 71.5)
    assert de.metric_name == "accuracy (de, zero-shot)" and by_lang["en"].metric_name == "accuracy (en)"
    # the same entry huggingface_hub writes for one result
    ref = metadata_eval_result(model_pretty_name="xnli-lora", task_pretty_name="xnli (classification)",
                               task_id="text-classification", metrics_pretty_name="accuracy (de, zero-shot)",
                               metrics_id="accuracy", metrics_value=71.5, dataset_pretty_name="XNLI (de, zero-shot)",
                               dataset_id="facebook/xnli", dataset_config="de", dataset_split="test")
    ours = [r for r in parse_front_matter(text)["model-index"][0]["results"] if r["dataset"]["config"] == "de"]
    assert ours == ref["model-index"][0]["results"]
    # and the metadata survives huggingface_hub's own round trip
    meta = parse_front_matter(text)
    kwargs = {k: v for k, v in meta.items() if k != "model-index"}
    again = ModelCardData(**kwargs, model_name=data.model_name, eval_results=data.eval_results).to_dict()
    assert again == meta
    assert "zero-shot cross-lingual transfer" in card.text and "facebook/xnli`: cc-by-nc-4.0" in card.text
    assert "XLMRobertaForSequenceClassification.from_pretrained(" in card.text and "num_labels=len(labels)" in card.text


def test_a_module_on_xtreme_data_claims_no_licence(registry):
    """google/xtreme carries one licence per subset (the Hub lists apache-2.0, cc-by-4.0,
    cc-by-2.0 and more), so a card claims none for it instead of the wrong one."""
    from adapters_xtl.store.cardfacts import card_facts

    m = _xnli_manifest(task="udpos", data_revisions={"google/xtreme": "a" * 40})
    facts = card_facts(registry, m, {})
    assert "google/xtreme" in facts["datasets"] and facts["licenses"]["google/xtreme"] is None
    assert "license" not in facts


def test_a_stacked_module_card_names_its_parts_in_order(registry, tiny_backbone_dir):
    import torch as _t

    from adapters_xtl.store.card import render_card
    from adapters_xtl.store.cardfacts import card_facts
    from adapters_xtl.store.native import plan

    inter = _xnli_manifest(name="mnli-lora", task="mnli")
    registry.save(inter, {"module.x": _t.zeros(1)})
    registry.set_hub("mnli-lora", "1", {"repo_id": "my-lab/mnli-lora", "revision": "d" * 40})
    m = _xnli_manifest(composition={"kind": "stack", "modules": ["mnli-lora@1", "other@3"]})
    p = plan(m, {"module.a": _t.zeros(1), "head.out.weight": _t.zeros(1)})
    assert p.library is None and p.parts == ["mnli-lora@1", "other@3"]
    m.__pydantic_extra__["card"] = card_facts(registry, m, p.to_dict())
    text = render_card(m)
    assert "library_name" not in text.split("\n---\n")[0]  # no root export to load
    assert "1. `mnli-lora@1` (mnli, lora) — [my-lab/mnli-lora](https://huggingface.co/my-lab/mnli-lora/tree/" in text
    assert "2. `other@3` — not on the Hub" in text
    assert "There is no peft / adapters export of this module: it was trained as a stack" in text


# ------------------------------------------------------------------------------------ results dataset


def _write_run(folder, seed: int, langs=("en", "de", "sw")):
    import json

    folder.mkdir(parents=True)
    rows = []
    for comp, inter in (("single", "none"), ("stack", "mnli")):
        for lang in langs:
            rows.append({"module": f"xnli-{comp}-{seed}@1", "task": "xnli", "target": "xnli", "language": lang,
                         "metric": "accuracy", "score": 50.0 + seed + len(lang) + (comp == "stack"), "n": 40,
                         "ci_low": 40.0, "ci_high": 60.0, "cell": f"c{comp}{seed}", "format": "classification",
                         "composition": comp, "intermediate_task": inter, "intermediate": inter,
                         "backbone": "xlmr-e5-small@38d3931c76e4/none", "method": "lora", "seed": seed})
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"cut by a ki')
    return rows


def test_report_push_publishes_results_that_pool_across_runs(hub, tmp_path, capsys):  # noqa: F811
    from datasets import load_dataset
    from huggingface_hub import DatasetCard, hf_hub_download

    from adapters_xtl.cli import main
    from adapters_xtl.reporting.hub_results import KEY, push_results

    first = _write_run(tmp_path / "lab-a", seed=1)
    done = push_results(tmp_path / "lab-a", "xtl-lab/xnli-results")
    assert done["rows"] == len(first) == 6 and done["path"] == "data/lab-a.parquet"
    files = hub.files("datasets/xtl-lab/xnli-results")
    assert "xtl-lab/xnli-results" not in hub.repos  # a dataset repo, not a model repo
    assert {"README.md", "data/lab-a.parquet"} <= set(files)

    # another lab's grid, through the CLI: its own file beside the first
    _write_run(tmp_path / "lab-b", seed=2, langs=("en", "de"))
    assert main(["report", str(tmp_path / "lab-b"), "--push", "xtl-lab/xnli-results"]) == 0
    assert "pushed 4 result rows to dataset xtl-lab/xnli-results" in capsys.readouterr().out
    files = hub.files("datasets/xtl-lab/xnli-results")
    assert {"data/lab-a.parquet", "data/lab-b.parquet"} <= set(files)

    card = DatasetCard(files["README.md"].decode())
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}]
    assert "adapters_xtl" in card.data.tags and 'load_dataset("xtl-lab/xnli-results"' in card.text
    local = [hf_hub_download("xtl-lab/xnli-results", f"data/{run}.parquet", repo_type="dataset",
                             cache_dir=str(tmp_path / "cache")) for run in ("lab-a", "lab-b")]
    pooled = load_dataset("parquet", data_files=local, split="train", cache_dir=str(tmp_path / "ds-cache"))
    assert len(pooled) == 10 and set(pooled["run"]) == {"lab-a", "lab-b"}
    assert len({tuple(r[k] for k in KEY) for r in pooled}) == 10  # the key tells every row apart
    row = next(r for r in pooled if r["run"] == "lab-a" and r["language"] == "sw" and r["composition"] == "stack")
    assert (row["score"], row["seed"], row["intermediate"], row["backbone"]) == (
        54.0, 1, "mnli", "xlmr-e5-small@38d3931c76e4/none")
    assert pooled.features["seed"].dtype == "int64" and pooled.features["score"].dtype == "float64"


def test_report_push_bad_input(hub, tmp_path, capsys):  # noqa: F811
    from adapters_xtl.cli import main
    from adapters_xtl.errors import XtlError
    from adapters_xtl.reporting.hub_results import push_results

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.jsonl").write_text("")
    with pytest.raises(XtlError, match="has no results"):
        push_results(tmp_path / "empty", "xtl-lab/r")
    _write_run(tmp_path / "run", seed=1)
    hub.log.clear()
    assert main(["report", str(tmp_path / "run"), "--push", "not-a-repo-id"]) == 2
    assert "invalid Hub repo id" in capsys.readouterr().err
    assert not (tmp_path / "run" / "report.md").exists() and hub.log == []
    with pytest.raises(XtlError, match="cannot name a file"):
        push_results(tmp_path / "run", "xtl-lab/r", run_name="../x")


def test_a_stacked_module_is_pushed_and_pulled_with_its_parts(hub, bench, tmp_path):  # noqa: F811
    from huggingface_hub import ModelCard

    from adapters_xtl.store.sharing import pull

    reg, bbs, tasks = bench
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_module(bbs["lora"], str(tasks["mean"]), name="inter-lora", method="lora", registry=reg,
                     train_config=QUICK)
        train_module(bbs["lora"], str(tasks["cls"]), name="stack-lora", method="lora", registry=reg,
                     train_config=QUICK, composition={"kind": "stack", "modules": ["inter-lora"]})
    part = reg.manifest("inter-lora")
    assert part.hub is None
    pushed = push(reg, "stack-lora", repo_id="xtl-lab/stack-lora")  # the part goes first, to xtl-lab/inter-lora
    assert "xtl-lab/inter-lora" in hub.repos and reg.manifest("inter-lora").hub["repo_id"] == "xtl-lab/inter-lora"
    files = hub.files("xtl-lab/stack-lora")
    assert "adapter_config.json" not in files  # alone it computes nothing
    card = ModelCard(files["README.md"].decode())
    assert f"1. `inter-lora@{part.version}` (toy-sentiment, lora) — [xtl-lab/inter-lora]" in card.text
    assert "composition-stack" in card.data.tags

    other = Registry(tmp_path / "other")
    got = pull(other, "xtl-lab/stack-lora")
    assert got.hub["revision"] == pushed.hub["revision"]
    again = other.manifest("inter-lora", part.version)  # under the name@version the stack names
    assert again.files["weights.safetensors"] == part.files["weights.safetensors"]
    texts = TEXTS[:2]
    with TaskModule(bbs["lora"], reg, "stack-lora", task=str(tasks["cls"])) as tm:
        want = tm.predict(texts)
    with TaskModule(bbs["lora"], other, f"stack-lora@{got.version}", task=str(tasks["cls"])) as tm:
        assert tm.predict(texts) == want
    assert pull(other, "xtl-lab/stack-lora") == other.manifest("stack-lora", got.version)  # again: a no-op


# ------------------------------------------------------------------------------------ import back


def test_a_hub_native_repo_imports_back_with_its_head(hub, bench):  # noqa: F811
    from adapters_xtl.store.sharing import import_module

    reg, bbs, tasks = bench
    for name, task in (("cls-lora", "cls"), ("ner-lora", "ner"), ("qa-lora", "qa")):
        push(reg, name, repo_id=f"xtl-lab/{name}-imp")
        got = import_module(reg, f"xtl-lab/{name}-imp", task=str(tasks[task]), backbone=bbs["lora"], name=f"{name}-imp")
        assert got.imported["head"] == "peft" and got.method_config == reg.manifest(name).method_config
        a, b = reg.load(name)[1], reg.load(f"{name}-imp")[1]
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_peft_saved_sequence_classifier_imports_with_its_head(tiny_backbone_dir, tmp_path, registry, bench):
    from peft import LoraConfig, get_peft_model
    from transformers import XLMRobertaForSequenceClassification

    from adapters_xtl.errors import XtlError
    from adapters_xtl.store.sharing import import_module

    _, bbs, tasks = bench
    torch.manual_seed(3)
    model = XLMRobertaForSequenceClassification.from_pretrained(str(tiny_backbone_dir), num_labels=2)
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                  target_modules=["query", "value"]))
    peft_model.save_pretrained(str(tmp_path / "p"))  # modules_to_save: classifier (+ peft's "score")
    m = import_module(registry, tmp_path / "p", task=str(tasks["cls"]), backbone=bbs["lora"], name="theirs")
    head = registry.load("theirs")[1]
    saved = peft_model.base_model.model.classifier.modules_to_save["default"]
    assert m.head["pooling"] == "cls" and torch.equal(head["head.dense.weight"], saved.dense.weight)
    assert torch.equal(head["head.out.bias"], saved.out_proj.bias)
    with pytest.raises(XtlError, match="reads the <s> token"):  # our mean-pooled task cannot use it
        import_module(registry, tmp_path / "p", task=str(tasks["mean"]), backbone=bbs["lora"], name="theirs2")


def test_export_refuses_a_stacked_module(bench, tmp_path):
    from adapters_xtl.errors import XtlError
    from adapters_xtl.store.convert import export_module

    reg, bbs, tasks = bench
    if "stack-lora" not in {m.name for m in reg.list()}:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_module(bbs["lora"], str(tasks["cls"]), name="stack-lora", method="lora", registry=reg,
                         train_config=QUICK, composition={"kind": "stack", "modules": ["mean-lora"]})
    with pytest.raises(XtlError, match="trained as a stack over"):
        export_module(reg, "stack-lora", tmp_path / "out", fmt="peft")
    assert not (tmp_path / "out").exists()


def test_hostile_card_facts_stay_inert():
    """The `card` facts travel in pulled manifests: any text in them must stay inert too."""
    from markdown_it import MarkdownIt

    from adapters_xtl.store.card import front_matter, parse_front_matter, render_card

    bad = 'x"y\'z\n---\nevil: 1\n```\n<img src=x onerror=alert(1)> [l](http://e) `t`'
    m = _xnli_manifest(composition={"kind": "stack", "modules": [bad, "ok@1"]},
                       hub={"repo_id": "my-lab/x", "revision": "c" * 40})
    m.__pydantic_extra__["card"] = {
        "datasets": [bad, "facebook/xnli"], "license": bad, "licenses": {bad: bad},
        "eval": {"dataset": bad, "name": bad, "configs": {"de": bad}, "splits": {"de": bad}},
        "native": {"library": bad, "model_class": bad, "labels": [bad], "why_not": bad, "head_in_library": True},
        "parts": [{"ref": bad, "task": bad, "method": bad, "hub": {"repo_id": bad, "revision": bad}},
                  {"ref": "ok@1", "hub": {"repo_id": "my-lab/ok", "revision": bad}}]}
    card = render_card(m)
    assert parse_front_matter(card) == front_matter(m) and "evil" not in parse_front_matter(card)
    assert parse_front_matter(card)["datasets"] == ["facebook/xnli"]
    body = card.split("\n---\n", 1)[1]
    assert not [line for line in body.splitlines() if line.startswith(("---", "evil", "<img"))]
    for block in python_blocks(card):
        ast.parse(block)
    html = MarkdownIt("commonmark").enable("table").render(body)
    assert "<img" not in html and '<a href="http://e"' not in html
    assert '<a href="https://huggingface.co/my-lab/ok">' in html  # a bad revision is dropped, the repo kept


def test_a_quantized_backbone_is_named_in_the_how_to():
    from adapters_xtl.store.card import render_card
    from adapters_xtl.store.manifest import BackboneFingerprint

    m = _xnli_manifest(backbone=BackboneFingerprint(model_id="xlm-roberta-base", weights_sha256="ab" * 32,
                                                    quantization="4bit"))
    assert "quantized to `4bit`" in render_card(m) and "quantized to" not in render_card(_xnli_manifest())


def test_a_multiple_choice_head_beside_is_applied_by_the_cards_snippet(hub, bench, tiny_backbone_dir, tmp_path):  # noqa: F811
    from huggingface_hub import ModelCard

    from test_tagging_mc import write_mc_task

    reg, bbs, _ = bench
    task = write_mc_task(tmp_path / "mc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_module(bbs["lora"], str(task), name="mc-lora", method="lora", registry=reg, train_config=QUICK)
    push(reg, "mc-lora", repo_id="xtl-lab/mc-lora")
    card = ModelCard(hub.files("xtl-lab/mc-lora")["README.md"].decode())
    assert "pool through a pooler" in card.text
    scope: dict = {}
    exec(compile(python_blocks(card.text)[-1].replace("path/to/backbone", str(tiny_backbone_dir)), "card", "exec"),
         scope)
    question, choices = "what is it", ["a dog runs", "the cat sat", "it rains"]
    got = scope["choose"]("in the park", [f"{question} {c}" for c in choices])
    ours = xtl_predict(bench, "mc-lora", task, [{"context": "in the park", "question": question, "choices": choices}])
    assert got.tolist() == pytest.approx(ours[0]["probabilities"], abs=1e-5)


def test_export_hub_writes_what_a_push_uploads_and_plain_peft_loads_it(hub, bench, tiny_backbone_dir, tmp_path,  # noqa: F811
                                                                       capsys):
    """`xtl registry export NAME DIR --format hub`: the repo a push would make, as a folder (to
    inspect, or upload by other means); the same file names as the pushed repo, the card naming
    --repo-id, and a root that `PeftModel.from_pretrained(base, DIR)` loads to our predictions."""
    from peft import PeftModel
    from transformers import XLMRobertaForSequenceClassification

    from adapters_xtl.cli import main
    from adapters_xtl.store.exports import MARKER

    reg, _, tasks = bench
    out = tmp_path / "hub-folder"
    assert main(["registry", "export", "cls-lora", str(out), "--format", "hub", "--repo-id", "xtl-lab/cls-copy",
                 "--registry", str(reg.root)]) == 0
    push(reg, "cls-lora", repo_id="xtl-lab/cls-pushed")
    assert {p.name for p in out.iterdir()} - {MARKER} == set(hub.files("xtl-lab/cls-pushed")) - {".gitattributes"}
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "xtl-lab/cls-copy" in card and "library_name: peft" in card

    labels = ["positive", "negative"]
    base = XLMRobertaForSequenceClassification.from_pretrained(
        str(tiny_backbone_dir), num_labels=2, id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    model = PeftModel.from_pretrained(base, str(out)).eval()
    batch = tokenizer(tiny_backbone_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    for p, o in zip(probs, xtl_predict(bench, "cls-lora", tasks["cls"], TEXTS)):
        assert p.tolist() == pytest.approx([o["probabilities"][x] for x in labels], abs=1e-5)

    capsys.readouterr()
    assert main(["registry", "export", "cls-lora", str(tmp_path / "x"), "--format", "hub", "--base-model", "b",
                 "--registry", str(reg.root)]) == 2
    assert "--base-model" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["registry", "export", "cls-lora", str(tmp_path / "y"), "--format", "hubb",
                 "--registry", str(reg.root)]) == 2
    assert "hub" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["registry", "export", "cls-lora", str(tmp_path / "z"), "--format", "peft", "--repo-id", "a/b",
                 "--registry", str(reg.root)]) == 2
    assert "--repo-id" in capsys.readouterr().err and not (tmp_path / "z").exists()
