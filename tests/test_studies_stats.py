"""Study building blocks: correlations, plots, URIEL distances, morphology measures, CKA."""

from __future__ import annotations

import itertools
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from adapters_xtl.errors import XtlError
from adapters_xtl.studies import alignment, morphology, stats

# same convention as conftest.SHARED_DATA: XTL_SHARED_DATA, else shared/data beside the repo
UD_ROOT = Path(os.environ.get("XTL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "ud"


# --------------------------------------------------------------------------- correlations


def _pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def test_perfect_monotone_spearman_is_one_with_tight_ci():
    x = list(range(1, 13))
    y = [math.exp(v) for v in x]  # monotone, far from linear
    c = stats.correlate(x, y)
    assert c.r == pytest.approx(1.0)
    assert c.ci_low == pytest.approx(1.0) and c.ci_high == pytest.approx(1.0)
    assert c.p_perm < 0.001 and not c.p_exact and c.n_perm == 5000
    assert c.significant
    p = stats.correlate(x, y, method="pearson")
    assert 0.5 < p.r < 0.95  # Pearson sees the curvature
    assert "strong positive monotone relation that is unlikely to be chance" in c.sentence()


def test_hand_computed_pearson_and_exact_permutation_p():
    x, y = [1, 2, 3, 4, 5], [2, 4, 5, 4, 5]
    c = stats.correlate(x, y, method="pearson")
    # sxy = 6, sxx = 10, syy = 6  ->  r = 6 / sqrt(60)
    assert c.r == pytest.approx(6 / math.sqrt(60))
    assert c.p_exact and c.n_perm == 120  # 5! orderings, enumerated
    r0 = abs(_pearson(x, y))
    hits = sum(abs(_pearson(x, [y[i] for i in perm])) >= r0 - 1e-12 for perm in itertools.permutations(range(5)))
    assert c.p_perm == pytest.approx(hits / 120)


def test_hand_computed_spearman_with_ties():
    # ranks of y = [1, 3, 2, 2, 5] are [1, 4, 2.5, 2.5, 5]: r = 6.5 / sqrt(10 * 9.5)
    c = stats.correlate([1, 2, 3, 4, 5], [1, 3, 2, 2, 5])
    assert c.r == pytest.approx(6.5 / math.sqrt(95))
    ranks = stats._ranks(np.array([[10.0, 20.0, 20.0, 5.0], [3.0, 3.0, 3.0, 1.0]]))  # row-wise, as resamples
    np.testing.assert_allclose(ranks, [[2, 3.5, 3.5, 1], [3, 3, 3, 1]])


# What the hand-written numpy version of `correlate` (before scipy.stats, commit 55d2f14) returned
# for these inputs with the default seed: (x, y, method) -> (r, ci_low, ci_high, p_perm, p_exact).
OLD_RESULTS = [
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], [5.0, 6.5, 3.0, 4.0, 6.0, 2.0, 4.5, 1.0], "spearman",
     (-0.5952380952380952, -1.0, 0.2328767123287671, 0.13957208558288342, False)),
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], [5.0, 6.5, 3.0, 4.0, 6.0, 2.0, 4.5, 1.0], "pearson",
     (-0.5958540230683373, -0.9429976227631042, 0.0871960627918451, 0.1341731653669266, False)),
    ([1, 2, 2, 3, 3, 3, 4, 5, 5, 6], [2, 1, 2, 4, 3, 3, 5, 5, 7, 6], "spearman",
     (0.9346202568200738, 0.7251718742673359, 0.9901475429766743, 0.0003999200159968006, False)),
    ([1, 2, 2, 3, 3, 3, 4, 5, 5, 6], [2, 1, 2, 4, 3, 3, 5, 5, 7, 6], "pearson",
     (0.9039783574556964, 0.8464685292204116, 0.9759000984252145, 0.0003999200159968006, False)),
    ([3.1, 1.2, 4.4, 2.0, 5.5, 0.3], [2.0, 1.0, 3.5, 3.0, 4.0, 1.5], "spearman",
     (0.8857142857142857, 0.2, 1.0, 0.03333333333333333, True)),
    ([3.1, 1.2, 4.4, 2.0, 5.5, 0.3], [2.0, 1.0, 3.5, 3.0, 4.0, 1.5], "pearson",
     (0.8586775814821835, 0.41931393468876726, 0.9999286639954388, 0.03611111111111111, True)),
]


@pytest.mark.parametrize("x, y, method, old", OLD_RESULTS)
def test_scipy_statistics_keep_the_old_results(x, y, method, old):
    from scipy import stats as st

    r, lo, hi, p, exact = old
    c = stats.correlate(x, y, method=method)
    assert c.r == pytest.approx(r, abs=1e-12)
    assert c.r == pytest.approx((st.spearmanr if method == "spearman" else st.pearsonr)(x, y).statistic, abs=1e-12)
    assert c.p_exact == exact
    if exact:  # all n! orderings: the same p to the last digit
        assert c.p_perm == pytest.approx(p, abs=1e-12) and c.n_perm == math.factorial(len(x))
    else:  # Monte Carlo: equal within its error (scipy happens to draw the same permutations today)
        assert abs(c.p_perm - p) <= 4 * math.sqrt(p * (1 - p) / 5000) + 1e-3
    assert (c.ci_low, c.ci_high) == pytest.approx((lo, hi), abs=0.05)


def test_permutation_p_agrees_with_the_t_test_p_of_pearson_on_normal_data():
    from scipy import stats as st

    rng = np.random.default_rng(11)
    x = rng.normal(size=40)
    y = 0.35 * x + rng.normal(size=40)
    c = stats.correlate(x, y, method="pearson", n_perm=20000)
    assert c.p_perm == pytest.approx(st.pearsonr(x, y).pvalue, abs=0.01)


def test_permutation_p_small_for_strong_and_large_for_independent_data():
    rng = np.random.default_rng(123)
    x = rng.normal(size=30)
    strong = stats.correlate(x, x + 0.3 * rng.normal(size=30))
    assert strong.p_perm < 0.01 and strong.ci_low > 0.5 and strong.significant
    indep = stats.correlate(rng.normal(size=30), rng.normal(size=30))
    assert indep.p_perm > 0.05 and indep.ci_low < 0 < indep.ci_high
    assert not indep.significant
    assert "cannot" in indep.sentence()


def test_reproducible_with_seed_and_streams_are_independent():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=20), rng.normal(size=20)
    a, b = stats.correlate(x, y, seed=7), stats.correlate(x, y, seed=7)
    assert a == b
    other = stats.correlate(x, y, seed=8)
    assert (other.ci_low, other.p_perm) != (a.ci_low, a.p_perm)
    # fewer bootstrap resamples leave the permutation p-value untouched
    assert stats.correlate(x, y, seed=7, n_boot=100).p_perm == a.p_perm


def test_missing_values_are_dropped_and_counted():
    x = [1.0, 2.0, None, 4.0, 5.0, 6.0, float("nan"), 8.0]
    y = [2.0, 1.0, 3.0, 5.0, float("inf"), 7.0, 1.0, 9.0]
    c = stats.correlate(x, y, method="pearson")
    assert c.n == 5 and c.n_dropped == 3
    assert c.r == pytest.approx(_pearson([1, 2, 4, 6, 8], [2, 1, 5, 7, 9]))
    assert "3 with a missing value left out" in c.sentence()


def test_too_few_pairs_raise_and_small_n_is_flagged():
    with pytest.raises(XtlError, match="at least 3"):
        stats.correlate([1, 2], [3, 4])
    with pytest.raises(XtlError, match="dropped"):
        stats.correlate([1, 2, None], [3, 4, 5])
    c = stats.correlate([1, 2, 3, 4], [1, 3, 2, 4])
    assert "too few languages to judge" in c.sentence()
    assert "too few language pairs" in c.sentence(unit="language pairs")
    with pytest.raises(ValueError, match="pair up"):
        stats.correlate([1, 2, 3], [1, 2])
    with pytest.raises(XtlError, match="spearman"):
        stats.correlate([1, 2, 3], [1, 2, 3], method="kendal")


def test_constant_variable_gives_nan_with_a_reason():
    c = stats.correlate([1, 2, 3, 4, 5], [2, 2, 2, 2, 2])
    assert math.isnan(c.r) and math.isnan(c.p_perm) and not c.defined
    assert "y is constant" in c.sentence()


def test_degenerate_bootstrap_resamples_are_skipped_and_counted():
    c = stats.correlate([0, 0, 0, 0, 1, 1], [1, 2, 3, 4, 5, 6], n_boot=1000)
    assert 0 < c.n_boot_used < 1000  # resamples without a 1 in x have no correlation
    assert -1 <= c.ci_low <= c.ci_high <= 1


def test_sentence_wording_for_a_moderate_trend_on_few_languages():
    x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    y = [5.0, 6.5, 3.0, 4.0, 6.0, 2.0, 4.5, 1.0]
    c = stats.correlate(x, y)
    s = c.sentence()
    assert s.startswith("With only n=8 languages, Spearman r=-0.60 [95% CI ")
    assert s.endswith(": a moderate negative trend that the data cannot distinguish from no relation.")
    assert not c.significant and c.ci_low < 0 < c.ci_high and c.p_perm > 0.05
    assert c.summary().endswith("n=8")
    d = c.as_dict()
    assert d["sentence"] == s and d["n"] == 8


def test_correlate_is_fast_for_fifty_points():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    stats.correlate(x, y)  # warm-up
    t = time.perf_counter()
    stats.correlate(x, y, method="spearman", n_boot=2000, n_perm=5000)
    assert time.perf_counter() - t < 1.5


def test_correlation_table_and_fit_line():
    rows = [
        {"lang": "de", "dist": 0.1, "gain": 3.0, "f1": 80},
        {"lang": "fi", "dist": 0.3, "gain": 2.0, "f1": 70},
        {"lang": "ja", "dist": 0.5, "gain": 1.0},
        {"lang": "sw", "dist": 0.6, "gain": 0.5, "f1": 60},
    ]
    table = stats.correlation_table(rows, "dist", "gain", "f1", n_boot=200, n_perm=200)
    assert [t["y"] for t in table] == ["gain", "f1"]
    assert table[0]["r"] == pytest.approx(-1.0) and table[0]["n"] == 4
    assert table[1]["n"] == 3 and table[1]["n_dropped"] == 1
    slope, intercept = stats.fit_line([0, 1, 2, 3, None], [1, 3, 5, 7, 100])
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(1.0)
    with pytest.raises(XtlError, match="distinct x"):
        stats.fit_line([1, 1, 1], [1, 2, 3])


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
    x = [0.1, 0.25, 0.3, 0.5, float("nan"), 0.7]
    y = [4.0, 3.1, 3.5, 1.2, 2.0, 0.4]
    labels = ["de", "fr", "ru", "ja", "xx", "sw"]
    corr = stats.correlate(x, y, n_boot=200, n_perm=200)
    out = stats.scatter_plot(
        x, y, labels, tmp_path / "sub" / "scatter.png",
        xlabel="syntactic distance from English", ylabel="gain (points)", title="gain vs distance", corr=corr,
    )
    assert _is_png(out)
    out2 = stats.line_plot(
        {"Germanic": [(1000, 1.0), (100, 0.5), (10000, 1.2)], "Asian": [(100, -0.2), (1000, 0.1), (10000, None)]},
        tmp_path / "steps.png", xlabel="steps", ylabel="gain", title="gain vs steps", logx=True,
    )
    assert _is_png(out2)
    with pytest.raises(ValueError, match="labels"):
        stats.scatter_plot([1, 2], [1, 2], ["a"], tmp_path / "bad.png")


# --------------------------------------------------------------------------- typology


@pytest.fixture(scope="module")
def typology():
    from adapters_xtl.studies import typology as t

    try:
        t._data_dir()
    except XtlError as e:  # pragma: no cover - only without the lang2vec wheel
        pytest.skip(f"lang2vec's URIEL data files are not available: {e}")
    return t


@pytest.mark.parametrize(
    "code, expected",
    [
        ("de", "deu"), ("deu", "deu"), ("deu_Latn", "deu"), ("EN", "eng"), ("pt-BR", "por"),
        ("zh", "cmn"), ("zho", "cmn"), ("zho_Hans", "cmn"), ("cmn", "cmn"), ("yue", "yue"),
        ("ar", "ara"), ("arb", "ara"), ("arb_Arab", "ara"), ("fa", "pes"), ("pes", "pes"),
        ("sw", "swh"), ("swh", "swh"), ("et", "est"), ("ekk", "est"), ("ms", "msa"), ("zsm", "msa"),
        ("no", "nor"), ("nb", "nor"), ("nob", "nor"), ("uz", "uzn"), ("az", "aze"), ("azj", "aze"),
        ("lv", "lav"), ("lvs", "lav"), ("sq", "als"), ("eu", "eus"), ("ja", "jpn"), ("jpn_Jpan", "jpn"),
    ],
)
def test_codes_map_to_the_uriel_entry(typology, code, expected):
    assert typology.to_iso639_3(code) == expected


@pytest.mark.parametrize("code", ["ber", "xx", "english", "und", "qaa", ""])
def test_unknown_codes_raise_naming_the_code(typology, code):
    with pytest.raises(XtlError) as e:
        typology.to_iso639_3(code)
    assert repr(code) in str(e.value)
    assert not typology.available(code)


def test_canonical_targets_exist_and_are_classified(typology):
    fams = typology._families()
    for src, dst in typology._CANONICAL.items():
        assert dst in typology._languages(), (src, dst)
        assert len(fams[dst]) > 0, (src, dst)


def test_distances_order_and_range(typology):
    d = typology.distance
    for kind in ("genetic", "syntactic", "featural", "geographic"):
        assert d("en", "de", kind) < d("en", "ja", kind), kind
    for kind in typology.KINDS:
        v = d("en", "sw", kind)
        assert 0.0 <= v <= 1.0
        assert d("sw", "en", kind) == pytest.approx(v)
        assert d("de", "deu_Latn", kind) == pytest.approx(0.0, abs=1e-9)
    assert d("en", "eu", "genetic") == 1.0  # Basque is an isolate
    assert d("en", "de", "genetic") < d("en", "fr", "genetic") < 1.0  # Germanic < Indo-European
    lat, lon = typology.coordinates("en")
    assert abs(lat - 53) < 2 and abs(lon) < 3
    with pytest.raises(XtlError, match="syntactic"):
        d("en", "de", "syntax")
    table = typology.distances_from("en", ["de", "ber"], ["genetic"], missing="nan")
    assert table["de"]["genetic"] < 1 and math.isnan(table["ber"]["genetic"])
    with pytest.raises(XtlError, match="ber"):
        typology.distances_from("en", ["ber"], ["genetic"])


# --------------------------------------------------------------------------- morphology

TINY_CONLLU = """\
# sent_id = 1
# text = Vámonos al mar.
1-2\tVámonos\t_\t_\t_\t_\t_\t_\t_\t_
1\tVamos\tir\tVERB\t_\tMood=Imp|Number=Plur|Person=1\t0\troot\t_\t_
2\tnos\tnosotros\tPRON\t_\tCase=Acc|Number=Plur|Person=1|PronType=Prs\t1\tobj\t_\t_
3-4\tal\t_\t_\t_\t_\t_\t_\t_\t_
3\ta\ta\tADP\t_\t_\t5\tcase\t_\t_
4\tel\tel\tDET\t_\tDefinite=Def|Gender=Masc|Number=Sing|PronType=Art\t5\tdet\t_\t_
5\tmar\tmar\tNOUN\t_\tGender=Masc|Number=Sing\t1\tobl\t_\tSpaceAfter=No
6\t.\t.\tPUNCT\t_\t_\t1\tpunct\t_\t_

# sent_id = 2
1\tYo\tyo\tPRON\t_\tPronType=Int,Rel\t2\tnsubj\t_\t_
1.1\tvoy\tir\tVERB\t_\tMood=Ind\t_\t_\t0:root\t_
2\tmar\tmar\tNOUN\t_\tNumber[psor]=Sing|Number=Sing\t0\troot\t_\t_

"""


def test_feats_per_token_skips_ranges_and_empty_nodes(tmp_path):
    p = tmp_path / "tiny.conllu"
    p.write_text(TINY_CONLLU, encoding="utf-8")
    s = morphology.feats_stats(p)
    # words: 6 + 2 (the range lines and the empty node 1.1 do not count)
    # feats: 3 + 4 + 0 + 4 + 2 + 0 + 1 (Int,Rel is one feature) + 2 (layered counts apart) = 16
    assert (s.n_words, s.n_sentences, s.n_feats, s.n_words_with_feats) == (8, 2, 16, 6)
    assert morphology.feats_per_token(p) == pytest.approx(16 / 8)
    assert morphology.feats_per_token(p, max_sentences=1) == pytest.approx(13 / 6)
    assert morphology.conllu_forms(p) == ["vamos", "nos", "a", "el", "mar", "yo", "mar"]
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tonly\tthree\n", encoding="utf-8")
    with pytest.raises(XtlError, match="bad.conllu:1"):
        morphology.feats_per_token(bad)
    with pytest.raises(XtlError, match="not found"):
        morphology.feats_per_token(tmp_path / "missing.conllu")


@pytest.mark.skipif(not UD_ROOT.is_dir(), reason="shared/data/ud not present")
def test_feats_per_token_on_parallel_ud_treebanks():
    # the PUD treebanks translate the same 1000 sentences, so annotation style is comparable
    per = {}
    for lang in ("en", "fi", "tr"):
        files = [f for f in morphology.ud_files(UD_ROOT, lang) if "_pud-" in f.name]
        if not files:
            pytest.skip(f"no {lang} PUD test file under {UD_ROOT}")
        per[lang] = morphology.feats_per_token(files, max_sentences=400)
    assert per["fi"] > per["en"] + 0.5
    assert per["tr"] > per["en"] + 0.3


def test_mattr_hand_computed_and_short_text():
    toks = "a b a c a".split()
    assert morphology.mattr(toks, window=2).value == pytest.approx(1.0)
    m3 = morphology.mattr(toks, window=3)  # windows aba, bac, aca
    assert m3.value == pytest.approx((2 / 3 + 1 + 2 / 3) / 3) and m3.windowed
    short = morphology.mattr(toks, window=500)
    assert not short.windowed and short.value == pytest.approx(3 / 5) and float(short) == short.value
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in rng.zipf(1.5, size=400) % 60]
    brute = np.mean([len(set(words[i : i + 50])) / 50 for i in range(len(words) - 49)])
    assert morphology.mattr(words, window=50).value == pytest.approx(brute)
    with pytest.raises(XtlError):
        morphology.mattr([], window=5)


def test_fertility_units():
    def chunks(text):  # a toy sub-word tokenizer: pieces of at most 3 characters per word
        return [w[i : i + 3] for w in text.split() for i in range(0, len(w), 3)]

    f = morphology.fertility(["abcdef gh", "ijk"], chunks)
    assert (f.value, f.unit, f.n_subwords, f.n_units) == (pytest.approx(4 / 3), "word", 4, 3)

    class HFLike:
        def tokenize(self, text):
            return list(text.replace(" ", ""))

    zh = morphology.fertility(["我们去海边 吧"], HFLike())
    assert zh.unit == "char" and zh.value == pytest.approx(1.0) and zh.n_units == 6
    assert morphology.fertility(["我们去海边 吧"], HFLike(), unit="word").unit == "word"
    assert morphology.fertility(["สวัสดีครับ"], HFLike()).unit == "char"
    assert morphology.fertility(["Привет мир"], HFLike()).unit == "word"
    with pytest.raises(XtlError):
        morphology.fertility(["", "  "], chunks)


# --------------------------------------------------------------------------- alignment


def test_linear_cka_properties():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 16))
    assert alignment.linear_cka(X, X) == pytest.approx(1.0)
    Q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert alignment.linear_cka(X, 3.7 * X @ Q + 5.0) == pytest.approx(1.0)
    Y = rng.normal(size=(300, 16))
    assert alignment.linear_cka(X, Y) == pytest.approx(alignment.linear_cka(Y, X))
    big_x, big_y = rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))
    assert alignment.linear_cka(big_x, big_y) < 0.01  # independent, n >> d
    partial = alignment.linear_cka(X, np.hstack([X[:, :8], rng.normal(size=(300, 8))]))
    assert 0.2 < partial < 0.9
    assert math.isnan(alignment.linear_cka(np.ones((5, 3)), X[:5]))
    with pytest.raises(ValueError, match="rows"):
        alignment.linear_cka(X, X[:10])


def test_retrieval_is_reexported_not_duplicated():
    from adapters_xtl import metrics

    assert alignment.retrieval_accuracy is metrics.retrieval_accuracy
    rng = np.random.default_rng(1)
    E = rng.normal(size=(20, 8))
    scores = alignment.alignment_scores(E, E + 0.01 * rng.normal(size=E.shape))
    assert scores["src2tgt"] == 1.0 and scores["tgt2src"] == 1.0 and scores["cka"] > 0.99
