"""`xtl registry ...`: list, show and verify modules; push/pull them on the Hub; import/export peft and adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .common import print_json

registry_app = typer.Typer(no_args_is_help=True, help="The local registry of task modules.")
console = Console()

MAX_FILE_SIZE_HELP = ("largest file to download from the Hub, e.g. 500MB or 4GiB (default: $XTL_HUB_MAX_FILE_SIZE, "
                      "else 2GiB)")


def _registry(path: Optional[Path]):
    from ..store.registry import Registry

    return Registry(path)


@registry_app.command("list")
def registry_list(registry: Optional[Path] = typer.Option(None),
                  as_json: bool = typer.Option(False, "--json", help="print the latest version of every module as "
                                               "a JSON list (name, version, task, method, backbone, steps, scores)")):
    """The latest version of every module."""
    reg = _registry(registry)
    mans = reg.list()
    if as_json:
        print_json([{"name": m.name, "version": m.version, "ref": f"{m.name}@{m.version}", "task": m.task,
                     "method": m.method, "backbone": m.backbone.short(), "steps": m.steps, "seed": m.seed,
                     "created_at": m.created_at, "scores": m.scores} for m in mans])
        return
    t = Table(title=f"registry {reg.root} ({len(mans)} modules)")
    for col in ("name", "version", "task", "method", "backbone", "steps", "mean score"):
        t.add_column(col)
    for m in mans:
        vals = [next(iter(ms.values())) for ms in m.scores.values() if ms]
        t.add_row(m.name, m.version, m.task, m.method, m.backbone.short(), str(m.steps),
                  f"{sum(vals) / len(vals):.1f}" if vals else "")
    console.print(t)


@registry_app.command("show")
def registry_show(name: str, version: Optional[str] = typer.Option(None), registry: Optional[Path] = typer.Option(None),
                  as_json: bool = typer.Option(False, "--json", help="plain JSON (no colours) for scripts")):
    """A module's manifest: its provenance, settings, files and scores."""
    reg = _registry(registry)
    m = reg.manifest(name, version)
    if as_json:
        print_json(m.model_dump(mode="json"))
    else:
        console.print_json(m.model_dump_json())


@registry_app.command("verify")
def registry_verify(
    registry: Optional[Path] = typer.Option(None),
    fix: bool = typer.Option(False, "--fix", help="delete leftovers of interrupted writes and exports, rebuild "
                             "the index (damaged modules and links are only reported)"),
    as_json: bool = typer.Option(False, "--json", help="print the findings as one JSON object"),
):
    """Check every module's files and hashes, the index, links and leftovers.

    Exit code 0 when the registry is healthy (or `--fix` repaired everything it found), 1 when a
    problem remains.
    """
    import json

    from ..store.verify import check

    reg = _registry(registry)
    problems = check(reg, fix=fix)
    remaining = [p for p in problems if not p.fixed]
    if as_json:
        typer.echo(json.dumps({"registry": str(reg.root), "healthy": not remaining, "fixed": len(problems)
                               - len(remaining), "problems": [p.to_json() for p in problems]}, indent=2))
    else:
        for p in problems:
            console.print(f"[{'yellow' if p.fixed else 'red'}]- {p}", highlight=False, soft_wrap=True)
        if remaining:
            console.print(f"[red]registry {reg.root}: {len(remaining)} problem(s)"
                          + ("" if fix else "; `xtl registry verify --fix` repairs the harmless ones"),
                          highlight=False, soft_wrap=True)
        else:
            console.print(f"[green]registry {reg.root} is healthy"
                          + (f" ({len(problems)} problem(s) fixed)" if problems else ""), highlight=False,
                          soft_wrap=True)
    if remaining:
        # SystemExit, not typer.Exit: `cli.main` runs the app with standalone_mode=False, where click
        # returns an Exit's code instead of raising it, and main returns 0 whatever that code was
        raise SystemExit(1)


# ------------------------------------------------------------------------------------ sharing
@registry_app.command("push")
def registry_push(
    name: str = typer.Argument(..., help="registry module to upload"),
    version: Optional[str] = typer.Option(None, help="version to push (default: latest)"),
    repo_id: Optional[str] = typer.Option(None, help="Hub repo ORG/NAME (default: <your user>/<name>)"),
    private: bool = typer.Option(False, "--private", help="create the repo as private"),
    message: Optional[str] = typer.Option(None, help="commit message"),
    exports: bool = typer.Option(True, help="make the repo root a peft / adapters repo (the export that loads "
                                            "without adapters_xtl)"),
    parts: bool = typer.Option(True, help="push a stacked / fused / merged module's intermediates first (those "
                                          "not on the Hub yet)"),
    registry: Optional[Path] = typer.Option(None),
):
    """Upload a module to the Hugging Face Hub as an ordinary peft / adapters repo (head included
    where those libraries compute it exactly), with our weights, manifest and model card beside."""
    from ..store.card import base_model
    from ..store.sharing import push

    m = push(_registry(registry), name, version, repo_id=repo_id, private=private, commit_message=message,
             exports=exports, parts=parts)
    console.print(f"pushed {m.name} v{m.version} to {m.hub['repo_id']} at commit {m.hub['revision']}")
    if base_model(m.backbone.model_id) is None:
        console.print(f"note: the backbone {m.backbone.model_id!r} is a local folder, not a Hub model id, so the "
                      "card has no base_model", markup=False)


@registry_app.command("pull")
def registry_pull(
    repo: str = typer.Argument(..., help="ORG/NAME or ORG/NAME@REVISION (branch, tag or commit)"),
    name: Optional[str] = typer.Option(None, help="register under this name (default: the pushed name)"),
    version: Optional[str] = typer.Option(None, help="register as this version (default: hub-<commit>)"),
    lazy: bool = typer.Option(False, "--lazy", help="record it now, download the weights on first use"),
    max_file_size: Optional[str] = typer.Option(None, help=MAX_FILE_SIZE_HELP),
    registry: Optional[Path] = typer.Option(None),
):
    """Register a module pushed with `xtl registry push`, pinned to one commit."""
    from ..store.sharing import pull

    m = pull(_registry(registry), repo, name=name, version=version, lazy=lazy, max_bytes=max_file_size)
    how = "recorded (weights fetched on first use)" if (m.hub or {}).get("lazy") else "pulled"
    console.print(f"{how} {m.name} v{m.version} from {m.hub['repo_id']}@{m.hub['revision']}")


@registry_app.command("fetch")
def registry_fetch(
    name: str = typer.Argument(...),
    version: Optional[str] = typer.Option(None),
    max_file_size: Optional[str] = typer.Option(None, help=MAX_FILE_SIZE_HELP),
    registry: Optional[Path] = typer.Option(None),
):
    """Download the weights of a module pulled with --lazy now (instead of on first use)."""
    from ..store.hub import max_file_bytes

    m = _registry(registry).materialize(name, version, max_bytes=max_file_bytes(max_file_size))
    console.print(f"{m.name} v{m.version} is complete")


@registry_app.command("import")
def registry_import(
    source: str = typer.Argument(..., help="folder saved by peft or adapters, or a Hub repo ORG/NAME[@REVISION]"),
    task: str = typer.Option(..., help="the task the module is for (catalog name or task YAML)"),
    name: Optional[str] = typer.Option(None, help="registry name (default: the folder or repo name)"),
    backbone: Optional[str] = typer.Option(None, help="backbone it belongs to (default: the adapter config's "
                                           "base model)"),
    quantization: str = typer.Option("none"),
    head: bool = typer.Option(True, help="import the folder's task head, when it has one"),
    subfolder: Optional[str] = typer.Option(None, help="folder of the adapter inside the folder or repo"),
    max_file_size: Optional[str] = typer.Option(None, help=MAX_FILE_SIZE_HELP),
    registry: Optional[Path] = typer.Option(None),
    device: Optional[str] = typer.Option(None),
):
    """Register a LoRA saved by peft or a bottleneck adapter saved by adapters as a task module."""
    from ..backbone import load_backbone
    from ..errors import XtlError
    from ..store.hub import max_file_bytes
    from ..store.interop import read_folder
    from ..store.sharing import import_module
    from ..tasks import get_task

    get_task(task)  # a bad task fails before any loading
    limit = max_file_bytes(max_file_size)
    if backbone is None:
        local = Path(source).expanduser() / (subfolder or "")
        base = read_folder(local).base_model if local.is_dir() else None
        if not base:
            raise XtlError("the adapter does not name its base model", where="--backbone",
                           fix="pass --backbone (xlmr-e5-small, a Hub id or a folder)")
        backbone = base
    bb = load_backbone(backbone, quantization, device)
    m = import_module(_registry(registry), source, task=task, backbone=bb, name=name, include_head=head,
                      subfolder=subfolder, max_bytes=limit)
    imported = m.model_extra.get("imported", {}) if m.model_extra else {}
    console.print(f"imported {m.name} v{m.version} ({m.method} {m.method_config}) from {imported.get('library')}; "
                  + ("with its task head" if m.head else "no task head (retrieval, or train one with --init-from)"))


@registry_app.command("export")
def registry_export(
    name: str = typer.Argument(...),
    out_dir: Path = typer.Argument(..., help="folder to write (new or empty, or an earlier export with --overwrite)"),
    fmt: str = typer.Option(..., "--format", help="peft (LoRA modules) | adapters (bottleneck modules) | hub "
                            "(the folder `registry push` uploads: peft/adapters root, card, manifest)"),
    version: Optional[str] = typer.Option(None),
    base_model: Optional[str] = typer.Option(None, help="base model id to record (default: the backbone's)"),
    adapter_name: Optional[str] = typer.Option(None, help="adapters: the adapter's name (default: from NAME)"),
    repo_id: Optional[str] = typer.Option(None, "--repo-id", help="hub: the repo ORG/NAME the card names"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT_DIR when an earlier `xtl registry "
                                   "export` wrote it (it holds .xtl-export.json); any other folder is refused"),
    registry: Optional[Path] = typer.Option(None),
):
    """Write a module as a folder peft (`PeftModel.from_pretrained`) or adapters (`load_adapter`)
    loads, or (`--format hub`) as the Hub repo `registry push` would make of it."""
    from ..store.exports import MARKER, export

    out = export(_registry(registry), name, out_dir, fmt=fmt, version=version, base_model=base_model,
                 adapter_name=adapter_name, overwrite=overwrite, repo_id=repo_id)
    files = sorted(p.name for p in out.iterdir() if p.name != MARKER)
    console.print(f"exported {name} to {out} ({', '.join(files)})")
