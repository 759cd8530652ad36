"""`xtl study NAME`: each study's analysis on results tables with a known answer, and each study
end to end on a tiny grid (tiny random XLM-R, toy tasks), down to study.md / study.json."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import yaml

from adapters_xtl.backbone import load_backbone
from adapters_xtl.errors import XtlError
from adapters_xtl.studies import get_study, register_study, study_names
from adapters_xtl.studies.context import load_study, run_study
from adapters_xtl.studies.intermediate_language_study import analyze_intermediate_language
from adapters_xtl.studies.morphology_study import alignment_of, analyze_morphology, text_words
from adapters_xtl.studies.similarity_study import analyze_similarity
from adapters_xtl.studies.steps_study import analyze_steps
from adapters_xtl.studies.typology_study import analyze_typology

from test_core import NEG, POS, write_toy_task

LANGS = ["en", "de", "fr", "tr", "fi", "sw", "ja"]


def row(target, comp, inter, lang, score, seed=1, inter_task=None, metric="accuracy"):
    return {"module": f"{target}-{comp}@1", "task": target, "target": target, "composition": comp,
            "intermediate": inter, "intermediate_task": inter_task or inter.split("-step")[0],
            "language": lang, "metric": metric, "score": score, "seed": seed, "cell": f"{comp}-{inter}"}


# =========================================================================== analyses, known answers


def test_steps_finds_saturation_and_reversal():
    # high group saturates at step 8 of 32; low group peaks at 16 and drops 4 points by 32
    curves = {"high": {0: 50, 4: 55, 8: 59.5, 16: 60, 32: 60}, "low": {0: 30, 4: 31, 8: 33, 16: 40, 32: 36}}
    groups = {"high": ["en", "de"], "low": ["sw", "yo"]}
    rows = []
    for seed in (1, 2):
        for g, langs in groups.items():
            for i, lang in enumerate(langs):
                for k, v in curves[g].items():
                    rows.append(row("t", "continue", f"nli-abcd1234-step{k}-seed{seed}", lang, v + i, seed=seed))
                rows.append(row("t", "single", "none", lang, curves[g][0] + i - 1, seed=seed))
    res = analyze_steps(rows, groups=groups, reversal_tol=1.0, budget=32)
    c = res["targets"]["t"]["compositions"]["continue"]
    assert c["steps"] == [0, 4, 8, 16, 32] and c["reference"] == "step 0"
    hi, lo = c["groups"]["high"], c["groups"]["low"]
    assert hi["peak_step"] == 16 and hi["saturation_step"] == 8 and not hi["reversal"]
    assert hi["gain"][16]["mean"] == pytest.approx(10.0)
    assert lo["peak_step"] == 16 and lo["reversal"] and lo["drop_from_peak"] == pytest.approx(4.0)
    assert "a reversal" in lo["verdict"] and "saturates early" in hi["verdict"]
    assert c["gain_per_language"]["yo"][16] == pytest.approx(10.0)
    assert res["targets"]["t"]["single"]["en"] == pytest.approx(49.0)


def test_typology_gap_correlates_perfectly_with_distance():
    dist = {"de": 0.1, "fr": 0.2, "tr": 0.5, "fi": 0.4, "sw": 0.7, "ja": 0.9, "en": 0.0}
    rows = [row("t", "single", "none", "en", 90.0)]
    for lang, d in dist.items():
        if lang != "en":
            rows.append(row("t", "single", "none", lang, 90.0 - 50 * d))  # gap = 50 d
            rows.append(row("t", "continue", "nli-x", lang, 90.0 - 50 * d + 10 * d ** 2, inter_task="nli"))
    distances = {l: {"syntactic": d, "genetic": 1.0 - d} for l, d in dist.items()}
    res = analyze_typology(rows, distances, kinds=["syntactic", "genetic"])
    t = res["targets"]["t"]
    assert t["gap"]["ja"] == pytest.approx(45.0)
    by = {(c["kind"], c["y"]): c for c in t["correlations"]}
    assert by[("syntactic", "gap")]["spearman"]["r"] == pytest.approx(1.0)
    assert by[("syntactic", "gap")]["pearson"]["r"] == pytest.approx(1.0)
    assert by[("genetic", "gap")]["spearman"]["r"] == pytest.approx(-1.0)
    assert by[("syntactic", "gain continue/nli")]["spearman"]["r"] == pytest.approx(1.0)  # gain = 10 d^2
    assert by[("syntactic", "gap")]["spearman"]["n"] == 6
    assert "unlikely to be chance" in by[("syntactic", "gap")]["spearman"]["sentence"]


def test_morphology_degradation_tracks_complexity():
    feats = {"de": 1.0, "fr": 0.8, "tr": 2.5, "fi": 2.2, "ja": 0.1, "sw": 1.5}
    measures = {l: {"feats": f, "mattr": 0.5 + f / 10, "fertility": 1 + f} for l, f in feats.items()}
    base = {l: {"retrieval": 90.0, "cka": 0.8} for l in feats}
    after = {l: {"retrieval": 90.0 - 4 * f, "cka": 0.8 - 0.1 * f} for l, f in feats.items()}
    align = {"backbone": {7: base}, "nli": {7: after}, "sst": {7: {l: {"retrieval": v["retrieval"] + 1, "cka": v["cka"]}
                                                                     for l, v in after.items()}}}
    res = analyze_morphology(measures, align)
    assert res["modules"] == ["nli", "sst"]
    assert res["degradation"]["nli"][7]["tr"]["retrieval"] == pytest.approx(10.0)
    assert res["mean_degradation"][7]["tr"]["retrieval"] == pytest.approx(9.5)
    by = {(c["measure"], c["metric"]): c for c in res["correlations"]}
    for m in ("feats", "mattr", "fertility"):
        for k in ("retrieval", "cka"):
            assert by[(m, k)]["spearman"]["r"] == pytest.approx(1.0)
            assert by[(m, k)]["pearson"]["r"] == pytest.approx(1.0)
    assert len(res["per_module"]) == 2 * len(res["correlations"])
    assert res["summary"][7]["retrieval"]["n"] == 6


def test_similarity_gain_follows_similarity():
    sims, gt = {}, {}
    for i, s in enumerate([0.1, 0.3, 0.5, 0.6, 0.9]):
        sims[(f"task{i}", "tgt")] = {"delta_cos": s, "text_cos": 1 - s}
        gt[("continue", f"task{i}", "tgt")] = {"de": 10 * s, "sw": 10 * s - 1, "en": 5 * s}
    res = analyze_similarity(gt, sims)
    c = res["compositions"]["continue"]
    avg = {a["measure"]: a for a in c["averaged"]}
    assert avg["delta_cos"]["spearman"]["r"] == pytest.approx(1.0)
    assert avg["text_cos"]["spearman"]["r"] == pytest.approx(-1.0)
    assert avg["delta_cos"]["spearman"]["n"] == 5
    per = [p for p in c["per_language"] if p["measure"] == "delta_cos"]
    assert {p["language"] for p in per} == {"de", "sw", "en"} and all(p["pearson"]["r"] == pytest.approx(1.0) for p in per)
    pooled = {p["measure"]: p for p in c["pooled"]}
    assert pooled["delta_cos"]["spearman"]["n"] == 15
    assert c["mean_gain"]["task4 -> tgt"] == pytest.approx((9 + 8 + 4.5) / 3)


def test_intermediate_language_paired_comparison():
    rows = []
    targets = ["de", "fr", "tr", "vi", "sw", "ja"]
    extra = {"en": 0.0, "tr": 2.0, "vi": -1.0}
    for t_i, lang in enumerate(targets):
        rows.append(row("t", "single", "none", lang, 50.0 + t_i))
        for L, e in extra.items():
            own = 5.0 if L == lang else 0.0
            rows.append(row("t", "continue", f"pos-{L}", lang, 50.0 + t_i + 3 + e + own, inter_task=f"pos-from-{L}"))
    inter = {"pos-from-en": "en", "pos-from-tr": "tr", "pos-from-vi": "vi"}
    dist = {(L, t): {"syntactic": 0.0 if L == t else 0.5} for L in extra for t in targets}
    res = analyze_intermediate_language(rows, inter, reference="en", distances=dist)
    c = res["targets"]["t"]["compositions"]["continue"]
    assert c["languages"] == ["en", "tr", "vi"]
    assert c["summary"]["en"]["mean"] == pytest.approx(3.0)
    assert c["gains"]["tr"]["tr"] == pytest.approx(10.0)  # 3 + 2 + own-language 5
    v = c["vs_reference"]["tr"]
    assert v["mean"] == pytest.approx(2.0 + 5.0 / 6) and v["better_in"] == 6 and v["worse_in"] == 0
    assert v["p_sign_flip"] == pytest.approx(2 / 64)  # all 6 positive: exact over 2^6 sign patterns
    assert c["own_language"]["tr"]["own"] == pytest.approx(10.0)
    assert c["own_language"]["tr"]["others_mean"] == pytest.approx(5.0)
    assert c["own_language"]["vi"]["reference_own"] == pytest.approx(3.0)
    d = c["distance_correlations"][0]
    assert d["spearman"]["r"] < 0 and d["spearman"]["n"] == 18  # own-language points are closest and gain most


def test_tables_helpers():
    from adapters_xtl.studies.tables import jsonable, mean_ci, sign_flip_p

    m = mean_ci([1.0, 2.0, 3.0, None, float("nan")])
    assert m.n == 3 and m.mean == pytest.approx(2.0) and m.ci_low <= 2.0 <= m.ci_high
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([5.0]).ci_low)
    assert sign_flip_p([1, 1, 1]) == pytest.approx(2 / 8)
    assert sign_flip_p([1, -1]) == pytest.approx(1.0)
    doc = jsonable({("a", 1): float("nan"), "b": [1.5, float("inf")], 3: m})
    assert doc == {"a|1": None, "b": [1.5, None], "3": m.as_dict() | {"ci_low": m.ci_low}}
    json.dumps(doc, allow_nan=False)


def test_sign_flip_p_equals_the_exact_count_of_sign_patterns():
    """scipy's permutation test (what sign_flip_p calls) against a hand count over all 2^n patterns."""
    import itertools

    import numpy as np

    from adapters_xtl.studies.tables import sign_flip_p

    rng = np.random.default_rng(3)
    for n in (3, 6, 9):
        d = rng.normal(0.4, 1.0, n)
        obs = abs(d.mean()) - 1e-12
        hits = sum(abs(np.mean(np.array(signs) * d)) >= obs for signs in itertools.product((-1, 1), repeat=n))
        assert sign_flip_p(d) == pytest.approx(hits / 2 ** n)


def test_text_words_keep_combining_marks():
    # a \\w+ regex would cut these Hindi and Tamil words at their vowel signs
    assert text_words('नमस्ते, दुनिया! "Hello" (world)... — வணக்கம்') == ["नमस्ते", "दुनिया", "hello", "world", "வணக்கம்"]


def test_similarity_measures_and_debiased_cka():
    import numpy as np
    import torch

    from adapters_xtl.studies.alignment import linear_cka, linear_cka_debiased
    from adapters_xtl.studies.similarity import (centroid_cosine, covariance_similarity, delta_similarity,
                                                 module_deltas)

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(60, 100)), rng.normal(size=(60, 100))
    assert linear_cka(X, Y) > 0.4 and abs(linear_cka_debiased(X, Y)) < 0.1  # n ~ d: only the debiased is near 0
    assert linear_cka_debiased(X, 2 * X + 1) == pytest.approx(1.0)
    # a large shared offset on one side swamps cosine retrieval; the centred search sees through it
    a = alignment_of(X, X + 0.3 * Y + 200.0)
    assert a["retrieval"] < 60 and a["retrieval_centered"] == pytest.approx(100.0) and a["cka"] > 0.8
    assert covariance_similarity(X, X[::-1] * 3) == pytest.approx(1.0)
    assert centroid_cosine(X + 5, Y + 5) > 0.9 and abs(centroid_cosine(X + 5, Y + 5, center=np.full(100, 5.0))) < 0.5
    a = {"module.layer.0.query.lora_A.__module__.weight": torch.ones(2, 4),
         "module.layer.0.query.lora_B.__module__.weight": torch.ones(3, 2), "head.w": torch.ones(1)}
    b = {k: (-v if "lora_B" in k else v) for k, v in a.items()}
    da, db = module_deltas(a, "lora", {"r": 2, "alpha": 4}), module_deltas(b, "lora", {"r": 2, "alpha": 4})
    assert list(da) == ["layer.0.query"] and da["layer.0.query"][0, 0].item() == pytest.approx(4.0)
    assert delta_similarity(da, db)["global"] == pytest.approx(-1.0)
    assert delta_similarity(da, da)["per_layer"] == pytest.approx(1.0)


def test_study_recipes_load_and_wrong_study_is_refused(tmp_path):
    assert study_names() == ["steps", "typology", "morphology", "similarity", "intermediate-language"]
    for name in study_names():
        recipe, cfg = load_study(name)
        assert recipe.intermediate and isinstance(cfg, get_study(name).config_cls)
    with pytest.raises(XtlError, match="did you mean 'typology'"):
        load_study("typologie")
    steps = get_study("steps")
    with pytest.raises(ValueError, match="registered twice"):  # a name is registered once, by its file
        register_study("steps", question="?", config_cls=steps.config_cls, run=steps.run, render=steps.render)
    assert get_study("steps") is steps
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"name": "x", "targets": [{"task": "demo-topic"}], "study": {"kind": "steps"}}))
    with pytest.raises(XtlError, match="for study 'steps'"):
        load_study("typology", r)
    r.write_text(yaml.safe_dump({"name": "x", "targets": [{"task": "demo-topic"}], "study": {"schedule": [2]}}))
    with pytest.raises(XtlError, match="study.schedule"):
        load_study("steps", r)


def test_study_recipes_plan_on_the_shared_data(tmp_path, shared_data):
    """Every shipped study recipe expands into its grid on ../shared/data (dry run: nothing trains)."""
    for name in study_names():
        assert run_study(name, out=tmp_path / name, data_dir=shared_data, registry=tmp_path / "reg",
                         console=_quiet(), dry_run=True) is None
    variants = sorted(p.name for p in (tmp_path / "intermediate-language" / "tasks").glob("*.yaml"))
    assert variants == [f"udpos-local-from-{l}.yaml" for l in ("cy", "mr", "tr", "vi")]


# =========================================================================== end to end, tiny grids

WORDS = ["cat", "dog", "park", "rain", "sun", "tree", "house", "river", "road", "city", "book", "music"]


def write_lang_task(root: Path, langs=LANGS, name="toy-multi", n_train=48, noise=None, seed=0) -> Path:
    """A toy sentiment task with an English train/dev and one test file per language, whose label
    noise grows with the language's position (so languages score differently)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    def write(path, n, flip):
        with open(path, "w") as f:
            f.write("id\ttext\tlabel\n")
            for i in range(n):
                lab = "positive" if i % 2 == 0 else "negative"
                shown = lab if rng.random() >= flip else ("negative" if lab == "positive" else "positive")
                text = rng.choice(POS if shown == "positive" else NEG) + " " + rng.choice(WORDS)
                f.write(f"{path.stem}{i}\t{text}\t{lab}\n")

    write(root / "train.tsv", n_train, 0.0)
    write(root / "dev.tsv", 12, 0.0)
    for i, lang in enumerate(langs):
        write(root / f"test-{lang}.tsv", 16, (noise or {}).get(lang, 0.06 * i))
    y = root / "task.yaml"
    y.write_text(yaml.safe_dump({
        "name": name, "format": "classification", "columns": {"id": "id", "text": "text", "label": "label"},
        "labels": ["positive", "negative"],
        "splits": {"train": {"path": f"{root}/train.tsv"}, "validation": {"path": f"{root}/dev.tsv"},
                   "test": {"path": f"{root}/test-{{code}}.tsv"}},
        "languages": {lang: lang for lang in langs}}))
    return y


TRAIN = {"steps": 4, "batch_size": 8, "eval_every": 2, "lr": 0.005, "log_every": 2, "eval_examples": 8}


def write_study_recipe(path: Path, backbone: Path, study: dict, **fields) -> Path:
    doc = {"name": path.stem, "backbone": str(backbone), "method": "lora", "method_config": {"r": 2, "alpha": 4},
           "seeds": [1], "train": TRAIN, **fields, "study": study}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def tiny_bb(tiny_backbone_dir):
    return load_backbone(str(tiny_backbone_dir))


def _quiet():
    from rich.console import Console

    return Console(quiet=True)


def _check_outputs(out: Path, name: str, keys: set[str]) -> dict:
    doc = json.loads((out / "study.json").read_text())  # strict JSON: NaN would fail to parse back as null
    assert doc["study"] == name and doc["question"] and isinstance(doc["headline"], list) and doc["headline"]
    assert keys <= set(doc), keys - set(doc)
    assert {"recipe", "backbone", "wall_seconds", "grid"} <= set(doc["meta"])
    md = (out / "study.md").read_text()
    assert md.startswith(f"# Study: {name}") and "## Headline" in md
    if name != "morphology":  # the grid's own tables, of this study's cells
        assert (out / "grid-report" / "report.md").exists() and (out / "grid-report" / "results.jsonl").exists()
    for f in doc["figures"]:
        assert (out / f).stat().st_size > 1000 and f"]({f})" in md
    return doc


def test_steps_study_end_to_end(tmp_path, tiny_bb, tiny_backbone_dir, registry):
    task = write_lang_task(tmp_path / "t", ["en", "de", "sw"])
    r = write_study_recipe(tmp_path / "steps.yaml", tiny_backbone_dir,
                           {"schedule": [0, 0.5, 1], "groups": {"high": ["en", "de"], "low": ["sw"]}},
                           intermediate=[{"task": str(write_toy_task(tmp_path / "i")), "steps": 4, "name": "toy"}],
                           targets=[{"task": str(task)}], compositions=["single", "continue"])
    out = tmp_path / "out"
    res = run_study("steps", recipe=r, out=out, registry=registry, backbone=tiny_bb, console=_quiet())
    doc = _check_outputs(out, "steps", {"targets", "schedule", "budget"})
    c = doc["targets"]["toy-multi"]["compositions"]["continue"]
    assert c["steps"] == [0, 2, 4] and set(c["groups"]) == {"high", "low"}
    assert set(c["groups"]["high"]["gain"]) == {"0", "2", "4"}
    # one training run, three snapshots in the registry, saved at steps 0, 2, 4
    names = [n for n in registry.names() if "-step" in n]
    assert len(names) == 3 and sorted(registry.manifest(n).steps for n in names) == [0, 2, 4]
    man = registry.manifest(next(n for n in names if n.endswith("step0")))
    assert man.training["budget"] == 4 and man.train_key
    assert any("steps_" in f for f in doc["figures"])
    # a second run reuses every cell and snapshot: nothing trains
    before = (out / "grid" / "results.jsonl").read_text()
    run_study("steps", recipe=r, out=out, registry=registry, backbone=tiny_bb, console=_quiet())
    assert (out / "grid" / "results.jsonl").read_text() == before
    assert len(registry.versions(names[0])) == 1
    assert res.result["headline"]


def test_steps_snapshot_equals_a_separate_training_at_full_budget(tmp_path, tiny_bb, tiny_backbone_dir, registry):
    """The step-B snapshot holds the final weights of the run; separate mode trains each k."""
    inter = str(write_toy_task(tmp_path / "i"))
    task = write_lang_task(tmp_path / "t", ["en", "de"])
    base = dict(intermediate=[{"task": inter, "steps": 4, "name": "toy"}], targets=[{"task": str(task)}],
                compositions=["continue"])
    r = write_study_recipe(tmp_path / "sep.yaml", tiny_backbone_dir, {"schedule": [0, 1], "mode": "separate"}, **base)
    run_study("steps", recipe=r, out=tmp_path / "sep", registry=registry, backbone=tiny_bb, console=_quiet())
    sep = {n: registry.manifest(n) for n in registry.names() if "-step" in n}
    assert sorted(m.steps for m in sep.values()) == [0, 4] and all(m.scores or m.limited_scores['scores'] for m in sep.values())


def test_typology_study_end_to_end(tmp_path, tiny_bb, tiny_backbone_dir, registry):
    task = write_lang_task(tmp_path / "t")
    r = write_study_recipe(tmp_path / "typ.yaml", tiny_backbone_dir, {"kinds": ["syntactic", "genetic", "geographic"]},
                           intermediate=[{"task": str(write_toy_task(tmp_path / "i"))}],
                           targets=[{"task": str(task)}], compositions=["single", "continue"])
    out = tmp_path / "out"
    run_study("typology", recipe=r, out=out, registry=registry, backbone=tiny_bb, console=_quiet())
    doc = _check_outputs(out, "typology", {"targets", "pivot"})
    t = doc["targets"]["toy-multi"]
    assert t["languages"] == sorted(set(LANGS) - {"en"}) and set(t["gap"]) == set(t["languages"])
    kinds = {c["kind"] for c in t["correlations"]}
    assert kinds == {"syntactic", "genetic", "geographic"}
    c = t["correlations"][0]
    assert {"spearman", "pearson"} <= set(c) and c["spearman"]["n"] == 6 and "sentence" in c["spearman"]
    assert t["distances"]["de"]["genetic"] < t["distances"]["ja"]["genetic"]
    assert len([f for f in doc["figures"] if "typology_" in f]) == 6  # gap and gain per kind


def write_parallel(root: Path, langs) -> Path:
    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)
    en = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(30)]
    (root / "par.en").write_text("\n".join(en) + "\n")
    for i, lang in enumerate(langs):
        # a "translation": the English words with a language-specific suffix on some of them
        lines = [" ".join(w + (lang if (j + i) % 3 == 0 else "") for j, w in enumerate(s.split())) for s in en]
        (root / f"par.{lang}").write_text("\n".join(lines) + "\n")
    y = root / "par.yaml"
    y.write_text(yaml.safe_dump({
        "name": "toy-parallel", "format": "retrieval", "columns": {"text": "text"},
        "splits": {"test": {"path": f"{root}/par.{{code}}", "file_format": "lines"},
                   "test_pivot": {"path": f"{root}/par.en", "file_format": "lines"}},
        "languages": {lang: lang for lang in langs}}))
    return y


def write_conllu(path: Path, n: int, feats: str, seed: int = 0) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tags = ["DET", "NOUN", "VERB", "ADJ"]
    with open(path, "w") as f:
        for s in range(n):
            f.write(f"# sent_id = s{s}\n")
            for i in range(1, 5):
                tag = tags[(i + s) % 4]
                f.write(f"{i}\t{rng.choice(WORDS)}\t_\t{tag}\t_\t{feats if tag != 'DET' else '_'}\t0\t_\t_\t_\n")
            f.write("\n")


def test_morphology_study_end_to_end(tmp_path, tiny_bb, tiny_backbone_dir, registry):
    langs = ["de", "fr", "tr", "fi"]
    par = write_parallel(tmp_path / "par", langs)
    ud = tmp_path / "ud"
    write_conllu(ud / "UD_German-PUD/de_pud-ud-test.conllu", 5, "Case=Nom|Number=Sing")
    write_conllu(ud / "UD_German-GSD/de_gsd-ud-test.conllu", 5, "_")  # the PUD treebank wins
    write_conllu(ud / "UD_Turkish-IMST/tr_imst-ud-test.conllu", 5, "Case=Nom|Number=Sing|Person=3")
    r = write_study_recipe(tmp_path / "morph.yaml", tiny_backbone_dir,
                           {"languages": ["en"] + langs, "parallel_task": str(par), "limit": 20,
                            "layers": ["mid", "last"], "ud_dir": str(ud), "mattr_window": 10},
                           intermediate=[{"task": str(write_toy_task(tmp_path / "a"))},
                                         {"task": str(write_lang_task(tmp_path / "b", ["en"], name="toy-b"))}])
    out = tmp_path / "out"
    before = {n for n, _ in tiny_bb.model.named_parameters() if "lora_" in n}
    run_study("morphology", recipe=r, out=out, registry=registry, backbone=tiny_bb, console=_quiet())
    doc = _check_outputs(out, "morphology", {"languages", "measures", "alignment", "degradation", "correlations",
                                              "summary", "parallel"})
    assert doc["languages"] == sorted(langs) and len(doc["modules"]) == 2
    assert doc["measures"]["de"]["feats"] == pytest.approx(2 * 3 / 4) and doc["measures"]["de"]["feats_source"] == ["UD_German-PUD"]
    assert doc["measures"]["tr"]["feats"] == pytest.approx(3 * 3 / 4) and doc["measures"]["fr"]["feats"] is None
    assert doc["measures"]["de"]["fertility"] > 0 and 0 < doc["measures"]["de"]["mattr"] <= 1
    layers = doc["layers"]
    assert layers == [1, 2]  # mid (7/12 of 2 layers) and last
    a = doc["alignment"]["backbone"]["2"]["tr"]
    assert 0 <= a["retrieval"] <= 100 and -1 <= a["cka"] <= 1
    m = doc["modules"][0]
    d = doc["degradation"][m]["2"]["tr"]["retrieval"]
    assert d == pytest.approx(a["retrieval"] - doc["alignment"][m]["2"]["tr"]["retrieval"])
    assert len(doc["correlations"]) == 3 * 2 * 2  # measures x metrics x layers
    assert set(doc["module_summary"]) == set(doc["modules"])
    assert {"retrieval", "retrieval_centered", "cka"} <= set(doc["module_summary"][doc["modules"][0]]["2"])
    # the modules were removed from the backbone afterwards
    assert {n for n, _ in tiny_bb.model.named_parameters() if "lora_" in n} == before
    # the measurements are cached per condition: a re-run embeds nothing and gives the same numbers
    assert len(list((out / "measurements").glob("alignment-*.json"))) == 3
    import adapters_xtl.studies.similarity as S

    def boom(*a, **k):
        raise AssertionError("embedded again")

    orig = S.embed_layers
    S.embed_layers = boom
    try:
        run_study("morphology", recipe=r, out=out, registry=registry, backbone=tiny_bb, console=_quiet())
    finally:
        S.embed_layers = orig
    again = json.loads((out / "study.json").read_text())
    assert again["alignment"] == doc["alignment"] and again["correlations"] == doc["correlations"]


def test_similarity_study_end_to_end(tmp_path, tiny_bb, tiny_backbone_dir, registry):
    target = write_lang_task(tmp_path / "t", ["en", "de", "sw"])
    inters = [{"task": str(write_lang_task(tmp_path / f"i{i}", ["en"], name=f"inter{i}", seed=i))} for i in range(3)]
    r = write_study_recipe(tmp_path / "sim.yaml", tiny_backbone_dir, {"n_texts": 12},
                           intermediate=inters, targets=[{"task": str(target)}], compositions=["single", "continue"])
    out = tmp_path / "out"
    run_study("similarity", recipe=r, out=out, registry=registry, backbone=tiny_bb, console=_quiet())
    doc = _check_outputs(out, "similarity", {"compositions", "measures", "similarities"})
    assert set(doc["measures"]) == {"text_cos", "text_cos_centered", "cov_sim", "delta_cos", "delta_cos_layer"}
    c = doc["compositions"]["continue"]
    assert len(c["pairs"]) == 3 and all(a["spearman"]["n"] == 3 for a in c["averaged"])
    assert {p["language"] for p in c["per_language"]} == {"en", "de", "sw"}
    s = doc["similarities"]["inter0 -> toy-multi"]
    assert -1 <= s["delta_cos"] <= 1 and 0 < s["cov_sim"] <= 1


def write_ud_task(root: Path) -> Path:
    """UD-style data under root/ud (train splits in en, tr, vi; tests in en, de, tr, vi) and a
    tagging task on it in the layout of udpos-local."""
    ud = root / "ud"
    for i, (tb, splits) in enumerate({"UD_English-LinES/en_lines": ["train"], "UD_English-EWT/en_ewt": ["dev", "test"],
                                      "UD_Turkish-IMST/tr_imst": ["train", "dev", "test"],
                                      "UD_Vietnamese-VTB/vi_vtb": ["train", "test"],
                                      "UD_German-GSD/de_gsd": ["test"]}.items()):
        for j, sp in enumerate(splits):
            write_conllu(ud / f"{tb}-ud-{sp}.conllu", 12 if sp == "train" else 6, "_", seed=10 * i + j)
    y = root / "pos.yaml"
    y.write_text(yaml.safe_dump({
        "name": "toy-pos", "format": "tagging", "columns": {"id": "id", "tokens": "tokens", "tags": "tags"},
        "labels": ["ADJ", "DET", "NOUN", "VERB"], "main_metric": "accuracy",
        "splits": {"train": {"path": "{data_dir}/ud/UD_English-LinES/en_lines-ud-train.conllu"},
                   "validation": {"path": "{data_dir}/ud/UD_English-EWT/en_ewt-ud-dev.conllu"},
                   "test": {"path": "{data_dir}/ud/{code}-ud-test.conllu"}},
        "languages": {"en": "UD_English-EWT/en_ewt", "de": "UD_German-GSD/de_gsd", "tr": "UD_Turkish-IMST/tr_imst",
                      "vi": "UD_Vietnamese-VTB/vi_vtb"}}))
    return y


def test_intermediate_language_study_end_to_end(tmp_path, tiny_bb, tiny_backbone_dir, registry, monkeypatch):
    monkeypatch.delenv("XTL_TASKS", raising=False)
    data = tmp_path / "data"
    pos = write_ud_task(data)
    target = write_lang_task(tmp_path / "t", ["en", "de", "tr", "vi"])
    r = write_study_recipe(tmp_path / "il.yaml", tiny_backbone_dir, {"train_languages": ["en", "tr", "vi"]},
                           data_dir=str(data), intermediate=[{"task": str(pos), "steps": 4, "name": "pos"}],
                           targets=[{"task": str(target)}], compositions=["single", "continue"])
    out = tmp_path / "out"
    run_study("intermediate-language", recipe=r, out=out, registry=registry, backbone=tiny_bb, console=_quiet())
    doc = _check_outputs(out, "intermediate-language", {"targets", "intermediate_languages", "train_files"})
    assert doc["intermediate_languages"] == {"toy-pos": "en", "toy-pos-from-tr": "tr", "toy-pos-from-vi": "vi"}
    assert doc["train_files"]["tr"] == "{data_dir}/ud/UD_Turkish-IMST/tr_imst-ud-train.conllu"
    c = doc["targets"]["toy-multi"]["compositions"]["continue"]
    assert c["languages"] == ["en", "tr", "vi"] and set(c["vs_reference"]) == {"tr", "vi"}
    assert set(c["own_language"]) == {"en", "tr", "vi"} and c["distance_correlations"]
    # the variants were trained on their own language (manifest), with the dev split where one exists
    spec_tr = yaml.safe_load((out / "tasks" / "toy-pos-from-tr.yaml").read_text())
    assert spec_tr["train_language"] == "tr" and "validation" in spec_tr["splits"]
    spec_vi = yaml.safe_load((out / "tasks" / "toy-pos-from-vi.yaml").read_text())
    assert "validation" not in spec_vi["splits"]
    mods = {registry.manifest(n).task: registry.manifest(n) for n in registry.names()}
    m = mods["toy-pos-from-tr"]  # scored on the first examples only: kept apart from full scores
    assert set(m.scores or m.limited_scores["scores"]) == {"tr"}
    import os

    assert "XTL_TASKS" not in os.environ  # the catalog change was undone
    with pytest.raises(XtlError, match="no UD train split for 'de'"):
        r2 = write_study_recipe(tmp_path / "il2.yaml", tiny_backbone_dir, {"train_languages": ["en", "de"]},
                                data_dir=str(data), intermediate=[{"task": str(pos), "steps": 4}],
                                targets=[{"task": str(target)}], compositions=["single", "continue"])
        run_study("intermediate-language", recipe=r2, out=tmp_path / "o2", registry=registry,
                  backbone=tiny_bb, console=_quiet())


def test_cli_study_dry_run_and_errors(tmp_path, tiny_backbone_dir):
    import typer
    from typer.testing import CliRunner

    from adapters_xtl.cli.study import study

    app = typer.Typer()
    app.command()(study)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    task = write_lang_task(tmp_path / "t", ["en", "de"])
    r = write_study_recipe(tmp_path / "steps.yaml", tiny_backbone_dir, {"schedule": [0, 1]},
                           intermediate=[{"task": str(write_toy_task(tmp_path / "i")), "steps": 4}],
                           targets=[{"task": str(task)}], compositions=["continue"])
    res = CliRunner().invoke(app, ["study", "steps", "--recipe", str(r), "--out", str(tmp_path / "o"),
                                   "--registry", str(tmp_path / "reg"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "2 cells" in res.output and "snapshots at steps [0, 4]" in res.output
    assert not (tmp_path / "o" / "study.json").exists()
    res = CliRunner().invoke(app, ["study", "stepz", "--dry-run"])
    assert isinstance(res.exception, XtlError) and "did you mean 'steps'" in str(res.exception)


def test_lora_deltas_follow_peft_scaling_with_rank_and_alpha_patterns_and_rslora():
    import torch
    from peft import LoraConfig, get_peft_model

    from adapters_xtl.studies.similarity import module_deltas

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.value = torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)

    for rslora in (False, True):
        cfg = {"r": 2, "alpha": 4, "rank_pattern": {"value": 4}, "alpha_pattern": {"value": 3}, "use_rslora": rslora}
        model = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"],
                                                  rank_pattern={"value": 4}, alpha_pattern={"value": 3},
                                                  use_rslora=rslora))
        torch.manual_seed(0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p)
        tensors = {"module." + k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
        got = module_deltas(tensors, "lora", cfg)
        for name in ("query", "value"):
            layer = dict(model.named_modules())[f"base_model.model.{name}"]
            want = layer.get_delta_weight("default")
            assert torch.allclose(got[f"base_model.model.{name}"], want, atol=1e-6), (name, rslora)
