"""The bench's JSON file: a header saying on what and with which library versions the rows were
measured (`bench_meta`), written atomically after every row so an interrupted grid keeps what it
measured (`write_json`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

import torch

from ..cost import device_name

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
