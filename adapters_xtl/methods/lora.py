"""LoRA task modules through peft, injected in place into the backbone's encoder.

Several LoRA modules can be active at once; peft then *adds* their deltas
(W x + sum_i B_i A_i x * alpha_i / r_i). That sum is what `stack` means for LoRA here.
"""

from __future__ import annotations

import warnings

from ..errors import XtlError
from . import register_method
from .base import Method, MethodConfig


class LoraSettings(MethodConfig):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    # every Linear of XLM-R's blocks: attention q/k/v, attention output, FFN in and out
    target_modules: list[str] = ["query", "key", "value", "dense"]


class LoraMethod(Method):
    name = "lora"
    config_cls = LoraSettings
    supported_compositions = ("single", "stack", "continue", "fuse", "merge")

    def check_composable(self, block, target_config, intermediates) -> None:
        super().check_composable(block, target_config, intermediates)
        if block.kind in ("fuse", "merge"):
            for man in intermediates:
                if man.method_config.get("target_modules") != target_config.get("target_modules"):
                    raise XtlError(f"{block.kind} needs LoRA modules on the same layers: {man.name!r} targets "
                                   f"{man.method_config.get('target_modules')}, the target {target_config.get('target_modules')}",
                                   where="composition", fix="train them with the same target_modules")

    def compose_fuse(self, backbone, block, target, frozen, target_config):
        from .lora_compose import compose_fuse

        return compose_fuse(self, backbone, block, target, frozen)

    def compose_merge(self, backbone, block, target, frozen, target_config):
        from .lora_compose import compose_merge

        return compose_merge(self, backbone, block, target, frozen, target_config.get("target_modules"))

    def add(self, backbone, module: str, config: LoraSettings) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        from ..backbone import claim_library, fix_cpu_4bit

        claim_library(backbone, "peft")
        if any(self.key_marker(module) in n for n, _ in backbone.model.named_parameters()):
            raise XtlError(f"a lora module named {module!r} is already loaded")
        cfg = LoraConfig(
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules),
            bias="none",
        )
        with warnings.catch_warnings():  # "multiple adapters in the model": that is the point
            warnings.simplefilter("ignore")
            inject_adapter_in_model(cfg, backbone.model, adapter_name=module)
        fix_cpu_4bit(backbone)
        backbone.model.train(backbone.model.training)  # new dropout layers follow the model's mode
        # peft leaves the new adapter trainable and active; we decide that in activate()
        self.deactivate(backbone)
        dev = backbone.device
        for n, p in backbone.model.named_parameters():
            if self.key_marker(module) in n and p.device != dev:
                p.data = p.data.to(dev)

    def _layers(self, backbone):
        from peft.tuners.lora import LoraLayer

        return [m for m in backbone.model.modules() if isinstance(m, LoraLayer)]

    def activate(self, backbone, modules: list[str], trainable: list[str]) -> None:
        for layer in self._layers(backbone):
            layer._disable_adapters = False
            layer._active_adapter = list(modules)
        for n, p in backbone.model.named_parameters():
            if "lora_" in n:
                p.requires_grad_(any(self.key_marker(m) in n for m in trainable))

    def deactivate(self, backbone) -> None:
        for layer in self._layers(backbone):
            layer._active_adapter = []
        for n, p in backbone.model.named_parameters():
            if "lora_" in n:
                p.requires_grad_(False)

    def remove(self, backbone, module: str) -> None:
        for layer in self._layers(backbone):
            if module in layer.lora_A:
                layer.delete_adapter(module)
            layer._active_adapter = [a for a in layer._active_adapter if a != module]

    def key_marker(self, module: str) -> str:
        # peft keys: ...query.lora_A.<name>.weight / ...query.lora_B.<name>.weight
        return f".{module}."

    def owns(self, param_name: str) -> bool:
        return "lora_" in param_name


register_method(LoraMethod())
