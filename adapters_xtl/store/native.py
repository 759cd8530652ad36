"""The root of a pushed repo: an ordinary peft or adapters repo that loads without adapters_xtl.

Most people who find a module on the Hub have only peft or adapters, so the repo root holds what
those libraries load by themselves, with the task head in *their* format wherever that computes
exactly what our head computes:

- LoRA / IA3 (peft): `adapter_config.json` + `adapter_model.safetensors` for the transformers
  task model whose head is ours, the head listed in `modules_to_save` (peft saves those weights
  under their plain names, `base_model.model.classifier.dense.weight`):

  ==============  ======================================  ==============  ==========================
  our format      transformers class                      peft task_type  head (ours -> theirs)
  ==============  ======================================  ==============  ==========================
  classification  XLMRobertaForSequenceClassification     SEQ_CLS         dense, out -> classifier.
                  (only `pooling: cls`: it reads <s>)                     dense, classifier.out_proj
  tagging         XLMRobertaForTokenClassification        TOKEN_CLS       out -> classifier
  span_qa         XLMRobertaForQuestionAnswering          QUESTION_ANS    qa_outputs -> qa_outputs
  retrieval       XLMRobertaModel (no head)               (none)          —
  ==============  ======================================  ==============  ==========================

- bottleneck (adapters): the folder `save_adapter(..., with_head=True)` writes for an
  `XLMRobertaAdapterModel` (`AutoAdapterModel` + `load_adapter`): classification as adapters'
  classification head (layers=2, tanh, use_pooler=false: <s>), tagging and span_qa as its
  tagging / question-answering heads (one linear layer).

A head those classes cannot compute (a mean-pooled classification head, multiple choice, which
transformers pools through a pooler we do not have) stays in our format beside the adapter
(`xtl_head.safetensors` + `xtl_head.json`); the adapter then targets the bare `XLMRobertaModel`
and the card shows the few lines of torch that apply the head. A stacked, fused or merged module
computes nothing alone, so it gets no root export at all (`plan(...).library is None`): the card
says which parts to load in which order.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import XtlError
from ..io import atomic_write_json
from .convert import head_files, save_safetensors
from .interop import (ADAPTERS_HEAD_CONFIG, ADAPTERS_HEAD_WEIGHTS, ADAPTERS_HEAD_WEIGHTS_BIN, ADAPTERS_WEIGHTS,
                      ADAPTERS_WEIGHTS_BIN, CONFIG, PEFT_WEIGHTS, adapters_config, adapters_tensors, peft_config,
                      peft_tensors)

__all__ = ["COMPOSED_KINDS", "NativePlan", "plan", "write_root"]

# compositions whose module needs its intermediates at inference (stack: below it; fuse: attended
# over; merge: their merged deltas below it); `continue` only started from one
COMPOSED_KINDS = ("stack", "fuse", "merge")

# our format -> (transformers class, peft task_type, head module, our head key -> theirs)
_PEFT_HEADS = {
    "classification": ("XLMRobertaForSequenceClassification", "SEQ_CLS", "classifier",
                       {"dense.weight": "classifier.dense.weight", "dense.bias": "classifier.dense.bias",
                        "out.weight": "classifier.out_proj.weight", "out.bias": "classifier.out_proj.bias"}),
    "tagging": ("XLMRobertaForTokenClassification", "TOKEN_CLS", "classifier",
                {"out.weight": "classifier.weight", "out.bias": "classifier.bias"}),
    "span_qa": ("XLMRobertaForQuestionAnswering", "QUESTION_ANS", "qa_outputs",
                {"qa_outputs.weight": "qa_outputs.weight", "qa_outputs.bias": "qa_outputs.bias"}),
}
# our format -> (adapters head config, our head key -> theirs after `heads.<name>.`)
_ADAPTERS_HEADS = {
    "classification": ({"head_type": "classification", "layers": 2, "activation_function": "tanh", "bias": True,
                        "use_pooler": False},
                       {"dense.weight": "1.weight", "dense.bias": "1.bias", "out.weight": "4.weight",
                        "out.bias": "4.bias"}),
    "tagging": ({"head_type": "tagging", "layers": 1, "activation_function": "tanh"},
                {"out.weight": "1.weight", "out.bias": "1.bias"}),
    "span_qa": ({"head_type": "question_answering", "layers": 1, "activation_function": "tanh"},
                {"qa_outputs.weight": "1.weight", "qa_outputs.bias": "1.bias"}),
}
_LIBRARY = {"lora": "peft", "ia3": "peft", "bottleneck": "adapters"}


@dataclass(frozen=True)
class NativePlan:
    """What the repo root holds for one module, and what the card must say about it."""

    library: str | None  # "peft" | "adapters" | None (no root export)
    model_class: str = "XLMRobertaModel"  # the transformers class the export loads onto
    task_type: str | None = None  # peft's task_type
    head_in_library: bool = False  # the head is in the library's own format (faithful)
    head_beside: bool = False  # our head rides along as xtl_head.*
    adapter_name: str | None = None  # adapters: the name load_adapter registers
    labels: list[str] = field(default_factory=list)  # id -> label, for the task model's config
    why_not: str | None = None  # why the head (or the module) is not in the library's format
    parts: list[str] = field(default_factory=list)  # name@version of the intermediates, bottom first

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], False)}


def plan(manifest, tensors: dict[str, torch.Tensor]) -> NativePlan:
    """Which export of this module loads faithfully with peft / adapters alone (module docstring)."""
    lib = _LIBRARY.get(manifest.method)
    comp = manifest.composition or {}
    parts = [str(p) for p in comp.get("modules") or []]
    if comp.get("kind") in COMPOSED_KINDS:
        return NativePlan(None, parts=parts, why_not=(
            f"it was trained as a {comp['kind']} over {len(parts)} intermediate module(s) and computes its task only "
            "with them"))
    if lib is None:
        return NativePlan(None, why_not=f"neither peft nor adapters implements adapters_xtl's {manifest.method!r} method")
    extra = sorted(k for k in tensors if not k.startswith(("module.", "head.")))
    if extra:
        return NativePlan(None, why_not=f"it holds weights {lib} has no place for (e.g. {extra[:2]})")
    has_head = any(k.startswith("head.") for k in tensors)
    aname = re.sub(r"[^A-Za-z0-9_]", "_", manifest.name) if lib == "adapters" else None
    labels = list(manifest.head.get("labels") or [])
    if not has_head:
        return NativePlan(lib, adapter_name=aname)
    fmt = manifest.format
    why = None
    if fmt not in _PEFT_HEADS:
        why = (f"transformers' {fmt} models pool through a pooler layer this module does not have"
               if fmt == "multiple_choice" else f"neither library has a head for the {fmt} format")
    elif fmt == "classification" and manifest.head.get("pooling", "mean") != "cls":
        why = (f"its head reads the {manifest.head.get('pooling', 'mean')}-pooled states, while the transformers "
               "and adapters classification heads read the <s> token (train with `pooling: cls` for a Hub-native "
               "head)")
    if why:
        return NativePlan(lib, head_beside=True, adapter_name=aname, labels=labels, why_not=why)
    model_class, task_type, _, _ = _PEFT_HEADS[fmt]
    if lib == "adapters":
        return NativePlan(lib, model_class="XLMRobertaAdapterModel", head_in_library=True, adapter_name=aname,
                          labels=labels)
    return NativePlan(lib, model_class=model_class, task_type=task_type, head_in_library=True, labels=labels)


def write_root(manifest, tensors: dict[str, torch.Tensor], folder: Path, *, base_model: str | None) -> NativePlan:
    """Write the root export of `plan(manifest, tensors)` into `folder` (nothing for library None)."""
    from ..model import split_weights

    p = plan(manifest, tensors)
    if p.library is None:
        return p
    folder = Path(folder)
    module, head = split_weights(tensors)
    if p.library == "peft":
        cfg = peft_config(manifest.method_config, base_model, method=manifest.method)
        weights = peft_tensors(module)
        if p.head_in_library:
            _, task_type, head_module, names = _PEFT_HEADS[manifest.format]
            cfg.task_type, cfg.modules_to_save = task_type, [head_module]
            # a task model holds the encoder as `roberta`
            weights = {k.replace("base_model.model.", "base_model.model.roberta.", 1): v for k, v in weights.items()}
            weights.update({f"base_model.model.{names[k]}": v for k, v in head.items()})
        cfg.save_pretrained(str(folder))
        save_safetensors(folder / PEFT_WEIGHTS, weights)
    else:
        _write_adapters(manifest, module, head, folder, p, base_model)
    if p.head_beside:
        head_files(manifest, head, folder)
    return p


def _write_adapters(manifest, module, head, folder: Path, p: NativePlan, base_model: str | None) -> None:
    """What adapters' `save_adapter(folder, name, with_head=...)` writes, for adapters' own loader."""
    import adapters

    aname = p.adapter_name
    weights = adapters_tensors(module, aname)
    down = next((v for k, v in weights.items() if k.endswith("adapter_down.0.weight")), None)
    if down is None:
        raise XtlError("the module has no adapter_down weights", where=f"module {manifest.name!r}",
                       fix="re-train or re-pull the module")
    hidden = int(down.shape[1])
    common = {"hidden_size": hidden, "model_name": base_model, "model_type": "xlm-roberta", "name": aname,
              "version": f"adapters.{adapters.__version__}"}
    if p.head_in_library:
        # an AdapterModel holds the encoder as `roberta` (adapters' own save_adapter writes it so)
        weights = {"roberta." + k: v for k, v in weights.items()}
        common["model_class"] = "XLMRobertaAdapterModel"
    else:
        common["model_class"] = "XLMRobertaModel"
    atomic_write_json(folder / CONFIG, {"config": adapters_config(manifest.method_config).to_dict(), **common},
                      indent=2, sort_keys=True)
    save_safetensors(folder / ADAPTERS_WEIGHTS, weights)
    torch.save({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(folder / ADAPTERS_WEIGHTS_BIN))
    if not p.head_in_library:
        return
    hcfg, names = _ADAPTERS_HEADS[manifest.format]
    hcfg = {**hcfg, "dropout_prob": None}
    if manifest.format == "span_qa":
        hcfg.update({"num_labels": 2, "label2id": {"LABEL_0": 0, "LABEL_1": 1}})
    else:
        hcfg.update({"num_labels": len(p.labels), "label2id": {label: i for i, label in enumerate(p.labels)}})
    atomic_write_json(folder / ADAPTERS_HEAD_CONFIG, {"config": hcfg, **common}, indent=2, sort_keys=True)
    hw = {f"heads.{aname}.{names[k]}": v for k, v in head.items()}
    save_safetensors(folder / ADAPTERS_HEAD_WEIGHTS, hw)
    torch.save({k: v.detach().cpu().contiguous() for k, v in hw.items()}, str(folder / ADAPTERS_HEAD_WEIGHTS_BIN))
