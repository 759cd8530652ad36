"""`xtl suggest` (issue 17): transferability estimates with known answers, ranking metrics on
constructed tables, the rankers and their fallback on synthetic grids, and the whole flow end to
end on a tiny XLM-R and a tiny real grid of the demo tasks."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
import yaml

from adapters_xtl.errors import XtlError
from adapters_xtl.suggest import combine
from adapters_xtl.suggest.combine import LanguageKernel, past_signal, rank_queries
from adapters_xtl.suggest.evaluate import evaluate_cells, paper_prior
from adapters_xtl.suggest.evidence import Cell, check_backbones, read_grid, registry_cells, run_cells
from adapters_xtl.suggest.ranking import ndcg_at_k, query_metrics, random_expectation, regret_at_k, spearman
from adapters_xtl.suggest.transfer import hscore, logme, logme_evidence


# ------------------------------------------------------------------ LogME and H-score


def _blobs(n=300, d=16, k=3, spread=2.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = np.eye(k)[y] @ rng.normal(size=(k, d)) * spread + rng.normal(size=(n, d))
    return x, y, rng


def test_logme_prefers_features_that_separate_the_labels():
    x, y, rng = _blobs()
    separable = logme(x, y)
    shuffled = logme(x, rng.permutation(y))
    assert separable > shuffled + 0.5
    # features that carry the labels more strongly score higher still
    assert logme(*_blobs(spread=4.0)[:2]) > separable


def test_logme_evidence_matches_the_marginal_likelihood_and_a_hand_computed_case():
    from scipy.stats import multivariate_normal

    # by hand: F = [[1], [0]], y = [1, 0], alpha = beta = 1 -> A = 2, m = 1/2, residual^2 = m^2 = 1/4:
    # (0 + 0 - ln(2)/2 - 1/8 - 1/8 - ln(2 pi)) / 2
    hand = (-math.log(2) / 2 - 0.25 - math.log(2 * math.pi)) / 2
    assert logme_evidence([[1.0], [0.0]], [1.0, 0.0], 1.0, 1.0) == pytest.approx(hand, abs=1e-12)
    # LogME's maximised evidence is log N(y; 0, I/beta + F F^T/alpha) at the alpha, beta it found
    x, y, _ = _blobs(n=40, d=5)
    value, params = logme(x, y, return_params=True)
    per_class = []
    for c, (alpha, beta) in zip(sorted(set(y.tolist())), params):
        col = (y == c).astype(float)
        direct = multivariate_normal(np.zeros(40), np.eye(40) / beta + x @ x.T / alpha).logpdf(col) / 40
        assert logme_evidence(x, col, alpha, beta) == pytest.approx(direct, rel=1e-9)
        per_class.append(direct)
    assert value == pytest.approx(np.mean(per_class), rel=1e-6)


def test_hscore_by_hand_and_on_separable_vs_random_labels():
    # f = 0, 2, 4, 6 with classes {0, 2} and {4, 6}: var(f) = 5, var of the class means (1, 1, 5, 5) = 4
    assert hscore([[0.0], [2.0], [4.0], [6.0]], [0, 0, 1, 1]) == pytest.approx(0.8, abs=1e-5)
    x, y, rng = _blobs(spread=5.0)
    assert hscore(x, y) > 1.5  # at most classes - 1 = 2
    assert hscore(x, rng.permutation(y)) < 0.2


def test_hscore_on_few_examples_in_many_dimensions_separates_signal_from_noise():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 60)
    noise = rng.normal(size=(60, 100))  # fewer examples than dimensions
    signal = noise + 0.5 * np.eye(4)[y] @ rng.normal(size=(4, 100))

    def plain(x):  # the sample covariance (pseudo-inverted): saturated at classes - 1 = 3 for any labels
        xc = x - x.mean(axis=0)
        means = np.zeros_like(xc)
        for c in range(4):
            means[y == c] = xc[y == c].mean(axis=0)
        return np.trace(np.linalg.pinv(xc.T @ xc) @ (means.T @ means))

    assert plain(noise) == pytest.approx(3.0, abs=1e-6) and plain(signal) == pytest.approx(3.0, abs=1e-6)
    assert hscore(signal, y) > 2.0 > 0.5 > hscore(noise, y)  # on the top 6 principal components


def test_transfer_estimates_refuse_bad_input():
    with pytest.raises(ValueError, match="2 classes"):
        logme(np.ones((4, 2)), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="one per feature row"):
        hscore(np.ones((4, 2)), [0, 1])


# ------------------------------------------------------------------ ranking metrics


GAINS = {"a": 3.0, "b": 1.0, "c": 0.0, "d": -2.0}
SCORES = {"b": 0.9, "a": 0.5, "d": 0.2, "c": 0.1}  # order b, a, d, c


def test_regret_and_ndcg_on_a_constructed_table():
    assert regret_at_k(GAINS, SCORES, 1) == 2.0  # picked b (1) instead of a (3)
    assert regret_at_k(GAINS, SCORES, 3) == 0.0
    # relevance = gain - min: a 5, b 3, c 2, d 0; DCG = 3 + 5/log2(3) + 0; ideal = 5 + 3/log2(3) + 2/2
    want = (3 + 5 / math.log2(3)) / (5 + 3 / math.log2(3) + 1)
    assert ndcg_at_k(GAINS, SCORES, 3) == pytest.approx(want)
    perfect = {c: g for c, g in GAINS.items()}
    assert query_metrics(GAINS, perfect) == {"regret@1": 0.0, "regret@3": 0.0, "ndcg@3": 1.0, "spearman": 1.0}
    assert spearman(GAINS, {c: -g for c, g in GAINS.items()}) == pytest.approx(-1.0)
    assert math.isnan(ndcg_at_k({"a": 1.0, "b": 1.0}, {"a": 0, "b": 1}, 3))  # nothing to order


def test_random_expectation_is_the_mean_over_all_orders():
    exp = random_expectation(GAINS)
    assert exp["regret@1"] == pytest.approx(3.0 - 0.5)  # best minus the mean gain
    assert exp["regret@3"] == pytest.approx(0.5)  # the 3-subsets' best: 3, 3, 3, 1
    orders = list(itertools.permutations(GAINS))
    brute = {m: np.mean([query_metrics(GAINS, {c: -i for i, c in enumerate(o)})[m] for o in orders])
             for m in ("regret@1", "regret@3", "ndcg@3", "spearman")}
    for m, v in brute.items():
        assert exp[m] == pytest.approx(v, abs=1e-9), m


# ------------------------------------------------------------------ rankers on synthetic grids


def _synthetic(n_targets=3, n_langs=6, n_cands=5, noise=0.3, seed=0):
    """Cells whose gain is the candidate's own effect + 2 * logme + noise; text_sim is pure noise."""
    rng = random.Random(seed)
    cands = [f"task{i}" for i in range(n_cands)]
    effect = {c: 0.8 * i for i, c in enumerate(cands)}
    cells, feats = [], {}
    for t in range(n_targets):
        for l in range(n_langs):
            for c in cands:
                lm = rng.gauss(0, 1)
                feats[(c, f"t{t}", f"l{l}")] = {"logme": lm, "text_sim": rng.gauss(0, 1)}
                cells.append(Cell(c, f"t{t}", f"l{l}", effect[c] + 2 * lm + rng.gauss(0, noise), 2, "stack",
                                  "synthetic"))
    return cells, feats


FLAT = LanguageKernel(distance=lambda a, b: 0.5)


def test_past_signal_weights_same_target_and_close_languages_more():
    cells = [Cell("x", "t", "de", 4.0, 1, "stack", "s"), Cell("x", "u", "de", 0.0, 1, "stack", "s"),
             Cell("y", "t", "de", 9.0, 1, "stack", "s")]
    kernel = LanguageKernel(distance=lambda a, b: 0.0)
    value, n = past_signal(cells, "x", "t", "de", kernel)
    assert n == 2 and value == pytest.approx((1.0 * 4 + 0.5 * 0) / 1.5)
    far = LanguageKernel(distance=lambda a, b: 0.75)  # weight 1 - 0.75 for another language
    value, _ = past_signal([Cell("x", "t", "de", 4.0, 1, "stack", "s"), Cell("x", "t", "fr", 0.0, 1, "stack", "s")],
                           "x", "t", "fr", far)
    assert value == pytest.approx(0.25 * 4 / 1.25)
    assert math.isnan(past_signal(cells, "z", "t", "de", kernel)[0])


def test_the_combination_ranks_by_the_informative_signal_and_beats_random():
    cells, feats = _synthetic()
    res = evaluate_cells(cells, feats, method="combined", kernel=FLAT)
    for proto in ("target", "language"):
        table = res["protocols"][proto]["table"]
        assert table["suggest"]["spearman"] > 0.3
        assert table["suggest"]["regret@1"] < table["random"]["regret@1"]
        assert table["suggest"]["ndcg@3"] > table["random"]["ndcg@3"]
        assert res["protocols"][proto]["n_queries"] == 18
    verdicts = " ".join(res["protocols"]["target"]["verdicts"])
    assert "better than random" in verdicts


def test_learned_ranker_is_used_with_enough_cells_and_explains_itself():
    pytest.importorskip("lightgbm")
    cells, feats = _synthetic(n_targets=3, n_langs=6, noise=0.1)
    queries = sorted({c.query for c in cells if c.target == "t0"})
    train = [c for c in cells if c.target != "t0"]
    ranked, info = rank_queries(feats, queries, {q: [f"task{i}" for i in range(5)] for q in queries}, train,
                                method="auto", kernel=FLAT)
    assert info["method"] == "learned" and not info["notes"]
    got = [query_metrics({c.candidate: c.gain for c in cells if c.query == q}, {r.candidate: r.score for r in ranked[q]})
           for q in queries]
    rand = [random_expectation({c.candidate: c.gain for c in cells if c.query == q}) for q in queries]
    assert np.mean([m["spearman"] for m in got]) > 0.6
    assert np.mean([m["regret@1"] for m in got]) < 0.5 * np.mean([m["regret@1"] for m in rand])
    top = ranked[queries[0]]
    # SHAP contributions: logme carries the ranking, and calibrated contributions add up to the prediction
    assert sum(abs(r.contributions.get("logme", 0)) for r in top) > 3 * sum(
        abs(r.contributions.get("text_sim", 0)) for r in top)
    a, _ = info["calibration"]
    for r in top:
        assert r.predicted_gain == pytest.approx(a + sum(r.contributions.values()), abs=1e-6)


def test_too_few_cells_or_no_lightgbm_fall_back_to_the_combination_and_say_so(monkeypatch):
    cells, feats = _synthetic(n_targets=1, n_langs=3)
    q = ("t0", "l0")
    _, info = rank_queries(feats, [q], {q: ["task0", "task1"]}, [c for c in cells if c.query != q], method="auto",
                           kernel=FLAT)
    assert info["method"] == "combined" and "too few for the learned ranker" in info["notes"][0]
    monkeypatch.setattr(combine, "lightgbm_available", lambda: False)
    cells, feats = _synthetic()
    _, info = rank_queries(feats, [q], {q: ["task0", "task1"]}, [c for c in cells if c.target != "t0"],
                           method="learned", kernel=FLAT)
    assert info["method"] == "combined" and "lightgbm is not installed" in info["notes"][0]
    with pytest.raises(XtlError, match="unknown ranker"):
        rank_queries(feats, [q], {q: ["task0"]}, cells, method="magic")


def test_small_grids_are_said_to_be_too_small_to_tell():
    cells, feats = _synthetic(n_targets=2, n_langs=2)
    res = evaluate_cells(cells, feats, method="combined", kernel=FLAT)
    assert "too few to tell" in res["protocols"]["language"]["verdicts"][0]


def test_paper_baseline_puts_nli_then_extractive_qa_first():
    assert paper_prior("xnli-local") > paper_prior("tydiqa-local") > paper_prior("sst2-local")
    assert paper_prior("demo-nli") == 2.0


# ------------------------------------------------------------------ evidence from grid folders


def _write_grid(path, rows, backbone="bb@1/none"):
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "results.jsonl", "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"metric": "accuracy", "backbone": backbone, "cell": f"c{i}", **r}) + "\n")
    return path


def test_grid_gains_are_per_seed_differences_and_other_backbones_are_refused(tmp_path):
    rows = []
    for seed, base, stacked in ((1, 50.0, 56.0), (2, 60.0, 62.0)):
        rows += [{"target": "sib200", "composition": "single", "intermediate_task": "none", "language": "sw",
                  "seed": seed, "score": base},
                 {"target": "sib200", "composition": "stack", "intermediate_task": "xnli-local", "language": "sw",
                  "seed": seed, "score": stacked}]
    grid = read_grid(_write_grid(tmp_path / "g", [{**r, "cell": f"{r['composition']}{r['seed']}"} for r in rows]))
    (cell,) = run_cells(grid, "stack")
    assert (cell.candidate, cell.target, cell.language, cell.seeds) == ("xnli-local", "sib200", "sw", 2)
    assert cell.gain == pytest.approx((6.0 + 2.0) / 2)
    other = read_grid(_write_grid(tmp_path / "o", rows, backbone="other@2/none"))
    with pytest.raises(XtlError, match="--allow-other-backbone"):
        check_backbones([grid, other], "bb@1/none", allow_other=False)
    notes = check_backbones([grid, other], "bb@1/none", allow_other=True)
    assert "used anyway" in notes[0] and "other@2/none" in notes[0]
    with pytest.raises(XtlError, match="no results.jsonl"):
        read_grid(tmp_path / "nothing")


def test_parallel_text_for_alignment_comes_from_tatoeba_then_flores(shared_data, tiny_backbone_dir):
    from adapters_xtl.backbone import load_backbone
    from adapters_xtl.suggest.signals import SignalContext

    ctx = SignalContext(load_backbone(str(tiny_backbone_dir)), data_dir=shared_data, align_pairs=30, cache=False)
    src, tgt, source = ctx.parallel("sw")
    assert source == "tatoeba" and len(src) == len(tgt) == 30
    src, tgt, source = ctx.parallel("yo")  # not among Tatoeba's XTREME languages; SIB-200 has it
    assert source.startswith("sib200") and len(src) == 30 and src[0] != tgt[0]
    assert 0 <= ctx.language_features("yo")["align"] <= 100
    # a retrieval target has no training split: its English side stands for its inputs in TextEmb
    assert ctx.embeddings("tatoeba").shape == (ctx.n_texts, ctx.backbone.hidden_size)


# ------------------------------------------------------------------ end to end on a tiny grid


@pytest.fixture(scope="module")
def tiny_grid(tiny_backbone_dir, tmp_path_factory):
    """The demo tasks on a tiny XLM-R: 2 intermediates x demo-topic in 3 languages x 2 seeds."""
    import adapters_xtl as xtl
    from adapters_xtl.store.registry import Registry

    root = tmp_path_factory.mktemp("suggest-grid")
    recipe = root / "grid.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny-suggest", "backbone": str(tiny_backbone_dir), "method": "lora", "seeds": [1, 2],
        "train": {"steps": 4, "batch_size": 8, "eval_every": 4, "lr": 0.005, "log_every": 2},
        "intermediate": [{"task": "demo-sentiment"}, {"task": "demo-nli"}],
        "targets": [{"task": "demo-topic", "languages": ["en", "de", "sw"], "eval_limit": 20}],
        "compositions": ["single", "stack"]}))
    reg = Registry(root / "registry")
    xtl.run(str(recipe), root / "run", registry=reg)
    (root / "nodata").mkdir()
    return {"run": root / "run", "registry": reg, "backbone": xtl.Backbone.load(str(tiny_backbone_dir)),
            "nodata": root / "nodata", "cache": root / "signals.json"}


def test_suggest_ranks_every_candidate_per_language_with_signals_and_evidence(tiny_grid):
    from adapters_xtl.suggest import suggest

    g = tiny_grid
    s = suggest("demo-topic", ["sw", "de"], candidates="registry", registry=g["registry"], runs=[g["run"]],
                backbone=g["backbone"], data_dir=g["nodata"], cache=g["cache"])
    assert s.composition == "stack" and s.method == "combined"
    assert any("too few for the learned ranker" in n for n in s.notes)
    assert any("no parallel text" in n for n in s.notes)
    cells = {(c.candidate, c.language): c.gain for c in run_cells(read_grid(g["run"]), "stack")}
    for lang in ("sw", "de"):
        ranked = s.rankings[lang]
        assert [r.rank for r in ranked] == [1, 2]
        assert {r.candidate for r in ranked} == {"demo-sentiment", "demo-nli"}
        assert ranked[0].score >= ranked[1].score
        for r in ranked:
            assert r.evidence == 3  # the candidate's cells in en, de, sw
            assert r.measured_gain == pytest.approx(cells[(r.candidate, lang)])
            assert math.isfinite(r.signals["logme"]) and math.isfinite(r.signals["text_sim"])
            assert math.isfinite(r.signals["delta_sim"])  # against the target's single module
    assert s.evidence["cells"] == 6 and s.evidence["per_candidate"] == {"demo-sentiment": 3, "demo-nli": 3}
    text = "\n".join(s.render())
    assert "## demo-topic / sw" in text and "| 1 | " in text
    assert json.loads(json.dumps(s.as_dict()))["rankings"]["sw"][0]["candidate"] == s.rankings["sw"][0].candidate
    # the registry records the same gains as the grid (both from scores on the same 20 examples)
    reg_cells = {(c.candidate, c.language): c.gain for c in
                 registry_cells(g["registry"], g["backbone"].fingerprint, "stack")}
    assert reg_cells == pytest.approx(cells)


def test_evaluate_a_tiny_grid_and_say_it_is_too_small(tiny_grid):
    from adapters_xtl.suggest import evaluate_runs
    from adapters_xtl.suggest.report import render_evaluation

    g = tiny_grid
    res = evaluate_runs([g["run"]], registry=g["registry"], backbone=g["backbone"], data_dir=g["nodata"],
                        cache=g["cache"])
    assert res["queries"] == 3 and res["cells"] == 6
    lolo = res["protocols"]["language"]
    assert lolo["n_queries"] == 3 and "too few to tell" in lolo["verdicts"][0]
    assert set(lolo["table"]) == {"suggest", "combined", "best-on-average", "MNLI/SQuAD first", "random"}
    text = "\n".join(render_evaluation(res))
    assert "leave one language out" in text and "random (expected)" in text


def test_cli_prints_json_and_refuses_bad_input(tiny_grid):
    import typer
    from typer.testing import CliRunner

    from adapters_xtl.cli.suggest import suggest as suggest_cmd

    g = tiny_grid
    app = typer.Typer()
    app.command()(suggest_cmd)
    base = [str(g["run"]), "--registry", str(g["registry"].root), "--data-dir", str(g["nodata"])]
    res = CliRunner().invoke(app, [*base, "--target", "demo-topic", "--languages", "sw", "--candidates",
                                   "demo-nli,demo-sentiment", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert [r["candidate"] for r in out["rankings"]["sw"]] and out["evidence"]["cells"] == 6

    def error(*args):
        r = CliRunner().invoke(app, [*base, *args])
        assert isinstance(r.exception, XtlError), r.output
        return str(r.exception)

    assert "unknown target" in error("--target", "demo-topik", "--languages", "sw")
    assert "did you mean 'demo-topic'" in error("--target", "demo-topik", "--languages", "sw")
    assert "no data for language 'xx'" in error("--target", "demo-topic", "--languages", "xx")
    assert "unknown candidate 'no-such-task'" in error("--target", "demo-topic", "--languages", "sw",
                                                       "--candidates", "no-such-task")
    assert "which target" in error()


def test_grids_of_another_backbone_are_refused_unless_allowed(tiny_grid, tmp_path):
    from adapters_xtl.suggest import suggest

    g = tiny_grid
    other = tmp_path / "other"
    other.mkdir()
    rows = [json.loads(l) for l in (g["run"] / "results.jsonl").read_text().splitlines()]
    (other / "results.jsonl").write_text("".join(json.dumps({**r, "backbone": "elsewhere@0/none"}) + "\n"
                                                 for r in rows))
    kw = dict(candidates="demo-nli,demo-sentiment", registry=g["registry"], backbone=g["backbone"],
              data_dir=g["nodata"], cache=g["cache"])
    with pytest.raises(XtlError, match="elsewhere@0/none"):
        suggest("demo-topic", ["sw"], runs=[other], **kw)
    s = suggest("demo-topic", ["sw"], runs=[other], allow_other_backbone=True, **kw)
    assert any("used anyway" in n for n in s.notes) and s.evidence["cells"] == 6
