"""One module on a loaded backbone, from attach to teardown: the lifecycle every training path
shares (single, composed, multi-task, study snapshots, the bench) and every evaluation or
prediction of a saved module.

peft's `BaseTuner.inject_adapter` gives every method one lifecycle; this is ours, one level up:
attach a slot (new, or saved weights), load the composition's intermediates and let the method
arrange them (`Method.compose`), hand out the trainable parameters, build the manifest, save,
and always tear down, so a grid that keeps one backbone in memory never leaks a slot into its
next cell. Time spent attaching and tearing down goes to `swap_clock`, which the grid reports.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

import torch

from .backbone import Backbone
from .compose import Block, Single, as_block
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


def compose_into(backbone: Backbone, registry: Registry, block: Block | dict, method: str, target_slot: str,
                 target_config: dict, *, allow_backbone_mismatch: bool = False) -> tuple[Arrangement, list[Manifest]]:
    """Load a composition's intermediate modules and let the method arrange them around the
    (already added) target slot. Every module is checked before any is loaded."""
    block = as_block(block)
    m = get_method(method)
    mans = []
    for ref in block.modules:
        name, version = parse_ref(ref)
        mans.append(registry.manifest(name, version))
    m.check_composable(block, target_config, mans)
    slots = []
    loaded = []
    for ref in block.modules:
        man, slot, _ = load_module_into(backbone, registry, ref, allow_backbone_mismatch=allow_backbone_mismatch)
        loaded.append(man)
        slots.append(slot)
    return m.compose(backbone, block, target_slot, slots, target_config), loaded


class ModuleSession:
    """A context manager around one module slot. Use `ModuleSession.new(...)` to train a module
    and `ModuleSession.saved(...)` to run a registry module; `with` guarantees teardown."""

    def __init__(self, backbone: Backbone, method: str, method_config: MethodConfig | dict | None, *,
                 slot: str, composition: Block | dict | None = None, registry: Registry | None = None,
                 seed: int | None = None, saved: tuple[Manifest, dict] | None = None,
                 allow_backbone_mismatch: bool = False):
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
        self.arrangement: Arrangement | None = None
        self.intermediates: list[Manifest] = []
        self.model: TaskModel | None = None
        self._head_weights: dict = {}

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def new(cls, backbone: Backbone, name: str, method: str, method_config=None, *, composition=None,
            registry: Registry | None = None, seed: int | None = None, allow_backbone_mismatch: bool = False):
        return cls(backbone, method, method_config, slot=slot_name(f"{name}_training"), composition=composition,
                   registry=registry, seed=seed, allow_backbone_mismatch=allow_backbone_mismatch)

    @classmethod
    def saved_module(cls, backbone: Backbone, registry: Registry, ref: str, *, allow_backbone_mismatch: bool = False,
                     purpose: str = "eval"):
        """A registry module (with the composition it was trained in) ready to run."""
        name, version = parse_ref(ref)
        with swap_clock.measure():
            man, tensors = registry.load(name, version, expect_backbone=backbone.fingerprint,
                                         allow_backbone_mismatch=allow_backbone_mismatch)
        block = as_block(man.composition)
        if block.kind == "continue":  # the weights already hold what was continued from
            block = Single()
        return cls(backbone, man.method, man.method_config, slot=slot_name(f"{man.name}_v{man.version}_{purpose}"),
                   composition=block, registry=registry, saved=(man, tensors),
                   allow_backbone_mismatch=allow_backbone_mismatch)

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
                self.arrangement, self.intermediates = compose_into(
                    self.backbone, self.registry, self.block, self.method.name, self.slot, self.config.model_dump(),
                    allow_backbone_mismatch=self.allow_backbone_mismatch) if self.registry is not None else (
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
        """The composition as the manifest stores it: intermediates pinned to `name@version`."""
        return self.block.with_modules([f"{m.name}@{m.version}" for m in self.intermediates]).to_dict()

    def manifest(self, *, name: str, task: str, format: str, head: dict, trainable: dict, **fields: Any) -> Manifest:
        return Manifest(name=name, task=task, format=format, method=self.method.name,
                        method_config=self.config.model_dump(), head=head, composition=self.composition_record(),
                        backbone=self.backbone.fingerprint, trainable_params=count_parameters(trainable.values()),
                        library_versions=library_versions(), **fields)

    def save(self, registry: Registry, manifest: Manifest, trainable: dict) -> Manifest:
        return registry.save(manifest, self.weights(trainable))
