"""The local executor: a plan's cells one after another in this process, on one backbone."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..recipe import Plan
from ..runner import run_plan
from ..store.registry import Registry


class LocalExecutor:
    """Runs a plan's cells one after another in this process, on one loaded backbone: the
    default, and the reference the other executors are checked against."""

    def __init__(self, device: str | None = None, console: Console | None = None):
        self.device = device
        self.console = console

    def run(self, plan: Plan, run_dir: Path, *, registry: Registry, backbone=None, progress=None) -> Path:
        return run_plan(plan, run_dir, registry=registry, backbone=backbone, console=self.console,
                        device=self.device, progress=progress)
