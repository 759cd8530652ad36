"""The formats of peft and adapters: their file names, configs and tensor names, read and mapped.

A module moves between adapters_xtl and those libraries only if it computes exactly the same
thing on both sides, so this module knows each library's saved layout and refuses, with a clear
`XtlError`, everything our methods cannot reproduce (LoRA biases, embedding LoRA, PiSSA/OLoRA
adapters saved against their residual base weight, parallel or prefix adapters, ...) instead of
loading it approximately:

- peft (LoRA, with its variants DoRA, rsLoRA, layers_to_transform, rank/alpha patterns; IA3):
  `adapter_config.json` (peft's `LoraConfig` / `IA3Config`) + `adapter_model.safetensors`,
  keys `base_model.model.<path>.lora_A.weight`, `...lora_magnitude_vector` (DoRA),
  `...ia3_l` (IA3). A PiSSA/OLoRA module goes out as the plain LoRA of rank 2r it is stored as
  (what peft's `path_initial_model_for_weight_conversion` writes).
- adapters (bottleneck): `adapter_config.json` as `model.save_adapter` writes it +
  `adapter.safetensors` (or `pytorch_adapter.bin`), keys `...adapters.<name>.adapter_down.0.weight`,
  and optionally adapters' classification head (`head_config.json` + `model_head.safetensors`),
  which maps exactly onto ours.
- our own task head, which neither library knows, rides along as `xtl_head.safetensors` +
  `xtl_head.json`.

Weights are read from safetensors; a `.bin` is converted with `torch.load(weights_only=True)`
(plain tensors only, no code runs) or refused. Moving whole modules in and out of the registry
is `store.convert`; fetching them from the Hub is `store.sharing`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import XtlError
from ..methods.base import PLACEHOLDER
from .peft_configs import _empty, ia3_settings_from_peft, lora_settings_from_peft, peft_config

log = logging.getLogger(__name__)

HEAD_WEIGHTS = "xtl_head.safetensors"
HEAD_CONFIG = "xtl_head.json"
CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_BIN = "adapter_model.bin"
ADAPTERS_WEIGHTS = "adapter.safetensors"  # adapters' SAFE_WEIGHTS_NAME
ADAPTERS_WEIGHTS_BIN = "pytorch_adapter.bin"  # adapters' WEIGHTS_NAME
ADAPTERS_HEAD_CONFIG = "head_config.json"
ADAPTERS_HEAD_WEIGHTS = "model_head.safetensors"
ADAPTERS_HEAD_WEIGHTS_BIN = "pytorch_model_head.bin"
FORMATS = ("peft", "adapters")
FORMAT_OF_METHOD = {"lora": "peft", "ia3": "peft", "bottleneck": "adapters"}

__all__ = ["ADAPTERS_HEAD_CONFIG", "ADAPTERS_HEAD_WEIGHTS", "ADAPTERS_HEAD_WEIGHTS_BIN", "ADAPTERS_WEIGHTS",
           "ADAPTERS_WEIGHTS_BIN", "CONFIG", "FORMATS", "FORMAT_OF_METHOD", "HEAD_CONFIG", "HEAD_WEIGHTS",
           "PEFT_WEIGHTS", "PEFT_WEIGHTS_BIN", "ForeignModule", "adapters_config", "adapters_tensors",
           "bottleneck_settings_from_adapters", "ia3_settings_from_peft", "lora_settings_from_peft", "peft_config", "peft_tensors",
           "read_folder", "read_tensors", "require_head"]

# Keys that a model class may put in front of the encoder (task models, adapters' flex-head models).
_MODEL_PREFIXES = ("roberta.", "xlm_roberta.", "model.", "encoder_model.")
# (peft's saved name, ours) per tensor kind; {p} is the module path inside the encoder
_AB = (r"^(?P<p>.+)\.(?P<ab>lora_A|lora_B)\.weight$", "{p}.{ab}." + PLACEHOLDER + ".weight")
_MAG = (r"^(?P<p>.+)\.lora_magnitude_vector$", "{p}.lora_magnitude_vector." + PLACEHOLDER + ".weight")
_IA3 = (r"^(?P<p>.+)\.ia3_l$", "{p}.ia3_l." + PLACEHOLDER + "-ia3")  # methods.ia3.adapter_name
_PEFT_KEYS_LORA, _PEFT_KEYS_DORA, _PEFT_KEYS_IA3 = (_AB,), (_AB, _MAG), (_IA3,)
_OUR_KEYS = (
    (re.compile(r"^(?P<p>.+)\.(?P<ab>lora_A|lora_B)\." + re.escape(PLACEHOLDER) + r"\.weight$"), "{p}.{ab}.weight"),
    (re.compile(r"^(?P<p>.+)\.lora_magnitude_vector\." + re.escape(PLACEHOLDER) + r"\.weight$"),
     "{p}.lora_magnitude_vector"),
    (re.compile(r"^(?P<p>.+)\.ia3_l\." + re.escape(PLACEHOLDER) + r"-ia3$"), "{p}.ia3_l"),
)


def _peft_to_ours(key: str, kinds) -> str | None:
    for pattern, ours in kinds:
        m = re.match(pattern, key)
        if m:
            return ours.format(**m.groupdict())
    return None


def _ours_to_peft(key: str) -> str | None:
    for pattern, theirs in _OUR_KEYS:
        m = pattern.match(key)
        if m:
            return theirs.format(**m.groupdict())
    return None


# ---------------------------------------------------------------------------------------------
# small helpers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise XtlError(f"{path.name} is missing", where=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise XtlError(f"{path.name} is not readable JSON ({e})", where=str(path),
                       fix="re-save the adapter with its library") from None
    if not isinstance(data, dict):
        raise XtlError(f"{path.name} is not a JSON object", where=str(path), fix="re-save the adapter with its library")
    return data


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or from a `.bin` loaded with `weights_only=True`.

    A `.bin` that holds anything but a flat dict of tensors (or that needs code to unpickle)
    is refused; nothing from it is executed.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise XtlError(f"{path.name} is not a valid safetensors file ({e})", where=str(path),
                           fix="re-save the adapter with its library") from None
    from .weights import load_pickled_tensors  # refuses code-needing pickles, without torch's unsafe hint

    return load_pickled_tensors(path)


def _strip_model_prefix(key: str) -> str:
    for p in _MODEL_PREFIXES:
        if key.startswith(p) and key[len(p):].startswith(("encoder.", "embeddings.")):
            return key[len(p):]
    return key


# ---------------------------------------------------------------------------------------------
# configs: ours <-> theirs (peft's: store.peft_configs)


def adapters_config(method_config: dict[str, Any]):
    """adapters' config object (SeqBnConfig / DoubleSeqBnConfig) for one of our bottleneck configs."""
    from adapters import DoubleSeqBnConfig, SeqBnConfig

    from ..methods import get_method

    s = get_method("bottleneck").make_config(method_config)
    cls = SeqBnConfig if s.variant == "seq_bn" else DoubleSeqBnConfig
    return cls(reduction_factor=s.reduction_factor, non_linearity=s.non_linearity)


# fields that only matter for initialisation (the weights are loaded anyway)
_ADAPTERS_NEUTRAL = {"init_weights", "init_weights_seed"}


def bottleneck_settings_from_adapters(cfg: Any, where: str) -> dict[str, Any]:
    """Our `BottleneckSettings` (as a dict) from adapters' saved `config`, or a clear XtlError.

    Only configs equal to `SeqBnConfig` / `DoubleSeqBnConfig` with some reduction factor and
    non-linearity are accepted: those are exactly what our bottleneck method builds.
    """
    from ..methods import get_method

    fix = ("adapters_xtl imports sequential bottleneck adapters (adapters' seq_bn / double_seq_bn, i.e. "
           "SeqBnConfig / DoubleSeqBnConfig with any reduction_factor and non_linearity); other adapter "
           "types (LoRA, prefix tuning, parallel, compacter, ...) are not supported")
    if isinstance(cfg, str):
        if cfg in ("seq_bn", "double_seq_bn"):
            cfg = adapters_config({"variant": cfg}).to_dict()
        else:
            raise XtlError(f"adapter config {cfg!r} is not a sequential bottleneck", where=where, fix=fix)
    if not isinstance(cfg, dict):
        raise XtlError(f"adapter config is a {type(cfg).__name__}, not an object", where=where, fix=fix)
    arch = cfg.get("architecture")
    if arch not in (None, "bottleneck"):
        raise XtlError(f"adapter architecture {arch!r} is not supported", where=where, fix=fix)
    rf, nl = cfg.get("reduction_factor"), cfg.get("non_linearity")
    if isinstance(rf, float) and rf.is_integer():
        rf = int(rf)
    if not isinstance(rf, int) or isinstance(rf, bool) or rf < 1:
        raise XtlError(f"reduction_factor={rf!r}: only one integer factor for every layer is supported",
                       where=where, fix=fix)
    if not isinstance(nl, str):
        raise XtlError(f"non_linearity={nl!r} is not a name", where=where, fix=fix)
    best: tuple[str, list[str]] | None = None
    for variant in ("seq_bn", "double_seq_bn"):
        ref = adapters_config({"variant": variant, "reduction_factor": rf, "non_linearity": nl}).to_dict()
        diffs = []
        for key in sorted(set(ref) | set(cfg)):
            if key in _ADAPTERS_NEUTRAL or key == "architecture":
                continue
            a, b = cfg.get(key), ref.get(key)
            if a != b and not (_empty(a) and _empty(b)):
                diffs.append(f"{key}={a!r} ({variant} has {b!r})")
        if not diffs:
            return get_method("bottleneck").make_config(
                {"variant": variant, "reduction_factor": rf, "non_linearity": nl}, where=where).model_dump()
        if best is None or len(diffs) < len(best[1]):
            best = (variant, diffs)
    assert best is not None
    raise XtlError(f"unsupported adapter configuration: closest is {best[0]}, but " + "; ".join(best[1]),
                   where=where, fix=fix)


# ---------------------------------------------------------------------------------------------
# reading a peft / adapters folder


@dataclass
class ForeignModule:
    """A module read from another library's folder, converted to our naming."""

    library: str  # "peft" | "adapters"
    method: str  # "lora" | "ia3" | "bottleneck"
    method_config: dict[str, Any]
    module: dict[str, torch.Tensor]  # our `split_weights` naming (placeholder for the module name)
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    head_config: dict[str, Any] = field(default_factory=dict)  # our manifest `head` ({} = none)
    head_source: str | None = None  # "adapters_xtl" | "adapters" | "peft" (a task model's head) | None
    base_model: str | None = None
    library_version: str | None = None
    original_config: dict[str, Any] = field(default_factory=dict)
    xtl: dict[str, Any] = field(default_factory=dict)  # our xtl_head.json, when present


def _pick(folder: Path, names: list[str]) -> Path | None:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def read_folder(folder: str | Path) -> ForeignModule:
    """Read a folder written by peft's `save_pretrained` or adapters' `save_adapter`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise XtlError(f"{folder} is not a folder", where="import source",
                       fix="pass a folder saved by peft (save_pretrained) or adapters (save_adapter), or a Hub repo id")
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise XtlError(f"no {CONFIG} in {folder}", where=str(folder),
                       fix="pass the folder that peft's save_pretrained or adapters' save_adapter wrote "
                       "(for a peft adapter with a custom name, its sub-folder <name>/)")
    cfg = _read_json(cfg_path)
    if "peft_type" in cfg:
        fm = _read_peft(folder, cfg)
    elif "config" in cfg and ("model_class" in cfg or "name" in cfg):
        fm = _read_adapters(folder, cfg)
    else:
        raise XtlError(f"{CONFIG} is neither peft's (no peft_type) nor adapters' (no config/name)", where=str(cfg_path),
                       fix="pass a folder saved by peft (save_pretrained) or adapters (save_adapter)")
    _read_xtl_head(folder, fm)
    return fm


# peft task types whose `modules_to_save` head maps onto ours: task_type -> (head modules peft
# lists, their saved keys -> ours, our head kind). A task model's head that peft saved next to the
# adapter (`base_model.model.classifier.dense.weight`, without peft's modules_to_save infix).
_PEFT_TASK_HEADS = {
    "SEQ_CLS": (("classifier", "score"), {"classifier.dense.weight": "dense.weight", "classifier.dense.bias": "dense.bias",
                                          "classifier.out_proj.weight": "out.weight",
                                          "classifier.out_proj.bias": "out.bias"}, "classification"),
    "TOKEN_CLS": (("classifier", "score"), {"classifier.weight": "out.weight", "classifier.bias": "out.bias"}, "tagging"),
    "QUESTION_ANS": (("qa_outputs",), {"qa_outputs.weight": "qa_outputs.weight", "qa_outputs.bias": "qa_outputs.bias"},
                     "span_qa"),
}


def _task_head_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """`cfg` without a `modules_to_save` that is just a task model's head we map (and its task
    type); any other `modules_to_save` stays, for the settings check to refuse by name."""
    mts = cfg.get("modules_to_save")
    head = _PEFT_TASK_HEADS.get(cfg.get("task_type"))
    if mts and head and isinstance(mts, (list, tuple)) and set(mts) <= set(head[0]):
        return {**cfg, "modules_to_save": None}, cfg["task_type"]
    return cfg, None


def _peft_task_head(raw_head: dict[str, torch.Tensor], task_type: str, fm: "ForeignModule", where: str) -> None:
    _, names, kind = _PEFT_TASK_HEADS[task_type]
    if set(raw_head) != set(names):
        raise XtlError(f"the saved {task_type} head has {sorted(raw_head)}; adapters_xtl maps {sorted(names)} (the "
                       "XLM-R task models' heads)", where=where,
                       fix="import without the head (--no-head) and train a head on top")
    fm.head = {names[k]: v for k, v in raw_head.items()}
    fm.head_source = "peft"
    fm.head_config = {"kind": kind}
    if kind != "span_qa":
        fm.head_config["num_labels"] = int(fm.head["out.weight"].shape[0])
    if kind == "classification":
        fm.head_config["pooling"] = "cls"


def _read_peft(folder: Path, cfg: dict[str, Any]) -> ForeignModule:
    where = str(folder / CONFIG)
    method = "ia3" if cfg.get("peft_type") == "IA3" else "lora"
    cfg, task_head = _task_head_config(cfg)
    settings = ia3_settings_from_peft(cfg, where) if method == "ia3" else lora_settings_from_peft(cfg, where)
    wpath = _pick(folder, [PEFT_WEIGHTS, PEFT_WEIGHTS_BIN])
    if wpath is None:
        raise XtlError(f"no {PEFT_WEIGHTS} (or {PEFT_WEIGHTS_BIN}) in {folder}", where=str(folder),
                       fix="save the adapter with peft's save_pretrained")
    raw = read_tensors(wpath)
    keys = _PEFT_KEYS_IA3 if method == "ia3" else (_PEFT_KEYS_DORA if settings.get("use_dora") else _PEFT_KEYS_LORA)
    module: dict[str, torch.Tensor] = {}
    raw_head: dict[str, torch.Tensor] = {}
    bad = []
    head_prefixes = tuple(f"{m}." for m in _PEFT_TASK_HEADS[task_head][0]) if task_head else ()
    for key, value in raw.items():
        k = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
        if task_head and k.startswith(head_prefixes):
            raw_head[k] = value
            continue
        k = _strip_model_prefix(k)
        ours = _peft_to_ours(k, keys)
        if ours is None:
            bad.append(key)
            continue
        module[ours] = value
    if bad:
        kinds = ("lora_embedding" if any("lora_embedding" in b for b in bad) else
                 "lora_magnitude_vector (DoRA) while the config says use_dora=false"
                 if any("magnitude" in b for b in bad) else "other")
        what = "IA3 vectors" if method == "ia3" else "LoRA A/B matrices (and DoRA magnitudes)"
        raise XtlError(
            f"{wpath.name} holds {len(bad)} tensor(s) that are not {what} of Linear layers ({kinds}; e.g. {bad[:2]})",
            where=str(wpath),
            fix="adapters_xtl imports LoRA / DoRA / IA3 on Linear layers only (no embedding LoRA, biases or "
            "modules_to_save)",
        )
    if not module:
        raise XtlError(f"{wpath.name} holds no {method.upper()} weights", where=str(wpath),
                       fix="save the trained adapter")
    fm = ForeignModule(library="peft", method=method, method_config=settings, module=module,
                       base_model=cfg.get("base_model_name_or_path") or None,
                       library_version=cfg.get("peft_version"), original_config=cfg)
    if raw_head:
        _peft_task_head(raw_head, task_head, fm, str(wpath))
    return fm


def _read_adapters(folder: Path, cfg: dict[str, Any]) -> ForeignModule:
    where = str(folder / CONFIG)
    name = cfg.get("name")
    if not isinstance(name, str) or not name or "." in name:
        raise XtlError(f"adapter name {name!r} is not usable", where=where, fix="re-save the adapter with adapters")
    if cfg.get("type") not in (None, "text_task", "text_lang"):
        raise XtlError(f"adapter type {cfg.get('type')!r} is not supported", where=where,
                       fix="import a task or language bottleneck adapter")
    settings = bottleneck_settings_from_adapters(cfg.get("config"), where)
    wpath = _pick(folder, [ADAPTERS_WEIGHTS, ADAPTERS_WEIGHTS_BIN])
    if wpath is None:
        raise XtlError(f"no {ADAPTERS_WEIGHTS} (or {ADAPTERS_WEIGHTS_BIN}) in {folder}", where=str(folder),
                       fix="save the adapter with adapters' model.save_adapter")
    raw = read_tensors(wpath)
    marker = f".adapters.{name}."
    module: dict[str, torch.Tensor] = {}
    bad = []
    for key, value in raw.items():
        k = _strip_model_prefix(key)
        if marker not in k or not k.startswith("encoder."):
            bad.append(key)
            continue
        module[k.replace(marker, f".adapters.{PLACEHOLDER}.")] = value
    if bad:
        raise XtlError(f"{wpath.name} holds {len(bad)} tensor(s) outside the bottleneck layers of adapter {name!r} "
                       f"(e.g. {bad[:2]})", where=str(wpath),
                       fix="adapters_xtl imports bottleneck adapters without invertible or fusion layers")
    if not module:
        raise XtlError(f"{wpath.name} holds no weights of adapter {name!r}", where=str(wpath),
                       fix="save the trained adapter with model.save_adapter")
    fm = ForeignModule(library="adapters", method="bottleneck", method_config=settings, module=module,
                       base_model=cfg.get("model_name") or None,
                       library_version=str(cfg.get("version", "")).replace("adapters.", "") or None,
                       original_config=cfg)
    _read_adapters_head(folder, fm, name)
    return fm


def _read_adapters_head(folder: Path, fm: ForeignModule, name: str) -> None:
    """adapters' classification head (dense-tanh-out over <s>) maps exactly onto ours."""
    hcfg_path = folder / ADAPTERS_HEAD_CONFIG
    if not hcfg_path.is_file():
        return
    where = str(hcfg_path)
    hcfg = _read_json(hcfg_path).get("config") or {}
    wpath = _pick(folder, [ADAPTERS_HEAD_WEIGHTS, ADAPTERS_HEAD_WEIGHTS_BIN])
    fix = ("adapters_xtl maps adapters' classification head with layers=2, activation_function='tanh', bias=true, "
           "use_pooler=false; import without it (--no-head) and train a head on top")
    problems = []
    if hcfg.get("head_type") != "classification":
        problems.append(f"head_type={hcfg.get('head_type')!r}")
    for key, want in (("layers", 2), ("activation_function", "tanh"), ("bias", True), ("use_pooler", False)):
        if hcfg.get(key, want) != want:
            problems.append(f"{key}={hcfg.get(key)!r}")
    if hcfg.get("multilabel"):
        problems.append("multilabel=true")
    if wpath is None:
        problems.append(f"no {ADAPTERS_HEAD_WEIGHTS} / {ADAPTERS_HEAD_WEIGHTS_BIN}")
    if problems:
        raise XtlError("unsupported adapters head: " + ", ".join(problems), where=where, fix=fix)
    raw = read_tensors(wpath)
    prefix = f"heads.{name}."
    try:
        head = {"dense.weight": raw[prefix + "1.weight"], "dense.bias": raw[prefix + "1.bias"],
                "out.weight": raw[prefix + "4.weight"], "out.bias": raw[prefix + "4.bias"]}
    except KeyError as e:
        raise XtlError(f"{wpath.name} lacks {e.args[0]!r}", where=str(wpath), fix=fix) from None
    label2id = hcfg.get("label2id") or {}
    fm.head = head
    fm.head_source = "adapters"
    fm.head_config = {"kind": "classification", "pooling": "cls", "label2id": label2id,
                      "num_labels": int(head["out.weight"].shape[0])}


def _read_xtl_head(folder: Path, fm: ForeignModule) -> None:
    """Our own head, exported next to the adapter as xtl_head.safetensors + xtl_head.json."""
    wpath, cpath = folder / HEAD_WEIGHTS, folder / HEAD_CONFIG
    if not wpath.is_file() and not cpath.is_file():
        return
    if not (wpath.is_file() and cpath.is_file()):
        raise XtlError(f"only one of {HEAD_WEIGHTS} / {HEAD_CONFIG} is present", where=str(folder),
                       fix="copy both files (or neither) from the export")
    info = _read_json(cpath)
    head_cfg = info.get("head")
    if not isinstance(head_cfg, dict) or not head_cfg:
        raise XtlError(f"{HEAD_CONFIG} has no 'head' config", where=str(cpath), fix="re-export the module")
    fm.head = read_tensors(wpath)
    fm.head_config = head_cfg
    fm.head_source = "adapters_xtl"
    fm.xtl = info
    ours = info.get("method_config")
    if info.get("method") == fm.method and isinstance(ours, dict) and _same_config(_stored(fm.method, ours),
                                                                                   fm.method_config):
        # our export: keep the exact config (list order included; a PiSSA/OLoRA module's own
        # settings rather than the plain LoRA it is stored as)
        fm.method_config = ours


def _stored(method: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config a module of `config` is exported under (PiSSA/OLoRA: the plain LoRA of rank 2r)."""
    if method != "lora":
        return config
    from ..methods import get_method
    from ..methods.lora import stored_settings

    try:
        return stored_settings(get_method("lora").make_config(config)).model_dump()
    except XtlError:
        return config


def _same_config(a: dict[str, Any], b: dict[str, Any]) -> bool:
    norm = lambda d: {k: sorted(v) if isinstance(v, list) else v for k, v in d.items()}  # noqa: E731
    return norm(a) == norm(b)


# ---------------------------------------------------------------------------------------------
# tensor names: ours -> theirs


def peft_tensors(module: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our LoRA / DoRA / IA3 weights -> peft's saved naming (`base_model.model.<path>.lora_A.weight`,
    `...lora_magnitude_vector`, `...ia3_l`)."""
    out = {}
    for key, value in module.items():
        theirs = _ours_to_peft(key)
        if theirs is None:
            raise XtlError(f"weight {key!r} is not a LoRA A/B matrix, DoRA magnitude or IA3 vector",
                           where="export --format peft", fix="only LoRA and IA3 modules on Linear layers export to peft")
        out[f"base_model.model.{theirs}"] = value
    return out


def adapters_tensors(module: dict[str, torch.Tensor], adapter_name: str) -> dict[str, torch.Tensor]:
    """Our bottleneck weights -> adapters' naming (`...output.adapters.<name>.adapter_down.0.weight`)."""
    generic = f".adapters.{PLACEHOLDER}."
    out = {}
    for key, value in module.items():
        if generic not in key:
            raise XtlError(f"weight {key!r} is not a bottleneck adapter weight", where="export --format adapters",
                           fix="only bottleneck modules export to adapters")
        out[key.replace(generic, f".adapters.{adapter_name}.")] = value
    return out


# ---------------------------------------------------------------------------------------------
# heads


def require_head(manifest, head_weights: dict[str, torch.Tensor], spec) -> None:
    """Raise a clear XtlError when a module without a task head is used for a task that needs one.

    `pipeline.evaluate_module` should call this before `model.head.load_state_dict(head_w)`.
    """
    if spec.format == "retrieval" or head_weights:
        return
    origin = manifest.model_extra.get("imported") if manifest.model_extra else None
    how = f" (it was imported from {origin.get('library')} without a head)" if isinstance(origin, dict) else ""
    raise XtlError(
        f"module {manifest.name!r} version {manifest.version} has no task head{how}, so it cannot be "
        f"evaluated on {spec.format} task {spec.name!r}",
        where="--module",
        fix=f"train a head on top of it: `xtl train --task {spec.name} --init-from {manifest.name} "
        f"--method {manifest.method} --method-config '{json.dumps(manifest.method_config)}'`, or evaluate it "
        "on a retrieval task",
    )
