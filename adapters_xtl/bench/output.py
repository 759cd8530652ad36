"""The bench's JSON file: a header saying on what and with which library versions the rows were
measured (`bench_meta`), written atomically after every row so an interrupted grid keeps what it
measured (`write_json`).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

import torch

from ..cost import device_name
from ..io import atomic_write_json

SCHEMA_VERSION = 1


def bench_meta(device: torch.device, peak: dict | None) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "peft", "adapters", "bitsandbytes"):
        try:
            versions[pkg] = md.version(pkg)
        except Exception:
            versions[pkg] = None
    return {"schema": SCHEMA_VERSION, "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "device": device_name(device), "device_type": device.type, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "versions": versions, "peak": peak}


def write_json(path: Path, obj: dict) -> None:
    """The whole file, atomically (io.atomic_write_json): a kill mid-grid keeps the previous rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, indent=2, default=str)
