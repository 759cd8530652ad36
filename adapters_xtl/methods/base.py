"""The one protocol every task-module method implements, compositions included.

Modules live *inside* the backbone's encoder, under their own names, so several can coexist on
one loaded backbone (the grid runner swaps them instead of reloading). Weights leave the model
through `state_dict`, with the module's own name replaced by a placeholder, so a module saved as
`sst2-lora` can be loaded back under any name.

A method also carries out the compositions it supports (`supported_compositions`,
`compose_<kind>`, as adapters' layers do with `compose_stack`/`compose_fuse`): a composition block
(compose/blocks.py) only says what to combine, and nothing outside a method touches peft's or
adapters' internals. `single`, `stack` and `continue` mean the same for every method that keeps
several named modules in one encoder, so they live here; `fuse` and `merge` are per method.

`language` (MAD-X) arranges the inner composition as usual and puts one language module
*below* it (`Arrangement.below`): every arrangement activates `below + its own slots`, so a
bottleneck stack becomes `Stack(lang, I_1.., T)` (and the language module's invertible adapter,
the first of the stack, wraps the embeddings), a LoRA stack adds the language module's delta.
`LanguageArrangement.use(lang)` swaps which language module is below.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import XtlError


def rng_untouched(backbone):
    """Around work whose random draws are overwritten or irrelevant (a saved module's slot
    initialised before its weights are loaded, adapters' one-time `init`): those draws go to a
    forked stream, so the seeded stream a training cell sees does not depend on what was loaded
    into the shared backbone before it."""
    device = torch.device(getattr(backbone, "device", "cpu"))
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


PLACEHOLDER = "__module__"


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Arrangement:
    """What a composition put into the backbone around the target slot: which frozen slots take
    part in the forward pass, any trainable fusion parameters, and the slots it created (removed
    again on teardown). Intermediate slots loaded from the registry are not removed: a grid keeps
    them loaded for its next cell."""

    def __init__(self, method: "Method", target: str, frozen: list[str] | None = None,
                 extra_slots: list[str] | None = None):
        self.method = method
        self.target = target
        self.frozen = list(frozen or [])
        self.extra_slots = list(extra_slots or [])
        self.below: list[str] = []  # frozen slots under everything else (a language module)

    def activate(self, backbone, train: bool) -> None:
        self.method.activate(backbone, self.below + self.frozen + [self.target],
                             trainable=[self.target] if train else [])

    def deactivate(self, backbone) -> None:
        self.method.deactivate(backbone)

    def extra_parameters(self, backbone) -> dict[str, torch.nn.Parameter]:
        """Trainable parameters besides the target module (a fusion), keyed `fusion.*` for saving."""
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
        for s in self.extra_slots:
            self.method.remove(backbone, s)


class LanguageArrangement:
    """The inner composition's arrangement with one language module below it, swappable per
    language (MAD-X: the training language's module while the target trains, the target
    language's when it is scored)."""

    def __init__(self, inner: Arrangement, slots: dict[str, str], current: str):
        self.inner = inner
        self.slots = dict(slots)
        self.method = inner.method
        self.target = inner.target
        self.language = current
        self._train: bool | None = None
        self.inner.below = [self.slots[current]]

    @property
    def frozen(self) -> list[str]:
        return self.inner.below + self.inner.frozen

    def use(self, backbone, language: str) -> None:
        """Put `language`'s module below the composition (re-activating it if it is active)."""
        if language not in self.slots:
            raise XtlError(f"no language module for {language!r} in this composition (it has "
                           f"{', '.join(sorted(self.slots))})", where="language",
                           fix=f"train one: xtl train-language --lang {language} --text FILE")
        self.language = language
        self.inner.below = [self.slots[language]]
        if self._train is not None:
            self.inner.activate(backbone, self._train)

    def activate(self, backbone, train: bool) -> None:
        self._train = train
        self.inner.activate(backbone, train)

    def deactivate(self, backbone) -> None:
        self._train = None
        self.inner.deactivate(backbone)

    def extra_parameters(self, backbone):
        return self.inner.extra_parameters(backbone)

    def load_extra(self, backbone, tensors) -> None:
        self.inner.load_extra(backbone, tensors)

    def teardown(self, backbone) -> None:
        self._train = None
        self.inner.teardown(backbone)


class Method:
    """Base class; subclasses implement the hooks below."""

    name: str = ""
    config_cls: type[MethodConfig] = MethodConfig
    supported_compositions: tuple[str, ...] = ("single", "stack", "continue")
    # why a composition is not offered (said with the refusal)
    refusals: dict[str, str] = {}

    # -- compositions ----------------------------------------------------------------------------
    def _refuse_kind(self, kind: str) -> XtlError:
        reason = self.refusals.get(kind)
        return XtlError(f"{self.name} modules do not support the composition {kind!r}" + (f": {reason}" if reason else ""),
                        where="composition", fix=f"{self.name} supports: {', '.join(self.supported_compositions)}")

    def check_composable(self, block, target_config: dict, intermediates: list) -> None:
        """Refuse, before anything loads, intermediates (their manifests) that cannot be composed
        with a target of this method and config."""
        if block.kind not in self.supported_compositions:
            raise self._refuse_kind(block.kind)
        for man in intermediates:
            ref = f"{man.name}@{man.version}"
            if man.method != self.name:
                raise XtlError(f"intermediate module {man.name!r} is {man.method}; the target module is {self.name}",
                               where="composition", fix="compose modules of one method (train the intermediate with it)")
            if block.kind == "continue" and not self._same_config(man.method_config, target_config):
                raise XtlError(f"cannot continue from {man.name!r} ({ref}): it is {man.method} {man.method_config}, "
                               f"the target is {self.name} {target_config}", where="composition",
                               fix="use the same method and method_config")

    def _same_config(self, a: dict, b: dict) -> bool:
        """Equal once both are read as this method's config (a manifest written before a field
        existed equals one that leaves it at its default)."""
        try:
            return self.make_config(a).model_dump() == self.make_config(b).model_dump()
        except XtlError:
            return a == b

    def check_language_modules(self, manifests: dict) -> None:
        """Refuse language modules (language -> manifest) that cannot sit below this method's
        compositions: another method, or a module that is not a language module."""
        if "language" not in self.supported_compositions:
            raise self._refuse_kind("language")
        for lang, man in manifests.items():
            if not str(man.task).startswith("mlm:"):
                raise XtlError(f"{man.name}@{man.version} (task {man.task!r}) is not a language module", where="language",
                               fix="language modules are made by `xtl train-language` (task mlm:<lang>)")
            if man.task != f"mlm:{lang}":
                raise XtlError(f"{man.name}@{man.version} is the language module of {man.task[4:]!r}, given for "
                               f"{lang!r}", where="language", fix=f"give {lang!r} a module trained on {lang} text")
            if man.method != self.name:
                raise XtlError(f"language module {man.name}@{man.version} is {man.method}; the task modules are "
                               f"{self.name}", where="language",
                               fix=f"train the language module with --method {self.name}")

    def compose(self, backbone, block, target: str, frozen: list[str], target_config: dict, **kw):
        """Arrange already-loaded intermediate slots (`frozen`, in the block's order) around the
        (already added) target slot."""
        if block.kind not in self.supported_compositions:
            raise self._refuse_kind(block.kind)
        return getattr(self, f"compose_{block.kind}")(backbone, block, target, frozen, target_config, **kw)

    def compose_language(self, backbone, block, target, frozen, target_config, *, languages: dict[str, str],
                         current: str) -> LanguageArrangement:
        """The inner composition, with `languages[current]` (a loaded slot) below it."""
        inner = self.compose(backbone, block.inner, target, frozen, target_config)
        return LanguageArrangement(inner, languages, current)

    def compose_single(self, backbone, block, target, frozen, target_config) -> Arrangement:
        return Arrangement(self, target)

    def compose_stack(self, backbone, block, target, frozen, target_config) -> Arrangement:
        return Arrangement(self, target, frozen)

    def compose_continue(self, backbone, block, target, frozen, target_config) -> Arrangement:
        """STILTs: the target starts as an exact copy of the intermediate; nothing is stacked."""
        self.load_state_dict(backbone, target, self.state_dict(backbone, frozen[0]))
        return Arrangement(self, target)

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

    def inverse_embedding_transform(self, backbone):
        """What an LM head applies before the (tied) output embeddings, given the active modules:
        the inverse of an invertible adapter (MAD-X), or None."""
        return None

    def remove(self, backbone, module: str) -> None:
        raise NotImplementedError

    def key_marker(self, module: str) -> str:
        """Substring that identifies a parameter of `module` in the encoder's state dict."""
        raise NotImplementedError

    def key_markers(self, module: str) -> list[str]:
        """Every substring that marks a parameter of `module` (a bottleneck language module also
        has an invertible adapter, keyed apart from its layers' adapters)."""
        return [self.key_marker(module)]

    def _own_key(self, key: str, module: str) -> str | None:
        """`key` with the module's name replaced by the placeholder, or None when not the module's."""
        if not self.owns(key):
            return None
        for marker, generic in zip(self.key_markers(module), self.key_markers(PLACEHOLDER)):
            if marker in key:
                return key.replace(marker, generic)
        return None

    # -- weights -----------------------------------------------------------------------------
    def state_dict(self, backbone, module: str) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in backbone.model.state_dict().items():
            own = self._own_key(k, module)
            if own is not None:
                out[own] = v.detach().cpu().clone()
        if not out:
            raise XtlError(f"module {module!r} has no {self.name} weights in this backbone")
        return out

    def load_state_dict(self, backbone, module: str, tensors: dict[str, torch.Tensor]) -> None:
        def named(key: str) -> str:
            for marker, generic in zip(self.key_markers(module), self.key_markers(PLACEHOLDER)):
                if generic in key:
                    return key.replace(generic, marker)
            return key

        own = {named(k): v for k, v in tensors.items()}
        current = backbone.model.state_dict()
        missing = [k for k in current if self._own_key(k, module) is not None and k not in own]
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
        out = {}
        for n, p in backbone.model.named_parameters():
            own = self._own_key(n, module)
            if own is not None:
                out[own] = p
        return out


def count_parameters(params) -> int:
    return sum(p.numel() for p in params)
