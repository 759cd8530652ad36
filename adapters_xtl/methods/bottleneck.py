"""Bottleneck adapters (Houlsby/Pfeiffer `seq_bn`, `double_seq_bn`) through the adapters library.

`adapters.init` turns the plain `XLMRobertaModel` into one that can hold named adapters; a
`Stack` of active adapters is sequential (MAD-X), which is what `stack` means for bottlenecks.
A language module (`variant: seq_bn_inv`, MAD-X's Pfeiffer adapter with a NICE invertible
adapter) sits first in that stack: adapters applies the invertible adapter of the *first* active
adapter to the embeddings, so `Stack(lang, ..., T)` is exactly MAD-X's setup.

`merge` is adapters' `average_adapter` with its one strategy for bottlenecks, `linear`: a new
module whose every parameter (down/up projections and their biases, in every layer) is
`sum_i w_i theta_i` (default weights 1/n; given weights are used as they are, i.e.
`normalize_weights=False`), then stacked below the target: `T(M(block(h)))`. It is defined
only for intermediates of one config (same variant, reduction factor and non-linearity: the
parameters are averaged entry by entry and the merged module needs one activation) and only
linearly (TIES / DARE trim and re-sign changes from a shared start; bottleneck modules start
from their own random down-projections, so there is none). Heads are never merged: the target
trains its own.
"""

from __future__ import annotations

import logging

from typing import Literal

from ..errors import XtlError
from . import register_method
from .base import Arrangement, Method, MethodConfig, rng_untouched


class BottleneckSettings(MethodConfig):
    # *_inv: with adapters' invertible adapter on the embeddings (MAD-X language modules)
    variant: Literal["seq_bn", "double_seq_bn", "seq_bn_inv", "double_seq_bn_inv"] = "seq_bn"
    reduction_factor: int = 16
    non_linearity: str = "relu"


class FuseArrangement(Arrangement):
    """adapters' AdapterFusion below the target: `Stack(Fuse(I_1..I_n), T)`."""

    def __init__(self, method, target: str, frozen: list[str], fusion_name: str):
        super().__init__(method, target, frozen)
        self.fusion_name = fusion_name

    def activate(self, backbone, train: bool) -> None:
        from adapters.composition import Fuse, Stack

        backbone.model.set_active_adapters(Stack(*self.below, Fuse(*self.frozen), self.target))
        own = f"adapter_fusion_layer.{self.fusion_name}."
        for n, p in backbone.model.named_parameters():
            if ".adapters." in n or "adapter_fusion_layer" in n or n.startswith("invertible_adapters."):
                p.requires_grad_(train and (self.method._own_key(n, self.target) is not None or own in n))

    def extra_parameters(self, backbone):
        own = f"adapter_fusion_layer.{self.fusion_name}."
        return {f"fusion.{n.replace(self.fusion_name, '__fusion__')}": p
                for n, p in backbone.model.named_parameters() if own in n}

    def teardown(self, backbone) -> None:
        super().teardown(backbone)
        backbone.model.delete_adapter_fusion(self.fusion_name)


class BottleneckMethod(Method):
    name = "bottleneck"
    config_cls = BottleneckSettings
    supported_compositions = ("single", "stack", "continue", "fuse", "merge", "language")

    def check_composable(self, block, target_config, intermediates) -> None:
        super().check_composable(block, target_config, intermediates)
        if block.kind != "merge":
            return
        if block.how != "linear":
            raise XtlError(f"bottleneck modules merge linearly only, not {block.how!r}: TIES / DARE trim and re-sign "
                           "task vectors (changes from a shared initialisation), and bottleneck modules start from "
                           "their own random down-projections (adapters offers only 'linear' for them too)",
                           where="composition", fix="Merge(..., how='linear')")
        configs = {}
        for man in intermediates:
            configs.setdefault(repr(sorted(self.make_config(man.method_config).model_dump().items())), []).append(
                f"{man.name} {man.method_config}")
        if len(configs) > 1:
            raise XtlError("merge averages bottleneck modules parameter by parameter, so they need one config "
                           "(variant, reduction_factor, non_linearity); these differ: " +
                           "; ".join(v[0] for v in configs.values()), where="composition",
                           fix="merge modules trained with the same method_config (adapters' average_adapter "
                           "refuses different configs too), or fuse them")

    def compose_merge(self, backbone, block, target, frozen, target_config):
        """adapters' linear `average_adapter`, parameter by parameter, then `Stack(merged, T)`."""
        import torch

        merged = f"{target}_merged"
        self.remove(backbone, merged)
        config = self._config_of(backbone, frozen[0])
        self.add(backbone, merged, config)
        n = len(frozen)
        weights = block.weights or [1.0 / n] * n
        states = [self.state_dict(backbone, s) for s in frozen]
        avg = {k: sum(w * st[k].float() for w, st in zip(weights, states)) for k in states[0]}
        own = self.named_parameters(backbone, merged)
        if set(own) != set(avg):
            raise XtlError("the intermediates' bottleneck layers differ", where="composition",
                           fix="merge modules trained with the same method_config on this backbone")
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(avg[k].to(p.device, p.dtype))
        return Arrangement(self, target, [merged], extra_slots=[merged])

    def _config_of(self, backbone, slot: str) -> BottleneckSettings:
        return backbone.__dict__.get("_xtl_bottleneck", {})[slot]

    def compose_fuse(self, backbone, block, target, frozen, target_config):
        from adapters.composition import Fuse

        name = ",".join(frozen)
        if name not in backbone.model.adapters_config.fusions:
            backbone.model.add_adapter_fusion(Fuse(*frozen))
        for n, p in backbone.model.named_parameters():
            if "adapter_fusion_layer" in n:
                p.data = p.data.to(backbone.device)
        backbone.model.train(backbone.model.training)
        return FuseArrangement(self, target, frozen, name)

    def _prepare(self, backbone) -> None:
        if "adapters" not in backbone.methods_prepared:
            import adapters
            from transformers.utils import logging as hf_logging

            from ..backbone import claim_library, fix_cpu_4bit

            claim_library(backbone, "adapters")
            with rng_untouched(backbone):  # init draws; which module triggers it must not matter
                adapters.init(backbone.model)
            # adapters logs "none are activated" on every inactive forward: expected here
            logging.getLogger("adapters").setLevel(logging.ERROR)
            hf_logging.get_logger("adapters").setLevel(logging.ERROR)
            fix_cpu_4bit(backbone)  # adapters.init replaced the Linear4bit layers
            backbone.methods_prepared.add("adapters")

    def add(self, backbone, module: str, config: BottleneckSettings) -> None:
        from adapters import DoubleSeqBnConfig, DoubleSeqBnInvConfig, SeqBnConfig, SeqBnInvConfig

        self._prepare(backbone)
        if module in backbone.model.adapters_config.adapters:
            raise XtlError(f"a bottleneck module named {module!r} is already loaded")
        cls = {"seq_bn": SeqBnConfig, "double_seq_bn": DoubleSeqBnConfig, "seq_bn_inv": SeqBnInvConfig,
               "double_seq_bn_inv": DoubleSeqBnInvConfig}[config.variant]
        cfg = cls(reduction_factor=config.reduction_factor, non_linearity=config.non_linearity)
        backbone.model.add_adapter(module, config=cfg)
        backbone.__dict__.setdefault("_xtl_bottleneck", {})[module] = config
        backbone.model.train(backbone.model.training)  # new dropout layers follow the model's mode
        dev = backbone.device
        for n, p in backbone.model.named_parameters():
            if self._own_key(n, module) is not None:
                p.data = p.data.to(dev)
                p.requires_grad_(False)

    def activate(self, backbone, modules: list[str], trainable: list[str]) -> None:
        from adapters.composition import Stack

        self._prepare(backbone)
        setup = modules[0] if len(modules) == 1 else Stack(*modules)
        backbone.model.set_active_adapters(setup)
        for n, p in backbone.model.named_parameters():
            if ".adapters." in n or "adapter_fusion" in n or n.startswith("invertible_adapters."):
                p.requires_grad_(any(self._own_key(n, m) is not None for m in trainable))

    def deactivate(self, backbone) -> None:
        if "adapters" in backbone.methods_prepared:
            backbone.model.set_active_adapters(None)
            for n, p in backbone.model.named_parameters():
                if ".adapters." in n or n.startswith("invertible_adapters."):
                    p.requires_grad_(False)

    def inverse_embedding_transform(self, backbone):
        """adapters' inverse of the first active adapter's invertible adapter (identity when it
        has none), as its own LM heads apply it before the output embeddings."""
        if "adapters" not in backbone.methods_prepared or not hasattr(backbone.model, "invertible_adapters_forward"):
            return None
        return lambda h: backbone.model.invertible_adapters_forward(h, rev=True)

    def remove(self, backbone, module: str) -> None:
        if "adapters" in backbone.methods_prepared and module in backbone.model.adapters_config.adapters:
            backbone.model.delete_adapter(module)
        backbone.__dict__.get("_xtl_bottleneck", {}).pop(module, None)

    def key_marker(self, module: str) -> str:
        # adapters keys: encoder.layer.0.output.adapters.<name>.adapter_down.0.weight
        return f".adapters.{module}."

    def key_markers(self, module: str) -> list[str]:
        # a *_inv module's invertible adapter: invertible_adapters.<name>.F.0.weight
        return [self.key_marker(module), f"invertible_adapters.{module}."]

    def _own_key(self, key: str, module: str) -> str | None:
        if key.startswith("invertible_adapters."):
            marker = f"invertible_adapters.{module}."
            return key.replace(marker, "invertible_adapters.__module__.", 1) if key.startswith(marker) else None
        return super()._own_key(key, module)


register_method(BottleneckMethod())
