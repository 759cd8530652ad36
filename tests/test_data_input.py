"""Bad data and bad task files: each is one clear XtlError (exit 2 on the command line) naming
the file, field, line or byte and the value; plus the readers' and loaders' contracts (CoNLL
with spaces, languages checked before training, Hub revisions recorded)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from adapters_xtl import data
from adapters_xtl.cli import main
from adapters_xtl.data import check_languages, load_examples, resolved_revisions
from adapters_xtl.errors import XtlError
from adapters_xtl.readers import read_iob2
from adapters_xtl.tasks import get_task, training_task
from adapters_xtl.tasks.defaults import TrainDefaults

TSV = "id\ttext\tlabel\n" + "".join(f"r{i}\tsentence {i}\t{'ab'[i % 2]}\n" for i in range(40))


def write_task(root: Path, body: str = "", *, files: dict[str, str | bytes] | None = None, name: str = "t") -> Path:
    """A classification task over `root/train.tsv` and per-language `root/test-{code}.tsv`."""
    root.mkdir(parents=True, exist_ok=True)
    for fname, content in (files if files is not None else {"train.tsv": TSV, "test-en.tsv": TSV, "test-de.tsv": TSV}).items():
        (root / fname).write_bytes(content if isinstance(content, bytes) else content.encode())
    y = root / f"{name}.yaml"
    y.write_text(f"""name: {name}
format: classification
columns: {{id: id, text: text, label: label}}
labels: [a, b]
splits:
  train: {{path: "{root}/train.tsv"}}
  test: {{path: "{root}/test-{{code}}.tsv"}}
languages: {{en: en, de: de}}
{body}""")
    return y


def replace_in(y: Path, old: str, new: str) -> Path:
    text = y.read_text()
    assert old in text, old
    y.write_text(text.replace(old, new))
    return y


# ------------------------------------------------------------------------------ task files (load time)
# (case id, YAML added to / changed in the toy task, text the message must contain)
TASK_FILE_CASES = [
    ("steps-not-a-number", "defaults: {train: {steps: abc}}", ["t.yaml", "defaults.train.steps", "'abc'", "integer"]),
    ("steps-zero", "defaults: {train: {steps: 0}}", ["defaults.train.steps", "= 0", "greater than or equal to 1"]),
    ("steps-bool", "defaults: {train: {steps: true}}", ["defaults.train.steps", "true/false"]),
    ("lr-negative", "defaults: {train: {lr: -1}}", ["defaults.train.lr", "-1", "greater than 0"]),
    ("batch-size-zero", "defaults: {train: {batch_size: 0}}", ["defaults.train.batch_size", "= 0"]),
    ("warmup-above-one", "defaults: {train: {warmup_ratio: 2}}", ["defaults.train.warmup_ratio", "= 2"]),
    ("optimizer-unknown", "defaults: {train: {optimizer: sgd}}", ["defaults.train.optimizer", "'sgd'"]),
    ("train-setting-misspelt", "defaults: {train: {stepz: 5}}", ["defaults.train.stepz", "unknown setting", "steps"]),
    ("train-not-a-mapping", "defaults: {train: 5}", ["defaults.train", "= 5"]),
    ("doc-stride-text", "defaults: {doc_stride: wide}", ["defaults.doc_stride", "'wide'"]),
    ("defaults-key-unknown", "defaults: {trian: {steps: 5}}", ["defaults.trian", "unknown setting", "train"]),
    ("group-by-missing-column", "id_split: {id_column: id}\ngroup_by: premise",
     ["group_by", "'premise'", "neither a role nor a column", "text"]),
    ("group-by-without-id-split", "group_by: text", ["group_by", "needs `id_split`"]),
    ("group-by-empty-list", "id_split: {id_column: id}\ngroup_by: []", ["group_by", "non-empty list"]),
    ("train-fraction-one", "id_split: {id_column: id, train_fraction: 1.0}", ["id_split.train_fraction", "= 1.0", "less than 1"]),
    ("train-fraction-zero", "id_split: {id_column: id, train_fraction: 0}", ["id_split.train_fraction", "= 0"]),
    ("drop-overlap-unknown-role", "drop_train_overlap: [premise]", ["drop_train_overlap", "'premise'", "text"]),
    ("train-task-unknown", "train_task: no-such-task", ["train_task 'no-such-task'", "not in the catalog"]),
    ("train-task-other-format", "train_task: squad", ["train_task 'squad'", "span_qa"]),
    ("train-task-other-labels", "train_task: sst2", ["train_task 'sst2'", "labels"]),
]


@pytest.mark.parametrize("case, body, expected", TASK_FILE_CASES, ids=[c[0] for c in TASK_FILE_CASES])
def test_a_bad_task_file_is_one_clear_error_at_load(tmp_path, case, body, expected):
    y = write_task(tmp_path / case, body)
    with pytest.raises(XtlError) as err:
        get_task(str(y))
    msg = str(err.value)
    for part in expected:
        assert part in msg, (part, msg)
    assert "Traceback" not in msg and "pydantic" not in msg.split("fix:")[0]
    # the same file in a --tasks-dir folder: the catalog refuses it at load, and the CLI says so (exit 2)
    assert main(["--tasks-dir", str(y.parent), "tasks"]) == 2


# (case id, (old, new) text of the toy YAML, ROOT = its folder; parts of the message)
TEMPLATE_CASES = [
    ("path-unknown-placeholder", ('"ROOT/train.tsv"', '"{datadir}/train.tsv"'), ["splits.train", "{datadir}", "{data_dir}"]),
    ("path-bad-template", ('"ROOT/train.tsv"', '"{data_dir/train.tsv"'), ["splits.train", "not a valid template"]),
    ("delimiter-on-tsv", ('"ROOT/train.tsv"}', '"ROOT/train.tsv", delimiter: space}'), ["delimiter", "iob2"]),
    ("train-language-not-listed", ("languages: {en: en, de: de}", "languages: {de: de}"),
     ["trains on 'en'", "does not list it", "add `en: CODE`"]),
]


@pytest.mark.parametrize("case, change, expected", TEMPLATE_CASES, ids=[c[0] for c in TEMPLATE_CASES])
def test_bad_paths_and_languages_fail_at_load_not_after_training(tmp_path, case, change, expected):
    root = tmp_path / case
    y = replace_in(write_task(root), *(c.replace("ROOT", str(root)) for c in change))
    with pytest.raises(XtlError) as err:
        get_task(str(y))
    for part in expected:
        assert part in str(err.value), (part, str(err.value))
    assert main(["tasks", "audit", str(y)]) == 2


def test_non_utf8_task_yaml_names_the_byte(tmp_path):
    y = write_task(tmp_path / "enc")
    raw = y.read_bytes().replace(b"name: t\n", b"name: t\ndescription: caf\xe9\n")
    y.write_bytes(raw)
    with pytest.raises(XtlError) as err:
        get_task(str(y))
    offset = raw.index(b"\xe9")
    assert f"byte {offset} (line 2)" in str(err.value) and "not UTF-8" in str(err.value) and str(y) in str(err.value)
    assert main(["tasks", "audit", str(y)]) == 2


def test_a_target_with_train_task_gets_no_language_added(tmp_path):
    y = write_task(tmp_path / "tgt", "train_task: sst2-local")
    replace_in(y, "labels: [a, b]", "labels: [negative, positive]")
    replace_in(y, "languages: {en: en, de: de}", "languages: {de: de}")
    spec = get_task(str(y))
    assert list(spec.languages) == ["de"]  # before: `en` was added, reading test-en.tsv after training
    assert training_task(spec).name == "sst2-local" and training_task(spec).train_language == "en"
    with pytest.raises(XtlError, match="has no language 'en'"):
        load_examples(spec, "test", "en")
    y2 = write_task(tmp_path / "tgt2", "train_task: sst2-local\ntrain_language: de")
    replace_in(y2, "labels: [a, b]", "labels: [negative, positive]")
    with pytest.raises(XtlError, match="the train task decides"):
        get_task(str(y2))


def test_train_defaults_mirror_train_config():
    """tasks.defaults.TrainDefaults checks task YAMLs with TrainConfig's fields and ranges."""
    from adapters_xtl.trainer import TrainConfig

    assert set(TrainDefaults.model_fields) == set(TrainConfig.model_fields)
    for bad in ({"steps": 0}, {"lr": -1.0}, {"warmup_ratio": 1.5}, {"seed": -1}, {"eval_every": 0},
                {"batch_size": "abc"}, {"max_grad_norm": -0.5}, {"steps": True}, {"optimizer": "sgd"}):
        with pytest.raises(Exception):
            TrainDefaults(**bad)
        with pytest.raises(Exception):
            TrainConfig(**bad)
    good = {"steps": 10, "batch_size": 4, "lr": 5e-4, "warmup_ratio": 0.0, "seed": 0, "max_grad_norm": 0.0}
    TrainDefaults(**good)
    TrainConfig(**good)


# ------------------------------------------------------------------------------ data files (read time)
RAGGED = "id\ttext\tlabel\nr0\tfine\ta\nr1\ttoo short\nr2\tfine\tb\nr3\ttoo\tlong\ta\n"
DATA_CASES = [
    # (case, file name, content, yaml change, expected parts of the message)
    ("ragged-tsv", "train.tsv", RAGGED, None,
     ["2 row(s) do not have the 3 fields (id, text, label)", "line 3 (2 fields)", "line 5 (4 fields)", "train.tsv"]),
    ("ragged-csv", "train.csv", 'id,text,label\nr0,"a, quoted",a\nr1,b\nr2,c,b\n', ("train.tsv", "train.csv"),
     ["1 row(s) do not have the 3 fields", "line 3 (2 fields)"]),
    ("ragged-headerless", "train.tsv", "r0\tx\ta\nr1\tx\n",
     ("train.tsv\"}", 'train.tsv", header: false, fieldnames: [id, text, label]}'),
     ["1 row(s) do not have the 3 fields", "line 2 (2 fields)"]),
    ("non-utf8-tsv", "train.tsv", b"id\ttext\tlabel\nr0\tcaf\xe9\ta\n", None,
     ["not UTF-8", "byte 20 (line 2)", "b'\\xe9'", "train.tsv"]),
    ("non-utf8-jsonl", "train.jsonl", b'{"id": "1", "text": "ok", "label": "a"}\n{"id": "2", "text": "\xff", "label": "b"}\n',
     ("train.tsv", "train.jsonl"), ["not UTF-8", "line 2", "train.jsonl"]),
    ("empty-file", "train.tsv", "", None, ["no rows", "train.tsv"]),
    ("unknown-label", "train.tsv", "id\ttext\tlabel\nr0\tx\tc\n", None, ["row 1: label 'c'", "train.tsv"]),
]


@pytest.mark.parametrize("case, fname, content, change, expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_file_is_one_clear_error(tmp_path, case, fname, content, change, expected):
    root = tmp_path / case
    y = write_task(root, files={fname: content, "test-en.tsv": TSV, "test-de.tsv": TSV})
    if change:
        replace_in(y, *change)
    with pytest.raises(XtlError) as err:
        load_examples(get_task(str(y)), "train", "en")
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


@pytest.mark.parametrize("fmt, content, bad", [
    ("iob2", b"1\tParis\tB-LOC\n2\tcaf\xe9\tO\n", b"\xe9"),
    ("conllu", b"1\tcaf\xe9\tcafe\tNOUN\t_\t_\t0\troot\t_\t_\n", b"\xe9"),
    ("squad", b'{"data": [{"title": "\xe9", "paragraphs": []}]}', b"\xe9"),
    ("lines", b"ok\n\xc3\x28\n", b"\xc3"),
])
def test_non_utf8_structured_files_name_file_and_byte(tmp_path, fmt, content, bad):
    from adapters_xtl.readers import read

    path = tmp_path / f"f.{fmt}"
    path.write_bytes(content)
    with pytest.raises(XtlError) as err:
        read(fmt, path) if fmt != "lines" else data._read_lines(path)
    offset = content.index(bad)
    line = content[:offset].count(b"\n") + 1
    assert f"not UTF-8: byte {offset} (line {line})" in str(err.value) and str(path) in str(err.value)


def test_group_by_column_missing_in_the_data_and_one_group_for_everything(tmp_path):
    y = write_task(tmp_path / "g", "id_split: {id_column: id}\ngroup_by: text")
    replace_in(y, '  train: {path: "' + str(tmp_path / "g") + '/train.tsv"}\n', "")
    spec = get_task(str(y))
    assert len(load_examples(spec, "test", "en")) > 0
    # a column the YAML cannot check (a reader's rows): found missing when the data are read
    ghost = spec.model_copy(update={"group_by": ["title"]})
    with pytest.raises(XtlError, match=r"group_by column 'title' does not exist.*columns: \['id', 'label', 'text'\]"):
        load_examples(ghost, "train", "en")
    # every row shares one text: one group, so one side is empty -> an error, not an empty run
    (tmp_path / "g" / "test-en.tsv").write_text("id\ttext\tlabel\n" + "".join(f"r{i}\tsame\ta\n" for i in range(30)))
    with pytest.raises(XtlError, match=r"leaves its (train|evaluation) side empty: 30 rows, 1 group\(s\)"):
        load_examples(get_task(str(y)), "train", "en")


def test_drop_labels_skips_unlabelled_rows(tmp_path):
    y = write_task(tmp_path / "d", "drop_labels: ['-1']",
                   files={"train.tsv": "id\ttext\tlabel\nr0\tx\ta\nr1\ty\t-1\nr2\tz\tb\n", "test-en.tsv": TSV, "test-de.tsv": TSV})
    assert [e["id"] for e in load_examples(get_task(str(y)), "train", "en")] == ["r0", "r2"]


def test_drop_train_overlap_drops_evaluation_rows_seen_in_training(tmp_path):
    test = "id\ttext\tlabel\nx0\tSentence 3!\ta\nx1\tnever seen\tb\n"
    y = write_task(tmp_path / "o", "drop_train_overlap: [text]", files={"train.tsv": TSV, "test-en.tsv": test, "test-de.tsv": test})
    with pytest.warns(UserWarning, match="dropped 1 examples whose text occurs in the training data"):
        assert [e["id"] for e in load_examples(get_task(str(y)), "test", "de")] == ["x1"]


# ------------------------------------------------------------------------------ CoNLL with spaces
CONLL_SPACES = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

1996 CD B-NP O
Peter NNP B-NP B-PER
Blackburn   NNP   I-NP   I-PER

# O
end O
"""


def test_space_separated_conll_reads_as_the_tab_file(tmp_path):
    spaced = tmp_path / "spaced.iob2"
    spaced.write_text(CONLL_SPACES)
    tabbed = tmp_path / "tabbed.iob2"
    tabbed.write_text(CONLL_SPACES.replace("   ", " ").replace(" ", "\t"))
    rows = read_iob2(spaced)
    assert rows == read_iob2(tabbed) == read_iob2(spaced, delimiter="space")
    assert [r["tokens"] for r in rows] == [["EU", "rejects", "German", "call", "."], ["1996", "Peter", "Blackburn"],
                                           ["#", "end"]]
    assert rows[0]["tags"] == ["B-ORG", "O", "B-MISC", "O", "O"] and rows[1]["tags"] == ["O", "B-PER", "I-PER"]
    # UNER's numbered layout still reads the index, token and tag columns (with tabs or spaces)
    uner = "# sent_id = s1\n1\tWhat\tO\t-\t-\n2\tParis\tB-LOC\t-\t-\n"
    (tmp_path / "u.iob2").write_text(uner)
    (tmp_path / "u2.iob2").write_text(uner.replace("\t", " "))
    assert read_iob2(tmp_path / "u.iob2") == read_iob2(tmp_path / "u2.iob2") == [
        {"id": "s1", "tokens": ["What", "Paris"], "tags": ["O", "B-LOC"]}]
    # declared tab on a space file: one column per line, a clear error naming the line
    with pytest.raises(XtlError, match="line 1: expected `token<TAB>tag`.*got '-DOCSTART- -X- -X- O'"):
        read_iob2(spaced, delimiter="tab")


def test_delimiter_is_declared_in_the_source(tmp_path):
    (tmp_path / "train.iob2").write_text(CONLL_SPACES)
    y = tmp_path / "ner.yaml"
    y.write_text(f"""name: ner
format: tagging
columns: {{id: id, tokens: tokens, tags: tags}}
labels: [O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC]
splits:
  train: {{path: "{tmp_path}/train.iob2", delimiter: space}}
""")
    ex = load_examples(get_task(str(y)), "train", "en")
    assert [len(e["tokens"]) for e in ex] == [5, 3, 2]


def test_real_uner_reads_the_same_as_before(shared_data):
    """The layout detection keeps UNER's numbered 5-column files as they were read (the tag
    in column 3, not the annotator column last)."""
    path = shared_data / "ner" / "uner" / "UNER_English-EWT" / "en_ewt-ud-dev.iob2"
    rows = read_iob2(path)
    assert len(rows) == 2001 and all(len(r["tokens"]) == len(r["tags"]) for r in rows)
    assert {t for r in rows for t in r["tags"]} <= {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC",
                                                     "B-OTH", "I-OTH"}


# ------------------------------------------------------------------------------ languages before training
def test_check_languages_counts_or_lists_every_broken_language(tmp_path):
    y = write_task(tmp_path / "c")
    replace_in(y, "languages: {en: en, de: de}", "languages: {en: en, de: de, fr: fr, sw: sw}")
    (tmp_path / "c" / "test-fr.tsv").write_text("id\ttext\tlabel\nr0\tx\tzz\n")
    spec = get_task(str(y))
    assert check_languages(spec, ["en", "de"]) == {"en": 40, "de": 40}
    with pytest.raises(XtlError) as err:
        check_languages(spec, ["en", "fr", "sw", "xx"])
    msg = str(err.value)
    assert "3 of 4 language(s)" in msg and "fr:" in msg and "label 'zz'" in msg and "sw:" in msg
    assert "test-sw.tsv" in msg and "xx:" in msg and "en:" not in msg


def test_check_languages_on_the_shared_data(shared_data):
    counts = check_languages(get_task("xnli-local"), ["en", "de", "sw"], shared_data)
    assert set(counts) == {"en", "de", "sw"} and len(set(counts.values())) == 1 and counts["en"] > 1000


# ------------------------------------------------------------------------------ Hub revisions
def test_read_hub_records_the_resolved_commit(monkeypatch):
    from adapters_xtl.tasks import Source

    calls = []
    fake_datasets = types.SimpleNamespace(load_dataset=lambda *a, **k: calls.append((a, k)) or [{"text": "hi"}])
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets)
    import huggingface_hub

    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info",
                        lambda self, repo, revision=None, **k: types.SimpleNamespace(sha=sha))
    data.clear_resolved_revisions()
    rows = data.read_hub(Source(dataset="org/set", config="{code}", split="test"), "de")
    assert rows == [{"text": "hi"}]
    assert calls[0][0] == ("org/set", "de") and calls[0][1] == {"split": "test", "revision": sha}  # pinned
    assert resolved_revisions() == {"org/set": sha}
    # offline (the Hub cannot be asked): the requested revision is what is known
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info",
                        lambda self, *a, **k: (_ for _ in ()).throw(OSError("offline")))
    data.read_hub(Source(dataset="org/other", revision="v1.0"), "en")
    assert resolved_revisions()["org/other"] == "v1.0" and calls[-1][1]["revision"] == "v1.0"
    # a full sha is used as given, without asking
    data.read_hub(Source(dataset="org/pinned", revision=sha), "en")
    assert resolved_revisions()["org/pinned"] == sha
    data.clear_resolved_revisions()


def test_tasks_command_still_lists(capsys):
    assert main(["tasks", "--group", "local"]) == 0
    assert "xnli-local" in capsys.readouterr().out
    assert main(["tasks", "frobnicate"]) == 2
    assert main(["tasks", "audit"]) == 2
    assert main(["tasks", "audit", "no-such-task"]) == 2


def test_task_defaults_set_precision_and_dropout_or_say_built(tmp_path):
    from test_core import write_toy_task

    from adapters_xtl.tasks import get_task
    from adapters_xtl.trainer import TrainConfig

    y = write_toy_task(tmp_path / "t", extra_yaml="defaults: {train: {precision: fp32, backbone_dropout: built, "
                                                  "module_dropout: 0.05}}")
    cfg = TrainConfig.resolve(get_task(str(y)))
    assert cfg.precision == "fp32" and cfg.backbone_dropout is None and cfg.module_dropout == 0.05
    bad = write_toy_task(tmp_path / "b", extra_yaml="defaults: {train: {backbone_dropout: 1.5}}")
    with pytest.raises(XtlError, match="backbone_dropout"):
        get_task(str(bad))
