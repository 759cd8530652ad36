"""LoRA's own compositions: fusion (attention over frozen deltas) and merging (one delta made of
several), carried out on peft's LoRA layers. Only this file, lora.py and lora_variants.py touch
those layers.

fuse, per adapted Linear and per token (ours; no library has it):
  d_i = dI_i h,  q = h Wq,  k_i = d_i Wk,  a = softmax_i(q . k_i / sqrt(r_f)),
  out = W h + sum_i a_i d_i + dT h          (Wk starts at 0: a starts uniform)
  (a DoRA intermediate's delta d_i is its output minus W h, lora_variants.slot_delta)
merge: dM = merge({dI_i}) per layer (linear = weighted sum; ties / dare_linear / dare_ties from
peft's merge_utils over the full deltas), stored as a LoRA of rank sum(r_i) by truncated SVD
(exact for linear), then stacked: W h + dM h + dT h. A layer an intermediate does not adapt
(`layers_to_transform`) counts as a zero delta. DoRA intermediates are refused (lora.py says why).
"""

from __future__ import annotations

import math

import torch

from . import get_method
from .base import Arrangement


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
        """Stacked frozen deltas d_i, shape (n, ..., d_out) (a DoRA module's: its output minus W h)."""
        from .lora_variants import slot_delta

        return torch.stack([slot_delta(layer, s, x) for s in self.slots])

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
def merge_lora(backbone, slots: list[str], spec, new_slot: str, target_modules: list[str]) -> int:
    """Merge the deltas of `slots` layer by layer into a new LoRA module `new_slot`; return its rank.

    A slot that does not adapt a layer (another `layers_to_transform`) contributes a zero delta
    there; ranks may differ per layer (`rank_pattern`), the merged module takes the largest sum.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils import merge_utils

    from .lora import LoraSettings

    layers = [m for m in backbone.model.modules() if isinstance(m, LoraLayer) and any(s in m.lora_A for s in slots)]
    rank = max(sum(layer.r[s] for s in slots if s in layer.lora_A) for layer in layers)
    get_method("lora").add(backbone, new_slot, LoraSettings(r=rank, alpha=rank, dropout=0.0,
                                                            target_modules=list(target_modules)))
    n = len(slots)
    weights = torch.tensor(spec.weights or [1.0 / n] * n)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(spec.seed)
    try:
        with torch.no_grad():
            for name, layer in lora_layers(backbone, new_slot).items():
                out_b, out_a = layer.lora_B[new_slot].weight, layer.lora_A[new_slot].weight
                if not any(s in layer.lora_A for s in slots):  # no intermediate adapts this layer
                    out_b.zero_()
                    out_a.zero_()
                    continue
                deltas = [(layer.lora_B[s].weight @ layer.lora_A[s].weight).float() * layer.scaling[s]
                          if s in layer.lora_A else torch.zeros(out_b.shape[0], out_a.shape[1], device=out_a.device)
                          for s in slots]
                w = weights.to(deltas[0].device)
                if spec.how == "linear":
                    merged = merge_utils.task_arithmetic(deltas, w)
                elif spec.how == "ties":
                    merged = merge_utils.ties(deltas, w, spec.density)
                elif spec.how == "dare_linear":
                    merged = merge_utils.dare_linear(deltas, w, spec.density)
                else:
                    merged = merge_utils.dare_ties(deltas, w, spec.density)
                U, S, Vh = torch.linalg.svd(merged, full_matrices=False)
                r = layer.r[new_slot]
                sq = S[:r].sqrt()
                out_b.copy_((U[:, :r] * sq).to(out_b.dtype))
                out_a.copy_((sq[:, None] * Vh[:r]).to(out_a.dtype))
    finally:
        torch.random.set_rng_state(gen_state)
    return rank


class LoraFuseArrangement(Arrangement):
    """The frozen intermediates stay *inactive* in peft (the fusion hooks add their mixed deltas),
    so peft itself adds only the target's delta."""

    def __init__(self, method, target: str, frozen: list[str], fusion: LoraFusion):
        super().__init__(method, target, frozen)
        self.fusion = fusion

    def activate(self, backbone, train: bool) -> None:
        self.method.activate(backbone, self.below + [self.target], trainable=[self.target] if train else [])
        self.fusion.attach()
        for p in self.fusion.parameters():
            p.requires_grad_(train)

    def deactivate(self, backbone) -> None:
        self.method.deactivate(backbone)
        self.fusion.detach()

    def extra_parameters(self, backbone):
        return {f"fusion.{n}": p for n, p in self.fusion.named_parameters()}


def compose_fuse(method, backbone, block, target: str, frozen: list[str]) -> Arrangement:
    fusion = LoraFusion(lora_layers(backbone, frozen[0]), frozen, block.rank).to(backbone.device)
    return LoraFuseArrangement(method, target, frozen, fusion)


def compose_merge(method, backbone, block, target: str, frozen: list[str], target_modules: list[str]) -> Arrangement:
    merged = f"{target}_merged"
    method.remove(backbone, merged)
    merge_lora(backbone, frozen, block, merged, target_modules or [])
    return Arrangement(method, target, [merged], extra_slots=[merged])
