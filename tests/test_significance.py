"""Every gain with its uncertainty: paired bootstrap intervals pooled over seeds and languages,
a correction across the report's gains, and the marks that follow from them."""

from __future__ import annotations

import json
import random

import pytest

from adapters_xtl.metrics.pooled import Part, pooled_gain, pooled_score
from adapters_xtl.metrics.uncertainty import paired_gain, score_interval
from adapters_xtl.reporting import load_predictions, markdown, score_table, write_report

N = 200


def rows_with(correct: list[bool]) -> list[dict]:
    return [{"id": i, "gold": "entailment", "prediction": "entailment" if c else "neutral"} for i, c in enumerate(correct)]


def flips(base: list[bool], k_up: int, k_down: int, seed: int) -> list[bool]:
    """`base` with k_up wrong answers made right and k_down right answers made wrong."""
    rng = random.Random(seed)
    out = list(base)
    wrong, right = [i for i, c in enumerate(out) if not c], [i for i, c in enumerate(out) if c]
    for i in rng.sample(wrong, k_up):
        out[i] = True
    for i in rng.sample(right, k_down):
        out[i] = False
    return out


def test_one_part_pools_to_the_paired_bootstrap():
    rng = random.Random(0)
    a = [rng.random() < 0.5 for _ in range(N)]
    b = flips(a, 30, 10, 1)
    ra, rb = rows_with(a), rows_with(b)
    pooled = pooled_gain([Part("de", "classification", "accuracy", rb, ra)], n_resamples=2000)
    paired = paired_gain("classification", "accuracy", ra, rb, n_resamples=2000)
    assert pooled.mean == pytest.approx(paired.mean) == pytest.approx(100 * 20 / N)
    assert pooled.low == pytest.approx(paired.low, abs=1.0) and pooled.high == pytest.approx(paired.high, abs=1.0)
    assert pooled.p < 0.05 and paired.p < 0.05
    # a pooled score over one part is the bootstrap interval of that score
    iv, ref = pooled_score([Part("de", "classification", "accuracy", rb)], n_resamples=2000), \
        score_interval("classification", "accuracy", rb, n_resamples=2000)
    assert iv.value == pytest.approx(ref.value) and iv.low == pytest.approx(ref.low, abs=1.0)


def test_pooling_averages_seeds_within_a_language_and_languages_after():
    rng = random.Random(2)
    base = {l: [rng.random() < 0.5 for _ in range(N)] for l in ("de", "fr")}
    parts = []
    expected = []
    for lang, up in (("de", 20), ("fr", 40)):
        for seed in (0, 1):
            b = flips(base[lang], up + 2 * seed, 0, seed)
            parts.append(Part(lang, "classification", "accuracy", rows_with(b), rows_with(base[lang])))
            expected.append((lang, 100 * (up + 2 * seed) / N))
    g = pooled_gain(parts)
    de = sum(v for l, v in expected if l == "de") / 2
    fr = sum(v for l, v in expected if l == "fr") / 2
    assert g.mean == pytest.approx((de + fr) / 2)
    assert g.low < g.mean < g.high and g.low > 0  # only improvements: the interval is above 0
    # always right vs always wrong: every resample gives +100
    allright = pooled_gain([Part("de", "classification", "accuracy", rows_with([True] * 50), rows_with([False] * 50))])
    assert (allright.mean, allright.low, allright.high) == (100.0, 100.0, 100.0)


def write_run(run_dir, seeds=(0, 1)):
    """A grid on xnli-local (en, de, fr): `single`, a helping intermediate (+15 points) and a noise
    intermediate (2 flips each way), with per-example predictions for every cell."""
    rng = random.Random(5)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "predictions").mkdir()
    results = []
    for seed in seeds:
        base = {l: [rng.random() < 0.5 for _ in range(N)] for l in ("en", "de", "fr")}
        systems = {("single", "none"): base,
                   ("stack", "mnli"): {l: flips(v, 30, 0, seed + 10) for l, v in base.items()},
                   ("stack", "sst2"): {l: flips(v, 2, 2, seed + 20) for l, v in base.items()}}
        for (comp, inter), per_lang in systems.items():
            cell = f"{comp}-{inter}-{seed}"
            with open(run_dir / "predictions" / f"{cell}.jsonl", "w") as f:
                for lang, correct in per_lang.items():
                    for r in rows_with(correct):
                        f.write(json.dumps({"module": cell, "task": "xnli-local", "language": lang, **r}) + "\n")
                    results.append({"module": cell, "task": "xnli-local", "target": "xnli-local", "language": lang,
                                    "metric": "accuracy", "score": 100 * sum(correct) / N, "composition": comp,
                                    "intermediate_task": inter, "intermediate": inter, "seed": seed, "cell": cell})
    with open(run_dir / "results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    return results


def test_the_report_marks_only_the_gain_that_survives_the_correction(tmp_path):
    rows = write_run(tmp_path / "run")
    t = score_table(rows, load_predictions(tmp_path / "run"))["xnli-local"]
    good, noise = t["gain"][("stack", "mnli")], t["gain"][("stack", "sst2")]
    assert good["avg"].mean == pytest.approx(15.0) and good["avg"].significant
    assert all(good[l].significant for l in ("en", "de", "fr", "zs-avg"))
    assert noise["avg"].mean == pytest.approx(0.0) and not any(g.significant for g in noise.values())
    assert all(g.p_adj >= g.p for g in good.values())  # adjusted p-values never shrink
    # two seeds: a t-interval over seeds beside the example-level interval
    assert good["avg"].n == 2 and good["avg"].seed_low is not None
    info = t["significance"]
    assert info["correction"] == "holm" and info["family"] == 2 * 5  # 2 intermediates x (en, de, fr, avg, zs-avg)
    assert t["languages"] == ["en", "de", "fr", "avg", "zs-avg"]
    # the baseline's scores carry intervals too (pooled over the two seeds)
    s = t["rows"][("single", "none")]["de"]
    assert s.low < s.mean < s.high


def test_report_files_name_the_correction_and_mark_significant_cells(tmp_path):
    write_run(tmp_path / "run")
    md = write_report(tmp_path / "run", correction="bh").read_text()
    assert "Benjamini-Hochberg" in md and "across all 10 gains" in md
    line = next(l for l in md.splitlines() if l.startswith("| stack | mnli |") and "**" in l)
    assert line.count("*") >= 3
    assert not any("**" in l for l in md.splitlines() if l.startswith("| stack | sst2 |"))
    csv = (tmp_path / "run" / "report.csv").read_text().splitlines()
    assert csv[0].endswith("p,p_adjusted,significant,seed_ci_low,seed_ci_high")
    assert (tmp_path / "run" / "heatmap.png").exists()


def test_a_run_without_predictions_reports_gains_unmarked(tmp_path):
    rows = write_run(tmp_path / "run", seeds=(0,))
    tables = score_table(rows)  # no predictions: no example-level intervals
    g = tables["xnli-local"]["gain"][("stack", "mnli")]["avg"]
    assert g.low is None and not g.significant
    assert "none is marked significant" in markdown(tables)


def test_an_unknown_correction_is_a_clear_error(tmp_path):
    from adapters_xtl.errors import XtlError

    with pytest.raises(XtlError, match="(?s)unknown correction .bonferoni.*holm, bh"):
        score_table([], correction="bonferoni")
