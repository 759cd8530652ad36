"""The bench's one way to put a fresh, trainable module and a head on a backbone, shared by a
measured configuration (`run_config`) and our side of the peer comparison (`peer_compare`).

It goes through `session.ModuleSession`, the chain every training path shares.
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
    from ..session import ModuleSession

    # the bench process owns this backbone to its end (one configuration per subprocess), so the
    # session is entered and never torn down: the attach/compose/trainable chain is the shared one
    session = ModuleSession(backbone, method, method_config, slot=slot).__enter__()
    if grad_ckpt:
        enable_gradient_checkpointing(backbone)
    model = session.task_model(spec)
    return Attached(model, session.method, session.config, session.trainable())
