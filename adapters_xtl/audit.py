"""`xtl tasks audit`: does any evaluation example leak from training?

A zero-shot score means something only if no evaluation example (nor its English original) was
seen in training. For every evaluation language of a task, paired with the English training
data (the task's own `train` side, or its `train_task`'s), the audit counts evaluation examples

  - by id: whose id is a training id (where ids are comparable: one data set, ids declared in
    `columns`, unique in training);
  - by text, per field: whose field's normalised text (`data.normalise_text`: NFKC, casefold,
    punctuation stripped, whitespace collapsed) occurs anywhere in the training text (any text
    field: a PAWS-X sentence1 may come back as a sentence2);
  - via English (parallel tasks, other languages): whose English counterpart (same line of a
    line-aligned task, same id of an `id_column` task) has such a text or id in training;

and `leaked`, the examples with any of these. Multiple-choice options count as one field (the
set of choices): single options ("None of the above choices .") repeat by design.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import group_split, line_aligned, load_examples, raw_examples, text_fields, training_text
from .errors import XtlError
from .tasks import TaskSpec, get_task

@dataclass
class LanguageAudit:
    language: str
    n: int
    by_id: int | None  # None: ids not comparable (see the report's notes)
    by_field: dict[str, int]
    via_english: int | None  # None: not a parallel task, or the English row itself
    leaked: int


@dataclass
class AuditReport:
    task: str
    train_task: str
    train_language: str
    n_train: int
    eval_split: str
    fields: list[str] = field(default_factory=list)
    languages: list[LanguageAudit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    applicable: bool = True

    @property
    def n_eval(self) -> int:
        return sum(a.n for a in self.languages)

    @property
    def leaked(self) -> int:
        return sum(a.leaked for a in self.languages)

    @property
    def clean(self) -> bool:
        return self.leaked == 0

    def to_dict(self) -> dict:
        return {**asdict(self), "n_eval": self.n_eval, "leaked": self.leaked, "clean": self.clean}


def _ids_comparable(spec: TaskSpec, train_spec: TaskSpec, train: list[dict]) -> str | None:
    """Why ids cannot be compared, or None when they can."""
    if train_spec is not spec:
        return f"ids: not compared (training data come from another data set, {train_spec.name})"
    if "id" not in spec.columns and not line_aligned(spec):
        return "ids: not compared (the task declares no id column: ids are row numbers)"
    if len({str(e["id"]) for e in train}) < len(train):
        return "ids: not compared (training ids are not unique: per-paragraph counters, ...)"
    return None


def audit_task(spec: "TaskSpec | str", data_dir: Path | None = None, languages: list[str] | None = None) -> AuditReport:
    """The overlap between `spec`'s evaluation examples and its English training examples."""
    spec = get_task(spec) if isinstance(spec, str) else spec
    train_spec = get_task(spec.train_task) if spec.train_task else spec
    lang0 = train_spec.train_language
    report = AuditReport(spec.name, train_spec.name, lang0, 0, spec.eval_split)
    if spec.format == "retrieval" or spec.mixture is not None or not (
            "train" in train_spec.splits or train_spec.id_split):
        report.applicable = False
        report.notes.append(f"{spec.name} has no training data of its own ({spec.format}"
                            f"{', a mixture' if spec.mixture else ''}): nothing to audit")
        return report
    train = load_examples(train_spec, "train", lang0, data_dir)
    report.n_train = len(train)
    train_text = training_text(spec, data_dir)
    train_ids = {str(e["id"]) for e in train}
    why_not_ids = _ids_comparable(spec, train_spec, train)
    if why_not_ids:
        report.notes.append(why_not_ids)
    parallel = line_aligned(spec) or bool(spec.id_column)
    english: dict[str, dict] = {}
    if parallel and lang0 in spec.languages:
        english = {str(e["id"]): e for e in raw_examples(spec, spec.eval_split, lang0, data_dir)}
    if spec.id_split and spec.group_columns:
        g = group_split(spec, "train" if "train" in spec.splits else spec.eval_split, lang0, data_dir)
        share = sum(g.side_of[k] for k in g.keys) / g.rows
        by = spec.group_columns if line_aligned(spec) else [spec.id_split.id_column, *spec.group_columns]
        report.notes.append(f"split: rows sharing a value of {by} form {g.components} groups of {g.rows} rows "
                            f"(largest {g.largest}); {share:.1%} of rows train (train_fraction "
                            f"{spec.id_split.train_fraction})")
    fields: list[str] = []
    for lang in languages or list(spec.languages):
        evals = load_examples(spec, spec.eval_split, lang, data_dir)
        by_field: dict[str, int] = {}
        by_id = 0 if not why_not_ids else None
        via = 0 if english and lang != lang0 else None
        leaked = 0
        for e in evals:
            hit = False
            for f, v in text_fields(e).items():
                if f not in fields:
                    fields.append(f)
                if v and v in train_text:
                    by_field[f] = by_field.get(f, 0) + 1
                    hit = True
                else:
                    by_field.setdefault(f, 0)
            eid = str(e["id"])
            if by_id is not None and eid in train_ids:
                by_id += 1
                hit = True
            if via is not None:
                twin = english.get(eid)
                if (twin is not None and any(v and v in train_text for v in text_fields(twin).values())) or (
                        why_not_ids is None and eid in train_ids):
                    via += 1
                    hit = True
            leaked += hit
        report.languages.append(LanguageAudit(lang, len(evals), by_id, by_field, via, leaked))
    report.fields = fields
    return report


def _cell(k: int | None, n: int) -> str:
    if k is None:
        return "-"
    return f"{k} ({100 * k / n:.1f}%)" if n else str(k)


def render(report: AuditReport):
    """The report as a rich Table (one row per language and a total)."""
    from rich.table import Table

    title = (f"{report.task}: {report.eval_split} examples vs {report.train_task} train "
             f"({report.train_language}, {report.n_train} examples)")
    t = Table(title=title, caption="\n".join(report.notes) or None)
    parallel = any(a.via_english is not None for a in report.languages)  # else no such column
    cols = ["language", "eval n", "by id", *report.fields, *(["via English"] if parallel else []), "leaked"]
    for c in cols:
        t.add_column(c, justify="left" if c == "language" else "right")

    def row(name: str, n: int, get) -> list[str]:
        cells = [name, str(n), _cell(get("by_id"), n), *[_cell(get(f), n) for f in report.fields]]
        return cells + ([_cell(get("via_english"), n)] if parallel else []) + [_cell(get("leaked"), n)]

    def value(a: LanguageAudit, key: str) -> int | None:
        return a.by_field.get(key) if key in a.by_field else getattr(a, key, None)

    for a in report.languages:
        t.add_row(*row(a.language, a.n, lambda k, a=a: value(a, k)), style="red" if a.leaked else None)

    def total(key: str) -> int | None:
        vals = [value(a, key) for a in report.languages]
        return None if all(v is None for v in vals) else sum(v or 0 for v in vals)

    t.add_row(*row("total", report.n_eval, total), style="bold")
    return t


def audit_or_raise(name: str, data_dir: Path | None = None) -> AuditReport:
    """`audit_task` for a catalog name, with the data folder checked first."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise XtlError(f"data folder {str(data_dir)!r} does not exist", where="--data-dir",
                       fix="name the folder holding the data (e.g. ../shared/data)")
    return audit_task(get_task(name), data_dir)
