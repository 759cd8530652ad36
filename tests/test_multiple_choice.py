"""Multiple choice learns, and predicts what it scores (issue 20), on a tiny random XLM-R.

The overfit test is the first check for a format that "stays at chance": a module that cannot
fit sixteen examples has a defect in how choices are encoded, pooled or scored (choices landing
in the wrong columns of a batch, labels paired with the wrong example, a softmax over padding),
not a data or budget problem. Its sibling checks that a rule carried by the choices is learnt
and holds on examples never trained on. The rest pins the inference protocol of formats/base.py.
The real-backbone learning curves are in docs/multiple_choice.md (tests/scripts/mc_curve.py).
"""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path

import pytest
import torch

from adapters_xtl import metrics
from adapters_xtl.backbone import load_backbone
from adapters_xtl.errors import XtlError
from adapters_xtl.formats import get_format
from adapters_xtl.formats.base import Format
from adapters_xtl.model import TaskModel
from adapters_xtl.pipeline import train_module
from adapters_xtl.tasks import TaskSpec, get_task
from adapters_xtl.trainer import TrainConfig

WORDS = "the cat sat on mat a dog runs in park good film bad service new phone rains morning".split()


@pytest.fixture(scope="module")
def backbone(tiny_backbone_dir):
    return load_backbone(str(tiny_backbone_dir), device="cpu")


def spec_of(**kw) -> TaskSpec:
    return TaskSpec(**{"name": "t", "format": "multiple_choice", "splits": {"train": {"path": "x.jsonl"}}, **kw})


def write_task(root: Path, rows: dict[str, list[dict]], **extra) -> str:
    """A JSONL multiple-choice task; `rows` maps split -> examples ({q, endings, answer})."""
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, exs in rows.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in exs))
        splits[split] = {"path": str(root / f"{split}.jsonl")}
    y = root / "task.yaml"
    y.write_text(json.dumps({"name": "toy-mc", "format": "multiple_choice", "max_length": 32,
                             "columns": {"id": "qid", "question": "q", "choices": "endings", "label": "answer"},
                             "splits": splits, **extra}))
    return str(y)


def phrase(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# ------------------------------------------------------------------------------------------ learning
def test_a_tiny_multiple_choice_set_is_fit_to_full_training_accuracy(backbone, tmp_path, registry):
    """Sixteen examples with arbitrary right answers (four choices, the answer's position random):
    only memorising each (question, choice) pair fits them, so every piece has to line up:
    choice order within a batch, labels, the -inf of absent choices, the softmax, the head and
    the LoRA gradients. Scored on the training file itself: this is training accuracy."""
    rng = random.Random(0)
    train = []
    for i in range(16):
        k = rng.choice([3, 4, 4])
        train.append({"qid": f"q{i}", "q": phrase(rng, 3), "endings": [phrase(rng, 2) for _ in range(k)],
                      "answer": rng.randrange(k)})
    y = write_task(tmp_path / "fit", {"train": train, "test": train})
    chance = 100 * sum(1 / len(e["endings"]) for e in train) / len(train)
    cfg = TrainConfig(steps=100, batch_size=8, lr=1e-2, head_lr=5e-2, warmup_ratio=0.05, eval_every=100,
                      eval_examples=None, log_every=10)
    tm = train_module(backbone, y, name="mc-fit", registry=registry, train_config=cfg)
    losses = [h["loss"] for h in tm.result.history if "loss" in h]
    assert tm.scores["en"]["accuracy"] >= 15 / 16 * 100, (tm.scores, losses, chance)
    assert losses[-1] < 0.5 * losses[0], losses  # (training loss, dropout on)


def test_a_rule_carried_by_the_choices_is_learnt_and_holds_on_unseen_examples(backbone, tmp_path, registry):
    """The right choice is the one that says "good"; the questions are noise. Learnt from 48
    examples, it must hold on 24 others far above chance (1/3)."""
    rng = random.Random(1)

    def example(i: int) -> dict:
        k = 3
        endings = [f"{phrase(rng, 1)} bad" for _ in range(k)]
        a = rng.randrange(k)
        endings[a] = f"{phrase(rng, 1)} good"
        return {"qid": f"r{i}", "q": phrase(rng, 3), "endings": endings, "answer": a}

    y = write_task(tmp_path / "rule", {"train": [example(i) for i in range(48)],
                                       "test": [example(100 + i) for i in range(24)]})
    cfg = TrainConfig(steps=40, batch_size=8, lr=1e-2, head_lr=5e-2, eval_every=40, eval_examples=None)
    tm = train_module(backbone, y, name="mc-rule", registry=registry, train_config=cfg)
    assert tm.scores["en"]["accuracy"] >= 90, tm.scores


# ------------------------------------------------------------------------------------------ inference
CSQA = spec_of(columns={"id": "id", "question": "question", "choices": "choices", "label": "answerKey"}, max_length=32)
COSMOS = spec_of(columns={"id": "id", "context": "context", "question": "question", "choice0": "answer0",
                          "choice1": "answer1", "choice2": "answer2", "label": "label"}, max_length=32)


def model_for(backbone, spec, seed=0, sharpen=30.0):
    torch.manual_seed(seed)
    model = TaskModel(backbone, spec).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(sharpen)  # a random head that still tells choices apart
    return model


def questions(n: int, seed: int = 2) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"x{i}", "question": phrase(rng, 4), "choices": [phrase(rng, 2) for _ in range(rng.choice([2, 3, 5]))]}
            for i in range(n)]


def test_predictions_give_one_distribution_over_each_inputs_own_choices(backbone):
    fmt = get_format("multiple_choice")
    model = model_for(backbone, CSQA)
    inputs = questions(9)
    outs = fmt.predict_examples(model, fmt.examples_from_inputs(inputs, CSQA), CSQA, batch_size=4)
    assert len(outs) == len(inputs) and len({o["choice"] for o in outs}) > 1
    for inp, o in zip(inputs, outs):
        assert set(o) == {"choice", "label", "score", "probabilities"}
        assert len(o["probabilities"]) == len(inp["choices"]) and math.isclose(sum(o["probabilities"]), 1.0, rel_tol=1e-6)
        assert o["choice"] == max(range(len(inp["choices"])), key=lambda j: o["probabilities"][j])
        assert o["label"] == inp["choices"][o["choice"]] and o["score"] == o["probabilities"][o["choice"]]
    # batching and order do not change a prediction
    rev = fmt.predict_examples(model, fmt.examples_from_inputs(inputs[::-1], CSQA), CSQA, batch_size=3)
    for a, b in zip(rev[::-1], outs):
        assert a["choice"] == b["choice"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    assert fmt.predict_examples(model, [], CSQA) == []


def test_kept_rows_are_the_predictions_the_accuracy_counts(backbone):
    fmt = get_format("multiple_choice")
    model = model_for(backbone, CSQA, seed=4)
    rng = random.Random(5)
    examples = []
    for e in questions(12, seed=6):
        k = len(e["choices"])
        examples.append({**e, "choices": {"label": list("ABCDE"[:k]), "text": e["choices"]},
                         "label": "ABCDE"[rng.randrange(k)]})
    feats = fmt.encode(examples, CSQA, backbone.tokenizer, train=False)
    rows: list = []
    scores = fmt.score(model, feats, examples, CSQA, batch_size=5, keep=rows)
    assert scores == fmt.score(model, feats, examples, CSQA, batch_size=5)  # keeping changes nothing
    assert [r["id"] for r in rows] == [e["id"] for e in examples]
    assert [r["gold"] for r in rows] == ["ABCDE".index(e["label"]) for e in examples]
    assert 0 < scores["accuracy"] < 100
    assert 100.0 * sum(r["gold"] == r["prediction"] for r in rows) / len(rows) == pytest.approx(scores["accuracy"])
    inputs = [{"question": e["question"], "choices": e["choices"]["text"]} for e in examples]
    outs = fmt.predict_examples(model, fmt.examples_from_inputs(inputs, CSQA), CSQA, batch_size=3)
    assert [o["choice"] for o in outs] == [r["prediction"] for r in rows]
    assert [o["score"] for o in outs] == pytest.approx([r["score"] for r in rows], abs=1e-6)
    assert 100.0 * metrics.choice_accuracy(fmt.predict(model, feats, 4), [r["gold"] for r in rows]) == pytest.approx(scores["accuracy"])


def test_a_tie_goes_to_the_first_choice_in_rows_and_predictions_alike(backbone):
    fmt = get_format("multiple_choice")
    model = model_for(backbone, CSQA, sharpen=0.0)  # every score equal
    ex = [{"id": "t", "question": "the cat", "choices": ["a dog", "the mat", "park"], "label": "2"}]
    rows: list = []
    assert fmt.score(model, fmt.encode(ex, CSQA, backbone.tokenizer, train=False), ex, CSQA, 2, keep=rows) == {"accuracy": 0.0}
    assert rows[0]["prediction"] == 0 and rows[0]["score"] == pytest.approx(1 / 3)
    [o] = fmt.predict_examples(model, fmt.examples_from_inputs(ex, CSQA), CSQA)
    assert o["choice"] == 0 and o["label"] == "a dog"


def test_an_input_cut_at_max_length_is_flagged(backbone):
    fmt = get_format("multiple_choice")
    model = model_for(backbone, COSMOS)
    long_context = " ".join(WORDS * 8)
    inputs = [{"context": "the cat sat", "question": "why?", "choices": ["a dog", "the park"]},
              {"context": long_context, "question": "why?", "choices": ["a dog", "the park", "it rains"]},
              {"context": "", "question": "where", "choices": ["a dog " * 40, "the park"]}]
    outs = fmt.predict_examples(model, fmt.examples_from_inputs(inputs, COSMOS), COSMOS)
    assert [o.get("truncated", False) for o in outs] == [False, True, True]
    assert "truncated" not in outs[0]
    assert [len(o["probabilities"]) for o in outs] == [2, 3, 2]


def test_bad_inputs_name_the_fields_the_task_needs():
    fmt = get_format("multiple_choice")

    def fails(inputs, spec, n, *fields):
        with pytest.raises(XtlError) as e:
            fmt.examples_from_inputs(inputs, spec)
        assert e.value.where == f"input {n}" and e.value.fix
        for f in fields:
            assert repr(f) in str(e.value), (f, str(e.value))

    ok = {"question": "where?", "choices": ["park", "mat"], "id": 3}
    assert fmt.examples_from_inputs([ok], CSQA) == [ok]
    fails(["where is the cat?"], CSQA, 0, "question", "choices")  # a string is not enough
    fails([ok, {"question": "where?"}], CSQA, 1, "choices")
    fails([{"choices": ["a", "b"]}], CSQA, 0, "question")
    fails([{"question": "q", "choices": "park, mat"}], CSQA, 0, "choices")
    fails([{"question": "q", "choices": ["park"]}], CSQA, 0, "choices")
    fails([{"question": "q", "choices": ["park", " "]}], CSQA, 0, "choices")
    fails([{"question": "why?", "choices": ["a", "b"]}], COSMOS, 0, "context")
    fails(["text"], COSMOS, 0, "context", "question", "choices")
    with pytest.raises(XtlError, match="list of inputs"):
        fmt.examples_from_inputs(ok, CSQA)


def test_the_format_implements_the_prediction_protocol():
    cls = type(get_format("multiple_choice"))
    assert cls.examples_from_inputs is not Format.examples_from_inputs
    assert cls.predict_examples is not Format.predict_examples

# ------------------------------------------------------------------------------------------ task defaults
@pytest.mark.parametrize("name", ["hellaswag", "cosmosqa", "commonsenseqa", "cosmosqa-local", "commonsenseqa-local"])
def test_every_multiple_choice_task_sets_defaults_that_learn(name):
    """What issue 20 measured (docs/multiple_choice.md): LoRA at 2e-3 stalls near ln(k) on
    CommonsenseQA while 5e-4 with the one-unit head at 1e-2 learns, so every multiple-choice task
    trains with a moderate LoRA rate and gives its head its own, higher one."""
    spec = get_task(name)
    assert spec.format == "multiple_choice"
    train = TrainConfig.resolve(spec)
    assert train.head_lr is not None and train.head_lr >= 10 * train.lr, (name, train)
    assert train.lr <= 1e-3, (name, train)


def test_the_local_recipes_train_multiple_choice_at_those_rates():
    """A recipe's own `train:` overrides a task's defaults, so the recipes that train an MC
    intermediate module set the rates on it (recipes/local/)."""
    from adapters_xtl.recipe import expand, load_recipe

    root = Path(__file__).resolve().parents[1] / "recipes" / "local"
    for name in ("commonsenseqa.yaml", "cosmosqa.yaml", "mini-xstilts.yaml"):
        mods = [m for m in expand(load_recipe(root / name)).modules if get_task(m.task).format == "multiple_choice"]
        assert mods, name
        for m in mods:
            assert m.train["lr"] <= 1e-3 and m.train["head_lr"] >= 10 * m.train["lr"], (name, m.task, m.train)
            assert m.train["steps"] >= 100, (name, m.task, m.train)
