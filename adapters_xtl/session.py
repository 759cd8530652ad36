"""One module on a loaded backbone, from attach to teardown: the lifecycle every training path
shares (single, composed, multi-task, study snapshots, the bench) and every evaluation or
prediction of a saved module.

peft's `BaseTuner.inject_adapter` gives every method one lifecycle; this is ours, one level up:
attach a slot (new, or saved weights), load the composition's intermediates and let the method
arrange them (`Method.compose`), hand out the trainable parameters, build the manifest, save,
and always tear down, so a grid that keeps one backbone in memory never leaks a slot into its
next cell. Time spent attaching and tearing down goes to `swap_clock`, which the grid reports.

A `Language` composition (MAD-X) also loads one language module per language the session will
run (`languages`, the training language first), resolved here from the registry when the block
does not name them (the newest module of task `mlm:<lang>` for this method and backbone), and
`use_language(lang)` puts that language's module below the composition.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

import torch

from .backbone import Backbone
from .compose import Block, Language, Single, as_block
from .errors import XtlError
from .store.manifest import Manifest, library_versions
from .methods import get_method
from .methods.base import Arrangement, MethodConfig, count_parameters
from .model import TaskModel, attach_new, attach_saved, slot_name, split_weights
from .store.registry import Registry
from .tasks import TaskSpec


class SwapClock:
    """Seconds spent putting modules on and taking them off the loaded backbone: reading them
    from the registry, attaching, composing, tearing down. A grid keeps one backbone and swaps
    modules per cell; the runner reports this time next to the cell's, because a swap that is
    not negligible would argue for another design (one process per cell)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def measure(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s


swap_clock = SwapClock()


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`name` or `name@version` (as everywhere a module is named)."""
    name, _, version = str(ref).partition("@")
    return name, (version or None)


def load_module_into(backbone: Backbone, registry: Registry, ref: str, *, version: str | None = None,
                     allow_backbone_mismatch: bool = False) -> tuple[Manifest, str, dict]:
    """Put a registry module into the backbone under its own slot (once: a grid reuses it);
    return (manifest, slot, head weights)."""
    name, pinned = parse_ref(ref)
    version = version or pinned
    man, tensors = registry.load(name, version, expect_backbone=backbone.fingerprint,
                                 allow_backbone_mismatch=allow_backbone_mismatch)
    slot = slot_name(f"{man.name}_v{man.version}")
    module_w, head_w = split_weights(tensors)
    method = get_method(man.method)
    if not any(method.key_marker(slot) in n for n, _ in backbone.model.named_parameters()):
        attach_saved(backbone, man.method, man.method_config, module_w, slot)
    return man, slot, head_w


def _newest(mans: list[Manifest]) -> Manifest | None:
    from .store.layout import version_key

    return max(mans, key=lambda m: (m.created_at, version_key(m.version)), default=None)


def language_modules(registry: Registry, block: Language, languages: list[str], method: str,
                     backbone: Backbone) -> dict[str, Manifest]:
    """language -> the manifest of its language module: the one the block names, else the
    newest registered for task `mlm:<lang>` with this method on this backbone. Every language of
    `languages` and of the block is resolved; the ones without a module are one XtlError."""
    wanted = list(dict.fromkeys([*languages, *block.languages]))
    out: dict[str, Manifest] = {}
    candidates: dict[str, list[Manifest]] | None = None
    missing = []
    for lang in wanted:
        ref = block.languages.get(lang)
        if ref:
            name, version = parse_ref(ref)
            out[lang] = registry.manifest(name, version)
            continue
        if candidates is None:
            candidates = {}
            for man in registry.all_manifests():
                if str(man.task).startswith("mlm:") and man.method == method and man.backbone == backbone.fingerprint:
                    candidates.setdefault(man.task[4:], []).append(man)
        found = _newest(candidates.get(lang, []))
        if found is None:
            missing.append(lang)
        else:
            out[lang] = found
    if missing:
        raise XtlError(f"no {method} language module for {', '.join(map(repr, missing))} on backbone "
                       f"{backbone.fingerprint.short()} in registry {registry.root} (task "
                       f"{', '.join('mlm:' + m for m in missing)})", where="composition.languages",
                       fix=f"train one per language: xtl train-language --lang {missing[0]} --text FILE --method "
                           f"{method}; or name one: Language({{'{missing[0]}': 'name@version'}}); or leave the "
                           "language out of the evaluation")
    return out


def compose_into(backbone: Backbone, registry: Registry, block: Block | dict, method: str, target_slot: str,
                 target_config: dict, *, allow_backbone_mismatch: bool = False,
                 languages: list[str] | None = None) -> tuple[Arrangement, list[Manifest]]:
    """Load a composition's intermediate modules and let the method arrange them around the
    (already added) target slot. Every module is checked before any is loaded. A `Language`
    block also loads the language modules of `languages` (the first is active at the start)."""
    block = as_block(block)
    m = get_method(method)
    inner = block.inner
    mans = []
    for ref in inner.modules:
        name, version = parse_ref(ref)
        mans.append(registry.manifest(name, version))
    m.check_composable(inner, target_config, mans)
    lang_mans: dict[str, Manifest] = {}
    if isinstance(block, Language):
        if not languages:
            raise XtlError("a Language composition needs the languages it will run", where="composition",
                           fix="the training language first, then the evaluation languages")
        if "language" not in m.supported_compositions:
            raise m._refuse_kind("language")
        lang_mans = language_modules(registry, block, languages, method, backbone)
        m.check_language_modules(lang_mans)
    slots = []
    loaded = []
    for ref in inner.modules:
        man, slot, _ = load_module_into(backbone, registry, ref, allow_backbone_mismatch=allow_backbone_mismatch)
        loaded.append(man)
        slots.append(slot)
    if not isinstance(block, Language):
        return m.compose(backbone, block, target_slot, slots, target_config), loaded
    lang_slots = {}
    for lang, man in lang_mans.items():
        _, lang_slots[lang], _ = load_module_into(backbone, registry, f"{man.name}@{man.version}",
                                                  allow_backbone_mismatch=allow_backbone_mismatch)
    arrangement = m.compose(backbone, block, target_slot, slots, target_config, languages=lang_slots,
                            current=languages[0])
    arrangement.manifests = lang_mans
    return arrangement, loaded


class ModuleSession:
    """A context manager around one module slot. Use `ModuleSession.new(...)` to train a module
    and `ModuleSession.saved(...)` to run a registry module; `with` guarantees teardown."""

    def __init__(self, backbone: Backbone, method: str, method_config: MethodConfig | dict | None, *,
                 slot: str, composition: Block | dict | None = None, registry: Registry | None = None,
                 seed: int | None = None, saved: tuple[Manifest, dict] | None = None,
                 allow_backbone_mismatch: bool = False, languages: list[str] | None = None):
        self.backbone = backbone
        self.method = get_method(method)
        self.config = (method_config if isinstance(method_config, MethodConfig)
                       else self.method.make_config(method_config))
        self.slot = slot
        self.block = as_block(composition)
        self.registry = registry
        self.seed = seed
        self.saved = saved
        self.allow_backbone_mismatch = allow_backbone_mismatch
        self.languages = list(dict.fromkeys(languages or []))
        if isinstance(self.block, Language) and not self.languages:
            self.languages = list(self.block.languages)  # a saved module: the ones it was run with
        self.arrangement: Arrangement | None = None
        self.intermediates: list[Manifest] = []
        self.model: TaskModel | None = None
        self._head_weights: dict = {}

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def new(cls, backbone: Backbone, name: str, method: str, method_config=None, *, composition=None,
            registry: Registry | None = None, seed: int | None = None, allow_backbone_mismatch: bool = False,
            languages: list[str] | None = None):
        return cls(backbone, method, method_config, slot=slot_name(f"{name}_training"), composition=composition,
                   registry=registry, seed=seed, allow_backbone_mismatch=allow_backbone_mismatch, languages=languages)

    @classmethod
    def saved_module(cls, backbone: Backbone, registry: Registry, ref: str, *, allow_backbone_mismatch: bool = False,
                     purpose: str = "eval", languages: list[str] | None = None):
        """A registry module (with the composition it was trained in) ready to run; a module
        trained on a language module runs with the modules of `languages` (default: the ones
        its manifest pins), the first active at the start."""
        name, version = parse_ref(ref)
        with swap_clock.measure():
            man, tensors = registry.load(name, version, expect_backbone=backbone.fingerprint,
                                         allow_backbone_mismatch=allow_backbone_mismatch)
        block = as_block(man.composition)
        if block.inner.kind == "continue":  # the weights already hold what was continued from
            block = Single() if block.kind == "continue" else block.with_inner(Single())
        if isinstance(block, Language):
            languages = list(dict.fromkeys([*(languages or []), *block.languages]))
        return cls(backbone, man.method, man.method_config, slot=slot_name(f"{man.name}_v{man.version}_{purpose}"),
                   composition=block, registry=registry, saved=(man, tensors),
                   allow_backbone_mismatch=allow_backbone_mismatch, languages=languages)

    @property
    def manifest_saved(self) -> Manifest | None:
        return self.saved[0] if self.saved else None

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> "ModuleSession":
        from .trainer import set_seed

        try:
            with swap_clock.measure():
                self.method.remove(self.backbone, self.slot)
                if self.saved:
                    tensors = self.saved[1]
                    module_w, self._head_weights = split_weights(tensors)
                    attach_saved(self.backbone, self.method.name, self.config.model_dump(), module_w, self.slot)
                else:
                    if self.seed is not None:
                        set_seed(self.seed)  # the seed decides the module's and the head's initialisation
                    attach_new(self.backbone, self.method.name, self.config, self.slot)
                if self.block.modules and self.registry is None:
                    raise XtlError(f"composition {self.block.kind!r} needs a registry to read its modules from",
                                   where="composition", fix="pass registry=Registry(...)")
                if isinstance(self.block, Language) and self.registry is None:
                    raise XtlError("a Language composition needs a registry to read its language modules from",
                                   where="composition", fix="pass registry=Registry(...)")
                self.arrangement, self.intermediates = compose_into(
                    self.backbone, self.registry, self.block, self.method.name, self.slot, self.config.model_dump(),
                    allow_backbone_mismatch=self.allow_backbone_mismatch,
                    languages=self.languages) if self.registry is not None else (
                    self.method.compose(self.backbone, self.block, self.slot, [], self.config.model_dump()), [])
                if self.saved:
                    extra = {k: v for k, v in self.saved[1].items() if k.startswith("fusion.")}
                    if extra:
                        self.arrangement.load_extra(self.backbone, extra)
                self.arrangement.activate(self.backbone, train=not self.saved)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        with swap_clock.measure():
            if self.arrangement is not None:
                self.arrangement.teardown(self.backbone)
                self.arrangement = None
            self.method.remove(self.backbone, self.slot)

    def train_mode(self, on: bool = True) -> None:
        self.arrangement.activate(self.backbone, train=on)

    @property
    def language_manifests(self) -> dict[str, Manifest]:
        """language -> its language module's manifest ({} without a Language composition)."""
        return dict(getattr(self.arrangement, "manifests", {}) or {})

    def use_language(self, language: str) -> None:
        """Put `language`'s module below the composition (MAD-X's swap); a no-op without one.
        A composition with language modules refuses a language it has none for."""
        if isinstance(self.block, Language):
            self.arrangement.use(self.backbone, language)

    # -- the model -----------------------------------------------------------------------------------
    def task_model(self, spec: TaskSpec, head: torch.nn.Module | None = None) -> TaskModel:
        """The backbone with this session's modules plus a task head (fresh, or the saved one)."""
        model = TaskModel(self.backbone, spec, head)
        if self.saved and spec.format != "retrieval":
            head_w = self._head_weights
            prefix = f"heads.{spec.name}."  # a multi-task module keeps one head per task
            if not head_w and any(k.startswith(prefix) for k in self.saved[1]):
                head_w = {k[len(prefix):]: v for k, v in self.saved[1].items() if k.startswith(prefix)}
            man = self.saved[0]
            if man.task != spec.name and spec.name not in man.head.get("tasks", []) and \
                    man.head.get("labels") != (spec.labels and list(spec.labels)):
                raise XtlError(f"module {man.name}@{man.version} was trained on {man.task!r}; its head does not fit "
                               f"task {spec.name!r}", where="--task",
                               fix=f"evaluate it on {man.task!r} or a task with the same labels")
            if not head_w:
                raise XtlError(f"module {man.name}@{man.version} has no task head (imported without one?)",
                               where="--module",
                               fix="train a head for it: use it as an intermediate module in `xtl train`/a recipe")
            model.head.load_state_dict(head_w)
        self.model = model
        return model

    def trainable(self, heads: dict[str, torch.nn.Module] | None = None) -> dict[str, torch.nn.Parameter]:
        """Everything that trains, keyed as it is saved: `module.*`, `head.*` (or `heads.<task>.*`
        for several heads) and `fusion.*`; gradients switched on."""
        out = {f"module.{n}": p for n, p in self.method.named_parameters(self.backbone, self.slot).items()}
        if heads is None and self.model is not None and self.model.head is not None:
            heads = {"head": self.model.head}
        for prefix, head in (heads or {}).items():
            out.update({f"{prefix}.{n}": p for n, p in head.named_parameters()})
        out.update(self.arrangement.extra_parameters(self.backbone))
        for p in out.values():
            p.requires_grad_(True)
        return out

    def weights(self, trainable: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        """What the registry stores: the module's state (placeholder-keyed), heads, fusion."""
        w = {n: p.detach().cpu() for n, p in trainable.items() if not n.startswith("module.")}
        w.update({f"module.{k}": v for k, v in self.method.state_dict(self.backbone, self.slot).items()})
        return w

    def composition_record(self) -> dict[str, Any]:
        """The composition as the manifest stores it: intermediates (and language modules) pinned
        to `name@version`."""
        block = self.block.with_modules([f"{m.name}@{m.version}" for m in self.intermediates])
        if isinstance(block, Language):
            block = block.with_languages({lang: f"{m.name}@{m.version}" for lang, m in self.language_manifests.items()})
        return block.to_dict()

    def manifest(self, *, name: str, task: str, format: str, head: dict, trainable: dict, **fields: Any) -> Manifest:
        return Manifest(name=name, task=task, format=format, method=self.method.name,
                        method_config=self.config.model_dump(), head=head, composition=self.composition_record(),
                        backbone=self.backbone.fingerprint, trainable_params=count_parameters(trainable.values()),
                        library_versions=library_versions(), **fields)

    def save(self, registry: Registry, manifest: Manifest, trainable: dict) -> Manifest:
        return registry.save(manifest, self.weights(trainable))
