"""What peft's LoRA variants need on a *shared, frozen* backbone, kept out of lora.py.

- PiSSA / OLoRA. peft initialises A0, B0 from the base weight's SVD / QR and replaces the base
  weight by its residual `W - s B0 A0`. Other modules live on the same backbone, so here the
  base weight is put back bit for bit right after peft's own initialisation, and a frozen
  *companion* LoRA (`<slot>-init`, no dropout) holds `-s B0 A0`: the pair computes
  `W x - s B0 A0 x + s B A dropout(x)`, which is peft's `W_res x + s B A dropout(x)`. The
  initialisation runs when the module is first activated for training (not on every load: a
  saved module is already a plain LoRA), and `stored_form` saves the pair as that plain LoRA of
  rank 2r, `[B | -B0] [A ; A0]`, as peft's own conversion does.
- DoRA. peft computes a DoRA module's output from the layer's output *so far*
  (`base_result = result`) in evaluation and from `W dropout(x)` in training, so a DoRA module
  placed after another active module would rescale that module's delta too, and differently in
  training and evaluation. Here every module's contribution is its own delta on the base
  weight: in each layer the first DoRA module goes first in peft's active list (its
  `base_result` is then `W x`), and further DoRA modules are added by a forward hook that calls
  peft's own DoRA layer on the layer input (`dora_delta`).

The per-backbone bookkeeping (settings per slot, pending initialisations, hooks) lives on the
backbone object, next to `methods_prepared`.
"""

from __future__ import annotations

import re

import torch

from ..errors import XtlError

_SUFFIX = "-init"  # slot names are [A-Za-z0-9_] (model.slot_name): "-" never clashes with one


def companion(module: str) -> str:
    return module + _SUFFIX


def state(backbone) -> dict:
    st = backbone.__dict__.get("_xtl_lora")
    if st is None:
        st = {"settings": {}, "pending": set(), "hooks": []}
        backbone.__dict__["_xtl_lora"] = st
    return st


def forget(backbone, module: str) -> None:
    st = state(backbone)
    st["settings"].pop(module, None)
    st["pending"].discard(module)


def has_companion(backbone, module: str) -> bool:
    key = f".{companion(module)}."
    return any(key in n for n, _ in backbone.model.named_parameters())


def with_companions(backbone, modules: list[str]) -> list[str]:
    return list(modules) + [companion(m) for m in modules if has_companion(backbone, m)]


# ------------------------------------------------------------------------------------ checks
def check_settings_fit(backbone, s) -> None:
    """Refuse, before peft touches the model, settings that cannot work on this backbone."""
    quant = getattr(getattr(backbone, "fingerprint", None), "quantization", "none")
    if isinstance(s.init_lora_weights, str) and s.init_lora_weights.startswith("pissa") and quant != "none":
        raise XtlError(
            f"init_lora_weights={s.init_lora_weights!r} needs a full-precision backbone; this one is {quant}",
            where="method_config.init_lora_weights",
            fix="peft computes PiSSA from an SVD of the float weights and refuses quantized ones (its QPiSSA "
            "re-quantizes the residual W - BA, which would change the frozen backbone every other module "
            "shares): load the backbone with quantization none, or use init_lora_weights='olora', which "
            "peft computes from the dequantized weight")
    if s.layers_to_transform is not None:
        n = int(backbone.model.config.num_hidden_layers)
        bad = [i for i in s.layers_to_transform if i >= n]
        if bad:
            raise XtlError(f"layers_to_transform {bad} out of range: the backbone has layers 0..{n - 1}",
                           where="method_config.layers_to_transform", fix=f"use indices below {n}")
    patterns = {**{f"rank_pattern[{k!r}]": k for k in s.rank_pattern},
                **{f"alpha_pattern[{k!r}]": k for k in s.alpha_pattern}}
    if patterns:
        targets = [n for n, _ in backbone.model.named_modules()
                   if any(n == t or n.endswith("." + t) for t in s.target_modules)]
        for label, key in patterns.items():
            # peft's own matching (peft.utils.other.get_pattern_key)
            if not any(re.match(rf"(.*\.)?({key})$", n) for n in targets):
                raise XtlError(f"{label} matches none of the adapted modules (e.g. {targets[:2]})",
                               where="method_config", fix="patterns are matched against the end of module names, "
                               "e.g. 'query' or 'layer\\.11\\.output\\.dense'")


# ------------------------------------------------------------------------------------ PiSSA / OLoRA
def initialise_if_pending(backbone, module: str) -> None:
    """Run peft's PiSSA / OLoRA initialisation for `module` once, leaving the base weights as
    they were and the subtraction in the companion."""
    st = state(backbone)
    if module not in st["pending"]:
        return
    from peft.tuners.lora import LoraLayer

    how = st["settings"][module].init_lora_weights
    comp = companion(module)
    with torch.no_grad():
        for layer in backbone.model.modules():
            if not isinstance(layer, LoraLayer) or module not in layer.lora_A:
                continue
            base = layer.get_base_layer()
            orig = base.weight
            snapshot = orig.data.clone()
            if how.startswith("pissa"):
                layer.pissa_init(module, how)
            else:
                layer.olora_init(module)
            if base.weight is not orig:  # peft re-quantized the residual into a new parameter
                base.weight = orig
            else:
                orig.data = snapshot
            layer.lora_A[comp].weight.copy_(layer.lora_A[module].weight)
            layer.lora_B[comp].weight.copy_(-layer.lora_B[module].weight)
    st["pending"].discard(module)


def stored_form(own: dict[str, torch.Tensor], comp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A module and its companion (both placeholder-keyed) as one plain LoRA: `[A ; A0]`, `[B | -B0]`."""
    out = {}
    for k, v in own.items():
        if ".lora_A." in k:
            out[k] = torch.cat([v, comp[k]], dim=0)
        elif ".lora_B." in k:
            out[k] = torch.cat([v, comp[k]], dim=1)
        else:  # nothing else can be there: DoRA with PiSSA/OLoRA is refused by LoraSettings
            raise XtlError(f"unexpected weight {k} in a PiSSA/OLoRA module")
    return out


# ------------------------------------------------------------------------------------ DoRA
def is_dora(layer, slot: str) -> bool:
    return bool(getattr(layer, "use_dora", {}).get(slot))


def dora_delta(layer, slot: str, x: torch.Tensor) -> torch.Tensor:
    """A DoRA module's own contribution on `layer` for input `x`: peft's DoRA layer with the
    base output computed from the base weight alone (`base_result=None`), dropout as peft
    applies it in training."""
    a, b, drop = layer.lora_A[slot], layer.lora_B[slot], layer.lora_dropout[slot]
    x = x.to(a.weight.dtype)
    if layer.training and not isinstance(drop, torch.nn.Identity):
        x = drop(x)
    return layer.lora_magnitude_vector[slot](x, lora_A=a, lora_B=b, scaling=layer.scaling[slot],
                                             base_layer=layer.get_base_layer(), base_result=None)


def slot_delta(layer, slot: str, x: torch.Tensor) -> torch.Tensor:
    """What `slot` adds to `layer`'s output for input `x` (LoRA: s B A dropout(x); DoRA: above)."""
    if is_dora(layer, slot):
        return dora_delta(layer, slot, x)
    a, b = layer.lora_A[slot], layer.lora_B[slot]
    return b(a(layer.lora_dropout[slot](x.to(a.weight.dtype)))) * layer.scaling[slot]


def set_active(backbone, layer, names: list[str]) -> None:
    """peft's active list for one layer: at most one DoRA module, first; the others by a hook."""
    here = [n for n in names if n in layer.lora_A]
    dora = [n for n in here if is_dora(layer, n)]
    layer._active_adapter = dora[:1] + [n for n in here if n not in dora]
    extra = dora[1:]
    if extra:
        def hook(mod, args, output, extra=tuple(extra)):
            x = args[0]
            return output + sum(dora_delta(mod, s, x) for s in extra).to(output.dtype)

        state(backbone)["hooks"].append(layer.register_forward_hook(hook))


def remove_hooks(backbone) -> None:
    st = state(backbone)
    for h in st["hooks"]:
        h.remove()
    st["hooks"] = []
