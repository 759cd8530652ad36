"""peft's adapter configs (`LoraConfig`, `IA3Config`) read into our method configs and written
from them: which fields our LoRA / IA3 methods carry (DoRA, rsLoRA, layers_to_transform,
rank/alpha patterns), which only describe training or bookkeeping, and which are refused
because our modules would compute something else (`store.interop` reads the folders).
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import XtlError

log = logging.getLogger(__name__)

__all__ = ["ia3_settings_from_peft", "lora_settings_from_peft", "peft_config"]

# peft LoraConfig fields that change what a LoRA computes and that our LoRA method does not
# reproduce: field -> value our method uses (anything else is refused)
_PEFT_MUST_BE = {
    "bias": "none",
    "fan_in_fan_out": False,
    "lora_bias": False,
    "modules_to_save": None,
    "layer_replication": None,
    "trainable_token_indices": None,
    "target_parameters": None,
    "megatron_config": None,
    "use_qalora": False,
    "use_bdlora": None,
    "exclude_modules": None,
}
# fields our LoRA carries over as they are (peft's variants)
_PEFT_CARRIED = {"use_dora", "use_rslora", "layers_to_transform", "rank_pattern", "alpha_pattern", "layers_pattern",
                 "init_lora_weights"}
# fields that only describe training, initialisation or bookkeeping
_PEFT_NEUTRAL = {
    "peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "base_model_name_or_path",
    "revision", "inference_mode", "auto_mapping", "peft_version", "megatron_core",
    "loftq_config", "eva_config", "corda_config", "lora_ga_config", "kasa_config", "monteclora_config",
    "velora_config", "runtime_config", "qalora_group_size", "ensure_weight_tying", "arrow_config",
    "alora_invocation_tokens",
}
# initialisations after which the saved A/B only fit the base weight peft changed (its residual)
_RESIDUAL_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
# initialisations that leave the base weight alone: once trained, the module is a plain LoRA
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
# IA3Config fields
_IA3_MUST_BE = {"fan_in_fan_out": False, "modules_to_save": None, "exclude_modules": None}
_IA3_NEUTRAL = {"peft_type", "task_type", "target_modules", "feedforward_modules", "base_model_name_or_path",
                "revision", "inference_mode", "init_ia3_weights", "auto_mapping", "peft_version"}


def _empty(v: Any) -> bool:
    return v in (None, False, {}, [], "", "none")


def _must_be(cfg: dict[str, Any], must: dict[str, Any], known: set[str]) -> list[str]:
    problems = []
    for key, ours in must.items():
        if key in cfg and cfg[key] != ours and not (_empty(cfg[key]) and _empty(ours)):
            problems.append(f"{key}={cfg[key]!r} (adapters_xtl uses {ours!r})")
    for key, value in cfg.items():
        if key not in must and key not in known and not _empty(value):
            problems.append(f"{key}={value!r} (unknown to adapters_xtl)")
    return problems


def _module_list(cfg: dict[str, Any], key: str, problems: list[str], required: bool = True) -> list[str]:
    tm = cfg.get(key)
    if isinstance(tm, str):
        problems.append(f"{key} is the regular expression {tm!r} (adapters_xtl needs a list of module names)")
    elif tm is None and not required:
        return []
    elif not isinstance(tm, (list, tuple)) or (required and not tm) or not all(isinstance(t, str) and t for t in tm):
        problems.append(f"{key}={tm!r} (a non-empty list of module names is needed)")
    else:
        return list(tm)
    return []


def lora_settings_from_peft(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Our `LoraSettings` (as a dict) from a peft `adapter_config.json`, or a clear XtlError."""
    from ..methods import get_method

    if cfg.get("peft_type") != "LORA":
        raise XtlError(f"peft_type is {cfg.get('peft_type')!r}; only LORA and IA3 adapters can be imported",
                       where=where, fix="train the module as LoRA or IA3, or use adapters_xtl's bottleneck method via "
                       "the adapters library")
    problems = _must_be(cfg, _PEFT_MUST_BE, _PEFT_NEUTRAL | _PEFT_CARRIED)
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_RESIDUAL_INITS):
        problems.append(f"init_lora_weights={init!r}: these A/B matrices only fit the residual base weight peft made "
                        "from the original one; re-save the trained adapter with peft's save_pretrained(..., "
                        "path_initial_model_for_weight_conversion=...), which converts it to a plain LoRA")
    elif init not in _PLAIN_INITS:
        problems.append(f"init_lora_weights={init!r} (unknown to adapters_xtl)")
    lp = cfg.get("layers_pattern")
    if lp not in (None, "layer", ["layer"], [], ""):
        problems.append(f"layers_pattern={lp!r} (adapters_xtl counts layers_to_transform in XLM-R's encoder.layer.<i>)")
    tm = _module_list(cfg, "target_modules", problems)
    if problems:
        raise XtlError(
            "unsupported LoRA configuration: " + "; ".join(problems),
            where=where,
            fix="adapters_xtl imports LoRA on Linear layers (any target modules, bias='none', DoRA, rsLoRA, "
            "layers_to_transform, rank/alpha patterns); retrain or re-save the adapter with those settings",
        )
    # peft saves target_modules as a set: order them as our default list does, then by name, so
    # equal configs hash equally (reuse lookups, --init-from)
    default = list(get_method("lora").config_cls.model_fields["target_modules"].default)
    order = sorted(set(tm), key=lambda t: (default.index(t) if t in default else len(default), t))
    raw = {"r": cfg.get("r"), "alpha": cfg.get("lora_alpha"), "dropout": cfg.get("lora_dropout", 0.0),
           "target_modules": order, "use_dora": bool(cfg.get("use_dora")), "use_rslora": bool(cfg.get("use_rslora")),
           "layers_to_transform": cfg.get("layers_to_transform"), "rank_pattern": cfg.get("rank_pattern") or {},
           "alpha_pattern": cfg.get("alpha_pattern") or {}}
    return get_method("lora").make_config(raw, where=where).model_dump()


def ia3_settings_from_peft(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Our `IA3Settings` (as a dict) from a peft IA3 `adapter_config.json`, or a clear XtlError."""
    from ..methods import get_method

    problems = _must_be(cfg, _IA3_MUST_BE, _IA3_NEUTRAL)
    tm = _module_list(cfg, "target_modules", problems)
    ff = _module_list(cfg, "feedforward_modules", problems, required=False)
    if cfg.get("init_ia3_weights") is False:
        log.info("%s: init_ia3_weights=false only changed how the vectors started; the saved ones are loaded", where)
    if problems:
        raise XtlError("unsupported IA3 configuration: " + "; ".join(problems), where=where,
                       fix="adapters_xtl imports IA3 on Linear layers with lists of target_modules and "
                       "feedforward_modules (no modules_to_save, fan_in_fan_out or exclude_modules)")
    default = list(get_method("ia3").config_cls.model_fields["target_modules"].default)
    key = lambda t: (default.index(t) if t in default else len(default), t)  # noqa: E731
    return get_method("ia3").make_config({"target_modules": sorted(set(tm), key=key),
                                          "feedforward_modules": sorted(set(ff), key=key)}, where=where).model_dump()


def peft_config(method_config: dict[str, Any], base_model: str | None, method: str = "lora"):
    """peft's config for one of our LoRA (`LoraConfig`) or IA3 (`IA3Config`) method configs:
    what peft must build to compute what our module computes (a PiSSA/OLoRA module as the plain
    LoRA it is stored as, see `methods.lora.stored_settings`)."""
    from ..methods import get_method

    s = get_method(method).make_config(method_config)
    if method == "ia3":
        from ..methods.ia3 import peft_ia3_config

        return peft_ia3_config(s, base_model_name_or_path=base_model, inference_mode=True)
    from ..methods.lora import peft_lora_config, stored_settings

    return peft_lora_config(stored_settings(s), init_lora_weights=True, base_model_name_or_path=base_model,
                            inference_mode=True)
