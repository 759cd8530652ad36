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
    # one backbone per library (peft and adapters wrap the same layers)
    bbs = {"lora": load_backbone(str(tiny_backbone_dir)), "bottleneck": load_backbone(str(tiny_backbone_dir))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, task, method, data_dir in (("cls-lora", cls_task, "lora", None), ("mean-lora", mean_task, "lora", None),
                                             ("ner-lora", ner_task, "lora", None), ("qa-lora", qa_task, "lora", root / "qa"),
                                             ("cls-bn", cls_task, "bottleneck", None),
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
