"""The README's Python example runs as written, so it cannot rot."""

from __future__ import annotations

import re
import shutil

import pytest

from conftest import REPO


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_has_a_python_example():
    assert python_blocks(), "README.md lost its Python example"


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys, e5_small_dir):
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    for block in python_blocks():
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "'de':" in out and "'sw':" in out  # the scores dict was printed
    assert (tmp_path / "xtl-out/notebook/run/results.jsonl").exists()
    assert (tmp_path / "xtl-out/notebook/run/report.md").exists()
