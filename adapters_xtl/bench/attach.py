"""The bench's one way to put a fresh, trainable module and a head on a backbone, shared by a
measured configuration (`run_config`) and our side of the peer comparison (`peer_compare`).

Kept apart so that the attach / head / trainable-parameters chain can be swapped for
`session.ModuleSession` in one place, without touching what is timed around it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..backbone import Backbone
from ..tasks import TaskSpec


class Attached(NamedTuple):
    model: torch.nn.Module  # TaskModel: backbone + module slot + head
    method: object  # the Method (state_dict, named_parameters of the slot)
    config: object  # the MethodConfig the slot was built with
    trainable: dict[str, torch.nn.Parameter]  # "module.*" and "head.*", requires_grad on


def _attach_for_bench(backbone: Backbone, method: str, method_config: dict, slot: str, spec: TaskSpec, *,
                      grad_ckpt: bool = False) -> Attached:
    """Attach `method` as `slot` (active, trainable), optionally switch on gradient checkpointing
    (after the method library is attached, as `enable_gradient_checkpointing` requires), build the
    task head, and collect the trainable parameters as the registry names them."""
    from ..compress import enable_gradient_checkpointing
    from ..methods import get_method
    from ..model import TaskModel, attach_new

    m = get_method(method)
    mcfg = attach_new(backbone, method, method_config, slot)
    m.activate(backbone, [slot], trainable=[slot])
    if grad_ckpt:
        enable_gradient_checkpointing(backbone)
    model = TaskModel(backbone, spec)
    trainable = {f"module.{n}": p for n, p in m.named_parameters(backbone, slot).items()}
    trainable.update({f"head.{n}": p for n, p in model.head.named_parameters()})
    for p in trainable.values():
        p.requires_grad_(True)
    return Attached(model, m, mcfg, trainable)
