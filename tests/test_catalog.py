"""The task catalog (adapters_xtl/tasks/*.yaml), the local-data recipes, and BUCC-style mining.

Fast: YAML parsing, path resolution and the first rows of each local data set; mining runs the
tiny random XLM-R on a hand-written fixture in BUCC's file layout (no BUCC data is available).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from adapters_xtl import metrics
from adapters_xtl.backbone import load_backbone
from adapters_xtl.data import load_examples, source_path
from adapters_xtl.errors import XtlError
from adapters_xtl.evaluation import retrieval_pairs
from adapters_xtl.formats import get_format
from adapters_xtl.formats import retrieval as R
from adapters_xtl.model import TaskModel
from adapters_xtl.recipe import expand, load_recipe
from adapters_xtl.tasks import _builtin_files, get_task, parse_task_file, task_names
from adapters_xtl.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "adapters_xtl" / "tasks"

# XTREME's nine targets and the number of languages XTREME evaluates each on
XTREME = {"xnli": 15, "pawsx": 7, "udpos": 33, "panx": 40, "xquad": 11, "mlqa": 7, "tydiqa": 9, "bucc2018": 4, "tatoeba": 36}
# the paper's nine English intermediate tasks
INTERMEDIATE = {"anli-plus": "ANLI+", "mnli": "MNLI", "qqp": "QQP", "sst2": "SST-2", "ccg": "CCG", "squad": "SQuAD",
                "hellaswag": "HellaSwag", "cosmosqa": "CosmosQA", "commonsenseqa": "CommonsenseQA"}
LOCAL_EXTRA = ("sib200", "tatoeba")  # catalog tasks that read ../shared/data directly


# ------------------------------------------------------------------------------------------ catalog
@pytest.mark.parametrize("path", _builtin_files(), ids=lambda p: p.name)
def test_every_task_file_loads_and_its_formats_exist(path):
    specs = parse_task_file(path)
    assert specs, path
    for s in specs:
        assert get_format(s.format).name == s.format
        assert s.languages and s.description, s.name
        for split, src in s.splits.items():
            assert src.path or src.dataset, (s.name, split)


def test_xtreme_targets_have_exactly_xtremes_languages():
    for name, n in XTREME.items():
        spec = get_task(name)
        assert spec.group == "target", name
        assert len(spec.languages) == n, (name, len(spec.languages))
        assert "en" in spec.languages or spec.format == "retrieval"


def test_the_papers_nine_intermediate_tasks():
    for name, paper in INTERMEDIATE.items():
        spec = get_task(name)
        assert spec.group == "intermediate" and spec.paper_name == paper
        assert list(spec.languages) == ["en"]
    assert {get_task(n).paper_name for n in task_names() if get_task(n).group == "intermediate" and get_task(n).paper_name} \
        == set(INTERMEDIATE.values())


def test_train_tasks_exist_and_fit_their_targets():
    seen = 0
    for n in task_names():
        spec = get_task(n)
        if not spec.train_task:
            continue
        seen += 1
        src = get_task(spec.train_task)
        assert src.name != spec.name
        assert src.format == spec.format, n
        assert "train" in src.splits or src.id_split, (n, src.name)
        assert (src.labels or None) == (spec.labels or None), n
        assert set(spec.columns) <= set(src.columns) | {"id"}, n
    assert seen >= 4
    assert get_task("xnli").train_task == "mnli"
    assert get_task("xquad").train_task == get_task("mlqa").train_task == "squad"
    for own in ("pawsx", "udpos", "panx", "tydiqa"):  # trained on their own English train split
        assert get_task(own).train_task is None and "train" in get_task(own).splits


def test_anli_plus_is_a_mixture_of_compatible_nli_tasks():
    plus = get_task("anli-plus")
    assert plus.mixture == ["anli-r1", "anli-r2", "anli-r3", "mnli", "snli"] and not plus.splits
    for m in plus.mixture:
        member = get_task(m)
        assert member.format == plus.format and member.labels == plus.labels
        assert {"text", "text_pair", "label"} <= set(member.columns)
        assert "train" in member.splits
    with pytest.raises(XtlError, match="mixture"):
        load_examples(plus, "train", "en")


def test_paper_and_adapter_defaults():
    for n in list(XTREME) + list(INTERMEDIATE):
        spec = get_task(n)
        if spec.format == "retrieval":
            continue
        assert spec.defaults["paper"]["lr"] == pytest.approx(1e-5), n
        TrainConfig(**spec.defaults["train"])  # valid training settings
    epochs = {n: get_task(n).defaults["paper"]["epochs"] for n in ("xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa")}
    assert epochs == {"xnli": 2, "pawsx": 5, "udpos": 10, "panx": 10, "xquad": 2, "mlqa": 2, "tydiqa": 2}
    assert {get_task(n).max_length for n in ("xnli", "pawsx", "udpos", "panx")} == {256}
    assert {get_task(n).max_length for n in ("squad", "xquad", "mlqa", "tydiqa")} == {384}
    assert get_task("bucc2018").max_length == 512


def test_ccg_without_data_says_where_to_put_ldc_files(monkeypatch, tmp_path):
    monkeypatch.setenv("XTL_DATA", str(tmp_path))
    [spec] = parse_task_file(TASKS_DIR / "ccg.yaml")
    assert spec.labels is None
    with pytest.raises(XtlError, match="label set file") as e:
        load_examples(spec, "train", "en", tmp_path)
    assert "LDC" in str(e.value)


def test_ccg_reads_its_documented_layout(monkeypatch, tmp_path):
    ccg = tmp_path / "ccg"
    ccg.mkdir()
    sent = "Pierre\tN/N\nVinken\tN\nwill\t(S[dcl]\\NP)/(S[b]\\NP)\njoin\tS[b]\\NP\n.\t.\n\n#\tN\nup\tPR\n"
    for split in ("train", "dev", "test"):
        (ccg / f"{split}.tsv").write_text(sent)
    (ccg / "tags.txt").write_text("N/N\nN\n(S[dcl]\\NP)/(S[b]\\NP)\nS[b]\\NP\n.\nPR\n")
    monkeypatch.setenv("XTL_DATA", str(tmp_path))
    [spec] = parse_task_file(TASKS_DIR / "ccg.yaml")
    assert len(spec.labels) == 6
    ex = load_examples(spec, "train", "en", tmp_path)
    assert ex[0]["tokens"] == ["Pierre", "Vinken", "will", "join", "."] and ex[1]["tokens"] == ["#", "up"]
    assert set(t for e in ex for t in e["tags"]) <= set(spec.labels)
    other = tmp_path / "elsewhere"
    (other / "ccg").mkdir(parents=True)
    (other / "ccg" / "tags.txt").write_text("A\nB\n")
    assert spec.resolve_labels(other).labels == ["A", "B"]


# ------------------------------------------------------------------------------------------ local data
def _local_tasks() -> list[str]:
    return [n for n in task_names() if get_task(n).group == "local"] + list(LOCAL_EXTRA)


def test_local_task_names():
    local = [n for n in task_names() if get_task(n).group == "local"]
    assert local and all(n.endswith("-local") for n in local)
    assert {"udpos-local", "uner-local", "xnli-local", "pawsx-local", "xquad-local", "mlqa-local", "tydiqa-local",
            "sst2-local", "cosmosqa-local", "commonsenseqa-local"} <= set(local)
    assert len(get_task("udpos-local").languages) >= 10
    assert {"fi", "tr", "eu", "hu", "et", "yo"} <= set(get_task("udpos-local").languages)
    assert {"de", "ru", "zh", "da", "sv", "pt", "hr", "sk"} <= set(get_task("uner-local").languages)
    assert len(get_task("xnli-local").languages) == 15 and len(get_task("mlqa-local").languages) == 7


@pytest.mark.parametrize("name", _local_tasks())
def test_local_task_files_resolve_and_first_examples_load(name, shared_data):
    spec = get_task(name)
    langs = list(spec.languages)
    for split, src in spec.splits.items():
        per_language = "{code}" in src.path or "{lang}" in src.path
        if name == "sib200" and split != "test":
            continue  # SIB-200's train and dev are local for English only (the Hub has the rest)
        for lang in langs if per_language else [spec.train_language]:
            path = source_path(src, spec, lang, shared_data)
            if not path.exists():
                pytest.skip(f"{path} is not in the shared data")
    if spec.format == "retrieval":
        for lang in langs[:2]:
            src, tgt = retrieval_pairs(spec, lang, shared_data, 3)
            assert len(src) == len(tgt) == 3
        return
    train = get_task(spec.train_task) if spec.train_task else spec
    ex = load_examples(train, "train", train.train_language, shared_data, limit=3)
    assert len(ex) == 3
    other = [l for l in langs if l != spec.train_language][:2]
    for lang in [spec.train_language, *other][:3]:
        ev = load_examples(spec, spec.eval_split, lang, shared_data, limit=3)
        assert len(ev) == 3 and all(e.get("id") is not None for e in ev)
        if spec.format == "tagging":
            assert all(len(e["tokens"]) == len(e["tags"]) for e in ev)
    if spec.id_split:  # no translation of a training example is evaluated, in any language
        col = spec.id_split.id_column
        key = "id" if col == "__line__" else col  # __line__ tasks name the row number as their id
        tr = {str(e[key]) for e in load_examples(spec, "train", spec.train_language, shared_data)}
        ev = {str(e[key]) for e in load_examples(spec, spec.eval_split, langs[-1], shared_data)}
        assert tr and ev and not tr & ev


LOCAL_RECIPES = REPO / "recipes" / "local"
# one recipe per data set of ../shared/data (recipes/README.md); other recipes may live beside them
PER_DATA_SET = ("udpos", "uner", "xnli", "pawsx", "tydiqa", "xquad", "mlqa", "sst2", "cosmosqa", "commonsenseqa",
                "sib200", "tatoeba")


@pytest.mark.parametrize("path", sorted(LOCAL_RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_local_recipes_expand(path):
    recipe = load_recipe(path)
    plan = expand(recipe)
    assert plan.cells
    assert Path(recipe.data_dir).resolve() == (REPO.parent / "shared" / "data").resolve()
    if path.stem not in PER_DATA_SET:
        return
    assert recipe.backbone == "xlmr-e5-small"
    for cell in plan.cells:  # small CPU budgets
        spec = get_task(cell.target)
        assert spec.format == "retrieval" or 100 <= cell.train.get("steps", 0) <= 300, cell.label
        assert cell.eval_limit and cell.eval_limit <= 100, cell.label
    for job in plan.modules:
        assert 100 <= job.train["steps"] <= 300
        assert get_task(job.task).group == "local"


def test_every_local_data_set_has_a_recipe():
    readme = (REPO / "recipes" / "README.md").read_text()
    used = set()
    for stem in PER_DATA_SET:
        assert f"local/{stem}.yaml" in readme, stem
        r = load_recipe(LOCAL_RECIPES / f"{stem}.yaml")
        used |= {t.task for t in r.targets} | {i.task for i in r.intermediate}
    for name in [n for n in task_names() if get_task(n).group == "local" and n != "udpos-pud-local"] + list(LOCAL_EXTRA):
        assert name in used, name


# ------------------------------------------------------------------------------------------ BUCC mining
WORDS = ("the cat sat on mat dog runs in park good film great acting terrible food rain morning football "
         "match tonight new phone fast chip der Hund läuft im Park le chat est sur tapis").split()


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(" ".join(rng.sample(WORDS, 6)))
    return sorted(out)


def _write_bucc(root: Path, lang: str, split: str, xx: list[str], en: list[str], gold: list[tuple[int, int]], seed=0):
    """BUCC's layout: ids `de-000000001`, lines shuffled, gold = (xx id, en id)."""
    rng = random.Random(seed)
    d = root / "bucc2018"
    d.mkdir(parents=True, exist_ok=True)
    xid = [f"{lang}-{i + 1:09d}" for i in range(len(xx))]
    eid = [f"en-{i + 1:09d}" for i in range(len(en))]
    xl = [f"{i}\t{t}" for i, t in zip(xid, xx)]
    el = [f"{i}\t{t}" for i, t in zip(eid, en)]
    rng.shuffle(xl)
    rng.shuffle(el)
    (d / f"{lang}-en.{split}.{lang}").write_text("\n".join(xl) + "\n")
    (d / f"{lang}-en.{split}.en").write_text("\n".join(el) + "\n")
    (d / f"{lang}-en.{split}.gold").write_text("".join(f"{xid[a]}\t{eid[b]}\n" for a, b in gold))
    return {(xid[a], eid[b]) for a, b in gold}


@pytest.fixture(scope="module")
def tiny_model(tiny_backbone_dir):
    bb = load_backbone(str(tiny_backbone_dir))
    return TaskModel(bb, get_task("bucc2018"))


def test_bucc_mining_end_to_end(tiny_model, tmp_path):
    spec = get_task("bucc2018")
    fmt = get_format("retrieval")
    # identical sentences on both sides (the gold pairs), non-parallel distractors around them
    gold_text = _sentences(10, 1)
    xx = gold_text + _sentences(6, 2)
    en = gold_text + _sentences(9, 3)
    _write_bucc(tmp_path, "de", "test", xx, en, [(i, i) for i in range(10)])
    s = fmt.score_language(tiny_model, spec, "de", data_dir=tmp_path)
    assert set(s) == {"f1", "precision", "recall"}
    assert all(0.0 <= v <= 100.0 for v in s.values())
    # both sides identical: mining recovers exactly the gold pairs
    _write_bucc(tmp_path, "fr", "test", gold_text, list(gold_text), [(i, i) for i in range(10)], seed=5)
    s = fmt.score_language(tiny_model, spec, "fr", data_dir=tmp_path)
    assert s == {"f1": 100.0, "precision": 100.0, "recall": 100.0}
    # the dev split (BUCC "sample") is the same layout
    _write_bucc(tmp_path, "ru", "dev", gold_text, list(gold_text), [(i, i) for i in range(10)])
    xx_rows, en_rows, gold = R.mining_sides(spec, "ru", tmp_path, split="validation")
    assert len(xx_rows) == len(en_rows) == len(gold) == 10


def test_bucc_duplicate_sentences_are_dropped_as_xtremes_reader_drops_them(tiny_model, tmp_path):
    spec = get_task("bucc2018")
    sents = _sentences(8, 7)
    xx = sents + [sents[0]]  # a repeated sentence: XTREME's read_sent2id gives it no id
    gold = _write_bucc(tmp_path, "zh", "test", xx, list(sents), [(i, i) for i in range(8)] + [(8, 0)])
    xx_rows, en_rows, g = R.mining_sides(spec, "zh", tmp_path)
    assert set(g) == gold
    s = get_format("retrieval").score_mining(tiny_model, xx_rows, en_rows, g, spec)
    # 7 of 9 gold pairs found (the repeated sentence's two are lost), none wrong
    assert s["precision"] == 100.0 and s["recall"] == pytest.approx(700 / 9) and s["f1"] == pytest.approx(87.5)


def test_bucc_limit_keeps_gold_density(tmp_path):
    spec = get_task("bucc2018")
    xx, en = _sentences(40, 11), _sentences(60, 12)
    _write_bucc(tmp_path, "de", "test", xx, en, [(i, i) for i in range(20)])
    x, e, g = R.mining_sides(spec, "de", tmp_path, limit=5)
    assert len(g) == 5 and len(x) == 10 and len(e) == 15
    assert {a for a, _ in g} <= {i for i, _ in x} and {b for _, b in g} <= {i for i, _ in e}


def test_bucc_missing_gold_ids_and_missing_files_are_clear(tiny_model, tmp_path):
    spec = get_task("bucc2018")
    with pytest.raises(XtlError, match="data file not found"):
        R.mining_sides(spec, "de", tmp_path)
    _write_bucc(tmp_path, "de", "test", ["a b c"], ["a b c"], [(0, 0)])
    with open(tmp_path / "bucc2018" / "de-en.test.gold", "a") as f:
        f.write("de-000000009\ten-000000001\n")
    with pytest.raises(XtlError, match="gold pairs name ids missing"):
        R.mining_sides(spec, "de", tmp_path)


def test_blockwise_mining_equals_the_dense_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 16))
    y = np.concatenate([x[:20] + 0.05 * rng.normal(size=(20, 16)), rng.normal(size=(25, 16))])
    dense = metrics.mine_pairs(x, y, k=4)
    for block in (1, 7, 64):
        blocked = R.mine_blockwise(x, y, 4, block=block)
        assert [(s, t) for s, t, _ in blocked] == [(s, t) for s, t, _ in dense]
        assert np.allclose([v for *_, v in blocked], [v for *_, v in dense], rtol=1e-5)


def test_retrieval_layer_and_pooling_are_configurable(tiny_model, tmp_path):
    texts = _sentences(4, 21)
    spec = get_task("tatoeba")
    assert spec.pooling == "mean" and spec.retrieval_layer is None and spec.retrieval_mode == "pairs"
    assert R.default_layer(24) == 14 and R.default_layer(12) == 7
    base = R.embed_spec(tiny_model, texts, spec)
    first = R.embed_spec(tiny_model, texts, spec.model_copy(update={"retrieval_layer": 0}))
    cls = R.embed_spec(tiny_model, texts, spec.model_copy(update={"pooling": "cls"}))
    assert not np.allclose(base.numpy(), first.numpy()) and not np.allclose(base.numpy(), cls.numpy())
    with pytest.raises(XtlError, match="retrieval_layer 9"):
        R.embed_spec(tiny_model, texts, spec.model_copy(update={"retrieval_layer": 9}))
    y = tmp_path / "t.yaml"
    y.write_text("name: t\nformat: classification\nlabels: [a]\nretrieval_mode: mining\n")
    with pytest.raises(XtlError, match="mining"):
        parse_task_file(y)
