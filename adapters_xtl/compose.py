"""Compositions: how frozen intermediate modules and a trainable target module combine.

A composition is a small validated tree, serialised as JSON into the target module's manifest
and into the key of every grid cell. What each kind computes, per method (h: the input of an
adapted layer or block, W: the frozen base weight, T: the target module, I_1..I_n: frozen
intermediate modules, all deltas scaled as their method scales them):

`single`   no intermediate.                 LoRA: W h + dT h        bottleneck: T(block(h))
`stack`    frozen intermediates below T.    LoRA: W h + sum_i dI_i h + dT h   (peft sums active
           LoRAs; adapters' LoRA Stack would chain them: we do not)
                                            bottleneck: T(I_n(...I_1(block(h))))  (MAD-X, Stack)
`fuse`     learned attention over frozen intermediates, plus T.
           LoRA (ours; no library has it), per adapted Linear and per token:
             d_i = dI_i h,  q = h Wq,  k_i = d_i Wk,  a = softmax_i(q . k_i / sqrt(r_f)),
             out = W h + sum_i a_i d_i + dT h          (Wk starts at 0: a starts uniform)
           bottleneck: AdapterFusion (adapters `Fuse`) below T: T(Fuse(I_1..I_n)(block(h)))
`merge`    LoRA only: dM = merge({dI_i}) per layer (linear = weighted sum; ties / dare_linear /
           dare_ties from peft's merge_utils over the full deltas), stored as a LoRA of rank
           sum(r_i) by truncated SVD (exact for linear), then stacked: W h + dM h + dT h.
`continue` STILTs: T starts as a copy of I_1 (same method and config), nothing stacked.

Multi-task intermediate modules (one module trained on a mix of tasks) are made by
`multitask.py`; to a composition they are ordinary intermediate modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import XtlError
from .methods import get_method

KINDS = ("single", "stack", "fuse", "merge", "continue")


class MergeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    how: Literal["linear", "ties", "dare_linear", "dare_ties"] = "linear"
    weights: list[float] | None = None  # default: 1/n each
    density: float = 0.5  # ties/dare: share of entries kept
    seed: int = 0  # dare drops at random


class Composition(BaseModel):
    """A validated composition; `modules` are registry names of intermediate modules."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["single", "stack", "fuse", "merge", "continue"] = "single"
    modules: list[str] = Field(default_factory=list)
    merge: MergeSpec | None = None
    fusion_rank: int = 16  # r_f of the LoRA fusion's query/key projections

    @model_validator(mode="after")
    def _check(self):
        n = len(self.modules)
        if self.kind == "single" and n:
            raise ValueError("`single` takes no intermediate modules")
        if self.kind in ("stack", "continue") and n < 1:
            raise ValueError(f"`{self.kind}` needs at least one intermediate module")
        if self.kind == "continue" and n != 1:
            raise ValueError("`continue` starts from exactly one intermediate module")
        if self.kind in ("fuse", "merge") and n < 2:
            raise ValueError(f"`{self.kind}` needs two or more intermediate modules")
        if self.kind == "merge" and self.merge is None:
            self.merge = MergeSpec()
        if self.kind != "merge" and self.merge is not None:
            raise ValueError("`merge` settings are only valid for kind: merge")
        if self.merge and self.merge.weights and len(self.merge.weights) != n:
            raise ValueError(f"merge.weights has {len(self.merge.weights)} entries for {n} modules")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(exclude_none=True)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Composition":
        return cls(**(d or {"kind": "single"}))


# ------------------------------------------------------------------------------- LoRA fusion
class LoraFusion(torch.nn.Module):
    """Per-layer, per-token attention over frozen LoRA deltas (see the module docstring).

    Forward hooks on every peft LoRA layer add sum_i a_i d_i to the layer's output; the frozen
    intermediates themselves stay *inactive* in peft, so peft adds only the target's delta.
    """

    def __init__(self, layers: dict[str, torch.nn.Module], slots: list[str], rank: int = 16):
        super().__init__()
        self.slots = list(slots)
        self.rank = rank
        self.q = torch.nn.ParameterDict()
        self.k = torch.nn.ParameterDict()
        self._layers = layers
        g = torch.Generator().manual_seed(0)
        for key, layer in layers.items():
            a = layer.lora_A[slots[0]]
            b = layer.lora_B[slots[0]]
            d_in, d_out = a.in_features, b.out_features
            self.q[key] = torch.nn.Parameter(torch.randn(d_in, rank, generator=g) / math.sqrt(d_in))
            self.k[key] = torch.nn.Parameter(torch.zeros(d_out, rank))
        self._handles = []

    @staticmethod
    def layer_key(name: str) -> str:
        return name.replace(".", "__")

    def deltas(self, layer, x: torch.Tensor) -> torch.Tensor:
        """Stacked frozen deltas d_i, shape (n, ..., d_out)."""
        out = []
        for s in self.slots:
            a, b = layer.lora_A[s], layer.lora_B[s]
            xin = x.to(a.weight.dtype)
            out.append(b(a(layer.lora_dropout[s](xin))) * layer.scaling[s])
        return torch.stack(out)

    def mix(self, key: str, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        q = x.to(self.q[key].dtype) @ self.q[key]  # (..., r)
        k = d.to(self.k[key].dtype) @ self.k[key]  # (n, ..., r)
        scores = (k * q.unsqueeze(0)).sum(-1) / math.sqrt(self.rank)  # (n, ...)
        a = torch.softmax(scores, dim=0).unsqueeze(-1)
        return (a * d).sum(0)

    def attach(self) -> None:
        self.detach()
        for key, layer in self._layers.items():
            def hook(mod, args, output, key=key):
                x = args[0]
                return output + self.mix(key, x, self.deltas(mod, x)).to(output.dtype)

            self._handles.append(layer.register_forward_hook(hook))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def lora_layers(backbone, slot: str) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {LoraFusion.layer_key(n): m for n, m in backbone.model.named_modules()
            if isinstance(m, LoraLayer) and slot in m.lora_A}


# ------------------------------------------------------------------------------- LoRA merge
def merge_lora(backbone, slots: list[str], spec: MergeSpec, new_slot: str, target_modules: list[str]) -> int:
    """Merge the deltas of `slots` layer by layer into a new LoRA module `new_slot`; return its rank."""
    from peft.utils import merge_utils

    from .methods.lora import LoraSettings

    layers = lora_layers(backbone, slots[0])
    rank = 0
    for layer in layers.values():
        rank = max(rank, sum(layer.r[s] for s in slots))
    get_method("lora").add(backbone, new_slot, LoraSettings(r=rank, alpha=rank, dropout=0.0,
                                                            target_modules=list(target_modules)))
    n = len(slots)
    weights = torch.tensor(spec.weights or [1.0 / n] * n)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(spec.seed)
    try:
        with torch.no_grad():
            for name, layer in lora_layers(backbone, new_slot).items():
                deltas = [(layer.lora_B[s].weight @ layer.lora_A[s].weight).float() * layer.scaling[s] for s in slots]
                if spec.how == "linear":
                    merged = merge_utils.task_arithmetic(deltas, weights)
                elif spec.how == "ties":
                    merged = merge_utils.ties(deltas, weights, spec.density)
                elif spec.how == "dare_linear":
                    merged = merge_utils.dare_linear(deltas, weights, spec.density)
                else:
                    merged = merge_utils.dare_ties(deltas, weights, spec.density)
                U, S, Vh = torch.linalg.svd(merged, full_matrices=False)
                r = layer.r[new_slot]
                sq = S[:r].sqrt()
                layer.lora_B[new_slot].weight.copy_((U[:, :r] * sq).to(layer.lora_B[new_slot].weight.dtype))
                layer.lora_A[new_slot].weight.copy_((sq[:, None] * Vh[:r]).to(layer.lora_A[new_slot].weight.dtype))
    finally:
        torch.random.set_rng_state(gen_state)
    return rank


# ------------------------------------------------------------------------------- set-up
@dataclass
class ComposedState:
    """What a composition put into the backbone around the target slot."""

    comp: Composition
    method: str
    target: str
    frozen: list[str] = field(default_factory=list)  # slots active below the target
    fusion: torch.nn.Module | None = None
    fusion_name: str | None = None  # adapters' fusion layer name
    extra_slots: list[str] = field(default_factory=list)  # slots this composition created

    def activate(self, backbone, train: bool) -> None:
        m = get_method(self.method)
        trainable = [self.target] if train else []
        if self.method == "bottleneck" and self.comp.kind == "fuse":
            from adapters.composition import Fuse, Stack

            backbone.model.set_active_adapters(Stack(Fuse(*self.frozen), self.target))
            for n, p in backbone.model.named_parameters():
                if ".adapters." in n or "adapter_fusion_layer" in n:
                    p.requires_grad_(train and (m.key_marker(self.target) in n or f"adapter_fusion_layer.{self.fusion_name}." in n))
            return
        # LoRA fusion mixes the frozen deltas itself (hooks); peft adds only the target's
        active = [self.target] if self.fusion is not None else self.frozen + [self.target]
        m.activate(backbone, active, trainable=trainable)
        if self.fusion is not None:
            self.fusion.attach()
            for p in self.fusion.parameters():
                p.requires_grad_(train)

    def deactivate(self, backbone) -> None:
        get_method(self.method).deactivate(backbone)
        if self.fusion is not None:
            self.fusion.detach()

    def extra_parameters(self, backbone) -> dict[str, torch.nn.Parameter]:
        """Trainable parameters besides the target module (fusion), keyed for saving."""
        if self.fusion is not None:
            return {f"fusion.{n}": p for n, p in self.fusion.named_parameters()}
        if self.fusion_name:
            return {f"fusion.{n.replace(self.fusion_name, '__fusion__')}": p
                    for n, p in backbone.model.named_parameters() if f"adapter_fusion_layer.{self.fusion_name}." in n}
        return {}

    def load_extra(self, backbone, tensors: dict[str, torch.Tensor]) -> None:
        params = self.extra_parameters(backbone)
        missing = sorted(set(params) - set(tensors))
        if missing:
            raise XtlError(f"fusion weights missing from the module ({len(missing)}, e.g. {missing[:2]})",
                           where="composition", fix="the module was saved by another version of the composition")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(tensors[k].to(p.device, p.dtype))

    def teardown(self, backbone) -> None:
        self.deactivate(backbone)
        m = get_method(self.method)
        if self.fusion_name:
            backbone.model.delete_adapter_fusion(self.fusion_name)
        for s in self.extra_slots:
            m.remove(backbone, s)


def setup(backbone, comp: Composition, method: str, target_slot: str, frozen_slots: list[str],
          target_modules: list[str] | None = None) -> ComposedState:
    """Arrange already-loaded frozen modules (`frozen_slots`, in `comp.modules` order) around the
    target slot. `continue` is handled by the caller (weights copied into the target)."""
    state = ComposedState(comp=comp, method=method, target=target_slot)
    if comp.kind in ("single", "continue"):
        return state
    if comp.kind == "stack":
        state.frozen = list(frozen_slots)
    elif comp.kind == "merge":
        if method != "lora":
            raise XtlError("merge is defined for lora modules only", where="composition",
                           fix="use stack or fuse with bottleneck modules")
        merged = f"{target_slot}_merged"
        get_method("lora").remove(backbone, merged)
        merge_lora(backbone, frozen_slots, comp.merge or MergeSpec(), merged, target_modules or [])
        state.frozen = [merged]
        state.extra_slots = [merged]
    elif comp.kind == "fuse":
        state.frozen = list(frozen_slots)
        if method == "lora":
            fusion = LoraFusion(lora_layers(backbone, frozen_slots[0]), frozen_slots, comp.fusion_rank)
            state.fusion = fusion.to(backbone.device)
        else:
            from adapters.composition import Fuse

            fuse = Fuse(*frozen_slots)
            state.fusion_name = ",".join(frozen_slots)
            if state.fusion_name not in backbone.model.adapters_config.fusions:
                backbone.model.add_adapter_fusion(fuse)
            for n, p in backbone.model.named_parameters():
                if "adapter_fusion_layer" in n:
                    p.data = p.data.to(backbone.device)
            backbone.model.train(backbone.model.training)
    return state
