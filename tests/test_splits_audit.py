"""Group-aware id splits and the leak audit (`xtl tasks audit`).

A task split by line leaks when rows share text (XNLI: three hypotheses per premise; PAWS-X:
sentences reused across pairs). `group_by` keeps such rows on one side, computed on the English
rows of a line-aligned task and applied to every language; the audit counts what still overlaps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters_xtl.audit import audit_task, render
from adapters_xtl.cli import app
from adapters_xtl.data import load_examples, normalise_text, raw_examples
from adapters_xtl.tasks import get_task, task_names


def write_parallel_task(root: Path, rows_by_lang: dict[str, list[tuple[str, str, str]]], *, group_by: str = "",
                        fraction: float = 0.5, seed: int = 0) -> Path:
    """A line-aligned pair task (premise, hypothesis, label) with one headerless TSV per language."""
    root.mkdir(parents=True, exist_ok=True)
    for lang, rows in rows_by_lang.items():
        (root / f"dev-{lang}.tsv").write_text("".join(f"{p}\t{h}\t{l}\n" for p, h, l in rows))
    y = root / "pairs.yaml"
    y.write_text(f"""
name: toy-pairs
format: classification
columns: {{id: __line__, text: premise, text_pair: hypothesis, label: label}}
labels: [a, b, c]
id_split: {{id_column: __line__, train_fraction: {fraction}, seed: {seed}}}
{f"group_by: {group_by}" if group_by else ""}
splits:
  validation: {{path: "{root}/dev-{{code}}.tsv", file_format: tsv, header: false, fieldnames: [premise, hypothesis, label]}}
languages: {{{", ".join(f"{l}: {l}" for l in rows_by_lang)}}}
""")
    return y


def nli_rows(n_premises: int, lang: str) -> list[tuple[str, str, str]]:
    """Three hypotheses per premise, as XNLI: premise k repeats on lines 3k, 3k+1, 3k+2."""
    return [(f"{lang} premise number {k}.", f"{lang} hypothesis {k}-{j}", "abc"[j]) for k in range(n_premises)
            for j in range(3)]


def sides(spec, lang: str) -> tuple[set, set]:
    return ({e["id"] for e in load_examples(spec, "train", lang)},
            {e["id"] for e in load_examples(spec, spec.eval_split, lang)})


# ------------------------------------------------------------------------------------------ splits
def test_group_by_keeps_every_hypothesis_of_a_premise_on_one_side(tmp_path):
    y = write_parallel_task(tmp_path / "t", {"en": nli_rows(200, "en"), "de": nli_rows(200, "de")}, group_by="premise")
    spec = get_task(str(y))
    train, held = sides(spec, "en")
    assert train and held and not train & held and len(train | held) == 600
    for k in range(200):  # each premise's three lines land together
        assert {3 * k, 3 * k + 1, 3 * k + 2} <= train or {3 * k, 3 * k + 1, 3 * k + 2} <= held
    assert 0.4 < len(train) / 600 < 0.6  # ~ train_fraction, counted in rows
    # the line split alone separates hypotheses of one premise (the leak group_by removes)
    plain = get_task(str(write_parallel_task(tmp_path / "p", {"en": nli_rows(200, "en")})))
    tr, ev = sides(plain, "en")
    split_premises = sum(1 for k in range(200) if {3 * k, 3 * k + 1, 3 * k + 2} & tr and {3 * k, 3 * k + 1, 3 * k + 2} & ev)
    assert split_premises > 100


def test_line_aligned_groups_come_from_english_and_apply_to_every_language(tmp_path):
    # German premises are all distinct (a translator varied them): grouping on German would
    # split the three lines of one English premise; the pivot keeps them together anyway
    de = [(f"Prämisse {i}", f"Hypothese {i}", lab) for i, (_, _, lab) in enumerate(nli_rows(100, "en"))]
    y = write_parallel_task(tmp_path / "t", {"en": nli_rows(100, "en"), "de": de}, group_by="premise")
    spec = get_task(str(y))
    assert sides(spec, "de") == sides(spec, "en")


def test_components_join_rows_that_share_any_sentence_in_any_listed_column(tmp_path):
    # a chain: row0 (A,B) - row1 (B,C) - row2 (C,D) share sentences across columns; the rest stand alone
    rows = [("A", "B", "a"), ("B", "C", "b"), ("C", "D", "a")] + [(f"s{i}", f"t{i}", "abc"[i % 3]) for i in range(300)]
    y = write_parallel_task(tmp_path / "t", {"en": rows}, group_by="[premise, hypothesis]")
    for seed in range(6):
        spec = get_task(str(y)).model_copy(update={"id_split": get_task(str(y)).id_split.model_copy(update={"seed": seed})})
        train, held = sides(spec, "en")
        assert {0, 1, 2} <= train or {0, 1, 2} <= held, seed
    # normalisation joins texts that differ only in case, punctuation and spacing
    assert normalise_text("  The  cat, SAT.") == normalise_text("the cat sat") == "the cat sat"
    y2 = write_parallel_task(tmp_path / "n", {"en": [("The cat sat.", "x1", "a"), ("the  CAT sat", "x2", "b")]
                                              + [(f"s{i}", f"t{i}", "a") for i in range(100)]}, group_by="premise")
    train, held = sides(get_task(str(y2)), "en")
    assert {0, 1} <= train or {0, 1} <= held


def test_group_split_is_deterministic_and_the_seed_matters(tmp_path):
    y = write_parallel_task(tmp_path / "t", {"en": nli_rows(150, "en")}, group_by="premise", seed=7)
    spec = get_task(str(y))
    first = sides(spec, "en")
    assert sides(get_task(str(y)), "en") == first
    other = spec.model_copy(update={"id_split": spec.id_split.model_copy(update={"seed": 8})})
    assert sides(other, "en") != first


def test_ungrouped_id_split_is_unchanged_by_grouping_singletons(tmp_path):
    """A group of one row hashes exactly as the plain id split did: tasks whose rows share
    nothing keep their split (no silent reshuffle of existing results)."""
    rows = [(f"s{i}", f"t{i}", "a") for i in range(200)]
    plain = get_task(str(write_parallel_task(tmp_path / "p", {"en": rows})))
    grouped = get_task(str(write_parallel_task(tmp_path / "g", {"en": rows}, group_by="premise")))
    assert sides(plain, "en") == sides(grouped, "en")


# ------------------------------------------------------------------------------------------ the audit
def test_audit_counts_leaks_of_a_line_split_and_none_after_group_by(tmp_path):
    rows = {"en": nli_rows(100, "en"), "de": nli_rows(100, "de")}
    leaky = audit_task(get_task(str(write_parallel_task(tmp_path / "p", rows))))
    by_lang = {a.language: a for a in leaky.languages}
    assert by_lang["en"].by_field["text"] == by_lang["en"].leaked > 0  # English premises seen in training
    assert by_lang["de"].by_field["text"] == 0 and by_lang["de"].via_english == by_lang["en"].leaked  # via English
    assert by_lang["en"].by_id == by_lang["de"].by_id == 0  # the line split itself never repeats a line
    assert not leaky.clean and leaky.leaked == by_lang["en"].leaked + by_lang["de"].leaked
    fixed = audit_task(get_task(str(write_parallel_task(tmp_path / "g", rows, group_by="premise"))))
    assert fixed.clean and all(a.leaked == 0 for a in fixed.languages) and fixed.n_eval > 0
    table = render(leaky)
    assert [c.header for c in table.columns] == ["language", "eval n", "by id", "text", "text_pair", "via English",
                                                  "leaked"]
    english_only = render(audit_task(get_task(str(write_parallel_task(tmp_path / "e", {"en": rows["en"]})))))
    assert [c.header for c in english_only.columns] == ["language", "eval n", "by id", "text", "text_pair", "leaked"]


def test_audit_cli_exit_codes_and_json(tmp_path):
    rows = {"en": nli_rows(60, "en"), "de": nli_rows(60, "de")}
    runner = CliRunner()
    leaky = runner.invoke(app, ["tasks", "audit", str(write_parallel_task(tmp_path / "p", rows)), "--json"])
    assert leaky.exit_code == 1, leaky.output
    doc = json.loads(leaky.output)
    assert doc["clean"] is False and doc["leaked"] > 0 and {l["language"] for l in doc["languages"]} == {"en", "de"}
    clean = runner.invoke(app, ["tasks", "audit", str(write_parallel_task(tmp_path / "g", rows, group_by="premise"))])
    assert clean.exit_code == 0, clean.output
    assert "clean: no evaluation example overlaps training" in clean.output and "total" in clean.output


def test_audit_of_a_task_without_training_is_not_applicable():
    report = audit_task(get_task("tatoeba"))
    assert not report.applicable and report.clean and "nothing to audit" in report.notes[0]


# ------------------------------------------------------------------------------------------ real data
def _audited_tasks() -> list[str]:
    return sorted(n for n in task_names() if n.endswith("-local")) + ["sib200", "tatoeba"]


def _languages_with_data(spec, data: Path) -> list[str] | None:
    if spec.name != "sib200":
        return None
    return [l for l, c in spec.languages.items() if (data / "sib200" / c / "test.tsv").exists()]


@pytest.mark.parametrize("name", _audited_tasks())
def test_every_local_task_audits_clean_on_the_shared_data(name, shared_data):
    spec = get_task(name)
    report = audit_task(spec, shared_data, _languages_with_data(spec, shared_data))
    if name == "tatoeba":
        assert not report.applicable  # retrieval: no training data
        return
    assert report.applicable and report.n_eval > 0 and report.n_train > 0
    leaks = {a.language: a.leaked for a in report.languages if a.leaked}
    assert report.clean, f"{name}: leaked examples per language {leaks}"


@pytest.mark.parametrize("name, before_share", [("xnli-local", 0.81), ("pawsx-local", 0.41)])
def test_the_old_line_split_leaked_what_the_issue_measured(name, before_share, shared_data):
    """Before/after on the real data: the line split (no group_by) evaluated lines whose English
    premise/sentence was in training (81% of XNLI's, 41% of PAWS-X's); group_by: none."""
    spec = get_task(name)
    old = audit_task(spec.model_copy(update={"group_by": None}), shared_data)
    share = old.leaked / old.n_eval
    assert share == pytest.approx(before_share, abs=0.01)
    en = next(a for a in old.languages if a.language == "en")
    others = [a for a in old.languages if a.language != "en"]
    assert en.by_field["text"] > 0 and all(a.via_english > 0 for a in others)
    assert all(a.by_id == 0 for a in old.languages)  # ids never said so: only the text does
    new = audit_task(spec, shared_data)
    assert new.clean and new.leaked == 0
    n_train = len(load_examples(spec, "train", "en", shared_data))
    assert 0.45 < n_train / len(raw_examples(spec, "train", "en", shared_data)) < 0.55  # still ~ train_fraction


def test_cosmosqa_split_by_id_shared_contexts_and_questions(shared_data):
    spec = get_task("cosmosqa-local")
    old = audit_task(spec.model_copy(update={"group_by": None}), shared_data)
    en = old.languages[0]
    assert en.by_id == 0 and en.by_field["context"] > 0.2 * en.n  # ids unique, contexts not
    assert audit_task(spec, shared_data).clean


def test_cross_data_set_duplicates_are_dropped_from_evaluation(shared_data):
    """MLQA has one paragraph that TyDiQA trains on, SST-2's GLUE dev two sentences of GLUE
    train: no split separates them, `drop_train_overlap` drops them from the test (warned)."""
    for name, field, n_dropped in (("mlqa-local", "context", 1), ("sst2-local", "text", 2)):
        spec = get_task(name)
        before = audit_task(spec.model_copy(update={"drop_train_overlap": None}), shared_data, ["en"])
        assert before.languages[0].by_field[field] == n_dropped == before.leaked
        with pytest.warns(UserWarning, match=f"dropped {n_dropped} examples"):
            kept = load_examples(spec, spec.eval_split, "en", shared_data)
        assert len(kept) == before.languages[0].n - n_dropped
