"""Inference through the formats, on a tiny random XLM-R: user inputs become examples, examples
become one output dict each, and the rows kept while scoring are the predictions the metric used.

Multiple choice has its own tests (its format is implemented separately).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from adapters_xtl import metrics
from adapters_xtl.errors import XtlError
from adapters_xtl.formats import get_format
from adapters_xtl.formats import retrieval as R
from adapters_xtl.formats import span_qa as sq
from adapters_xtl.formats.base import Format, encoder_limit
from adapters_xtl.model import Encoder, TaskModel
from adapters_xtl.tasks import TaskSpec

WORDS = "the cat sat on the mat a dog runs in park il pleut ce matin es regnet heute kula hava".split()
SENTENCES = [
    "the cat sat on the mat", "a dog runs in the park", "der Hund läuft im Park", "le chat est sur le tapis",
    "el perro corre en el parque", "good film great acting", "terrible food and bad service",
    "it rains in the morning", "football match tonight", "new phone has a fast chip",
]
LONG = " ".join(SENTENCES * 6)  # well over 128 tokens of the tiny tokenizer


@pytest.fixture(scope="module")
def backbone(tiny_backbone_dir):
    from adapters_xtl.backbone import load_backbone

    return load_backbone(str(tiny_backbone_dir), device="cpu")


def spec_of(**kw) -> TaskSpec:
    return TaskSpec(**{"name": "t", "splits": {"train": {"path": "x.tsv"}}, **kw})


def model_for(backbone, spec, seed=0, sharpen: float = 1.0):
    """A random head; `sharpen` scales its weights so that predictions differ between inputs."""
    torch.manual_seed(seed)
    model = TaskModel(backbone, spec).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(sharpen)
    return model


def assert_input_error(call, n: int, *fields: str):
    with pytest.raises(XtlError) as e:
        call()
    assert e.value.where == f"input {n}" and e.value.fix
    for f in fields:
        assert repr(f) in str(e.value), (f, str(e.value))


# ------------------------------------------------------------------------------------------ classification
LABELS = ["neg", "neu", "pos"]
SINGLE = spec_of(format="classification", labels=LABELS, max_length=64, columns={"text": "t", "label": "l"})
PAIR = spec_of(format="classification", labels=LABELS, max_length=64,
               columns={"text": "a", "text_pair": "b", "label": "l"})


def test_classification_outputs_one_distribution_per_input_in_order(backbone):
    model = model_for(backbone, SINGLE, seed=3, sharpen=40.0)
    fmt = get_format("classification")
    texts = SENTENCES + [""]
    outs = fmt.predict_examples(model, fmt.examples_from_inputs(texts, SINGLE), SINGLE, batch_size=3)
    assert len(outs) == len(texts) and len({o["label"] for o in outs}) > 1
    for o in outs:
        assert set(o) == {"label", "score", "probabilities"}
        assert list(o["probabilities"]) == LABELS and math.isclose(sum(o["probabilities"].values()), 1.0, rel_tol=1e-5)
        assert o["label"] == max(LABELS, key=lambda l: o["probabilities"][l]) and o["score"] == o["probabilities"][o["label"]]
    rev = fmt.predict_examples(model, fmt.examples_from_inputs(texts[::-1], SINGLE), SINGLE, batch_size=4)
    assert [o["label"] for o in rev] == [o["label"] for o in outs][::-1]
    for a, b in zip(rev[::-1], outs):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    assert fmt.predict_examples(model, [], SINGLE) == []


def test_classification_predictions_are_the_ones_the_metric_counts(backbone):
    model = model_for(backbone, PAIR, seed=2, sharpen=40.0)
    fmt = get_format("classification")
    examples = [{"id": f"p{i}", "text": a, "text_pair": b, "label": LABELS[i % 3]}
                for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[3:] + SENTENCES[:3]))]
    feats = fmt.encode(examples, PAIR, backbone.tokenizer, train=False)
    rows: list = []
    scores = fmt.score(model, feats, examples, PAIR, batch_size=4, keep=rows)
    assert scores == fmt.score(model, feats, examples, PAIR, batch_size=4)  # keeping changes nothing
    assert [r["id"] for r in rows] == [e["id"] for e in examples]
    assert [r["gold"] for r in rows] == [e["label"] for e in examples]
    assert 100.0 * metrics.accuracy([r["prediction"] for r in rows], [r["gold"] for r in rows]) == scores["accuracy"]
    assert 100.0 * metrics.macro_f1([r["prediction"] for r in rows], [r["gold"] for r in rows]) == pytest.approx(scores["macro_f1"])
    inputs = [f"{e['text']}\t{e['text_pair']}" for e in examples]  # the tab form of a pair
    outs = fmt.predict_examples(model, fmt.examples_from_inputs(inputs, PAIR), PAIR, batch_size=3)
    assert len({o["label"] for o in outs}) > 1 and 0 < scores["accuracy"] < 100
    assert [o["label"] for o in outs] == [r["prediction"] for r in rows]
    assert [LABELS[p] for p in fmt.predict(model, feats, 2)] == [o["label"] for o in outs]
    assert [o["score"] for o in outs] == pytest.approx([r["score"] for r in rows], abs=1e-5)


def test_classification_flags_inputs_cut_at_max_length_or_the_tokenizers_limit(backbone):
    fmt = get_format("classification")
    model = model_for(backbone, SINGLE)
    outs = fmt.predict_examples(model, fmt.examples_from_inputs(["the cat", LONG, "a dog runs"], SINGLE), SINGLE)
    assert [o.get("truncated", False) for o in outs] == [False, True, False]
    exact = backbone.tokenizer("the cat sat on the mat a dog")["input_ids"]  # fits exactly at its own length
    at_limit = SINGLE.model_copy(update={"max_length": len(exact)})
    [o] = fmt.predict_examples(model, fmt.examples_from_inputs(["the cat sat on the mat a dog"], at_limit), at_limit)
    assert "truncated" not in o
    huge = SINGLE.model_copy(update={"max_length": 512})  # beyond the tokenizer's 128: cut there
    assert encoder_limit(huge, backbone.tokenizer) == 128
    outs = fmt.predict_examples(model, fmt.examples_from_inputs([LONG, "hi"], huge), huge)
    assert outs[0]["truncated"] is True and "truncated" not in outs[1]
    pair = fmt.predict_examples(model_for(backbone, PAIR), fmt.examples_from_inputs([{"text": "hi", "text_pair": LONG}], PAIR), PAIR)
    assert pair[0]["truncated"] is True


def test_classification_bad_inputs_name_the_missing_field():
    fmt = get_format("classification")
    assert fmt.examples_from_inputs(["a b", {"text": "c", "id": 7}], SINGLE) == [{"text": "a b"}, {"text": "c", "id": 7}]
    assert fmt.examples_from_inputs(["x\ty\tz"], PAIR) == [{"text": "x", "text_pair": "y\tz"}]
    assert_input_error(lambda: fmt.examples_from_inputs(["ok\tfine", "no tab"], PAIR), 1, "text_pair")
    assert_input_error(lambda: fmt.examples_from_inputs([{"text": "only one"}], PAIR), 0, "text_pair")
    assert_input_error(lambda: fmt.examples_from_inputs(["x", {"sentence": "y"}], SINGLE), 1, "text")
    assert_input_error(lambda: fmt.examples_from_inputs([{"text": "a", "text_pair": "b"}], SINGLE), 0, "text_pair")
    assert_input_error(lambda: fmt.examples_from_inputs([3], SINGLE), 0, "text")
    with pytest.raises(XtlError, match="list of inputs"):
        fmt.examples_from_inputs("a lone string", SINGLE)


# ------------------------------------------------------------------------------------------ tagging
NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
NER_SPEC = spec_of(format="tagging", labels=NER, max_length=10)
POS_SPEC = spec_of(format="tagging", labels=["NOUN", "VERB", "DET"], max_length=10)


def tagged(n: int, labels, seed=0) -> list[dict]:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 14))]
        out.append({"id": f"s{i}", "tokens": words, "tags": [rng.choice(labels) for _ in words]})
    return out


def test_tagging_outputs_one_tag_and_probability_per_word_windowed_never_truncated(backbone):
    model = model_for(backbone, NER_SPEC, seed=1)
    fmt = get_format("tagging")
    long = " ".join(WORDS * 3)  # many windows of 10 tokens
    inputs = ["the cat sat", long, {"tokens": ["kula", "\u200b", "hava"], "id": "z"}, ""]
    examples = fmt.examples_from_inputs(inputs, NER_SPEC)
    assert examples[0] == {"tokens": ["the", "cat", "sat"]} and examples[2]["id"] == "z"
    outs = fmt.predict_examples(model, examples, NER_SPEC, batch_size=2)
    assert len(outs) == len(inputs)
    for e, o in zip(examples, outs):
        assert set(o) == {"tokens", "tags", "scores"}  # never `truncated`
        assert o["tokens"] == e["tokens"] and len(o["tags"]) == len(o["scores"]) == len(e["tokens"])
        assert all(t in NER for t in o["tags"]) and all(0.0 < p <= 1.0 for p in o["scores"])
    assert outs[2]["tokens"][1] == "\u200b"  # predicted through <unk>, reported as given
    assert outs[3] == {"tokens": [], "tags": [], "scores": []}
    assert len(fmt._features([list(examples[1]["tokens"])], [[0] * len(examples[1]["tokens"])], NER_SPEC,
                             backbone.tokenizer)) > 3


@pytest.mark.parametrize("spec", [NER_SPEC, POS_SPEC], ids=["ner", "pos"])
def test_tagging_kept_rows_are_the_predictions_the_metric_counts(backbone, spec):
    model = model_for(backbone, spec, seed=2)
    fmt = get_format("tagging")
    examples = tagged(12, spec.labels) + [{"id": "empty", "tokens": [], "tags": []}]
    feats = fmt.encode(examples, spec, backbone.tokenizer, train=False)
    rows: list = []
    scores = fmt.score(model, feats, examples, spec, batch_size=3, keep=rows)
    assert scores == fmt.score(model, feats, examples, spec, batch_size=5)
    assert [r["id"] for r in rows] == [e["id"] for e in examples]
    assert [r["prediction"] for r in rows] == fmt.predict_tags(model, feats, examples, spec, 4)
    scored = [r for r in rows if r["gold"]]
    pred, gold = [r["prediction"] for r in scored], [r["gold"] for r in scored]
    if spec is NER_SPEC:
        assert 100.0 * metrics.ner_f1(pred, gold)["f1"] == scores["f1"]
    else:
        assert 100.0 * metrics.pos_accuracy(pred, gold) == scores["accuracy"]
    outs = fmt.predict_examples(model, fmt.examples_from_inputs([{"tokens": e["tokens"]} for e in examples], spec), spec)
    assert [o["tags"] for o in outs] == [r["prediction"] for r in rows]
    assert [o["scores"] for o in outs] == [pytest.approx(r["score"], abs=1e-5) for r in rows]


def test_tagging_bad_inputs_name_the_field():
    fmt = get_format("tagging")
    assert fmt.examples_from_inputs([{"tokens": "a  b"}], NER_SPEC) == [{"tokens": ["a", "b"]}]
    assert_input_error(lambda: fmt.examples_from_inputs(["ok", {"words": ["a"]}], NER_SPEC), 1, "tokens")
    assert_input_error(lambda: fmt.examples_from_inputs([{"tokens": 5}], NER_SPEC), 0, "tokens")


# ------------------------------------------------------------------------------------------ span QA
QA = TaskSpec(name="tiny-qa", format="span_qa", max_length=64,
              defaults={"doc_stride": 16, "max_query_length": 16, "max_answer_length": 30})
CONTEXT = " ".join(SENTENCES * 2) + " the winner is the big red dog. " + " ".join(SENTENCES)


def qa_examples() -> list[dict]:
    out = []
    for i, (q, a) in enumerate([("who sat?", "cat"), ("where?", "park"), ("what?", "big red dog"), ("when?", "morning")]):
        ctx = CONTEXT if i == 2 else " ".join(SENTENCES[i:] + SENTENCES[:i])
        out.append({"id": f"q{i}", "question": q, "context": ctx,
                    "answers": [{"text": a, "answer_start": ctx.index(a)}]})
    return out


def test_span_qa_answers_sit_at_their_offset_with_a_probability(backbone):
    model = model_for(backbone, QA, seed=4)
    fmt = get_format("span_qa")
    examples = qa_examples()
    inputs = [{"question": e["question"], "context": e["context"]} for e in examples]
    outs = fmt.predict_examples(model, fmt.examples_from_inputs(inputs, QA), QA, batch_size=3)
    assert len(outs) == len(inputs)
    for e, o in zip(examples, outs):
        assert set(o) == {"answer", "score", "start"}  # a long context is strided, not cut
        assert o["answer"] and e["context"][o["start"]: o["start"] + len(o["answer"])] == o["answer"]
        assert 0.0 < o["score"] <= 1.0
    feats = fmt.encode(examples, QA, backbone.tokenizer, train=False)
    assert [o["answer"] for o in outs] == fmt.predict(model, feats, examples, QA, 2)
    rows: list = []
    scores = fmt.score(model, feats, examples, QA, 4, keep=rows)
    assert scores == fmt.score(model, feats, examples, QA, 4)
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    assert [r["prediction"] for r in rows] == [o["answer"] for o in outs]
    assert [r["score"] for r in rows] == pytest.approx([o["score"] for o in outs], abs=1e-5)
    again = metrics.squad_scores({i: r["prediction"] for i, r in enumerate(rows)}, {i: r["gold"] for i, r in enumerate(rows)})
    assert again["exact_match"] == scores["exact_match"] and again["f1"] == scores["f1"]


def test_span_qa_probability_is_the_spans_share_of_its_window():
    """One window: the answer's score is softmax(start) x softmax(end) over the context tokens."""

    class StubModel:  # fixed (start, end) logits per position, padding masked as the head does
        device, pad_id = torch.device("cpu"), 1

        def __call__(self, batch):
            out = torch.tensor(rows, dtype=torch.float)[None]
            return out.masked_fill((batch["attention_mask"] == 0).unsqueeze(-1), -1e9)

    ctx = "aa bb cc dd"
    examples = [{"id": "x", "context": ctx, "question": "q"}]
    feat = {"input_ids": [100, 5, 2, 7, 7, 7, 7], "offsets": [(0, 0), (0, 1), (0, 0), (0, 2), (3, 5), (6, 8), (9, 11)],
            "context_span": (3, 6), "example_index": 0, "example_id": "x"}
    rows = [(0, 0), (50, 50), (0, 0), (3, 0), (0, 2), (1, 1), (0, 0)]
    [a] = sq.SpanQA().decode(StubModel(), [feat], examples, QA, 1)
    s, e = torch.tensor([3.0, 0, 1, 0]).softmax(0), torch.tensor([0.0, 2, 1, 0]).softmax(0)
    assert (a.text, a.start) == ("aa bb", 0) and a.prob == pytest.approx(float(s[0] * e[1]))


def test_span_qa_flags_a_cut_question_and_rejects_inputs_without_question_or_context(backbone):
    fmt = get_format("span_qa")
    model = model_for(backbone, QA)
    long_q = " ".join(["what is it"] * 20) + "?"
    inputs = [{"question": long_q, "context": SENTENCES[0]}, {"question": "who?", "context": SENTENCES[1], "id": 9}]
    examples = fmt.examples_from_inputs(inputs, QA)
    assert examples[1]["id"] == 9
    outs = fmt.predict_examples(model, examples, QA)
    assert outs[0]["truncated"] is True and "truncated" not in outs[1]
    assert_input_error(lambda: fmt.examples_from_inputs(["where is the cat?"], QA), 0, "question", "context")
    assert_input_error(lambda: fmt.examples_from_inputs([inputs[1], {"question": "q"}], QA), 1, "context")
    assert_input_error(lambda: fmt.examples_from_inputs([{"context": "c"}], QA), 0, "question")


# ------------------------------------------------------------------------------------------ retrieval
RET = TaskSpec(name="tiny-tatoeba", format="retrieval", max_length=32, languages={"de": "de"})


def test_retrieval_embeddings_are_the_ones_scoring_uses(backbone):
    fmt = get_format("retrieval")
    enc = Encoder(backbone)
    examples = fmt.examples_from_inputs(SENTENCES + [{"text": LONG, "id": 1}], RET)
    outs = fmt.predict_examples(enc, examples, RET, batch_size=4)
    assert len(outs) == len(examples) and all(len(o["embedding"]) == backbone.hidden_size for o in outs)
    want = R.embed_spec(enc, [e["text"] for e in examples], RET, batch_size=3)
    assert torch.allclose(torch.tensor([o["embedding"] for o in outs]), want, atol=1e-5)
    assert [o.get("truncated", False) for o in outs] == [False] * len(SENTENCES) + [True]
    other = RET.model_copy(update={"retrieval_layer": 0, "pooling": "cls"})
    [o] = fmt.predict_examples(enc, fmt.examples_from_inputs([SENTENCES[0]], other), other)
    assert torch.allclose(torch.tensor(o["embedding"]), R.embed_spec(enc, [SENTENCES[0]], other)[0], atol=1e-5)
    assert_input_error(lambda: fmt.examples_from_inputs(["ok", {"sentence": "x"}], RET), 1, "text")


def test_retrieval_kept_rows_give_back_pair_accuracy_and_mining_scores(backbone):
    fmt = get_format("retrieval")
    enc = Encoder(backbone)
    src = SENTENCES
    tgt = SENTENCES[:5] + [s.upper() for s in SENTENCES[5:]]
    rows: list = []
    s = fmt.score_pairs(enc, src, tgt, RET, keep=rows)
    assert s == fmt.score_pairs(enc, src, tgt, RET)
    assert len(rows) == 2 * len(src) and {r["direction"] for r in rows} == {"xx2en", "en2xx"}
    for d in ("xx2en", "en2xx"):
        mine = [r for r in rows if r["direction"] == d]
        assert [r["gold"] for r in mine] == list(range(len(src)))
        assert 100.0 * sum(r["gold"] == r["prediction"] for r in mine) / len(mine) == pytest.approx(s[f"accuracy_{d}"])
    assert 100.0 * sum(r["gold"] == r["prediction"] for r in rows) / len(rows) == pytest.approx(s["accuracy"])
    assert all(-1.0 - 1e-9 <= r["score"] <= 1.0 + 1e-9 for r in rows)

    mining = RET.model_copy(update={"retrieval_mode": "mining"})
    xx = [(f"x{i}", t) for i, t in enumerate(SENTENCES[:7])]
    en = [(f"e{i}", t) for i, t in enumerate(SENTENCES[:5] + ["hava bugün çok güzel", "kula chakula kizuri"])]
    gold = [(f"x{i}", f"e{i}") for i in range(6)]  # x5/e5 are not translations: never mined as such
    rows = []
    s = fmt.score_mining(enc, xx, en, gold, mining, keep=rows)
    assert s == fmt.score_mining(enc, xx, en, gold, mining)
    mined = {(r["id"], r["prediction"]): r["score"] for r in rows if r["prediction"] is not None}
    assert mined and all(r["score"] is None for r in rows if r["prediction"] is None)
    gold_back = {(r["id"], g) for r in rows for g in r["gold"]}
    assert gold_back == set(gold)
    res = metrics.bucc_f1(mined, sorted(gold_back))
    assert {k: res[k] for k in ("f1", "precision", "recall")} == s


def test_the_protocol_is_implemented_by_every_format_here():
    for name in ("classification", "tagging", "span_qa", "retrieval", "multiple_choice"):
        cls = type(get_format(name))
        assert cls.examples_from_inputs is not Format.examples_from_inputs, name
        assert cls.predict_examples is not Format.predict_examples, name


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
