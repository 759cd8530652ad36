"""Executors: run a Plan's cells with the cache, resume and one writer of results.

An executor is any object with `run(plan, run_dir, *, registry, backbone=None, progress=None)`
returning the results file. `LocalExecutor` runs the cells one after another in this process
(the default and the reference); `RayExecutor` spreads them over Ray actors, one loaded
backbone each (the `scale` extra). Both use runner.py's steps, so a cell gives the same rows
and the same module weights whichever ran it.
"""

from __future__ import annotations

from .local import LocalExecutor

__all__ = ["LocalExecutor", "RayExecutor"]


def __getattr__(name: str):
    if name == "RayExecutor":  # ray is optional: imported only when asked for
        from .ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
