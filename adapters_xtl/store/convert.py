"""Registry modules in and out of peft / adapters folders, whole and checked.

`export_module` writes a folder that the other library loads with its own API alone:

- `fmt="peft"` (LoRA modules, DoRA / rsLoRA / PiSSA / OLoRA / patterns included, and IA3
  modules): `adapter_config.json` (written by peft's own `LoraConfig` / `IA3Config`) and
  `adapter_model.safetensors`, loadable by `PeftModel.from_pretrained(XLMRobertaModel, folder)`.
- `fmt="adapters"` (bottleneck modules): `adapter_config.json` as `model.save_adapter` writes
  it, `adapter.safetensors` (`model.load_adapter(folder, use_safetensors=True)`) and
  `pytorch_adapter.bin` (a plain tensor dict for `model.load_adapter(folder)`, whose default
  loader reads only that name; it is written with `torch.save` and loads with
  `torch.load(weights_only=True)`).

The task head goes alongside as `xtl_head.safetensors` + `xtl_head.json`. The folder appears
whole or not at all (written next to the target, then renamed).

`import_folder` turns such a folder, ours or one saved by peft or adapters, into a registry
module (the formats and what is refused: `store.interop`). The converted module is attached to
the backbone once before it is registered, so weights that do not fit are refused at import,
not at first use. An imported module has a head only when the folder carried one that fits the
task; otherwise its manifest says `head: {}` and it serves retrieval tasks or `xtl train
--init-from` (which trains a fresh head).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from ..errors import XtlError
from ..io import TMP_PREFIX, atomic_write_json
from .card import BASE_MODELS
from .interop import (ADAPTERS_WEIGHTS, ADAPTERS_WEIGHTS_BIN, CONFIG, FORMAT_OF_METHOD, FORMATS, HEAD_CONFIG,
                      HEAD_WEIGHTS, PEFT_WEIGHTS, ForeignModule, adapters_config, adapters_tensors, peft_config,
                      peft_tensors, read_folder)
from .layout import check_name
from .manifest import Manifest, library_versions
from .weights import write_weights

log = logging.getLogger(__name__)

_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")

__all__ = ["default_base_model", "export_module", "head_files", "import_folder", "save_safetensors"]


# ---------------------------------------------------------------------------------------------
# small helpers


def _atomic_dir(out_dir: Path, overwrite: bool):
    """A temp folder next to `out_dir` and a function that moves it into place."""
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise XtlError(f"{out_dir} exists and is not a folder", where="OUT_DIR", fix="choose another path")
        if any(out_dir.iterdir()) and not overwrite:
            raise XtlError(f"{out_dir} exists and is not empty", where="OUT_DIR",
                           fix="choose a new or empty folder, or pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{out_dir.name}"
    tmp.mkdir()

    def commit() -> Path:
        trash = None
        if out_dir.exists():
            trash = out_dir.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-old-{out_dir.name}"
            os.rename(out_dir, trash)
        os.rename(tmp, out_dir)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return out_dir

    return out_dir, tmp, commit


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    write_weights(path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  metadata={"format": "pt", **(metadata or {})})


# ---------------------------------------------------------------------------------------------
# import into the registry (a folder; from the Hub: store.sharing)


def _fit_head(fm: ForeignModule, spec, where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The head tensors + manifest head config for `spec`, or a clear refusal."""
    from ..formats import get_format

    fmt = get_format(spec.format)
    want = fmt.head_config(spec) if hasattr(fmt, "head_config") else {}
    fix = "import with --task set to the task the head was trained for, or import without the head (--no-head)"
    if fm.head_source == "adapters_xtl":
        have = fm.head_config
        if have.get("kind") != want.get("kind"):
            raise XtlError(f"the exported head is a {have.get('kind')!r} head; task {spec.name!r} needs {want.get('kind')!r}",
                           where=where, fix=fix)
        if "labels" in want and have.get("labels") != want["labels"]:
            raise XtlError(f"the exported head predicts labels {have.get('labels')} but task {spec.name!r} has "
                           f"{want['labels']}", where=where, fix=fix)
        return fm.head, want
    # adapters' classification head, or a peft task model's head (modules_to_save)
    lib = "a peft" if fm.head_source == "peft" else "an adapters"
    kind = fm.head_config.get("kind", "classification")
    if spec.format != kind:
        raise XtlError(f"{lib} {kind} head cannot serve task {spec.name!r} ({spec.format})", where=where, fix=fix)
    if kind == "classification" and spec.pooling != "cls":
        raise XtlError(f"{lib} classification head reads the <s> token; task {spec.name!r} pools {spec.pooling!r}",
                       where=where, fix="set `pooling: cls` in the task, or import without the head (--no-head)")
    if kind == "span_qa":
        return dict(fm.head), want
    labels = list(spec.labels)
    n = fm.head_config["num_labels"]
    label2id = fm.head_config.get("label2id") or {}
    if n != len(labels):
        raise XtlError(f"{lib} head has {n} outputs; task {spec.name!r} has {len(labels)} labels",
                       where=where, fix=fix)
    head = dict(fm.head)
    if label2id:
        if set(label2id) != set(labels):
            raise XtlError(f"the adapters head's labels {sorted(label2id)} differ from task {spec.name!r}'s {labels}",
                           where=where, fix=fix)
        order = torch.tensor([int(label2id[label]) for label in labels])
        head["out.weight"], head["out.bias"] = head["out.weight"][order], head["out.bias"][order]
    else:
        log.warning("the %s head names no labels; assuming it follows the task's label order %s",
                    fm.head_source, labels)
    return head, want


def _check_against_backbone(backbone, fm: ForeignModule, head: dict[str, torch.Tensor], spec) -> None:
    """Attach the converted module once (and build the head): refuse weights that do not fit."""
    from ..formats import get_format
    from ..methods import get_method
    from ..model import attach_saved, slot_name

    method = get_method(fm.method)
    slot = slot_name(f"import_check_{uuid.uuid4().hex[:8]}")
    try:
        attach_saved(backbone, fm.method, fm.method_config, fm.module, slot)
    finally:
        method.remove(backbone, slot)
        if fm.library == "peft":
            method.deactivate(backbone)
    if head:
        module = get_format(spec.format).make_head(spec, backbone.hidden_size)
        try:
            module.load_state_dict(head)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise XtlError(f"the head does not fit task {spec.name!r} on this backbone ({' '.join(first[:2])})",
                           where="import", fix="import without the head (--no-head)") from None


def import_folder(
    registry,
    folder: str | Path,
    *,
    task,
    backbone,
    name: str | None = None,
    include_head: bool = True,
    origin: dict[str, Any] | None = None,
) -> Manifest:
    """Register the peft / adapters module saved in `folder`; return its manifest.

    `task` is a task name, YAML path or `TaskSpec`; `backbone` is the loaded `Backbone` the module
    belongs to: its fingerprint goes into the manifest and the converted weights are attached to
    it once as a check. `origin` is recorded as where the module came from (default: the folder);
    `name` defaults to the origin's repo name or the folder's name.
    """
    from ..methods.base import count_parameters
    from ..model import join_weights
    from ..tasks import get_task

    spec = get_task(task)
    folder = Path(folder)
    fm = read_folder(folder)
    origin = origin or {"path": str(folder.absolute())}
    if name is None:
        default_name = origin["repo_id"].split("/")[-1] if origin.get("repo_id") else folder.absolute().name
        name = re.sub(r"[^A-Za-z0-9._-]", "-", default_name).strip(".-_") or "imported"
    name = check_name(name)
    head: dict[str, torch.Tensor] = {}
    head_cfg: dict[str, Any] = {}
    if include_head and fm.head:
        head, head_cfg = _fit_head(fm, spec, where=f"head of {origin.get('repo_id') or folder}")
    _check_against_backbone(backbone, fm, head, spec)
    tensors = join_weights(fm.module, head)
    imported = {
        "library": fm.library,
        "library_version": fm.library_version,
        "source": origin,
        "base_model": fm.base_model,
        "head": fm.head_source if head else None,
        "config": fm.original_config,
    }
    manifest = Manifest(
        name=name,
        task=spec.name,
        format=spec.format,
        method=fm.method,
        method_config=fm.method_config,
        head=head_cfg,
        backbone=backbone.fingerprint,
        languages_trained=list(fm.xtl.get("languages_trained") or []),
        trainable_params=count_parameters(tensors.values()),
        library_versions=library_versions(),
        imported=imported,
    )
    return registry.save(manifest, tensors)


# ---------------------------------------------------------------------------------------------
# export


def default_base_model(manifest) -> str:
    return BASE_MODELS.get(manifest.backbone.model_id, manifest.backbone.model_id)


def head_files(manifest, head: dict[str, torch.Tensor], tmp: Path) -> None:
    if not head:
        return
    save_safetensors(tmp / HEAD_WEIGHTS, head, {"adapters_xtl.name": manifest.name})
    info = {
        "library": "adapters_xtl",
        "schema_version": 1,
        "module": {"name": manifest.name, "version": manifest.version},
        "task": manifest.task,
        "format": manifest.format,
        "head": manifest.head,
        "method": manifest.method,
        "method_config": manifest.method_config,
        "backbone": manifest.backbone.model_dump(),
        "languages_trained": manifest.languages_trained,
        "hub": manifest.hub,
    }
    atomic_write_json(tmp / HEAD_CONFIG, info, indent=2, default=str)


def export_module(
    registry,
    name: str,
    out_dir: str | Path,
    *,
    fmt: str,
    version: str | None = None,
    base_model: str | None = None,
    adapter_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write module `name` as a folder peft (`fmt='peft'`) or adapters (`fmt='adapters'`) loads.

    The folder appears whole or not at all (written next to `out_dir`, then renamed).
    """
    from ..model import split_weights

    if fmt not in FORMATS:
        raise XtlError(f"unknown export format {fmt!r}", where="--format",
                       fix="use peft (LoRA, IA3) or adapters (bottleneck)")
    manifest, tensors = registry.load(name, version)
    want = FORMAT_OF_METHOD.get(manifest.method)
    if want != fmt:
        raise XtlError(f"module {name!r} is a {manifest.method} module; it exports to {want or 'no library'}, not {fmt}",
                       where="--format", fix=f"use --format {want}" if want else "export a lora, ia3 or bottleneck module")
    kind = (manifest.composition or {}).get("kind")
    if kind in ("stack", "fuse", "merge"):
        parts = ", ".join(map(str, (manifest.composition or {}).get("modules") or []))
        raise XtlError(f"module {name!r} was trained as a {kind} over {parts}: alone, {fmt} would compute something "
                       "else", where=f"module {name!r}",
                       fix="export each part and load them in the order the module card lists, or share the whole "
                       "composition with `xtl registry push` (its parts go along)")
    other = sorted(k for k in tensors if not k.startswith(("module.", "head.")))
    if other:
        raise XtlError(f"module {name!r} holds weights {fmt} has no place for (e.g. {other[:2]}): a fused or "
                       "composed module is more than one adapter", where=f"module {name!r}",
                       fix="export the modules it was composed of one by one")
    module, head = split_weights(tensors)
    base = base_model or default_base_model(manifest)
    out_dir, tmp, commit = _atomic_dir(Path(out_dir), overwrite)
    try:
        if fmt == "peft":
            cfg = peft_config(manifest.method_config, base, method=manifest.method)
            cfg.save_pretrained(str(tmp))
            save_safetensors(tmp / PEFT_WEIGHTS, peft_tensors(module))
        else:
            import adapters

            aname = adapter_name or re.sub(r"[^A-Za-z0-9_]", "_", manifest.name)
            if not _ADAPTER_NAME.match(aname):
                raise XtlError(f"adapter name {aname!r} is not usable", where="--adapter-name",
                               fix="use letters, digits and '_' (no dots)")
            weights = adapters_tensors(module, aname)
            down = next((v for k, v in weights.items() if k.endswith("adapter_down.0.weight")), None)
            if down is None:
                raise XtlError("the module has no adapter_down weights", where=f"module {name!r}",
                               fix="re-train or re-pull the module")
            config = {
                "config": adapters_config(manifest.method_config).to_dict(),
                "hidden_size": int(down.shape[1]),
                "model_class": "XLMRobertaModel",
                "model_name": base,
                "model_type": "xlm-roberta",
                "name": aname,
                "version": f"adapters.{adapters.__version__}",
            }
            atomic_write_json(tmp / CONFIG, config, indent=2, sort_keys=True)
            save_safetensors(tmp / ADAPTERS_WEIGHTS, weights)
            torch.save({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / ADAPTERS_WEIGHTS_BIN))
        head_files(manifest, head, tmp)
        return commit()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
