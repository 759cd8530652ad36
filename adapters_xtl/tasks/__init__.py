"""Tasks are data, not code: one YAML file per task family (after lm-evaluation-harness).

A task file names its format (which code handles it), where its data come from (a Hub data set
through `datasets.load_dataset`, or local files), which columns hold what, the label set, and the
languages it is evaluated on. Several tasks may share one file (a `tasks:` list) and inherit from
a common block through `include:`.

Path templates may use `{data_dir}` (a recipe or `--data-dir` sets it; default `$XTL_DATA` or
`../shared/data`), `{code}` (the language's code in the source) and `{lang}` (ours).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import XtlError, did_you_mean
from ..io import read_utf8
from .defaults import TaskDefaults, defaults_error

FORMATS = ("classification", "retrieval", "tagging", "span_qa", "multiple_choice")


class Source(BaseModel):
    """Where one split's rows come from."""

    model_config = ConfigDict(extra="forbid")

    # auto: the local file when it exists (or no Hub data set is named), else the Hub
    kind: Literal["auto", "local", "hub"] = "auto"
    # local: a path template and a file format
    path: str | None = None
    file_format: Literal["tsv", "csv", "jsonl", "json", "lines", "conllu", "iob2", "squad"] | None = None
    header: bool = True
    fieldnames: list[str] | None = None  # for headerless tsv/csv
    # iob2 only: `tab`, `space` (runs of spaces, as CoNLL-2003 ships) or `auto` (tabs when the
    # file has any, else spaces)
    delimiter: Literal["auto", "tab", "space"] | None = None
    columns: dict[str, str] | None = None  # this split's role -> column, overriding the task's
    # hub: datasets.load_dataset(dataset, config, split=split, revision=revision)
    dataset: str | None = None
    config: str | None = None
    split: str | None = None
    revision: str | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "local" and not self.path:
            raise ValueError("a local source needs `path`")
        if self.kind == "hub" and not self.dataset:
            raise ValueError("a hub source needs `dataset`")
        if not self.path and not self.dataset:
            raise ValueError("a source needs `path` (local files) and/or `dataset` (Hub)")
        if self.path and self.file_format is None:
            ext = Path(self.path).suffix.lstrip(".")
            guess = {"tsv": "tsv", "csv": "csv", "jsonl": "jsonl", "json": "json", "conllu": "conllu",
                     "iob2": "iob2", "txt": "lines"}.get(ext)
            if guess is None:
                raise ValueError(f"cannot tell the file format of {self.path!r}; set `file_format`")
            self.file_format = guess
        if self.delimiter is not None and self.file_format != "iob2":
            raise ValueError(f"`delimiter` applies to file_format iob2, not {self.file_format!r}")
        for key in ("path", "config", "split"):
            _check_template(getattr(self, key), key, PLACEHOLDERS)
        for role, col in (self.columns or {}).items():
            _check_template(col, f"columns.{role}", ("code", "lang"))
        return self


PLACEHOLDERS = ("data_dir", "demo_dir", "code", "lang")


def _check_template(template: str | None, field: str, allowed) -> None:
    """A path/config template may only use the placeholders the loader fills in: anything else
    would fail with a bare KeyError when the data are read, after training."""
    if not template:
        return
    import string

    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"`{field}` {template!r} is not a valid template: {e}") from None
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"`{field}` {template!r} uses {{{bad[0]}}}; the placeholders are "
                         + ", ".join("{" + a + "}" for a in allowed))


class IdSplit(BaseModel):
    """Split a parallel set by example id so no translation of a training example is evaluated.

    Each id is assigned to train or eval by a hash of (id, seed): the same id lands on the same
    side in every language. Rows that must stay together beyond their id (XNLI's three hypotheses
    of one premise, PAWS-X pairs that reuse a sentence) are declared with the task's `group_by`:
    see `data.split_sides`.
    """

    model_config = ConfigDict(extra="forbid")

    # what decides the side: "__line__" (the row number, for line-aligned translations) or a role
    # (`id`; `context` keeps every question about one paragraph on one side)
    id_column: str = "__line__"
    # strictly between 0 and 1: 0 or 1 would leave one side empty
    train_fraction: float = Field(0.5, gt=0, lt=1)
    seed: int = 0


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    format: Literal["classification", "retrieval", "tagging", "span_qa", "multiple_choice"]
    description: str = ""
    group: Literal["intermediate", "target", "demo", "local"] = "local"
    paper_name: str | None = None
    # data
    splits: dict[str, Source] = Field(default_factory=dict)  # train / validation / test
    languages: dict[str, str] = Field(default_factory=lambda: {"en": "en"})  # ours -> source code
    # the language of the training data; a task with `train_task` trains on that task's
    # train_language instead (`training_task`), and no language is ever added to `languages`
    train_language: str = "en"
    train_task: str | None = None  # targets trained on another task's English data (XNLI <- MNLI)
    id_split: IdSplit | None = None
    # what must stay on one side of the id split: one column/role (`premise`), or a list meaning
    # connected components (two rows sharing a normalised value in any of these columns go to
    # the same side). Line-aligned tasks group on the train_language rows: see data.split_sides.
    group_by: str | list[str] | None = None
    # evaluation rows whose normalised text in one of these roles occurs in the training text
    # (this task's or its train_task's) are dropped with a warning: duplicates across data sets
    # that no split can separate (an MLQA paragraph that is also a TyDiQA training paragraph)
    drop_train_overlap: list[str] | None = None
    id_column: str | None = None  # checked: train ids never appear in evaluation
    columns: dict[str, str] = Field(default_factory=dict)  # role -> column in the source
    labels: list[str] | None = None
    label_map: dict[str, str] | None = None  # source value -> label (e.g. 0 -> entailment)
    # format options
    max_length: int = 128
    metrics: list[str] = Field(default_factory=list)
    main_metric: str | None = None
    pooling: Literal["cls", "mean"] = "mean"
    retrieval_layer: int | None = None  # None: 7/12 of the depth (layer 14 of 24, as jiant)
    # retrieval: `pairs` (Tatoeba: line-aligned translations, nearest neighbour) or `mining`
    # (BUCC: two non-parallel monolingual sides plus a gold pairs file; margin-based mining, F1
    # at the best threshold). See formats/retrieval.py.
    retrieval_mode: Literal["pairs", "mining"] = "pairs"
    # a task trained on the concatenation of other tasks' data (ANLI+ = ANLI R1-R3 + MNLI + SNLI):
    # member task names; they share this task's format and labels. The multitask composition
    # reads it; such a task has no `splits` of its own.
    mixture: list[str] | None = None
    # a label set too large to list (CCG supertags): a file with one label per line, a path
    # template with {data_dir} (resolved against $XTL_DATA / the default data folder when the
    # catalog is read) or {task_dir} (this YAML's folder). Until found, `labels` stays None and
    # reading the task's data fails with a message naming the file.
    labels_file: str | None = None
    # source label values whose rows are unlabelled and must be skipped, not rejected
    # (SNLI's -1 "no gold label"). Declared here; data.to_roles applies it.
    drop_labels: list[str] | None = None
    # training defaults (recipes override)
    defaults: dict[str, Any] = Field(default_factory=dict)
    notes: str = ""
    file: str | None = None  # where this spec was read from (filled in by the loader)

    @field_validator("defaults")
    @classmethod
    def _check_defaults(cls, v: dict) -> dict:
        try:
            TaskDefaults.model_validate(v)
        except ValidationError as e:
            raise ValueError(defaults_error(e)) from None
        return v

    @model_validator(mode="after")
    def _check(self):
        # a task that trains on its own data must list its training language (nothing is added:
        # an added `en` would read the target's files with code `en` and fail after training)
        trains_itself = self.format != "retrieval" and not self.train_task and (
            "train" in self.splits or self.id_split is not None)
        if trains_itself and self.train_language not in self.languages:
            raise ValueError(
                f"the task trains on {self.train_language!r} but `languages` does not list it "
                f"(languages: {', '.join(self.languages)}); add `{self.train_language}: CODE` (the code its files "
                "use) to `languages`, or name a `train_task` that provides the training data")
        if self.group_by is not None:
            groups = [self.group_by] if isinstance(self.group_by, str) else list(self.group_by)
            if not groups or not all(isinstance(g, str) and g for g in groups):
                raise ValueError("`group_by` is a column name or a non-empty list of column names")
            if self.id_split is None:
                raise ValueError("`group_by` decides the sides of the task's own id split: it needs `id_split`")
            known = self.column_names()
            missing = [g for g in groups if known and g not in known]
            if missing:
                raise ValueError(f"`group_by` names {missing[0]!r}, which is neither a role nor a column of the "
                                 f"task; roles and columns: {', '.join(sorted(known))}")
        bad = [r for r in self.drop_train_overlap or [] if self.columns and r not in self.columns]
        if bad:
            raise ValueError(f"`drop_train_overlap` names {bad[0]!r}, which is not a role of the task; "
                             f"roles: {', '.join(self.columns)}")
        if self.labels_file and not self.labels:
            self.labels = read_labels_file(self.labels_file_path())
        if self.format in ("classification", "tagging") and not self.labels and not self.labels_file:
            raise ValueError(f"format {self.format!r} needs a `labels` list")
        if self.retrieval_mode == "mining" and self.format != "retrieval":
            raise ValueError("`retrieval_mode: mining` is for format retrieval")
        if self.mixture is not None and (not self.mixture or self.splits):
            raise ValueError("a `mixture` task lists its member tasks and has no `splits` of its own")
        return self

    @property
    def group_columns(self) -> list[str]:
        """`group_by` as a list (empty without one)."""
        if self.group_by is None:
            return []
        return [self.group_by] if isinstance(self.group_by, str) else list(self.group_by)

    def column_names(self) -> set[str]:
        """Every role and source column the YAML names (empty when a reader's rows name them)."""
        names = set(self.columns) | {p.strip() for c in self.columns.values() for p in c.split(",")}
        for src in self.splits.values():
            names |= set(src.columns or {}) | {p.strip() for c in (src.columns or {}).values() for p in c.split(",")}
            names |= set(src.fieldnames or [])
        return {n for n in names if not n.startswith("__")}

    def labels_file_path(self, data_dir: Path | str | None = None) -> Path | None:
        if not self.labels_file:
            return None
        task_dir = Path(self.file).parent if self.file else Path.cwd()
        return Path(self.labels_file.format(data_dir=str(data_dir or default_data_dir()),
                                            task_dir=str(task_dir))).expanduser()

    def resolve_labels(self, data_dir: Path | str | None = None) -> "TaskSpec":
        """This spec with `labels` read from `labels_file` under `data_dir` (for --data-dir)."""
        if not self.labels_file:
            return self
        labels = read_labels_file(self.labels_file_path(data_dir))
        return self.model_copy(update={"labels": labels}) if labels else self

    @property
    def eval_split(self) -> str:
        return "test" if "test" in self.splits else "validation"

    def source_for(self, split: str) -> Source:
        if self.labels_file and not self.labels:
            raise XtlError(
                f"task {self.name!r}: its label set file {self.labels_file_path()} was not found",
                where=self.file or self.name,
                fix="put the data (and its label file) under $XTL_DATA (or ../shared/data); "
                + (self.notes.strip().splitlines()[0] if self.notes.strip() else "see the task's notes"),
            )
        if self.mixture is not None:
            raise XtlError(
                f"task {self.name!r} is a mixture of {', '.join(self.mixture)}: it has no data of its own",
                where=self.file or self.name,
                fix="read the member tasks' data (the multitask composition does)",
            )
        if split not in self.splits:
            raise XtlError(
                f"task {self.name!r} has no split {split!r}",
                where=self.file or self.name,
                fix=f"available splits: {', '.join(self.splits) or 'none'}",
            )
        return self.splits[split]

    def language_code(self, lang: str) -> str:
        if lang not in self.languages:
            raise XtlError(
                f"task {self.name!r} has no language {lang!r}",
                where=self.file or self.name,
                fix=did_you_mean(lang, self.languages),
            )
        return self.languages[lang]


def read_labels_file(path: Path | None) -> list[str] | None:
    """Labels, one per line (blank lines and `#` comments skipped); None if there is no file."""
    if path is None or not path.is_file():
        return None
    lines = (l.strip() for l in read_utf8(path, "label file").splitlines())
    return [l for l in lines if l and not l.startswith("#")] or None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("languages", "label_map"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _expand_file(path: Path, text: str) -> list[dict]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise XtlError(f"malformed YAML: {e}", where=str(path), fix="fix the YAML syntax") from None
    if not isinstance(doc, dict):
        raise XtlError("a task file must be a mapping", where=str(path))
    common = {k: v for k, v in doc.items() if k not in ("tasks", "include")}
    if "include" in doc:
        inc_path = path.parent / doc["include"]
        if not inc_path.exists():
            raise XtlError(f"included file {doc['include']!r} not found", where=str(path))
        try:
            included = yaml.safe_load(read_utf8(inc_path, "included task file")) or {}
        except yaml.YAMLError as e:
            raise XtlError(f"malformed YAML: {e}", where=str(inc_path), fix="fix the YAML syntax") from None
        common = _merge(included, common)
    if "tasks" in doc:
        if not isinstance(doc["tasks"], list):
            raise XtlError("`tasks` must be a list of task mappings", where=str(path))
        return [_merge(common, t) for t in doc["tasks"]]
    return [common]


def parse_task_file(path: Path, text: str | None = None) -> list[TaskSpec]:
    text = read_utf8(path, "task file") if text is None else text
    specs = []
    for i, raw in enumerate(_expand_file(path, text)):
        raw.setdefault("file", str(path))
        try:
            specs.append(TaskSpec(**raw))
        except ValidationError as e:
            raise XtlError(f"task {raw.get('name', f'#{i}')!r}, {_validation_message(e)}", where=str(path),
                           fix="see the task schema in adapters_xtl/tasks/__init__.py (TaskSpec)") from None
    return specs


def _validation_message(e: ValidationError) -> str:
    """`field 'x' = value: what is wrong`, from pydantic's first error (its own message when a
    validator already names the field)."""
    first = e.errors()[0]
    field = ".".join(str(x) for x in first["loc"]) or "(task)"
    msg = first["msg"]
    if first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        return msg if msg.startswith(f"{field}.") else f"field {field!r}: {msg}"
    value = first.get("input")
    shown = f" = {value!r}" if not isinstance(value, (dict, list)) and first["type"] != "missing" else ""
    return f"field {field!r}{shown}: {msg}"


def check_train_tasks(specs: "dict[str, TaskSpec]", only: "list[TaskSpec] | None" = None) -> None:
    """Each `train_task` names a task of the catalog that can train this one: same format and
    labels, its own training data, and the training language comes from it (a target does not
    say `train_language` itself). Checked when the catalog is read, not after training."""
    for spec in only if only is not None else specs.values():
        if not spec.train_task:
            continue
        where = spec.file or spec.name
        src = specs.get(spec.train_task)
        if src is None:
            raise XtlError(f"task {spec.name!r}: train_task {spec.train_task!r} is not in the catalog", where=where,
                           fix=did_you_mean(spec.train_task, specs))
        problem = None
        if src.name == spec.name:
            problem = "is the task itself"
        elif src.format != spec.format:
            problem = f"is {src.format}, this task is {spec.format}"
        elif spec.format in ("classification", "tagging") and (src.labels or None) != (spec.labels or None):
            problem = f"has labels {src.labels}, this task {spec.labels}"
        elif src.train_task:
            problem = f"is itself trained on {src.train_task!r} (name that one)"
        elif "train" not in src.splits and src.id_split is None and src.mixture is None:
            problem = "has no training data (no `train` split, no `id_split`)"
        elif "train_language" in spec.model_fields_set and spec.train_language != src.train_language:
            problem = (f"trains on {src.train_language!r}, but this task says train_language "
                       f"{spec.train_language!r} (drop it: the train task decides)")
        if problem:
            raise XtlError(f"task {spec.name!r}: train_task {spec.train_task!r} {problem}", where=where,
                           fix="name a train_task of the same format and labels that has English training data")


def training_task(spec: "TaskSpec") -> "TaskSpec":
    """The task whose training data train `spec`: its `train_task`, else itself. Its
    `train_language` is the language training reads (never added to `spec.languages`)."""
    return get_task(spec.train_task) if spec.train_task else spec


def _builtin_files() -> list[Path]:
    root = resources.files(__package__)
    return sorted(Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml") and not Path(str(p)).name.startswith("_"))


@lru_cache(maxsize=1)
def _builtin_specs() -> dict[str, TaskSpec]:
    out: dict[str, TaskSpec] = {}
    for f in _builtin_files():
        for spec in parse_task_file(f):
            if spec.name in out:
                raise XtlError(f"task {spec.name!r} is defined twice", where=str(f))
            out[spec.name] = spec
    check_train_tasks(out)
    return out


class TaskCatalog:
    """The built-in tasks plus the YAML files of user folders (as lm-eval-harness's
    `TaskManager(include_path=...)`): a new task is one YAML file in a folder you name, not a
    change to the package. A user task may shadow a built-in one of the same name.

    `get_task` everywhere in the library reads the *active* catalog: the default one (built-in
    plus folders given to `set_default_task_folders`, i.e. `xtl --tasks-dir`), or, inside
    `with catalog.active():`, that catalog (how a recipe's `tasks_dir:` and the studies add
    theirs without touching the environment)."""

    def __init__(self, include: "list[str | Path] | str | Path | None" = None, *, builtin: bool = True):
        if isinstance(include, (str, Path)):
            include = [include]
        self.folders = [Path(d) for d in (include or [])]
        self._specs: dict[str, TaskSpec] = dict(_builtin_specs()) if builtin else {}
        for d in self.folders:
            if not d.is_dir():
                raise XtlError(f"task folder {str(d)!r} does not exist", where="tasks_dir",
                               fix="name a folder that holds task YAML files")
            files = sorted(list(d.glob("*.yaml")) + list(d.glob("*.yml")))
            seen: dict[str, Path] = {}
            for f in files:
                for spec in parse_task_file(f):
                    if spec.name in seen:
                        raise XtlError(f"task {spec.name!r} is defined twice: {seen[spec.name]} and {f}", where=str(f),
                                       fix="rename one of them")
                    seen[spec.name] = f
                    self._specs[spec.name] = spec
        if self.folders:
            check_train_tasks(self._specs)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __iter__(self):
        return iter(self._specs[n] for n in self.names())

    def get(self, name: "str | TaskSpec") -> TaskSpec:
        """A task by name, or from a YAML file path (`my_task.yaml` or `my_tasks.yaml:name`)."""
        if isinstance(name, TaskSpec):
            return name
        if name in self._specs:
            return self._specs[name]
        return _task_from_file(name, self._specs)

    @contextmanager
    def active(self):
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def __repr__(self) -> str:
        return f"TaskCatalog({len(self._specs)} tasks, include={[str(f) for f in self.folders]})"


_ACTIVE: ContextVar["TaskCatalog | None"] = ContextVar("xtl_task_catalog", default=None)
_DEFAULT: "TaskCatalog | None" = None


def set_default_task_folders(folders: "list[str | Path] | None") -> TaskCatalog:
    """Make `folders` part of the process-wide catalog (the CLI's `--tasks-dir`)."""
    global _DEFAULT
    _DEFAULT = TaskCatalog(include=folders)
    return _DEFAULT


def active_catalog() -> TaskCatalog:
    global _DEFAULT
    cat = _ACTIVE.get()
    if cat is not None:
        return cat
    if _DEFAULT is None:
        _DEFAULT = TaskCatalog()
    return _DEFAULT


def task_names() -> list[str]:
    return active_catalog().names()


def get_task(name: "str | TaskSpec") -> TaskSpec:
    """A task by catalog name (of the active catalog), or from a YAML file path."""
    return active_catalog().get(name)


def _task_from_file(name: str, known) -> TaskSpec:
    file, _, sub = name.partition(":") if ":" in name and not Path(name).exists() else (name, "", "")
    p = Path(file)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise XtlError(f"task file {file!r} not found", where="task")
        specs = parse_task_file(p)
        check_train_tasks({**known, **{s.name: s for s in specs}}, only=specs)
        if sub:
            for s in specs:
                if s.name == sub:
                    return s
            raise XtlError(f"no task {sub!r} in {file}", where="task", fix=did_you_mean(sub, [s.name for s in specs]))
        if len(specs) != 1:
            raise XtlError(f"{file} defines {len(specs)} tasks", where="task", fix=f"name one as {file}:NAME")
        return specs[0]
    raise XtlError(f"unknown task {name!r}", where="task",
                   fix=did_you_mean(name, known) + " (or a path to a task YAML, or a folder via --tasks-dir)")


def default_data_dir() -> Path:
    env = os.environ.get("XTL_DATA")
    if env:
        return Path(env)
    here = Path.cwd()
    for cand in (here / "../shared/data", here / "shared/data"):
        if cand.is_dir():
            return cand.resolve()
    return (here / "data").resolve()
