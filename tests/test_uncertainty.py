"""Scores from kept rows, bootstrap intervals, paired gains, seed intervals and p-value corrections.

The first test runs every format on a tiny random XLM-R through `evaluate(..., predictions=)` and
checks that the rows give back every reported metric (to 1e-9), by the official metric functions
(`metric_from_rows`) and by the vectorised per-unit statistic the bootstrap resamples
(`compile_rows(...).value()`). The rest are pure: the vectorised statistic of a resample equals the
official metric on that resample written out, the intervals have the width theory says, degenerate
inputs give clear results, and Holm/BH match a hand computation.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings

import numpy as np
import pytest
import torch

from adapters_xtl import metrics
from adapters_xtl.metrics import uncertainty as U
from adapters_xtl.metrics._row_stats import compile_rows, weighted_bucc
from adapters_xtl.tasks import TaskSpec

WORDS = "the cat sat on mat a dog runs in park il pleut ce matin es regnet heute kula hava good film".split()


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------------------------------ tiny models
@pytest.fixture(scope="module")
def backbone(tiny_backbone_dir):
    from adapters_xtl.backbone import load_backbone

    return load_backbone(str(tiny_backbone_dir), device="cpu")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _phrase(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _task_files(tmp_path) -> dict[str, tuple[TaskSpec, list[str], str | None]]:
    """name -> (spec, languages, MLQA language argument per language or None) with files written."""
    rng = random.Random(0)
    langs = {"en": "en", "de": "de"}
    out = {}
    for lang in langs:
        _jsonl(tmp_path / f"cls.{lang}.jsonl", [{"id": f"c{i}", "a": _phrase(rng, 5), "b": _phrase(rng, 4),
                                                  "l": rng.choice(["neg", "neu", "pos"])} for i in range(40)])
        ner, pos = [], []
        for i in range(30):
            words = [rng.choice(WORDS) for _ in range(rng.randint(0 if i == 3 else 1, 12))]
            ner.append({"id": f"s{i}", "tokens": words,
                        "tags": [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC"]) for _ in words]})
            pos.append({"id": f"s{i}", "tokens": words, "tags": [rng.choice(["NOUN", "VERB", "DET"]) for _ in words]})
        _jsonl(tmp_path / f"ner.{lang}.jsonl", ner)
        _jsonl(tmp_path / f"pos.{lang}.jsonl", pos)
        qa = []
        for i in range(16):
            ctx = _phrase(rng, rng.randint(3, 9))
            ws = ctx.split()
            a = rng.randrange(len(ws))
            ans = " ".join(ws[a: a + rng.randint(1, 3)])
            qa.append({"id": f"q{i}", "question": _phrase(rng, 3) + "?", "context": ctx,
                       "answers": [{"text": ans, "answer_start": ctx.index(ans)}, {"text": ws[0], "answer_start": 0}]})
        _jsonl(tmp_path / f"qa.{lang}.jsonl", qa)
        mc = []
        for i in range(24):
            k = rng.choice([2, 3, 4])
            mc.append({"qid": f"m{i}", "q": _phrase(rng, 4), "endings": [_phrase(rng, 2) for _ in range(k)],
                       "answer": rng.randrange(k)})
        _jsonl(tmp_path / f"mc.{lang}.jsonl", mc)
        src = [_phrase(rng, 5) for _ in range(20)]
        tgt = [s if j % 3 else _phrase(rng, 5) for j, s in enumerate(src)]  # a third are not translations
        _jsonl(tmp_path / f"ret.{lang}.jsonl", [{"t": a, "u": b} for a, b in zip(src, tgt)])
    # BUCC layout for the mining mode: gold pairs share their text, distractors around them
    d = tmp_path / "bucc2018"
    d.mkdir()
    gold_text = [_phrase(rng, 6) for _ in range(12)]
    xx = gold_text + [_phrase(rng, 6) for _ in range(8)]
    en = [t if j % 4 else _phrase(rng, 6) for j, t in enumerate(gold_text)] + [_phrase(rng, 6) for _ in range(10)]
    (d / "de-en.test.de").write_text("".join(f"de-{i:09d}\t{t}\n" for i, t in enumerate(xx)))
    (d / "de-en.test.en").write_text("".join(f"en-{i:09d}\t{t}\n" for i, t in enumerate(en)))
    (d / "de-en.test.gold").write_text("".join(f"de-{i:09d}\ten-{i:09d}\n" for i in range(12)))

    def spec(name, fmt, file, **kw):
        return TaskSpec(name=name, format=fmt, languages=langs, max_length=32,
                        splits={"test": {"path": str(tmp_path / file), "file_format": "jsonl"}}, **kw)

    out["classification"] = (spec("tiny-cls", "classification", "cls.{code}.jsonl", labels=["neg", "neu", "pos"],
                                  columns={"id": "id", "text": "a", "text_pair": "b", "label": "l"}), None)
    cols = {"id": "id", "tokens": "tokens", "tags": "tags"}
    out["ner"] = (spec("tiny-ner", "tagging", "ner.{code}.jsonl", labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
                       columns=cols, metrics=["ner_f1"]), None)
    out["pos"] = (spec("tiny-pos", "tagging", "pos.{code}.jsonl", labels=["NOUN", "VERB", "DET"], columns=cols,
                       metrics=["pos_accuracy", "pos_xtreme_f1"]), None)
    qa_cols = {"id": "id", "question": "question", "context": "context", "answers": "answers"}
    qa_kw = dict(columns=qa_cols, defaults={"doc_stride": 8, "max_query_length": 8})
    out["squad"] = (spec("tiny-xquad", "span_qa", "qa.{code}.jsonl", **qa_kw), None)
    out["mlqa"] = (spec("tiny-mlqa", "span_qa", "qa.{code}.jsonl", metrics=["mlqa"], **qa_kw), "mlqa")
    out["mc"] = (spec("tiny-mc", "multiple_choice", "mc.{code}.jsonl",
                      columns={"id": "qid", "question": "q", "choices": "endings", "label": "answer"}), None)
    out["pairs"] = (spec("tiny-tatoeba", "retrieval", "ret.{code}.jsonl", columns={"text": "t", "text_pair": "u"}),
                    None)
    tsv = {"file_format": "tsv", "header": False}
    mining = TaskSpec(name="tiny-bucc", format="retrieval", retrieval_mode="mining", languages={"de": "de"},
                      max_length=32, columns={"id": "id", "text": "text"},
                      splits={"test": {"path": "{data_dir}/bucc2018/{code}-en.test.{code}", "fieldnames": ["id", "text"], **tsv},
                              "test_pivot": {"path": "{data_dir}/bucc2018/{code}-en.test.en", "fieldnames": ["id", "text"], **tsv},
                              "test_gold": {"path": "{data_dir}/bucc2018/{code}-en.test.gold",
                                            "fieldnames": ["src_id", "tgt_id"], "columns": {"src": "src_id", "tgt": "tgt_id"}, **tsv}})
    out["mining"] = (mining, None)
    return out


def test_rows_give_back_every_reported_metric_of_every_format(backbone, tmp_path):
    from adapters_xtl.evaluation import evaluate
    from adapters_xtl.model import TaskModel

    checked = []
    for case, (spec, mlqa) in _task_files(tmp_path).items():
        torch.manual_seed(1)
        model = TaskModel(backbone, spec)
        if model.head is not None:
            with torch.no_grad():
                for p in model.head.parameters():
                    p.mul_(30.0)  # predictions that differ between inputs
        preds: dict = {}
        scores = evaluate(model, spec, data_dir=tmp_path, batch_size=4, predictions=preds)
        for lang, per_metric in scores.items():
            rows = json.loads(json.dumps(preds[lang]))  # as write_predictions stores them
            qa_lang = lang if mlqa else None
            for metric, value in per_metric.items():
                again = U.metric_from_rows(spec.format, metric, rows, lang=qa_lang)
                vector = compile_rows(spec.format, metric, rows, qa_lang).value()
                assert again == pytest.approx(value, abs=1e-9), (case, lang, metric)
                assert vector == pytest.approx(value, abs=1e-9), (case, lang, metric)
                checked.append((case, metric, round(value, 3)))
    names = {(c, m) for c, m, _ in checked}
    assert {("classification", "macro_f1"), ("ner", "f1"), ("pos", "f1_xtreme"), ("pos", "accuracy"),
            ("squad", "qa_score"), ("mlqa", "exact_match"), ("mc", "accuracy"), ("pairs", "accuracy_en2xx"),
            ("mining", "f1"), ("mining", "recall")} <= names
    # not a degenerate run: some scores strictly between 0 and 100 for each format
    for case in ("classification", "ner", "pos", "squad", "mc", "pairs", "mining"):
        assert any(0 < v < 100 for c, _, v in checked if c == case), (case, [x for x in checked if x[0] == case])


# ------------------------------------------------------------------------------------------ resamples written out
def _random_rows(kind: str, rng: random.Random, n: int) -> list[dict]:
    if kind == "classification":
        return [{"id": i, "gold": rng.choice("abcd"), "prediction": rng.choice("abc")} for i in range(n)]
    if kind == "tagging":
        tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
        out = []
        for i in range(n):
            k = rng.randint(0, 7)
            g = [rng.choice(tags) for _ in range(k)]
            out.append({"id": i, "gold": g, "prediction": [t if rng.random() < 0.6 else rng.choice(tags) for t in g]})
        return out
    if kind == "span_qa":
        out = []
        for i in range(n):
            g = [_phrase(rng, rng.randint(1, 3)) for _ in range(rng.randint(0, 2))]
            p = g[0] if g and rng.random() < 0.3 else _phrase(rng, rng.randint(0, 3))
            out.append({"id": f"q{i}", "gold": g, "prediction": p})
        return out
    if kind == "pairs":
        return [{"id": i, "gold": i, "prediction": i if rng.random() < 0.6 else rng.randrange(n), "direction": d}
                for d in ("xx2en", "en2xx") for i in range(n)]
    # mining: source s{i}, gold s{i}-t{i} for most, mined candidates with random (tied) scores
    out = []
    for i in range(n):
        gold = [f"t{i}"] if rng.random() < 0.8 else []
        if rng.random() < 0.75:
            t = f"t{i}" if rng.random() < 0.6 else f"t{rng.randrange(n)}"
            out.append({"id": f"s{i}", "gold": gold, "prediction": t, "score": rng.choice([0.5, 1.0, 1.5]) + rng.random()
                        * (rng.random() < 0.7)})
        elif gold:
            out.append({"id": f"s{i}", "gold": gold, "prediction": None, "score": None})
    return out


def _written_out(kind: str, rows: list[dict], counts: np.ndarray, keys: list) -> list[dict]:
    """The resample as explicit rows: unit j repeated counts[j] times, copies renamed apart."""
    unit_of = {k: j for j, k in enumerate(keys)}
    out = []
    if kind == "pairs":
        for r in rows:
            out += [{**r, "id": (r["id"], c), "gold": (r["id"], c), "prediction": (r["prediction"], c)}
                    for c in range(int(counts[unit_of[r["id"]]]))]
        return out
    if kind == "mining":  # copies next to each other, where the row was (the sort keeps row order on ties)
        for r in rows:
            for c in range(int(counts[unit_of[str(r["id"])]])):
                pred = None if r["prediction"] is None else f"{r['prediction']}#{c}"
                out.append({**r, "id": f"{r['id']}#{c}", "gold": [f"{g}#{c}" for g in r["gold"]], "prediction": pred})
        return out
    scored = [r for r in rows if (r["gold"] if kind in ("tagging", "span_qa") else True)]
    for key, r in zip(keys, scored):
        out += [{**r, "id": (r["id"], c)} for c in range(int(counts[unit_of[key]]))]
    return out


@pytest.mark.parametrize("kind, metrics_", [
    ("classification", ["accuracy", "macro_f1"]),
    ("tagging", ["accuracy", "f1", "precision", "recall", "f1_xtreme"]),
    ("span_qa", ["exact_match", "f1", "qa_score"]),
    ("pairs", ["accuracy", "accuracy_xx2en", "accuracy_en2xx"]),
    ("mining", ["f1", "precision", "recall"]),
])
def test_the_resampled_statistic_is_the_official_metric_of_the_resample(kind, metrics_):
    fmt = {"pairs": "retrieval", "mining": "retrieval"}.get(kind, kind)
    rng = random.Random(7)
    nrng = np.random.default_rng(7)
    for trial in range(25):
        rows = _random_rows(kind, rng, rng.randint(2, 30))
        for metric in metrics_:
            stat = compile_rows(fmt, metric, rows)
            if stat.n == 0:
                continue
            assert stat.value() == pytest.approx(U.metric_from_rows(fmt, metric, rows), abs=1e-9), (trial, metric)
            counts = np.bincount(nrng.integers(0, stat.n, stat.n), minlength=stat.n).astype(float)
            explicit = _written_out(kind, rows, counts, stat.keys)
            want = U.metric_from_rows(fmt, metric, explicit)
            assert float(stat.fn(counts[None, :])[0]) == pytest.approx(want, abs=1e-9), (trial, metric, counts)


def test_weighted_bucc_is_bucc_f1_on_random_candidate_sets_with_ties():
    rng = np.random.default_rng(3)
    for trial in range(300):
        m = int(rng.integers(1, 40))
        score = np.round(rng.random(m) * 4, 1)  # many ties
        correct = rng.random(m) < 0.5
        cands = {(f"s{i}", f"t{i}" if correct[i] else f"u{i}"): float(score[i]) for i in range(m)}
        gold = {(f"s{i}", f"t{i}") for i in range(m) if correct[i]} | {(f"g{j}", "x") for j in range(int(rng.integers(1, 5)))}
        order = np.argsort(-score, kind="stable")
        units = sorted({s for s, _ in gold} | {s for s, _ in cands})
        col = {u: j for j, u in enumerate(units)}
        n_gold = np.zeros(len(units))
        for s, _ in gold:
            n_gold[col[s]] += 1
        pairs = list(cands)
        p, r, f = weighted_bucc(np.ones((1, len(units))), score[order], correct[order].astype(float),
                                np.array([col[pairs[i][0]] for i in order]), n_gold)
        want = metrics.bucc_f1(cands, gold)
        assert (p[0], r[0], f[0]) == pytest.approx((want["precision"], want["recall"], want["f1"]), abs=1e-9), trial


# ------------------------------------------------------------------------------------------ intervals
def _bernoulli_rows(n: int, p: float, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": i, "gold": "a", "prediction": "a" if rng.random() < p else "b"} for i in range(n)]


def test_accuracy_interval_has_the_binomial_width_is_reproducible_and_fast():
    rows = _bernoulli_rows(1000, 0.7)
    U.score_interval("classification", "accuracy", rows[:10])  # scipy imported before timing
    t = time.perf_counter()
    iv = U.score_interval("classification", "accuracy", rows, n_resamples=1000)
    seconds = time.perf_counter() - t
    assert seconds < 0.5, seconds
    acc = iv.value
    half = 1.959964 * math.sqrt(acc * (100 - acc) / 1000)  # normal approximation, points
    assert iv.low < acc < iv.high and iv.n == 1000 and iv.note is None
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.12)
    assert U.score_interval("classification", "accuracy", rows, n_resamples=1000) == iv
    assert U.score_interval("classification", "accuracy", rows, seed=1) != iv
    wide = U.score_interval("classification", "accuracy", rows[:100])
    assert (wide.high - wide.low) > 2.5 * (iv.high - iv.low)  # sqrt(10) narrower with 10x the data
    bca = U.score_interval("classification", "accuracy", rows, method="BCa")
    assert bca.method == "BCa" and bca.low < acc < bca.high


def test_corpus_metrics_are_recomputed_per_resample_and_stay_fast():
    rng = random.Random(1)
    rows = _random_rows("tagging", rng, 1000)
    t = time.perf_counter()
    iv = U.score_interval("tagging", "f1", rows, n_resamples=1000)
    assert time.perf_counter() - t < 3.0
    assert iv.low < iv.value < iv.high
    mined = _random_rows("mining", rng, 2000)
    t = time.perf_counter()
    b = U.score_interval("retrieval", "f1", mined, n_resamples=200)
    assert time.perf_counter() - t < 3.0
    assert b.low <= b.value <= b.high and b.high > b.low


def test_degenerate_inputs_give_clear_results():
    none = U.score_interval("classification", "accuracy", [])
    assert none.n == 0 and math.isnan(none.value) and math.isnan(none.low) and "no scored" in none.note
    one = U.score_interval("classification", "accuracy", _bernoulli_rows(1, 1.0))
    assert one.n == 1 and one.value == 100.0 and math.isnan(one.low) and "one example" in one.note
    perfect = U.score_interval("classification", "accuracy", _bernoulli_rows(50, 1.0))
    assert (perfect.low, perfect.value, perfect.high) == (100.0, 100.0, 100.0) and "point" in perfect.note
    bca = U.score_interval("classification", "accuracy", _bernoulli_rows(50, 1.0), method="BCa")
    assert (bca.low, bca.high) == (100.0, 100.0) and bca.method == "percentile" and "BCa undefined" in bca.note
    empty_tags = U.score_interval("tagging", "f1", [{"id": 0, "gold": [], "prediction": []}])
    assert empty_tags.n == 0 and math.isnan(empty_tags.value)
    with pytest.raises(U.StatsError, match="percentile"):
        U.score_interval("classification", "accuracy", _bernoulli_rows(5, 0.5), method="studentized")
    with pytest.raises(ValueError, match="macro_f1"):
        U.score_interval("classification", "f1", _bernoulli_rows(5, 0.5))
    with pytest.raises(ValueError, match="direction"):
        U.metric_from_rows("retrieval", "accuracy", [{"id": "s", "gold": ["t"], "prediction": "t", "score": 1.0}])


# ------------------------------------------------------------------------------------------ paired gains
def _improved(rows: list[dict], share: float, seed: int = 101) -> list[dict]:
    rng = random.Random(seed)
    return [dict(r, prediction=r["gold"]) if rng.random() < share else dict(r) for r in rows]


def test_paired_gain_of_a_real_improvement_excludes_zero_and_of_none_is_zero():
    a = _bernoulli_rows(400, 0.6)
    b = _improved(a, 0.15)  # fixes about 15% of the examples, breaks none
    g = U.paired_gain("classification", "accuracy", a, b)
    assert g.mean == pytest.approx(g.b - g.a) and g.mean > 0
    assert g.low > 0 and g.significant and g.p < 0.01 and g.n == 400
    same = U.paired_gain("classification", "accuracy", a, [dict(r) for r in a])
    assert (same.mean, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0) and not same.significant
    # pairing removes the variance both systems share: the paired interval is much narrower than
    # what two independent intervals would suggest
    ia, ib = (U.score_interval("classification", "accuracy", r) for r in (a, b))
    independent = 1.959964 * math.hypot((ia.high - ia.low) / 3.92, (ib.high - ib.low) / 3.92)
    assert (g.high - g.low) / 2 < 0.6 * independent
    noise = U.paired_gain("classification", "accuracy", a, _bernoulli_rows(400, 0.6, seed=9))
    assert noise.low < 0 < noise.high and noise.p > 0.05 and not noise.significant


def test_paired_gain_p_value_agrees_with_its_interval():
    base = _bernoulli_rows(300, 0.5)
    for share in (0.0, 0.01, 0.03, 0.06, 0.1):
        mixed = _improved(base, share, seed=3)
        mixed = [dict(r, prediction="b") if i % 41 == 0 else r for i, r in enumerate(mixed)]  # some losses too
        g = U.paired_gain("classification", "accuracy", base, mixed, n_resamples=2000)
        if g.p < 0.04:
            assert g.significant, g
        if g.p > 0.06:
            assert not g.significant, g


def test_paired_gain_matches_rows_by_id_and_names_what_differs():
    a = _bernoulli_rows(20, 0.5)
    b = list(reversed(_improved(a, 0.5)))  # order does not matter, ids do
    g = U.paired_gain("classification", "accuracy", a, b)
    assert g.mean == pytest.approx(U.metric_from_rows("classification", "accuracy", b) - g.a)
    with pytest.raises(U.StatsError, match=r"only in a \[0\] \(1 in all\), only in b \['x'\]"):
        U.paired_gain("classification", "accuracy", a, b[:-1] + [{"id": "x", "gold": "a", "prediction": "a"}])
    with pytest.raises(U.StatsError, match="different gold"):
        U.paired_gain("classification", "accuracy", a, [dict(r, gold="z") if r["id"] == 3 else r for r in a])
    # BUCC: units are source sentences; the systems may mine different pairs, not differ in gold
    rng = random.Random(4)
    ma = _random_rows("mining", rng, 60)
    mb = [dict(r, prediction=(r["gold"][0] if r["gold"] else r["prediction"]), score=r["score"] or 2.0)
          if rng.random() < 0.5 else r for r in ma]
    gm = U.paired_gain("retrieval", "f1", ma, mb)
    assert gm.mean == pytest.approx(gm.b - gm.a) and gm.low <= gm.mean <= gm.high
    with pytest.raises(U.StatsError, match="different gold pairs"):
        U.paired_gain("retrieval", "f1", ma, [dict(r, gold=[]) if r["id"] == ma[0]["id"] else r for r in mb])


# ------------------------------------------------------------------------------------------ seeds, corrections
def test_seed_interval_is_the_student_t_interval():
    iv = U.seed_interval([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, s = sqrt(5/3), sem = s/2, t(0.975, df=3) = 3.182446305
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert (iv.value, iv.low, iv.high, iv.n) == pytest.approx((2.5, 2.5 - half, 2.5 + half, 4))
    assert U.seed_interval([0.7, None, float("nan"), 0.9]).n == 2
    one = U.seed_interval([1.5])
    assert one.value == 1.5 and math.isnan(one.low) and "one seed" in one.note
    same = U.seed_interval([2.0, 2.0, 2.0])
    assert (same.low, same.high) == (2.0, 2.0)


def test_holm_and_bh_match_a_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # Holm, m = 4 finite: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04,
    # running maximum 0.02, 0.03, 0.06, 0.06
    holm = U.adjust_pvalues(p, "holm")
    assert holm[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(holm[4])
    # BH: p * m / rank = 0.02, 0.02, 0.04, 0.04 (ranks 1..4), running minimum from the top
    bh = U.adjust_pvalues(p, "bh")
    assert bh[:4] == pytest.approx([0.02, 0.04, 0.04, 0.02]) and math.isnan(bh[4])
    assert U.adjust_pvalues([0.5, 0.9], "holm") == [1.0, 1.0]
    assert U.adjust_pvalues([], "bh") == []
    with pytest.raises(U.StatsError, match="holm, bh") as e:
        U.adjust_pvalues([0.1], "bonferroni")
    assert "bonferroni" in str(e.value)
    with pytest.raises(U.StatsError, match=r"\[0, 1\]"):
        U.adjust_pvalues([1.2], "holm")
