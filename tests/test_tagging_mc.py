"""Readers (CoNLL-U, IOB2, SQuAD), the tagging format and the multiple-choice format, on tiny models."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

import adapters_xtl.formats.multiple_choice  # noqa: F401  (registers `multiple_choice`)
import adapters_xtl.formats.tagging  # noqa: F401  (registers `tagging`)
from adapters_xtl import readers
from adapters_xtl.backbone import load_backbone
from adapters_xtl.data import load_examples, to_roles
from adapters_xtl.errors import XtlError
from adapters_xtl.formats import get_format
from adapters_xtl.formats.tagging import IGNORE, tagging_kind
from adapters_xtl.pipeline import evaluate_module, train_module
from adapters_xtl.tasks import TaskSpec, get_task
from adapters_xtl.trainer import TrainConfig

FAST = TrainConfig(steps=6, batch_size=8, eval_every=3, lr=5e-3, log_every=3)

CONLLU = """\
# newdoc id = d1
# sent_id = s1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
4.1\tknows\tknow\tVERB\tVB\t_\t_\t_\t0:root\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# text = Hi
1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_
"""  # the last sentence has no sent_id and no closing blank line

UNER = """\
# sent_id = a-1
# text = Anna lives in New York
1\tAnna\tB-PER\t-\tann
2\tlives\tO\t-\t-
3\tin\tO\t-\t-
4\tNew\tB-LOC\t-\tann
5\tYork\tI-LOC\t-\tann

# text = Hi
1\tHi\tO\t-\t-
"""


def tiny_tok(tiny_backbone_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_backbone_dir)


def spec_of(**kw) -> TaskSpec:
    base = {"name": "t", "splits": {"train": {"path": "x.tsv"}}}
    return TaskSpec(**{**base, **kw})


# ------------------------------------------------------------------------------------------ readers
def test_conllu_keeps_syntactic_words_and_skips_ranges_and_empty_nodes(tmp_path):
    p = tmp_path / "a.conllu"
    p.write_text(CONLLU)
    rows = readers.read("conllu", p)
    assert rows == [
        {"id": "s1", "tokens": ["I", "do", "n't", "know", "."], "tags": ["PRON", "AUX", "PART", "VERB", "PUNCT"]},
        {"id": 1, "tokens": ["Hi"], "tags": ["INTJ"]},
    ]


@pytest.mark.parametrize("bad, line, what", [
    ("1\tI\tI\tPRON\n", 1, "4 tab-separated columns"),
    ("1\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_\n3\tx\tx\tX\tX\t_\t1\tdep\t_\t_\n", 2, "word ID '3', expected 2"),
    ("1\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_\n1\tx\tx\tX\tX\t_\t1\tdep\t_\t_\n", 2, "missing blank line"),
    ("# c\n1-x\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_\n", 2, "malformed word ID"),
])
def test_conllu_malformed_lines_name_file_and_line(tmp_path, bad, line, what):
    p = tmp_path / "bad.conllu"
    p.write_text(bad)
    with pytest.raises(XtlError) as e:
        readers.read("conllu", p)
    assert str(p) in str(e.value) and f"line {line}" in str(e.value) and what in str(e.value)


def test_iob2_uner_layout(tmp_path):
    p = tmp_path / "a.iob2"
    p.write_text(UNER + "\n\n")
    assert readers.read("iob2", p) == [
        {"id": "a-1", "tokens": ["Anna", "lives", "in", "New", "York"], "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"]},
        {"id": 1, "tokens": ["Hi"], "tags": ["O"]},
    ]
    two = tmp_path / "b.iob2"
    two.write_text("#\tO\nParis\tB-LOC\n")  # two columns; the token `#` is not a comment
    assert readers.read("iob2", two) == [{"id": 0, "tokens": ["#", "Paris"], "tags": ["O", "B-LOC"]}]
    bad = tmp_path / "c.iob2"
    bad.write_text("1\tAnna\tB-PER\nAnna B-PER\n")
    with pytest.raises(XtlError, match=r"c\.iob2: line 2"):
        readers.read("iob2", bad)


def test_squad_one_row_per_question(tmp_path):
    p = tmp_path / "q.json"
    p.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Anna lives in Paris.", "qas": [
            {"id": "q1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 14}]},
            {"id": "q2", "question": "Who?", "answers": [{"text": "Anna", "answer_start": 0}, {"text": "Anna", "answer_start": 0}]},
        ]}]}]}))
    rows = readers.read("squad", p)
    assert [r["id"] for r in rows] == ["q1", "q2"]
    assert rows[0] == {"id": "q1", "context": "Anna lives in Paris.", "question": "Where?",
                       "answers": [{"text": "Paris", "answer_start": 14}], "title": "T"}
    p.write_text(json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "q", "question": "?",
                                                                               "answers": [{"text": "x"}]}]}]}]}))
    with pytest.raises(XtlError, match=r"qas\[0\]\.answers\[0\]"):
        readers.read("squad", p)
    with pytest.raises(XtlError, match="no reader for file format 'conll'"):
        readers.read("conll", p)


def test_real_ud_and_uner_counts(shared_data):
    ud = shared_data / "ud/UD_English-EWT/en_ewt-ud-dev.conllu"
    ner = shared_data / "ner/uner/UNER_English-EWT/en_ewt-ud-dev.iob2"
    if not (ud.exists() and ner.exists()):
        pytest.skip("UD/UNER English-EWT dev not in shared data")
    rows = readers.read("conllu", ud)
    assert len(rows) == 2001 and sum(len(r["tokens"]) for r in rows) == 25147  # manifest: ranges/empty excluded
    rows = readers.read("iob2", ner)
    assert len(rows) == 2001 and {t for r in rows for t in r["tags"]} <= {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"}


# ------------------------------------------------------------------------------------------ tagging
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def test_first_subword_gets_the_label(tiny_backbone_dir):
    tok = tiny_tok(tiny_backbone_dir)
    spec = spec_of(format="tagging", labels=NER_LABELS, columns={"tokens": "tokens", "tags": "tags"})
    words = ["the", "zzqx", "cat", "kula"]
    ex = {"id": "s", "tokens": words, "tags": ["O", "B-PER", "O", "B-LOC"]}
    [f] = get_format("tagging").encode([ex], spec, tok, train=True)
    pieces = tok.convert_ids_to_tokens(f["input_ids"])
    assert pieces[0] == "<s>" and pieces[-1] == "</s>"
    # Metaspace marks the first piece of every word with '▁'; 'zzqx' (unseen letters) splits
    assert sum(p.startswith("▁") for p in pieces) == len(words)
    assert len(pieces) > len(words) + 2
    # by hand, for this tokenizer: words start at pieces 1, 4, 9, 11
    assert pieces == ["<s>", "▁", "t", "he", "▁", "z", "z", "q", "<unk>", "▁c", "at", "▁", "k", "u", "l", "a", "</s>"]
    assert f["labels"] == [IGNORE, 0, IGNORE, IGNORE, 1, IGNORE, IGNORE, IGNORE, IGNORE, 0, IGNORE, 5] + [IGNORE] * 5
    firsts = [i for i, p in enumerate(pieces) if p.startswith("▁")]
    expected = [IGNORE] * len(pieces)
    for i, tag in zip(firsts, ex["tags"]):
        expected[i] = NER_LABELS.index(tag)
    assert f["labels"] == expected
    assert f["labels"][0] == f["labels"][-1] == IGNORE  # specials
    assert f["example"] == 0 and f["words"] == 0


def test_tag_outside_the_label_set_is_an_error_naming_sentence_and_tag(tiny_backbone_dir):
    tok = tiny_tok(tiny_backbone_dir)
    spec = spec_of(format="tagging", labels=NER_LABELS)
    ex = {"id": "hr-7", "tokens": ["Anna", "Zagreb"], "tags": ["B-PER", "B-OTH"]}
    with pytest.raises(XtlError) as e:
        get_format("tagging").encode([ex], spec, tok, train=False)
    msg = str(e.value)
    assert "'hr-7'" in msg and "'B-OTH'" in msg and "word 2" in msg and "B-LOC" in msg and "label_map" in msg
    mapped = spec_of(format="tagging", labels=NER_LABELS, label_map={"B-OTH": "O", "I-OTH": "O"})
    [f] = get_format("tagging").encode([ex], mapped, tok, train=False)
    assert [l for l in f["labels"] if l != IGNORE] == [1, 0]
    with pytest.raises(XtlError, match="2 tokens but 1 tags"):
        get_format("tagging").encode([{"id": 1, "tokens": ["a", "b"], "tags": ["O"]}], spec, tok, train=False)


def test_long_sentences_are_windowed_so_every_word_is_scored(tiny_backbone_dir):
    tok = tiny_tok(tiny_backbone_dir)
    spec = spec_of(format="tagging", labels=NER_LABELS, max_length=12)
    rng = random.Random(0)
    words = [rng.choice(["the", "cat", "zzqx", "kula", "park", ""]) for _ in range(40)]  # "" -> <unk>
    tags = [rng.choice(NER_LABELS) for _ in words]
    ex = [{"id": 0, "tokens": ["hi"], "tags": ["O"]}, {"id": 1, "tokens": words, "tags": tags}]
    feats = get_format("tagging").encode(ex, spec, tok, train=False)
    assert len(feats) > 3 and all(len(f["input_ids"]) <= 12 for f in feats)
    long = [f for f in feats if f["example"] == 1]
    assert [f["words"] for f in long] == sorted(f["words"] for f in long) and long[0]["words"] == 0
    got = [l for f in long for l in f["labels"] if l != IGNORE]
    assert got == [NER_LABELS.index(t) for t in tags]  # every word once, in order
    assert tok.unk_token_id in [i for f in long for i in f["input_ids"]]


def test_tagging_metrics_choice():
    assert tagging_kind(spec_of(format="tagging", labels=NER_LABELS)) == "ner"
    assert tagging_kind(spec_of(format="tagging", labels=["NOUN", "VERB"])) == "pos"
    assert tagging_kind(spec_of(format="tagging", labels=NER_LABELS, metrics=["pos_accuracy"])) == "pos"
    assert tagging_kind(spec_of(format="tagging", labels=["NOUN", "VERB"], metrics=["ner_f1"])) == "ner"
    with pytest.raises(XtlError, match="both NER and POS"):
        tagging_kind(spec_of(format="tagging", labels=NER_LABELS, metrics=["ner_f1", "pos_accuracy"]))


POS_VOCAB = {"DET": ["the", "a"], "NOUN": ["cat", "dog", "park", "mat", "film"], "VERB": ["sat", "runs"],
             "ADP": ["on", "in"], "PUNCT": ["."]}
PERSONS, PLACES = ["Anna", "Hund"], ["Paris", "Park"]


# words whose FIRST sub-word (tiny tokenizer) is distinct, so a per-token head can tell them apart
DISTINCT_VOCAB = {"DET": ["mat", "es"], "NOUN": ["cat", "film", "food", "park"], "VERB": ["has", "chat"],
                  "ADP": ["bugün"], "PUNCT": ["chip"]}


def write_pos_task(root: Path, vocab: dict = POS_VOCAB) -> Path:
    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 40), ("dev", 8), ("test", 10)):
        with open(root / f"{split}.conllu", "w") as f:
            for s in range(n):
                f.write(f"# sent_id = {split}-{s}\n")
                tags = ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN", "PUNCT"][: rng.randint(3, 7)]
                for i, t in enumerate(tags, 1):
                    w = rng.choice(vocab[t])
                    f.write(f"{i}\t{w}\t{w}\t{t}\t_\t_\t0\tdep\t_\t_\n")
                f.write("\n")
    y = root / "pos.yaml"
    y.write_text(f"""
name: toy-pos
format: tagging
columns: {{id: id, tokens: tokens, tags: tags}}
labels: [DET, NOUN, VERB, ADP, PUNCT]
metrics: [pos_accuracy, pos_xtreme_f1]
main_metric: accuracy
max_length: 32
splits:
  train: {{path: "{root}/train.conllu"}}
  validation: {{path: "{root}/dev.conllu"}}
  test: {{path: "{root}/test.conllu"}}
languages: {{en: en, de: en}}
""")
    return y


def write_ner_task(root: Path) -> Path:
    rng = random.Random(2)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 40), ("dev", 8), ("test", 10)):
        with open(root / f"{split}.iob2", "w") as f:
            for s in range(n):
                f.write(f"# sent_id = {split}-{s}\n")
                sent = [(rng.choice(PERSONS), "B-PER"), ("sat", "O"), ("in", "O"), (rng.choice(PLACES), "B-LOC")]
                if rng.random() < 0.5:
                    sent += [("New", "B-LOC"), ("York", "I-LOC")]
                for i, (w, t) in enumerate(sent, 1):
                    f.write(f"{i}\t{w}\t{t}\t-\t-\n")
                f.write("\n")
    y = root / "ner.yaml"
    y.write_text(f"""
name: toy-ner
format: tagging
columns: {{id: id, tokens: tokens, tags: tags}}
labels: [O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC]
metrics: [ner_f1]
max_length: 32
splits:
  train: {{path: "{root}/train.iob2"}}
  validation: {{path: "{root}/dev.iob2"}}
  test: {{path: "{root}/test.iob2"}}
languages: {{en: en, de: en}}
""")
    return y


def test_ner_trains_end_to_end_with_lora(tiny_backbone_dir, tmp_path, registry):
    y = write_ner_task(tmp_path / "ner")
    bb = load_backbone(str(tiny_backbone_dir))
    tm = train_module(bb, str(y), name="toy-ner-lora", method="lora", registry=registry, train_config=FAST)
    assert set(tm.scores) == {"en", "de"}
    for lang in ("en", "de"):
        assert set(tm.scores[lang]) == {"f1", "precision", "recall"}
        assert all(0 <= v <= 100 for v in tm.scores[lang].values())
    assert tm.manifest.head == {"kind": "tagging", "labels": NER_LABELS, "scoring": "ner"}
    losses = [h["loss"] for h in tm.result.history if "loss" in h]
    assert losses and all(math.isfinite(l) for l in losses)
    again = evaluate_module(bb, "toy-ner-lora", str(y), registry=registry)
    assert again.keys() == tm.scores.keys()
    assert all(again[l] == pytest.approx(tm.scores[l]) for l in again)


def test_pos_trains_end_to_end_with_lora(tiny_backbone_dir, tmp_path, registry):
    y = write_pos_task(tmp_path / "pos")
    bb = load_backbone(str(tiny_backbone_dir))
    tm = train_module(bb, str(y), name="toy-pos-lora", method="lora", registry=registry, train_config=FAST)
    for lang in ("en", "de"):
        assert set(tm.scores[lang]) == {"accuracy", "f1_xtreme"}
        assert all(0 <= v <= 100 for v in tm.scores[lang].values())


def test_pos_tagging_learns_a_deterministic_tagset(tiny_backbone_dir, tmp_path, registry):
    """Each toy word has one tag: if labels sat on the wrong sub-words this would not be learnt."""
    y = write_pos_task(tmp_path / "pos", DISTINCT_VOCAB)
    bb = load_backbone(str(tiny_backbone_dir))
    tm = train_module(bb, str(y), name="toy-pos-learn", registry=registry,
                      train_config=TrainConfig(steps=30, batch_size=16, eval_every=30, lr=1e-2, log_every=10))
    assert tm.scores["en"]["accuracy"] >= 90, tm.scores


def test_tagging_scores_every_gold_word(tiny_backbone_dir, tmp_path):
    """Windowed predictions are stitched back: one predicted tag per gold word, for every sentence."""
    from adapters_xtl.model import TaskModel

    y = write_pos_task(tmp_path / "pos")
    spec = get_task(str(y)).model_copy(update={"max_length": 6})
    bb = load_backbone(str(tiny_backbone_dir))
    model = TaskModel(bb, spec).eval()
    ex = load_examples(spec, "test", "en")
    fmt = get_format("tagging")
    feats = fmt.encode(ex, spec, bb.tokenizer, train=False)
    assert len(feats) > len(ex)  # some sentences needed several windows
    pred = fmt.predict_tags(model, feats, ex, spec, batch_size=4)
    assert [len(p) for p in pred] == [len(e["tokens"]) for e in ex]
    assert all(t in spec.labels for p in pred for t in p)
    scores = fmt.score(model, feats, ex, spec, batch_size=4)
    assert 0 <= scores["accuracy"] <= 100


# ------------------------------------------------------------------------------------------ multiple choice
def mc_spec(**kw) -> TaskSpec:
    return spec_of(format="multiple_choice", **kw)


def test_mc_label_resolution_and_errors(tiny_backbone_dir):
    tok = tiny_tok(tiny_backbone_dir)
    fmt = get_format("multiple_choice")
    csqa = {"id": "q", "question": "where?", "choices": {"label": ["A", "B", "C"], "text": ["park", "mat", "cat"]},
            "label": "C"}
    cosmos = {"id": "c", "context": "the cat sat", "question": "why?", "choice0": "a", "choice1": "b",
              "choice2": "c", "choice3": "d", "label": "1"}
    xcopa = {"id": "x", "context": "it rains", "question": "effect", "choice1": "wet", "choice2": "dry", "label": 0}
    one_based = {"id": "s", "choices": ["a", "b", "c"], "label": "3"}
    feats = fmt.encode([csqa, cosmos, xcopa], mc_spec(), tok, train=False)
    assert [f["label"] for f in feats] == [2, 1, 0]
    assert [len(f["choice_ids"]) for f in feats] == [3, 4, 2]
    assert all(f["input_ids"] == max(f["choice_ids"], key=len) for f in feats)
    # the pair is (context, question + choice): the question travels with the choice
    assert feats[1]["choice_ids"][0] == tok("the cat sat", "why? a")["input_ids"]
    assert feats[0]["choice_ids"][2] == tok("where?", "cat")["input_ids"]
    [f] = fmt.encode([one_based], mc_spec(label_map={"1": "0", "2": "1", "3": "2"}), tok, train=False)
    assert f["label"] == 2
    with pytest.raises(XtlError, match=r"'s'.*points at choice 3, but there are 3 choices"):
        fmt.encode([one_based], mc_spec(), tok, train=False)
    with pytest.raises(XtlError, match="names no choice"):
        fmt.encode([{**one_based, "label": "maybe"}], mc_spec(), tok, train=False)
    # a task naming its choice positions declares the count
    [f] = fmt.encode([{**csqa, "label": "B", "choices": ["x", "y", "z"]}], mc_spec(labels=["A", "B", "C"]), tok, train=False)
    assert f["label"] == 1
    with pytest.raises(XtlError, match="has 3 choices, the task declares 5"):
        fmt.encode([csqa], mc_spec(labels=list("ABCDE")), tok, train=False)
    with pytest.raises(XtlError, match="one string"):
        fmt.encode([{"id": 1, "choices": "a,b", "label": 0}], mc_spec(), tok, train=False)
    # trailing empty cells (an empty answer4 column) are fewer choices, not empty ones
    [f] = fmt.encode([{**cosmos, "choice3": ""}], mc_spec(), tok, train=False)
    assert len(f["choice_ids"]) == 3


def test_uneven_choices_are_masked(tiny_backbone_dir):
    from adapters_xtl.model import TaskModel

    bb = load_backbone(str(tiny_backbone_dir))
    spec = mc_spec()
    model = TaskModel(bb, spec).eval()
    fmt = get_format("multiple_choice")
    ex = [{"id": i, "question": "the cat", "choices": ["a dog", "the mat", "the park", "kula"][:k], "label": k - 1}
          for i, k in enumerate([2, 4, 1, 3])]
    feats = fmt.encode(ex, spec, bb.tokenizer, train=True)
    batch = fmt.collate(feats, bb.tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 + 4 + 1 + 3  # padded choices are never encoded
    assert batch["choice_mask"].sum(1).tolist() == [2, 4, 1, 3]
    model.train()
    out = model(batch)
    assert out.shape == (4, 4)
    assert torch.isinf(out[~batch["choice_mask"]]).all() and torch.isfinite(out[batch["choice_mask"]]).all()
    loss = fmt.loss(out, batch)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.head.parameters())
    model.eval()
    scores = fmt.predict(model, feats, batch_size=3)
    assert [len(s) for s in scores] == [2, 4, 1, 3]
    assert 0 <= fmt.score(model, feats, ex, spec, batch_size=3)["accuracy"] <= 100


def write_mc_task(root: Path) -> Path:
    rng = random.Random(3)
    root.mkdir(parents=True, exist_ok=True)
    pool_ = ["a dog runs", "the cat sat", "it rains", "good film", "bad service", "new phone"]
    for split, n in (("train", 32), ("dev", 8), ("test", 10)):
        with open(root / f"{split}.jsonl", "w") as f:
            for i in range(n):
                k = rng.choice([2, 3, 4])
                choices = rng.sample(pool_, k)
                label = rng.randrange(k)
                f.write(json.dumps({"qid": f"{split}{i}", "ctx": "in the park", "q": choices[label],
                                    "endings": choices, "answer": label}) + "\n")
    y = root / "mc.yaml"
    y.write_text(f"""
name: toy-mc
format: multiple_choice
columns: {{id: qid, context: ctx, question: q, choices: endings, label: answer}}
max_length: 32
splits:
  train: {{path: "{root}/train.jsonl"}}
  validation: {{path: "{root}/dev.jsonl"}}
  test: {{path: "{root}/test.jsonl"}}
languages: {{en: en, de: en}}
""")
    return y


def test_mc_trains_end_to_end_with_lora_on_uneven_choices(tiny_backbone_dir, tmp_path, registry):
    y = write_mc_task(tmp_path / "mc")
    bb = load_backbone(str(tiny_backbone_dir))
    tm = train_module(bb, str(y), name="toy-mc-lora", method="lora", registry=registry, train_config=FAST)
    for lang in ("en", "de"):
        assert set(tm.scores[lang]) == {"accuracy"} and 0 <= tm.scores[lang]["accuracy"] <= 100
    losses = [h["loss"] for h in tm.result.history if "loss" in h]
    assert losses and all(math.isfinite(l) for l in losses)
    again = evaluate_module(bb, "toy-mc-lora", str(y), registry=registry)
    assert all(again[l] == pytest.approx(tm.scores[l]) for l in ("en", "de"))


# ------------------------------------------------------------------------------------------ real MC files
def _real_task(tmp_path: Path, shared: Path, body: str) -> TaskSpec:
    y = tmp_path / "real.yaml"
    y.write_text(body.replace("{shared}", str(shared)))
    return get_task(str(y))


def test_commonsenseqa_dev_parses(shared_data, tmp_path, tiny_backbone_dir):
    f = shared_data / "commonsenseqa/dev_rand_split.jsonl"
    if not f.exists():
        pytest.skip("CommonsenseQA dev not in shared data")
    spec = _real_task(tmp_path, shared_data, """
name: csqa
format: multiple_choice
columns: {id: id, question: question, choices: choices, label: answerKey}
splits: {validation: {path: "{shared}/commonsenseqa/dev_rand_split.jsonl"}}
""")
    ex = load_examples(spec, "validation", "en")
    assert len(ex) == 1221
    feats = get_format("multiple_choice").encode(ex, spec, tiny_tok(tiny_backbone_dir), train=False)
    assert len(feats) == 1221 and all(len(f["choice_ids"]) == 5 for f in feats)
    letters = [e["label"] for e in ex]
    assert [f["label"] for f in feats] == ["ABCDE".index(l) for l in letters]
    assert len({f["label"] for f in feats}) == 5


def _comma_columns_supported() -> bool:
    spec = mc_spec()
    try:
        [ex] = to_roles(spec, [{"a": "x", "b": "y", "l": "0"}], "probe", columns={"choices": "a,b", "label": "l"})
    except XtlError:
        return False
    return ex["choices"] == ["x", "y"]


@pytest.mark.parametrize("style", ["numbered", "comma"])
def test_cosmosqa_valid_parses(shared_data, tmp_path, tiny_backbone_dir, style):
    f = shared_data / "cosmosqa/valid.csv"
    if not f.exists():
        pytest.skip("CosmosQA valid.csv not in shared data")
    if style == "comma" and not _comma_columns_supported():
        pytest.skip("data.to_roles does not split comma-separated column lists yet")
    cols = ("{id: id, context: context, question: question, choice0: answer0, choice1: answer1, "
            "choice2: answer2, choice3: answer3, label: label}") if style == "numbered" else \
        '{id: id, context: context, question: question, choices: "answer0,answer1,answer2,answer3", label: label}'
    spec = _real_task(tmp_path, shared_data, f"""
name: cosmosqa
format: multiple_choice
max_length: 64
columns: {cols}
splits: {{validation: {{path: "{{shared}}/cosmosqa/valid.csv"}}}}
""")
    from adapters_xtl.formats.multiple_choice import _choices, _label

    ex = load_examples(spec, "validation", "en")
    assert len(ex) == 2985
    resolved = [_choices(e, spec) for e in ex]  # every example: 4 choices, a 0-based label
    assert all(len(texts) == 4 and letters is None for texts, letters in resolved)
    assert [_label(e, spec, 4, None) for e in ex] == [int(e["label"]) for e in ex]
    # tokenizing all 11940 long pairs with the tiny char-level tokenizer takes ~40 s: a sample
    feats = get_format("multiple_choice").encode(ex[:200], spec, tiny_tok(tiny_backbone_dir), train=False)
    assert len(feats) == 200 and all(len(f["choice_ids"]) == 4 for f in feats)
    assert [f["label"] for f in feats] == [int(e["label"]) for e in ex[:200]]
    assert all(len(s) <= 64 for f in feats for s in f["choice_ids"])
