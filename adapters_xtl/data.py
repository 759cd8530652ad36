"""Rows of one (task, split, language), read from the Hub or from local files.

Everything downstream sees plain dicts keyed by *role* (`text`, `text_pair`, `label`, `id`,
...), never by a source's column names, so a task can move from local TSV to a Hub data set by
changing its YAML only. Problems in the data (missing columns, unknown labels, empty files,
ragged rows, bytes that are not UTF-8) are reported with the file, row and value here, before
any model is touched.

A task without its own train split (`id_split`) is split here, deterministically, and what must
stay together (`group_by`) is kept on one side: see `split_sides`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

from .errors import XtlError
from .io import read_utf8
from .readers import text_lines
from .tasks import Source, TaskSpec, default_data_dir

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
RAGGED_SHOWN = 5  # line numbers named in a ragged-rows error


# --------------------------------------------------------------------------- file readers
def _ragged_error(path: Path, bad: list[tuple[int, int]], names: list[str]) -> XtlError:
    shown = ", ".join(f"line {n} ({k} fields)" for n, k in bad[:RAGGED_SHOWN])
    more = f" and {len(bad) - RAGGED_SHOWN} more" if len(bad) > RAGGED_SHOWN else ""
    return XtlError(
        f"{len(bad)} row(s) do not have the {len(names)} fields ({', '.join(names)}): {shown}{more}",
        where=str(path),
        fix="check the delimiter, that no field contains it unquoted, and that no line was cut or joined",
    )


def _read_delimited(path: Path, delimiter: str, header: bool, fieldnames: list[str] | None) -> list[dict]:
    """Rows of a TSV/CSV file; every row must have the header's (or `fieldnames`') field count:
    csv.DictReader would pad short rows with None and hide long rows' extra fields."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter=delimiter, quoting=quoting)
    names = list(fieldnames or []) if not header else None
    rows, bad = [], []
    for parts in reader:
        if not parts:  # a blank line
            continue
        if names is None:  # the header
            names = parts
            continue
        if names and len(parts) != len(names):
            bad.append((reader.line_num, len(parts)))
            continue
        rows.append(dict(zip(names or [str(i) for i in range(len(parts))], parts)))
    if bad:
        raise _ragged_error(path, bad, names)
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in text_lines(path):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise XtlError(f"line {i} is not valid JSON: {e.msg}", where=str(path)) from None
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        doc = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise XtlError(f"not valid JSON: {e.msg} (line {e.lineno})", where=str(path)) from None
    return doc if isinstance(doc, list) else doc.get("data", [])


def _read_lines(path: Path) -> list[dict]:
    return [{"text": line} for _, line in text_lines(path)]


def read_local(source: Source, path: Path) -> list[dict]:
    if not path.exists():
        raise XtlError(
            f"data file not found: {path}",
            where="source.path",
            fix="pass --data-dir (or set XTL_DATA) to the folder holding the data, or fix the task's path",
        )
    fmt = source.file_format
    if fmt == "tsv":
        return _read_delimited(path, "\t", source.header, source.fieldnames)
    if fmt == "csv":
        return _read_delimited(path, ",", source.header, source.fieldnames)
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt == "json":
        return _read_json(path)
    if fmt == "lines":
        return _read_lines(path)
    from . import readers  # formats with structure: conllu, iob2, squad

    return readers.read(fmt, path, delimiter=source.delimiter)


# --------------------------------------------------------------------------- the Hub
_RESOLVED: dict[str, str] = {}
_SHA = re.compile(r"[0-9a-f]{40}")


def resolved_revisions() -> dict[str, str]:
    """Hub data set id -> the commit its rows were read at in this process (the requested
    revision, or `main`, where the Hub could not be asked): for manifests."""
    return dict(_RESOLVED)


def clear_resolved_revisions() -> None:
    _RESOLVED.clear()


def _resolve_revision(dataset: str, revision: str | None) -> str | None:
    """The commit sha `revision` (a branch, tag or None = main) points at now, or None offline."""
    if revision and _SHA.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset, revision=revision).sha
    except Exception:  # offline, unreachable, gated: the loader below says what is wrong
        return None


def read_hub(source: Source, code: str) -> list[dict]:
    """The real loading path for users with the Hub: `datasets.load_dataset`, pinned to the
    commit the requested revision resolves to now, which is recorded (`resolved_revisions`)."""
    import datasets

    config = source.config.format(code=code) if source.config else None
    split = (source.split or "train").format(code=code)
    sha = _resolve_revision(source.dataset, source.revision)
    try:
        ds = datasets.load_dataset(source.dataset, config, split=split, revision=sha or source.revision)
    except Exception as e:  # network, unknown config, ...
        raise XtlError(
            f"could not load Hub data set {source.dataset!r} (config {config!r}, split {split!r}): {e}",
            where="source.dataset",
            fix="check the Hugging Face Hub is reachable, or use a local-data recipe (recipes/local/)",
        ) from e
    got = sha or source.revision or "main"
    key = source.dataset
    if _RESOLVED.get(key, got) != got:  # the same data set at two revisions in one run: keep both
        key = f"{source.dataset}@{source.revision or 'main'}"
    _RESOLVED[key] = got
    return [dict(r) for r in ds]


DEMO_DIR = Path(__file__).resolve().parent / "demo_data"


def source_path(source: Source, spec: TaskSpec, lang: str, data_dir: Path | None) -> Path:
    code = spec.languages.get(lang, lang)
    return Path(
        source.path.format(data_dir=str(data_dir or default_data_dir()), demo_dir=str(DEMO_DIR), code=code, lang=lang)
    ).expanduser()


def read_source(spec: TaskSpec, split: str, lang: str, data_dir: Path | None = None) -> tuple[list[dict], str]:
    """Raw rows and a human-readable origin (file path or hub id) for messages.

    A source with both a local `path` and a Hub `dataset` reads the local file when it exists
    and the Hub otherwise: the same task runs offline on ../shared/data and online anywhere.
    """
    source = spec.source_for(split)
    code = spec.language_code(lang)
    path = source_path(source, spec, lang, data_dir) if source.path else None
    use_hub = source.kind == "hub" or (
        source.kind == "auto" and source.dataset and (path is None or not path.exists())
    )
    if use_hub:
        return read_hub(source, code), f"hub:{source.dataset}"
    return read_local(source, path), str(path)


# --------------------------------------------------------------------------- roles and labels
def role_columns(spec: TaskSpec, lang: str | None, columns: dict[str, str] | None = None) -> dict[str, str]:
    """role -> source column(s) for `lang` (`{code}`/`{lang}` filled in: a wide parallel file)."""
    code = spec.languages.get(lang, lang) if lang else None
    return {role: c.format(code=code, lang=lang) if "{" in c else c for role, c in (columns or spec.columns).items()}


def _parts(c: str) -> list[str]:  # "a,b,c": several columns -> one list-valued role (choices)
    return [p.strip() for p in c.split(",")] if "," in c else [c]


def _value(row: dict, col: str, i: int):
    return i if col == "__line__" else [row.get(p) for p in _parts(col)] if "," in col else row.get(col)


def _indexed_roles(spec: TaskSpec, rows: list[dict], origin: str, lang: str | None,
                   columns: dict[str, str] | None) -> list[tuple[int, dict]]:
    if not rows:
        raise XtlError("no rows", where=origin, fix="the file is empty or the split/language is wrong")
    cols = role_columns(spec, lang, columns)
    missing = [p for c in cols.values() for p in _parts(c) if p not in rows[0] and not p.startswith("__")]
    if missing:
        raise XtlError(
            f"missing column(s) {missing} (task {spec.name!r}); found: {sorted(rows[0])}",
            where=origin,
            fix=f"fix `columns` in {spec.file or 'the task YAML'} or the file's header",
        )
    label_set = set(spec.labels or [])
    drop = {str(d) for d in spec.drop_labels or []}
    out = []
    for i, row in enumerate(rows):
        ex: dict[str, Any] = {role: _value(row, col, i) for role, col in cols.items()}
        ex.setdefault("id", i)
        if "label" in ex and spec.format == "classification":
            raw = ex["label"]
            val = str(raw).strip() if raw is not None else ""
            if val in drop:  # unlabelled rows the task says to skip (SNLI's -1)
                continue
            if spec.label_map:
                val = spec.label_map.get(val, val)
            if val not in label_set:
                raise XtlError(
                    f"row {i + 1}: label {raw!r} is not in the label set {sorted(label_set)}",
                    where=origin,
                    fix=f"fix the data, or add it to `labels`/`label_map` in {spec.file or 'the task YAML'}",
                )
            ex["label"] = val
        out.append((i, ex))
    return out


def to_roles(spec: TaskSpec, rows: list[dict], origin: str, lang: str | None = None,
             columns: dict[str, str] | None = None) -> list[dict]:
    """Rename source columns to roles and normalise labels, with row-level errors.

    Column names may use `{code}`/`{lang}`: a wide file with one column per language (a
    parallel test set) serves every language. Rows whose label is in `drop_labels` are skipped.
    """
    return [ex for _, ex in _indexed_roles(spec, rows, origin, lang, columns)]


def normalise_text(value) -> str:
    """Text as compared for overlap and grouping: NFKC, casefolded, punctuation removed,
    whitespace collapsed; a list (tokens, choices) is joined by spaces."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value if v is not None)
    s = unicodedata.normalize("NFKC", str(value)).casefold()
    s = "".join(ch for ch in s if not unicodedata.category(ch).startswith("P"))
    return " ".join(s.split())


NOT_TEXT = {"id", "label", "tags", "answers"}
_CHOICE = re.compile(r"choice\d+$")


def text_fields(example: dict) -> dict[str, str]:
    """field -> normalised text of an example's text roles: tokens joined, multiple-choice
    options as one field `choices` (single options such as "None of the above" repeat by design)."""
    out: dict[str, str] = {}
    choices: list[str] = []
    for k, v in example.items():
        if k in NOT_TEXT:
            continue
        if isinstance(v, dict) and isinstance(v.get("text"), list):  # CommonsenseQA's {"label", "text"}
            v = v["text"]
        if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            continue
        if _CHOICE.match(k):
            choices.append(v if isinstance(v, str) else " ".join(v))
        else:
            out[k] = normalise_text(v)
    if choices:
        out["choices"] = normalise_text(choices)
    return out


_TRAIN_TEXT: dict[tuple, frozenset] = {}


def training_text(spec: TaskSpec, data_dir: Path | None = None) -> frozenset:
    """The normalised text of every text field of the examples that train `spec`."""
    from .tasks import get_task

    train_spec = get_task(spec.train_task) if spec.train_task else spec
    src = train_spec.source_for(_read_split(train_spec, "train"))
    path = source_path(src, train_spec, train_spec.train_language, data_dir) if src.path else None
    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path and path.exists() else None
    key = (train_spec.model_dump_json(), str(data_dir), str(path), stamp)
    if key not in _TRAIN_TEXT:
        train = load_examples(train_spec, "train", train_spec.train_language, data_dir)
        _TRAIN_TEXT[key] = frozenset(v for e in train for v in text_fields(e).values() if v)
    return _TRAIN_TEXT[key]


# --------------------------------------------------------------------------- the id split
def _hash_side(key: str, id_split) -> bool:
    """True: train. The side of one id (or of one group's canonical key)."""
    h = int(hashlib.sha256(f"{id_split.seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < id_split.train_fraction


def _split_keys(spec: TaskSpec, rows: list[dict], cols: dict[str, str]) -> list[str]:
    """What decides each row's side: its line number, or its `id_split.id_column` role's value."""
    col = spec.id_split.id_column
    if col == "__line__" or cols.get(col) == "__line__" or (col == "id" and "id" not in cols):
        return [str(i) for i in range(len(rows))]
    if col not in cols:
        raise XtlError(f"id_split.id_column {col!r} is not a role of task {spec.name!r} (roles: {sorted({*cols, 'id'})})",
                       where=spec.file or spec.name,
                       fix="name a role from `columns` (id, context, ...) or __line__ (the row number)")
    return [str(_value(r, cols[col], i)) for i, r in enumerate(rows)]


def line_aligned(spec: TaskSpec) -> bool:
    """Rows of every language's file are translations of one another, line by line."""
    col = spec.id_split.id_column if spec.id_split else None
    return col == "__line__" or (col is not None and spec.columns.get(col) == "__line__")


class GroupSplit:
    """Sides of one file's rows under `group_by`: union-find over rows sharing a normalised value
    in any group column (or their id_split key); each component goes to the side the hash of
    (seed, its smallest key) picks, so the assignment is deterministic and ~train_fraction."""

    def __init__(self, spec: TaskSpec, rows: list[dict], origin: str, cols: dict[str, str]):
        self.keys = _split_keys(spec, rows, cols)
        columns = []
        for g in spec.group_columns:
            if g in cols:
                columns.append(cols[g])
            elif g in rows[0]:
                columns.append(g)
            else:
                raise XtlError(f"group_by column {g!r} does not exist (task {spec.name!r}); roles: {sorted(cols)}, "
                               f"columns: {sorted(rows[0])}", where=origin,
                               fix=f"name a role or a column of the data in `group_by` ({spec.file or 'the task YAML'})")
        parent = list(range(len(rows)))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        first: dict[str, int] = {}
        by_key = spec.id_split.id_column != "__line__" and not line_aligned(spec)
        for i, row in enumerate(rows):
            values = [f"\x00key:{self.keys[i]}"] if by_key else []
            for c in columns:
                v = _value(row, c, i)
                values += [normalise_text(x) for x in (v if isinstance(v, list) else [v])]
            for v in filter(None, values):
                j = first.setdefault(v, i)
                if j != i:
                    parent[find(i)] = find(j)
        members: dict[int, list[int]] = {}
        for i in range(len(rows)):
            members.setdefault(find(i), []).append(i)
        self.side_of: dict[str, bool] = {}
        for group in members.values():
            canonical = min((self.keys[i] for i in group), key=lambda k: (len(k), k))
            side = _hash_side(canonical, spec.id_split)
            for i in group:
                self.side_of[self.keys[i]] = side
        self.components = len(members)
        self.largest = max(len(g) for g in members.values())
        self.rows = len(rows)


_GROUP_CACHE: dict[tuple, GroupSplit] = {}


def group_split(spec: TaskSpec, read_split: str, lang: str, data_dir: Path | None,
                rows: list[dict] | None = None, origin: str | None = None) -> GroupSplit:
    """The GroupSplit of `lang`'s file of `read_split` (cached per file version and settings)."""
    src = spec.source_for(read_split)
    cols = role_columns(spec, lang, src.columns)
    path = source_path(src, spec, lang, data_dir) if src.path else None
    stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path and path.exists() else None
    key = (spec.name, spec.file, read_split, lang, str(path), stamp, str(spec.group_by),
           spec.id_split.model_dump_json(), tuple(sorted(cols.items())))
    if key not in _GROUP_CACHE:
        if rows is None:
            rows, origin = read_source(spec, read_split, lang, data_dir)
        if not rows:
            raise XtlError("no rows", where=origin, fix="the file is empty or the split/language is wrong")
        _GROUP_CACHE[key] = GroupSplit(spec, rows, origin, cols)
    return _GROUP_CACHE[key]


def split_sides(spec: TaskSpec, read_split: str, lang: str, rows: list[dict], origin: str,
                data_dir: Path | None = None) -> list[bool]:
    """Each row's side (True: train) under the task's `id_split` and `group_by`.

    Without `group_by`, each id (line number or id_column value) is hashed alone. With it,
    rows that share a value are one group. For a line-aligned task the groups are computed on
    the train_language (English) file, the pivot, and line i gets the pivot's side in every
    language: the translation of a training row is never evaluated, and neither is any row whose
    English premise (sentence, ...) is in training. Either side left empty is an error.
    """
    ids = spec.id_split
    cols = role_columns(spec, lang, spec.source_for(read_split).columns)
    keys = _split_keys(spec, rows, cols)
    if not spec.group_columns:
        sides = [_hash_side(k, ids) for k in keys]
        what = "hashing each id"
    else:
        pivot = spec.train_language
        if lang != pivot and pivot in spec.languages:
            grouped = group_split(spec, read_split, pivot, data_dir)
            if line_aligned(spec) and grouped.rows != len(rows):
                raise XtlError(f"{len(rows)} rows, but the {pivot!r} file (the pivot of the line-aligned split) has "
                               f"{grouped.rows}", where=origin,
                               fix="line-aligned translations need the same number of lines in every language")
        else:
            grouped = group_split(spec, read_split, lang, data_dir, rows, origin)
        sides = [grouped.side_of[k] if k in grouped.side_of else _hash_side(k, ids) for k in keys]
        what = f"{grouped.components} group(s) (largest {grouped.largest} rows) of group_by {spec.group_columns}"
    n_train = sum(sides)
    if n_train == 0 or n_train == len(sides):
        empty = "evaluation" if n_train else "train"
        raise XtlError(f"the id split of task {spec.name!r} leaves its {empty} side empty: {len(sides)} rows, "
                       f"{what}, train_fraction {ids.train_fraction}", where=origin,
                       fix="change id_split.train_fraction or id_split.seed, or group on fewer columns "
                           "(group_by joins every row sharing a value)")
    return sides


def _read_split(spec: TaskSpec, split: str) -> str:
    """The split whose file serves `split` (an id-split task reads one file for both sides)."""
    if spec.id_split and split not in spec.splits:
        return "train" if "train" in spec.splits else spec.eval_split
    return split


def raw_examples(spec: TaskSpec, split: str, lang: str, data_dir: Path | None = None) -> list[dict]:
    """Every example (role dict) of the file that serves `split`, both sides of an id split."""
    read_split = _read_split(spec, split)
    rows, origin = read_source(spec, read_split, lang, data_dir)
    return to_roles(spec, rows, origin, lang, spec.source_for(read_split).columns)


def load_examples(
    spec: TaskSpec, split: str, lang: str, data_dir: Path | None = None, limit: int | None = None
) -> list[dict]:
    """Examples (role dicts) of one split and language, after the id split and the leak check."""
    side = "train" if split == "train" else "eval"
    read_split = _read_split(spec, split)
    rows, origin = read_source(spec, read_split, lang, data_dir)
    indexed = _indexed_roles(spec, rows, origin, lang, spec.source_for(read_split).columns)
    if spec.id_split:
        sides = split_sides(spec, read_split, lang, rows, origin, data_dir)
        examples = [e for i, e in indexed if sides[i] == (side == "train")]
        if not examples:
            raise XtlError(f"the id split left no {side} examples", where=origin, fix="check id_split.train_fraction")
    else:
        examples = [e for _, e in indexed]
    if not spec.id_split and spec.id_column and split != "train" and "train" in spec.splits:
        train_ids = {str(e["id"]) for e in load_examples(spec, "train", spec.train_language, data_dir)}
        before = len(examples)
        examples = [e for e in examples if str(e["id"]) not in train_ids]
        if not examples:
            raise XtlError(f"every {split} example's id also occurs in train", where=origin)
        if len(examples) < before:
            import warnings

            warnings.warn(f"{origin}: dropped {before - len(examples)} examples whose id occurs in train")
    if spec.drop_train_overlap and split != "train" and split == spec.eval_split:
        seen = training_text(spec, data_dir)
        before = len(examples)
        examples = [e for e in examples if not any(normalise_text(e.get(r)) in seen for r in spec.drop_train_overlap)]
        if len(examples) < before:
            import warnings

            warnings.warn(f"{origin}: dropped {before - len(examples)} examples whose "
                          f"{'/'.join(spec.drop_train_overlap)} occurs in the training data")
        if not examples:
            raise XtlError(f"every {split} example's {'/'.join(spec.drop_train_overlap)} occurs in training",
                           where=origin, fix="the evaluation file duplicates the training file")
    if limit is not None and len(examples) > limit:
        examples = examples[:limit]
    return examples


# --------------------------------------------------------------------------- before training
def check_languages(spec: TaskSpec, languages: list[str] | None, data_dir: Path | None = None,
                    split: str | None = None) -> dict[str, int]:
    """Load and validate the evaluation data of every requested language before any training:
    {language: example count}, or one XtlError listing every language whose data are missing or
    invalid (a run should not find out after hours of training that `sw` has no test file)."""
    split = split or spec.eval_split
    langs = list(languages) if languages else list(spec.languages)
    counts: dict[str, int] = {}
    problems: list[str] = []
    for lang in langs:
        try:
            spec.language_code(lang)
            n = len(load_examples(spec, split, lang, data_dir))
            if spec.format == "retrieval":
                for companion in (f"{split}_pivot", f"{split}_gold"):
                    if companion in spec.splits:
                        m = len(load_examples(spec, companion, lang, data_dir))
                        if companion.endswith("_pivot") and spec.retrieval_mode == "pairs" and m != n:
                            raise XtlError(f"{split} has {n} lines, {companion} {m}: not line-aligned",
                                           where=spec.file or spec.name)
            counts[lang] = n
        except XtlError as e:
            problems.append(f"  {lang}: " + str(e).replace("\n", "\n    "))
    if problems:
        raise XtlError(
            f"task {spec.name!r}: the {split} data of {len(problems)} of {len(langs)} language(s) cannot be used:\n"
            + "\n".join(problems),
            where=spec.file or spec.name,
            fix="fix or add those files (or --data-dir / XTL_DATA), or leave those languages out",
        )
    return counts
