"""LoRA task modules through peft, injected in place into the backbone's encoder, with peft's
variants: DoRA (`use_dora`), rsLoRA (`use_rslora`), PiSSA / OLoRA initialisation
(`init_lora_weights`), `layers_to_transform`, `rank_pattern` and `alpha_pattern`.

Several LoRA modules can be active at once; peft then *adds* their deltas
(W x + sum_i B_i A_i x * alpha_i / r_i). That sum is what `stack` means for LoRA here; a DoRA
module's delta is `m / ||W + sBA||_c * (W + sBA) x - W x` (lora_variants.py keeps peft from
folding one module's output into the next one's rescaling).

The backbone is shared and frozen, so PiSSA and OLoRA, which peft implements by subtracting the
initial `s B0 A0` from the base weight, are carried out without touching it: a fresh module
keeps that subtraction in a frozen companion (lora_variants.py) and is saved, as peft's own
`path_initial_model_for_weight_conversion` saves it, as a plain LoRA of rank 2r (`stored_settings`).
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

from pydantic import field_validator, model_serializer, model_validator

from ..errors import XtlError
from . import register_method
from .base import Method, MethodConfig

# fields added with peft's variants: left out of the dict form while at their defaults, so a
# plain LoRA config (and every manifest, cache key and recipe hash made from it) stays as it was
_VARIANT_DEFAULTS: dict[str, Any] = {"use_dora": False, "use_rslora": False, "init_lora_weights": True,
                                     "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}}
_PISSA_NITER = re.compile(r"^pissa_niter_[1-9][0-9]*$")


def _num(x):
    """16.0 -> 16 (so a config's JSON, and every hash of it, does not depend on how alpha was typed)."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def is_residual_init(init: Any) -> bool:
    """PiSSA / OLoRA: initialisations that peft carries out by changing the base weight."""
    return isinstance(init, str) and (init == "pissa" or init == "olora" or bool(_PISSA_NITER.match(init)))


class LoraSettings(MethodConfig):
    r: int = 8
    alpha: int | float = 16
    dropout: float = 0.1
    # every Linear of XLM-R's blocks: attention q/k/v, attention output, FFN in and out
    target_modules: list[str] = ["query", "key", "value", "dense"]
    use_dora: bool = False
    use_rslora: bool = False  # scaling alpha / sqrt(r) instead of alpha / r
    init_lora_weights: bool | str = True  # True (kaiming A, zero B) | gaussian | pissa | pissa_niter_<n> | olora
    layers_to_transform: list[int] | None = None  # transformer layers to adapt (default: all)
    rank_pattern: dict[str, int] = {}  # peft's: module-name pattern -> rank for the matching modules
    alpha_pattern: dict[str, int | float] = {}  # peft's: module-name pattern -> alpha

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v):
        return _num(v)

    @field_validator("init_lora_weights")
    @classmethod
    def _init(cls, v):
        if v is True or v == "gaussian" or is_residual_init(v):
            return v
        raise ValueError(f"init_lora_weights={v!r} is not offered: use true, 'gaussian', 'pissa', "
                         "'pissa_niter_<n>' or 'olora'")

    @field_validator("layers_to_transform", mode="before")
    @classmethod
    def _layers(cls, v):
        if v is None:
            return None
        v = [v] if isinstance(v, int) and not isinstance(v, bool) else v
        if not isinstance(v, (list, tuple)) or not v or any(not isinstance(i, int) or isinstance(i, bool) or i < 0
                                                            for i in v):
            raise ValueError("layers_to_transform takes layer indices (integers >= 0), e.g. [8, 9, 10, 11]")
        return sorted(set(v))

    @field_validator("rank_pattern", "alpha_pattern")
    @classmethod
    def _patterns(cls, v, info):
        for key, value in v.items():
            if not key:
                raise ValueError(f"{info.field_name} has an empty pattern")
            try:
                re.compile(key)
            except re.error as e:
                raise ValueError(f"{info.field_name} pattern {key!r} is not a regular expression ({e})") from None
            if not value > 0 or (info.field_name == "rank_pattern" and value != int(value)):
                raise ValueError(f"{info.field_name}[{key!r}] = {value!r}: must be a positive "
                                 f"{'integer' if info.field_name == 'rank_pattern' else 'number'}")
        return v

    @model_validator(mode="after")
    def _combinations(self):
        if self.use_dora and is_residual_init(self.init_lora_weights):
            raise ValueError(f"use_dora with init_lora_weights={self.init_lora_weights!r} is not offered: DoRA's "
                             "magnitude is the norm of the base weight plus this module's delta, and PiSSA/OLoRA "
                             "would need the shared backbone's weight replaced by its residual")
        return self

    @model_serializer(mode="wrap")
    def _drop_variant_defaults(self, handler):
        data = handler(self)
        for key, default in _VARIANT_DEFAULTS.items():
            if key in data and data[key] == default and type(data[key]) is type(default):
                del data[key]
        return data

    def scaling_for(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def stored_settings(s: LoraSettings) -> LoraSettings:
    """The plain LoRA a module of these settings is saved as (and exported to peft as).

    A PiSSA / OLoRA module trains `s (B A - B0 A0)` on top of the unchanged base weight; stored,
    that is `[B | -B0] [A ; A0]`, a LoRA of rank 2r with the same scaling (alpha doubled, or
    times sqrt(2) under rsLoRA), exactly the conversion peft's `save_pretrained(...,
    path_initial_model_for_weight_conversion=...)` writes. Any other module is stored as it is.
    """
    if not is_residual_init(s.init_lora_weights):
        return s
    k = math.sqrt(2) if s.use_rslora else 2
    return s.model_copy(update={
        "r": 2 * s.r, "alpha": _num(s.alpha * k), "init_lora_weights": True,
        "rank_pattern": {p: 2 * v for p, v in s.rank_pattern.items()},
        "alpha_pattern": {p: _num(v * k) for p, v in s.alpha_pattern.items()},
    })


def peft_lora_config(s: LoraSettings, **overrides):
    """peft's `LoraConfig` for our settings (residual initialisations are done lazily, so peft
    itself always starts a module with its default initialisation)."""
    from peft import LoraConfig

    init = s.init_lora_weights if not is_residual_init(s.init_lora_weights) else True
    kw = dict(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.target_modules), bias="none",
              use_dora=s.use_dora, use_rslora=s.use_rslora, init_lora_weights=init,
              layers_to_transform=list(s.layers_to_transform) if s.layers_to_transform is not None else None,
              rank_pattern=dict(s.rank_pattern), alpha_pattern=dict(s.alpha_pattern))
    kw.update(overrides)
    return LoraConfig(**kw)


class LoraMethod(Method):
    name = "lora"
    config_cls = LoraSettings
    supported_compositions = ("single", "stack", "continue", "fuse", "merge", "language")

    def check_composable(self, block, target_config, intermediates) -> None:
        super().check_composable(block, target_config, intermediates)
        if block.kind in ("fuse", "merge"):
            for man in intermediates:
                if man.method_config.get("target_modules") != target_config.get("target_modules"):
                    raise XtlError(f"{block.kind} needs LoRA modules on the same layers: {man.name!r} targets "
                                   f"{man.method_config.get('target_modules')}, the target {target_config.get('target_modules')}",
                                   where="composition", fix="train them with the same target_modules")
        if block.kind == "fuse":
            layers = {str(man.method_config.get("layers_to_transform")) for man in intermediates}
            if len(layers) > 1:
                raise XtlError(f"fuse needs intermediates that adapt the same layers; their layers_to_transform "
                               f"differ ({', '.join(sorted(layers))})", where="composition",
                               fix="fusion attends over every intermediate's delta in each adapted layer: train "
                               "them with the same layers_to_transform (or merge them, which treats a missing "
                               "layer as a zero delta)")
        if block.kind == "merge":
            dora = [man.name for man in intermediates if man.method_config.get("use_dora")]
            if dora:
                raise XtlError(
                    f"cannot merge DoRA modules ({', '.join(dora)}): a DoRA module rescales every output row of W "
                    "by its magnitude vector, so its delta m/||W+sBA|| (W+sBA) - W is a full-rank matrix, and "
                    "neither a weighted sum of those deltas nor one of their magnitude vectors and A/B matrices "
                    "is a DoRA (or low-rank) module that computes the merge",
                    where="composition", fix="merge plain LoRA / rsLoRA modules; DoRA modules can be stacked, "
                    "fused or continued")

    def compose_fuse(self, backbone, block, target, frozen, target_config):
        from .lora_compose import compose_fuse

        return compose_fuse(self, backbone, block, target, frozen)

    def compose_merge(self, backbone, block, target, frozen, target_config):
        from .lora_compose import compose_merge

        return compose_merge(self, backbone, block, target, frozen, target_config.get("target_modules"))

    # -- lifecycle ---------------------------------------------------------------------------------
    def add(self, backbone, module: str, config: LoraSettings) -> None:
        from ..backbone import claim_library
        from . import lora_variants as V

        claim_library(backbone, "peft")
        if any(self.key_marker(module) in n for n, _ in backbone.model.named_parameters()):
            raise XtlError(f"a lora module named {module!r} is already loaded")
        V.check_settings_fit(backbone, config)
        self._inject(backbone, module, peft_lora_config(config))
        V.state(backbone)["settings"][module] = config
        if is_residual_init(config.init_lora_weights):
            # the frozen companion that will hold -s B0 A0; no dropout, so that the pair computes
            # exactly peft's W_res x + s B A dropout(x)
            self._inject(backbone, V.companion(module), peft_lora_config(config, lora_dropout=0.0))
            V.state(backbone)["pending"].add(module)

    def _inject(self, backbone, name: str, cfg) -> None:
        from peft import inject_adapter_in_model

        from ..backbone import fix_cpu_4bit

        with warnings.catch_warnings():  # "multiple adapters in the model": that is the point
            warnings.simplefilter("ignore")
            inject_adapter_in_model(cfg, backbone.model, adapter_name=name)
        fix_cpu_4bit(backbone)
        backbone.model.train(backbone.model.training)  # new dropout layers follow the model's mode
        # peft leaves the new adapter trainable and active; we decide that in activate()
        self.deactivate(backbone)
        dev = backbone.device
        for n, p in backbone.model.named_parameters():
            if f".{name}." in n and p.device != dev:
                p.data = p.data.to(dev)

    def _layers(self, backbone):
        from peft.tuners.lora import LoraLayer

        return [m for m in backbone.model.modules() if isinstance(m, LoraLayer)]

    def activate(self, backbone, modules: list[str], trainable: list[str]) -> None:
        from . import lora_variants as V

        V.remove_hooks(backbone)
        for m in trainable:
            V.initialise_if_pending(backbone, m)
        names = V.with_companions(backbone, modules)
        for layer in self._layers(backbone):
            layer._disable_adapters = False
            V.set_active(backbone, layer, names)
        for n, p in backbone.model.named_parameters():
            if "lora_" in n:
                p.requires_grad_(any(self.key_marker(m) in n for m in trainable))

    def deactivate(self, backbone) -> None:
        from . import lora_variants as V

        V.remove_hooks(backbone)
        for layer in self._layers(backbone):
            layer._active_adapter = []
        for n, p in backbone.model.named_parameters():
            if "lora_" in n:
                p.requires_grad_(False)

    def remove(self, backbone, module: str) -> None:
        from . import lora_variants as V

        for name in (module, V.companion(module)):
            for layer in self._layers(backbone):
                if name in layer.lora_A:
                    layer.delete_adapter(name)
                layer._active_adapter = [a for a in layer._active_adapter if a != name]
        V.forget(backbone, module)

    def key_marker(self, module: str) -> str:
        # peft keys: ...query.lora_A.<name>.weight / ...query.lora_B.<name>.weight
        # (/ ...query.lora_magnitude_vector.<name>.weight for DoRA)
        return f".{module}."

    def owns(self, param_name: str) -> bool:
        return "lora_" in param_name

    # -- weights -----------------------------------------------------------------------------------
    def state_dict(self, backbone, module: str):
        from . import lora_variants as V

        out = super().state_dict(backbone, module)
        if V.has_companion(backbone, module):
            out = V.stored_form(out, super().state_dict(backbone, V.companion(module)))
        return out

    def load_state_dict(self, backbone, module: str, tensors) -> None:
        from . import lora_variants as V

        if V.has_companion(backbone, module):
            # saved weights are the stored (plain, rank 2r) form: the slot becomes that LoRA
            settings = V.state(backbone)["settings"][module]
            self.remove(backbone, module)
            self._inject(backbone, module, peft_lora_config(stored_settings(settings)))
            V.state(backbone)["settings"][module] = settings
        super().load_state_dict(backbone, module, tensors)


register_method(LoraMethod())
