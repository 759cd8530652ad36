"""A backbone with task modules loaded into it, plus one task head: what gets trained and scored.

The backbone is shared (the grid runner keeps one in memory); a `TaskModel` only owns its head.
Modules live inside the backbone under *slot* names, so the same registry module can be loaded
under a fresh slot per cell without name clashes.
"""

from __future__ import annotations

import re

import torch

from .backbone import Backbone
from .formats import get_format
from .methods import get_method
from .methods.base import MethodConfig
from .tasks import TaskSpec


def slot_name(name: str) -> str:
    """A name safe for peft/adapters module dicts (no dots)."""
    return "xtl_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


class Encoder:
    """The backbone seen as an encoder: what the formats' embedding and scoring code asks of a
    model (device, tokenizer, sizes, `encode`). `TaskModel` adds a head; studies that only embed
    text use this alone."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    @property
    def device(self):
        return self.backbone.device

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    @property
    def pad_id(self) -> int:
        return self.backbone.tokenizer.pad_token_id

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    def encode(self, batch, output_hidden_states: bool = False):
        return self.backbone.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=output_hidden_states,
        )


class TaskModel(Encoder, torch.nn.Module):
    def __init__(self, backbone: Backbone, spec: TaskSpec, head: torch.nn.Module | None = None):
        torch.nn.Module.__init__(self)
        self.backbone = backbone
        self.spec = spec
        self.format = get_format(spec.format)
        head = head if head is not None else self.format.make_head(spec, backbone.hidden_size)
        self.head = head.to(backbone.device) if head is not None else None

    def forward(self, batch):
        hidden = self.encode(batch).last_hidden_state
        return self.head(hidden.float(), batch)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.model.train(mode)  # dropout inside the encoder and the modules
        return self


def attach_new(backbone: Backbone, method: str, config: MethodConfig | dict, slot: str) -> MethodConfig:
    m = get_method(method)
    cfg = config if isinstance(config, MethodConfig) else m.make_config(config)
    m.add(backbone, slot, cfg)
    return cfg


def attach_saved(backbone: Backbone, method: str, config: dict, module_tensors: dict[str, torch.Tensor], slot: str) -> None:
    """Load a saved module's encoder weights (see `split_weights`) into a new slot.

    Adding the slot initialises it randomly before the saved weights overwrite it; that draw is
    made on a forked stream (`rng_untouched`). A grid loads an intermediate once and keeps it, so
    drawing from the seeded stream would give a cell another head (and other results) depending
    on whether an earlier cell had loaded the module already."""
    from .methods.base import rng_untouched

    m = get_method(method)
    with rng_untouched(backbone):
        m.add(backbone, slot, m.make_config(config))
    m.load_state_dict(backbone, slot, module_tensors)


def split_weights(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Registry weights are one file: `module.*` (inside the encoder) and `head.*`."""
    module = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    return module, head


def join_weights(module: dict[str, torch.Tensor], head: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    out = {f"module.{k}": v for k, v in module.items()}
    if head:
        out.update({f"head.{k}": v.detach().cpu() for k, v in head.items()})
    return out
