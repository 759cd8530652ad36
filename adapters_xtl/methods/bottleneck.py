"""Bottleneck adapters (Houlsby/Pfeiffer `seq_bn`, `double_seq_bn`) through the adapters library.

`adapters.init` turns the plain `XLMRobertaModel` into one that can hold named adapters; a
`Stack` of active adapters is sequential (MAD-X), which is what `stack` means for bottlenecks.
"""

from __future__ import annotations

import logging

from typing import Literal

from ..errors import XtlError
from . import register_method
from .base import Method, MethodConfig


class BottleneckSettings(MethodConfig):
    variant: Literal["seq_bn", "double_seq_bn"] = "seq_bn"
    reduction_factor: int = 16
    non_linearity: str = "relu"


class BottleneckMethod(Method):
    name = "bottleneck"
    config_cls = BottleneckSettings

    def _prepare(self, backbone) -> None:
        if "adapters" not in backbone.methods_prepared:
            import adapters
            from transformers.utils import logging as hf_logging

            from ..backbone import claim_library, fix_cpu_4bit

            claim_library(backbone, "adapters")
            adapters.init(backbone.model)
            # adapters logs "none are activated" on every inactive forward: expected here
            logging.getLogger("adapters").setLevel(logging.ERROR)
            hf_logging.get_logger("adapters").setLevel(logging.ERROR)
            fix_cpu_4bit(backbone)  # adapters.init replaced the Linear4bit layers
            backbone.methods_prepared.add("adapters")

    def add(self, backbone, module: str, config: BottleneckSettings) -> None:
        from adapters import DoubleSeqBnConfig, SeqBnConfig

        self._prepare(backbone)
        if module in backbone.model.adapters_config.adapters:
            raise XtlError(f"a bottleneck module named {module!r} is already loaded")
        cls = SeqBnConfig if config.variant == "seq_bn" else DoubleSeqBnConfig
        cfg = cls(reduction_factor=config.reduction_factor, non_linearity=config.non_linearity)
        backbone.model.add_adapter(module, config=cfg)
        backbone.model.train(backbone.model.training)  # new dropout layers follow the model's mode
        dev = backbone.device
        for n, p in backbone.model.named_parameters():
            if self.key_marker(module) in n:
                p.data = p.data.to(dev)
                p.requires_grad_(False)

    def activate(self, backbone, modules: list[str], trainable: list[str]) -> None:
        from adapters.composition import Stack

        self._prepare(backbone)
        setup = modules[0] if len(modules) == 1 else Stack(*modules)
        backbone.model.set_active_adapters(setup)
        for n, p in backbone.model.named_parameters():
            if ".adapters." in n or "adapter_fusion" in n:
                p.requires_grad_(any(self.key_marker(m) in n for m in trainable))

    def deactivate(self, backbone) -> None:
        if "adapters" in backbone.methods_prepared:
            backbone.model.set_active_adapters(None)
            for n, p in backbone.model.named_parameters():
                if ".adapters." in n:
                    p.requires_grad_(False)

    def remove(self, backbone, module: str) -> None:
        if "adapters" in backbone.methods_prepared and module in backbone.model.adapters_config.adapters:
            backbone.model.delete_adapter(module)

    def key_marker(self, module: str) -> str:
        # adapters keys: encoder.layer.0.output.adapters.<name>.adapter_down.0.weight
        return f".adapters.{module}."


register_method(BottleneckMethod())
