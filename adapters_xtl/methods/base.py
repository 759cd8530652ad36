"""The one protocol every task-module method implements.

Modules live *inside* the backbone's encoder, under their own names, so several can coexist on
one loaded backbone (the grid runner swaps them instead of reloading). Weights leave the model
through `state_dict`, with the module's own name replaced by a placeholder, so a module saved as
`sst2-lora` can be loaded back under any name.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import XtlError

PLACEHOLDER = "__module__"


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Method:
    """Base class; subclasses implement the hooks below."""

    name: str = ""
    config_cls: type[MethodConfig] = MethodConfig

    # -- configuration -------------------------------------------------------------------------
    def make_config(self, raw: dict[str, Any] | None, where: str = "method_config") -> MethodConfig:
        try:
            return self.config_cls(**(raw or {}))
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(x) for x in first["loc"])
            raise XtlError(
                f"invalid {self.name} setting {field!r}: {first['msg']}",
                where=where,
                fix=f"valid {self.name} fields: {', '.join(self.config_cls.model_fields)}",
            ) from None

    # -- lifecycle on a loaded backbone -------------------------------------------------------
    def add(self, backbone, module: str, config: MethodConfig) -> None:
        raise NotImplementedError

    def activate(self, backbone, modules: list[str], trainable: list[str]) -> None:
        """Make `modules` take part in the forward pass; only `trainable` get gradients."""
        raise NotImplementedError

    def deactivate(self, backbone) -> None:
        raise NotImplementedError

    def remove(self, backbone, module: str) -> None:
        raise NotImplementedError

    def key_marker(self, module: str) -> str:
        """Substring that identifies a parameter of `module` in the encoder's state dict."""
        raise NotImplementedError

    # -- weights -----------------------------------------------------------------------------
    def state_dict(self, backbone, module: str) -> dict[str, torch.Tensor]:
        marker = self.key_marker(module)
        generic = self.key_marker(PLACEHOLDER)
        out = {}
        for k, v in backbone.model.state_dict().items():
            if marker in k and self.owns(k):
                out[k.replace(marker, generic)] = v.detach().cpu().clone()
        if not out:
            raise XtlError(f"module {module!r} has no {self.name} weights in this backbone")
        return out

    def load_state_dict(self, backbone, module: str, tensors: dict[str, torch.Tensor]) -> None:
        marker = self.key_marker(module)
        generic = self.key_marker(PLACEHOLDER)
        own = {k.replace(generic, marker): v for k, v in tensors.items()}
        current = backbone.model.state_dict()
        missing = [k for k in current if marker in k and self.owns(k) and k not in own]
        unexpected = [k for k in own if k not in current]
        if missing or unexpected:
            raise XtlError(
                f"weights do not fit a {self.name} module of this config "
                f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})",
                where=f"module {module!r}",
                fix="load it with the method_config it was trained with (see its manifest.json)",
            )
        for k, v in own.items():
            if current[k].shape != v.shape:
                raise XtlError(
                    f"weight {k} has shape {tuple(v.shape)}, the model expects {tuple(current[k].shape)}",
                    where=f"module {module!r}",
                    fix="the module was trained with another config or backbone size",
                )
        backbone.model.load_state_dict(own, strict=False)

    def owns(self, param_name: str) -> bool:
        """Whether a parameter name belongs to this method (markers alone can be ambiguous)."""
        return True

    def named_parameters(self, backbone, module: str) -> dict[str, torch.nn.Parameter]:
        """The module's parameters, keyed as in `state_dict` (module name -> placeholder)."""
        marker, generic = self.key_marker(module), self.key_marker(PLACEHOLDER)
        return {
            n.replace(marker, generic): p
            for n, p in backbone.model.named_parameters()
            if marker in n and self.owns(n)
        }


def count_parameters(params) -> int:
    return sum(p.numel() for p in params)
