"""`xtl report RUN --push ORG/NAME`: a run's results as a Hub dataset that grids from other labs pool with.

Each push writes one Parquet file, `data/<run name>.parquet` (via `datasets`), with one row per
(module, backbone fingerprint, target, language, composition, seed, metric) and the same columns
and types every time (`FEATURES`), so the files of many runs and labs load as one table:
`load_dataset("ORG/NAME")`. Pushing the same run name again replaces its file; another name adds
one. The dataset card (huggingface_hub's `DatasetCard`) declares that one config over
`data/*.parquet`, the columns and the key.

The upload is one commit through `store.hub` (the Hub transport); nothing is written outside a
temporary stage.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import XtlError
from ..evaluation import read_results
from ..store import hub

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "KEY", "push_results", "results_rows"]

# column -> (datasets dtype, what it is); the order is the table's
COLUMNS: dict[str, tuple[str, str]] = {
    "module": ("string", "registry module `name@version` that was scored"),
    "backbone": ("string", "backbone fingerprint `model_id@weights_sha256[:12]/quantization`"),
    "target": ("string", "target task of the grid cell"),
    "task": ("string", "task scored (the target, or a retrieval / probe task)"),
    "language": ("string", "language of the test data"),
    "composition": ("string", "single | stack | continue | fuse | merge"),
    "intermediate": ("string", "intermediate task(s) the module was composed with (`none` for single)"),
    "method": ("string", "lora | bottleneck | ia3 | ..."),
    "seed": ("int64", "training seed"),
    "metric": ("string", "metric name"),
    "score": ("float64", "score in percent"),
    "n": ("int64", "test examples scored"),
    "ci_low": ("float64", "95% bootstrap interval, low end"),
    "ci_high": ("float64", "95% bootstrap interval, high end"),
    "format": ("string", "task format"),
    "cell": ("string", "grid cell id in the run"),
    "run": ("string", "the run this row came from (its file name in data/)"),
}
KEY = ("module", "backbone", "target", "language", "composition", "seed", "metric")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _features():
    from datasets import Features, Value

    return Features({name: Value(dtype) for name, (dtype, _) in COLUMNS.items()})


def _cast(value: Any, dtype: str, where: str) -> Any:
    if value is None or value == "":
        return None
    try:
        if dtype == "int64":
            return int(value)
        if dtype == "float64":
            return float(value)
    except (TypeError, ValueError):
        raise XtlError(f"{where} = {value!r} is not a number", where=where,
                       fix="repair or remove that line of results.jsonl") from None
    return str(value)


def results_rows(run_dir: Path, run_name: str) -> list[dict[str, Any]]:
    """results.jsonl of `run_dir` as rows of `COLUMNS` (missing fields are null)."""
    path = Path(run_dir) / "results.jsonl"
    raw = read_results(path)
    if not raw:
        raise XtlError(f"{path} has no results", where=str(path),
                       fix="pass the folder `xtl run` wrote, after at least one cell was scored")
    rows, seen = [], set()
    for i, r in enumerate(raw):
        row = {name: _cast(r.get(name), dtype, f"{path.name} line {i + 1}: {name}")
               for name, (dtype, _) in COLUMNS.items() if name != "run"}
        row["target"] = row["target"] or row["task"]
        row["run"] = run_name
        missing = [k for k in ("module", "task", "language", "metric", "score") if row.get(k) is None]
        if missing:
            raise XtlError(f"{path.name} line {i + 1} has no {', '.join(missing)}", where=str(path),
                           fix="repair or remove that line")
        key = tuple(row[k] for k in KEY) + (row["task"],)
        if key in seen:
            continue  # a cell scored twice (a resumed run): keep the first
        seen.add(key)
        rows.append(row)
    return rows


def _card(repo_id: str, run_name: str, rows: list[dict[str, Any]]) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        pretty_name=f"adapters_xtl results: {repo_id.split('/')[-1]}",
        tags=["adapters_xtl", "cross-lingual", "xtreme", "zero-shot", "results"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
        size_categories=["n<1K"] if len(rows) < 1000 else ["1K<n<10K"],
    )
    cols = "\n".join(f"| `{name}` | {dtype} | {what} |" for name, (dtype, what) in COLUMNS.items())
    targets = ", ".join(sorted({r["target"] for r in rows}))
    body = f"""
# Zero-shot cross-lingual transfer results (adapters_xtl)

Scores of parameter-efficient task modules trained with adapters_xtl on English data and
evaluated per language, one row per
`{'`, `'.join(KEY)}` (plus the task scored). Every run that is pushed here adds one Parquet file
under `data/` with the same columns, so grids from different labs and backbones pool into one
table; pushing a run of the same name again replaces its file. The latest push was run
`{run_name}` ({len(rows)} rows; targets: {targets}).

```python
from datasets import load_dataset

results = load_dataset("{repo_id}", split="train").to_pandas()
```

| column | type | meaning |
|---|---|---|
{cols}

Push your own grid with `xtl report RUN_FOLDER --push {repo_id}`.
"""
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def push_results(run_dir: str | Path, repo_id: str, *, run_name: str | None = None, private: bool = False,
                 token: str | None = None, endpoint: str | None = None) -> dict[str, Any]:
    """Publish the results of `run_dir` to the dataset repo `repo_id`; {repo_id, revision, path, rows}."""
    from datasets import Dataset

    run_dir = Path(run_dir)
    repo_id = hub.check_repo_id(repo_id)  # a bad id fails before anything is read
    run_name = run_name or run_dir.absolute().name
    if not _RUN_NAME.match(run_name):
        raise XtlError(f"run name {run_name!r} cannot name a file on the Hub", where="--run-name",
                       fix="use letters, digits, '.', '_' and '-'")
    rows = results_rows(run_dir, run_name)
    stage = Path(tempfile.mkdtemp(prefix="xtl-results-"))
    try:
        (stage / "data").mkdir()
        target = f"data/{run_name}.parquet"
        Dataset.from_list(rows, features=_features()).to_parquet(str(stage / target))
        (stage / "README.md").write_text(_card(repo_id, run_name, rows), encoding="utf-8")
        sha = hub.upload_folder(repo_id, stage, private=private, token=token, endpoint=endpoint,
                                repo_type="dataset",
                                commit_message=f"adapters_xtl: results of run {run_name} ({len(rows)} rows)")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("pushed %d result rows of %s to dataset %s@%s", len(rows), run_name, repo_id, sha)
    return {"repo_id": repo_id, "revision": sha, "path": target, "rows": len(rows)}
