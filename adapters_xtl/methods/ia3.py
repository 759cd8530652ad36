"""(IA)^3 task modules through peft (Liu et al. 2022): learned vectors that rescale activations.

peft's IA3 multiplies the output of each targeted Linear (attention key and value) by a vector
`l`, and the *input* of each feed-forward one by a vector, all starting at 1 (the identity):
`y = l * (W x + b)` or `y = W (l * x) + b`. With several IA3 modules active peft multiplies
their vectors, so `stack` is the product `l_I * l_T` (order does not matter). `merge` is
peft's `add_weighted_adapter` for IA3: `l_M = sum_i w_i l_i` per vector (default weights 1/n),
then stacked with the target. `fuse` is refused: an IA3 module has no additive delta for a
fusion to attend over.

peft keys an IA3 vector `...key.ia3_l.<adapter>` with nothing after the adapter name, so a slot
`xtl_a_v1` would be a prefix of a slot `xtl_a_v1_eval`; the adapter is therefore named
`<slot>-ia3` inside peft ("-" never occurs in a slot name), which makes every key marker exact.
"""

from __future__ import annotations

import warnings

import torch
from pydantic import model_validator

from ..errors import XtlError
from . import register_method
from .base import Arrangement, Method, MethodConfig

_SUFFIX = "-ia3"


class IA3Settings(MethodConfig):
    # peft's default for (xlm-)roberta: key and value outputs, and the inputs of every
    # `output.dense` (the attention output and the FFN's second Linear)
    target_modules: list[str] = ["key", "value", "output.dense"]
    feedforward_modules: list[str] = ["output.dense"]

    @model_validator(mode="after")
    def _subset(self):
        if not self.target_modules:
            raise ValueError("target_modules is empty")
        extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
        if extra:
            raise ValueError(f"feedforward_modules {extra} are not in target_modules (peft requires a subset)")
        return self


def adapter_name(module: str) -> str:
    return module + _SUFFIX


def peft_ia3_config(s: IA3Settings, **kw):
    from peft import IA3Config

    return IA3Config(target_modules=list(s.target_modules), feedforward_modules=list(s.feedforward_modules),
                     init_ia3_weights=True, **kw)


class IA3Method(Method):
    name = "ia3"
    config_cls = IA3Settings
    supported_compositions = ("single", "stack", "continue", "merge")
    refusals = {"fuse": "an IA3 module multiplies activations by learned vectors; it has no additive delta for a "
                        "fusion to attend over (peft has no IA3 fusion either)",
                "language": "language modules (MAD-X) are bottleneck or LoRA modules; train the task module "
                            "with one of those methods to put it on top of them"}

    def check_composable(self, block, target_config, intermediates) -> None:
        super().check_composable(block, target_config, intermediates)
        if block.kind != "merge":
            return
        if block.how != "linear":
            raise XtlError(f"IA3 modules merge linearly only, not {block.how!r}: peft's add_weighted_adapter for IA3 "
                           "is a weighted sum of the vectors; TIES / DARE trim and re-sign task vectors (changes "
                           "from a shared start), and a product of scalings has no such vector", where="composition",
                           fix="Merge(..., how='linear')")
        want = self.make_config(target_config).model_dump()
        for man in intermediates:
            if self.make_config(man.method_config).model_dump() != want:
                raise XtlError(f"merge needs IA3 modules on the same modules: {man.name!r} is {man.method_config}, "
                               f"the target {want}", where="composition",
                               fix="the vectors are summed one by one: train them with the same target_modules "
                               "and feedforward_modules")

    def compose_merge(self, backbone, block, target, frozen, target_config) -> Arrangement:
        merged = f"{target}_merged"
        self.remove(backbone, merged)
        self.add(backbone, merged, self.make_config(target_config))
        n = len(frozen)
        weights = block.weights or [1.0 / n] * n
        with torch.no_grad():
            for layer in self._layers(backbone):
                if adapter_name(merged) not in layer.ia3_l:
                    continue
                out = layer.ia3_l[adapter_name(merged)]
                out.copy_(sum(w * layer.ia3_l[adapter_name(s)] for w, s in zip(weights, frozen)))
        return Arrangement(self, target, [merged], extra_slots=[merged])

    # -- lifecycle ---------------------------------------------------------------------------------
    def add(self, backbone, module: str, config: IA3Settings) -> None:
        from peft import inject_adapter_in_model

        from ..backbone import claim_library, fix_cpu_4bit

        claim_library(backbone, "peft-ia3")
        if any(self.key_marker(module) in n for n, _ in backbone.model.named_parameters()):
            raise XtlError(f"an ia3 module named {module!r} is already loaded")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inject_adapter_in_model(peft_ia3_config(config), backbone.model, adapter_name=adapter_name(module))
        fix_cpu_4bit(backbone)
        self.deactivate(backbone)
        dev = backbone.device
        for n, p in backbone.model.named_parameters():
            if self.key_marker(module) in n and p.device != dev:
                p.data = p.data.to(dev)

    def _layers(self, backbone):
        from peft.tuners.ia3 import IA3Layer

        return [m for m in backbone.model.modules() if isinstance(m, IA3Layer)]

    def activate(self, backbone, modules: list[str], trainable: list[str]) -> None:
        names = [adapter_name(m) for m in modules]
        for layer in self._layers(backbone):
            layer._disable_adapters = False
            layer._active_adapter = [n for n in names if n in layer.ia3_l]
        for n, p in backbone.model.named_parameters():
            if "ia3_l" in n:
                p.requires_grad_(any(self.key_marker(m) in n for m in trainable))

    def deactivate(self, backbone) -> None:
        for layer in self._layers(backbone):
            layer._active_adapter = []
        for n, p in backbone.model.named_parameters():
            if "ia3_l" in n:
                p.requires_grad_(False)

    def remove(self, backbone, module: str) -> None:
        name = adapter_name(module)
        for layer in self._layers(backbone):
            if name in layer.ia3_l:
                layer.delete_adapter(name)
            layer._active_adapter = [a for a in layer._active_adapter if a != name]

    def key_marker(self, module: str) -> str:
        # peft keys: ...attention.self.key.ia3_l.<slot>-ia3 (the key ends there)
        return f".ia3_l.{adapter_name(module)}"

    def owns(self, param_name: str) -> bool:
        return ".ia3_l." in param_name


register_method(IA3Method())
