"""`xtl tasks` and `xtl backbone`: what there is to train on, and with."""

from __future__ import annotations

import time
from typing import Optional

import typer
from rich.table import Table

from .common import console


def tasks(group: Optional[str] = typer.Option(None, help="intermediate | target | demo | local")):
    """List the task catalog (built-in tasks plus --tasks-dir folders)."""
    from ..tasks import active_catalog

    t = Table(title="tasks")
    for col in ("name", "format", "group", "languages", "description"):
        t.add_column(col)
    for s in active_catalog():
        if group and s.group != group:
            continue
        t.add_row(s.name, s.format, s.group, str(len(s.languages)), s.description[:70])
    console.print(t)


def backbone(
    name: str = typer.Argument("xlmr-e5-small"),
    quantization: str = typer.Option("none"),
    check: bool = typer.Option(True, help="run the translation-similarity sanity check"),
):
    """Load (building if needed) a backbone and show its fingerprint and size."""
    from ..backbone import load_backbone
    from ..embedded import sanity_check

    t0 = time.perf_counter()
    bb = load_backbone(name, quantization)
    console.print(f"{bb.fingerprint.short()} from {bb.source}: {bb.total_params() / 1e6:.2f}M params, "
                  f"{bb.num_layers} layers, hidden {bb.hidden_size}, loaded in {time.perf_counter() - t0:.1f}s")
    if check:
        console.print(sanity_check(bb.model, bb.tokenizer, device=str(bb.device)))
