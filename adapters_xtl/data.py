"""Rows of one (task, split, language), read from the Hub or from local files.

Everything downstream sees plain dicts keyed by *role* (`text`, `text_pair`, `label`, `id`,
...), never by a source's column names, so a task can move from local TSV to a Hub data set by
changing its YAML only. Problems in the data (missing columns, unknown labels, empty files) are
reported with the file, row and value here, before any model is touched.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from .errors import XtlError
from .tasks import Source, TaskSpec, default_data_dir

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


# --------------------------------------------------------------------------- file readers
def _read_delimited(path: Path, delimiter: str, header: bool, fieldnames: list[str] | None) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        if header:
            reader = csv.DictReader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
            rows = list(reader)
        else:
            names = fieldnames or []
            rows = []
            for line in f:
                line = line.rstrip("\n").rstrip("\r")
                if not line:
                    continue
                parts = line.split(delimiter)
                if names and len(parts) != len(names):
                    raise XtlError(
                        f"line {len(rows) + 1} has {len(parts)} fields, expected {len(names)} ({', '.join(names)})",
                        where=str(path),
                        fix="check the delimiter and that no field contains it",
                    )
                rows.append(dict(zip(names or [str(i) for i in range(len(parts))], parts)))
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise XtlError(f"line {i} is not valid JSON: {e.msg}", where=str(path)) from None
    return rows


def _read_lines(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [{"text": line.rstrip("\n")} for line in f]


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
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, list) else doc.get("data", [])
    if fmt == "lines":
        return _read_lines(path)
    from . import readers  # formats with structure: conllu, iob2, squad

    return readers.read(fmt, path)


def read_hub(source: Source, code: str) -> list[dict]:
    """The real loading path for users with the Hub: `datasets.load_dataset`."""
    import datasets

    config = source.config.format(code=code) if source.config else None
    split = (source.split or "train").format(code=code)
    try:
        ds = datasets.load_dataset(source.dataset, config, split=split, revision=source.revision)
    except Exception as e:  # network, unknown config, ...
        raise XtlError(
            f"could not load Hub data set {source.dataset!r} (config {config!r}, split {split!r}): {e}",
            where="source.dataset",
            fix="check the Hugging Face Hub is reachable, or use a local-data recipe (recipes/local/)",
        ) from e
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
def _in_id_split(example_id: str, id_split, side: str) -> bool:
    h = int(hashlib.sha256(f"{id_split.seed}:{example_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return (h < id_split.train_fraction) == (side == "train")


def to_roles(spec: TaskSpec, rows: list[dict], origin: str, lang: str | None = None,
             columns: dict[str, str] | None = None) -> list[dict]:
    """Rename source columns to roles and normalise labels, with row-level errors.

    Column names may use `{code}`/`{lang}`: a wide file with one column per language (a
    parallel test set) serves every language.
    """
    if not rows:
        raise XtlError("no rows", where=origin, fix="the file is empty or the split/language is wrong")
    code = spec.languages.get(lang, lang) if lang else None
    cols = {role: c.format(code=code, lang=lang) if "{" in c else c for role, c in (columns or spec.columns).items()}
    def parts(c: str) -> list[str]:  # "a,b,c": several columns -> one list-valued role (choices)
        return [p.strip() for p in c.split(",")] if "," in c else [c]

    missing = [p for c in cols.values() for p in parts(c) if p not in rows[0] and not p.startswith("__")]
    if missing:
        raise XtlError(
            f"missing column(s) {missing} (task {spec.name!r}); found: {sorted(rows[0])}",
            where=origin,
            fix=f"fix `columns` in {spec.file or 'the task YAML'} or the file's header",
        )
    label_set = set(spec.labels or [])
    out = []
    for i, row in enumerate(rows):
        ex: dict[str, Any] = {}
        for role, col in cols.items():
            ex[role] = i if col == "__line__" else [row.get(p) for p in parts(col)] if "," in col else row.get(col)
        ex.setdefault("id", i)
        if "label" in ex and spec.format == "classification":
            raw = ex["label"]
            val = str(raw).strip() if raw is not None else ""
            if spec.label_map:
                val = spec.label_map.get(val, val)
            if val not in label_set:
                raise XtlError(
                    f"row {i + 1}: label {raw!r} is not in the label set {sorted(label_set)}",
                    where=origin,
                    fix=f"fix the data, or add it to `labels`/`label_map` in {spec.file or 'the task YAML'}",
                )
            ex["label"] = val
        out.append(ex)
    return out


def load_examples(
    spec: TaskSpec, split: str, lang: str, data_dir: Path | None = None, limit: int | None = None
) -> list[dict]:
    """Examples (role dicts) of one split and language, after the id split and the leak check."""
    read_split = split
    side = "train" if split == "train" else "eval"
    if spec.id_split and split not in spec.splits:
        read_split = "train" if "train" in spec.splits else spec.eval_split
    rows, origin = read_source(spec, read_split, lang, data_dir)
    examples = to_roles(spec, rows, origin, lang, spec.source_for(read_split).columns)
    if spec.id_split:
        col = spec.id_split.id_column
        if col != "__line__" and col not in examples[0]:
            raise XtlError(f"id_split.id_column {col!r} is not a role of task {spec.name!r} (roles: {sorted(examples[0])})",
                           where=spec.file or spec.name,
                           fix="name a role from `columns` (id, context, ...) or __line__ (the row number)")
        examples = [e for i, e in enumerate(examples)
                    if _in_id_split(str(i) if col == "__line__" else str(e[col]), spec.id_split, side)]
        if not examples:
            raise XtlError(f"the id split left no {side} examples", where=origin, fix="check id_split.train_fraction")
    elif spec.id_column and split != "train" and "train" in spec.splits:
        train_ids = {str(e["id"]) for e in load_examples(spec, "train", spec.train_language, data_dir)}
        before = len(examples)
        examples = [e for e in examples if str(e["id"]) not in train_ids]
        if not examples:
            raise XtlError(f"every {split} example's id also occurs in train", where=origin)
        if len(examples) < before:
            import warnings

            warnings.warn(f"{origin}: dropped {before - len(examples)} examples whose id occurs in train")
    if limit is not None and len(examples) > limit:
        examples = examples[:limit]
    return examples
