"""Compositions as classes: how frozen intermediate modules and a trainable target combine.

A composition is a small validated tree (as adapters' `composition.py`): a block names the
intermediate modules it arranges, checks its own shape when built, and travels as a plain dict
(`to_dict`/`from_dict`) into recipes, grid-cell keys and module manifests. A block only *says*
what to compute; the method that owns the weights carries it out (`Method.compose`, see
`methods/base.py`), because only the method knows peft's or adapters' internals. What each block
computes, per method, is written in docs/compositions.md and pinned by tests/test_compose.py.

Adding a composition: one `Block` subclass here with `kind`, its checks in `validate`, and a
`compose_<kind>` on each method that supports it (the methods list them in
`supported_compositions`; any other method refuses it with a clear message).

`Language` (MAD-X) is the one block that wraps another: it puts a language module below the
whole inner composition (`Language(...) + Stack("nli")`) and names which module serves which
language, so the session can swap the training language's module for each target language's.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from ..errors import XtlError, did_you_mean

MERGE_HOWS = ("linear", "ties", "dare_linear", "dare_ties")
_KINDS: dict[str, type["Block"]] = {}


class Block:
    """A composition over intermediate modules named by registry reference (`name[@version]`)."""

    kind: ClassVar[str] = ""
    min_modules: ClassVar[int] = 0
    max_modules: ClassVar[int | None] = None

    def __init__(self, *modules: str):
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = tuple(modules[0])
        self.modules: list[str] = list(modules)
        self.validate()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.kind:
            if cls.kind in _KINDS:
                raise ValueError(f"composition {cls.kind!r} is defined twice")
            _KINDS[cls.kind] = cls

    # -- checks ---------------------------------------------------------------------------------
    def validate(self) -> None:
        n = len(self.modules)
        for m in self.modules:
            if isinstance(m, Block):
                raise XtlError(f"`{self.kind}` cannot contain the composition `{m.kind}`", where="composition",
                               fix="blocks take intermediate module names; a fused/merged module is made by Fuse/Merge itself")
            if not isinstance(m, str) or not m:
                raise XtlError(f"`{self.kind}` takes module names, got {m!r}", where="composition")
        if n < self.min_modules:
            need = "no" if self.min_modules == 0 else f"at least {self.min_modules}"
            raise XtlError(f"`{self.kind}` needs {need} intermediate module{'s' if self.min_modules != 1 else ''}, got {n}",
                           where="composition", fix=self.usage())
        if self.max_modules is not None and n > self.max_modules:
            raise XtlError(f"`{self.kind}` takes {'no' if self.max_modules == 0 else f'at most {self.max_modules}'} "
                           f"intermediate modules, got {n}", where="composition", fix=self.usage())

    def usage(self) -> str:
        return {"single": "Single() trains the target alone", "stack": "Stack('inter-a'[, 'inter-b'...])",
                "fuse": "Fuse('inter-a', 'inter-b', ...)", "merge": "Merge('inter-a', 'inter-b', how='linear')",
                "continue": "Continue('inter-a')",
                "language": "Language() + Stack('inter-a'), or Language({'en': 'mlm-en', 'sw': 'mlm-sw'})"
                }.get(self.kind, self.kind)

    @property
    def inner(self) -> "Block":
        """The composition of the task modules (itself, except for `Language`)."""
        return self

    def __add__(self, other) -> "Block":
        raise XtlError(f"`{self.kind}` + `{getattr(other, 'kind', other)}` is not a composition", where="composition",
                       fix="only a language block goes below another one: Language(...) + Stack('inter-a')")

    # -- serialisation --------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Settings besides the modules (what `to_dict` stores under the block's own keys)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "modules": list(self.modules), **self.params()}

    @staticmethod
    def from_dict(d: "dict | Block | None") -> "Block":
        if isinstance(d, Block):
            return d
        d = dict(d or {"kind": "single"})
        kind = d.pop("kind", "single")
        if kind not in _KINDS:
            raise XtlError(f"unknown composition {kind!r}", where="composition", fix=did_you_mean(kind, _KINDS))
        return _KINDS[kind]._from_fields(d.pop("modules", None) or [], d)

    @classmethod
    def _from_fields(cls, modules: list[str], fields: dict[str, Any]) -> "Block":
        fields.pop("fusion_rank", None)  # older manifests wrote it for every kind
        cls._no_extra(fields)
        return cls(*modules)

    @classmethod
    def _no_extra(cls, fields: dict[str, Any]) -> None:
        if fields:
            raise XtlError(f"`{cls.kind}` has no setting {sorted(fields)[0]!r}", where="composition",
                           fix=f"settings of {cls.kind}: {', '.join(cls.settings()) or 'none'}")

    @classmethod
    def settings(cls) -> list[str]:
        return []

    def with_modules(self, modules: list[str]) -> "Block":
        """The same block over other references (e.g. resolved `name@version`)."""
        return Block.from_dict({**self.to_dict(), "modules": list(modules)})

    def __eq__(self, other) -> bool:
        return isinstance(other, Block) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        args = [repr(m) for m in self.modules] + [f"{k}={v!r}" for k, v in self.params().items()]
        return f"{type(self).__name__}({', '.join(args)})"


class Single(Block):
    """No intermediate: the target module alone (the baseline every gain is measured against)."""

    kind = "single"
    max_modules = 0


class Stack(Block):
    """Frozen intermediates below the trainable target (LoRA: deltas summed; bottleneck: sequential)."""

    kind = "stack"
    min_modules = 1


class Continue(Block):
    """STILTs: the target starts as a copy of one intermediate (same method and config)."""

    kind = "continue"
    min_modules = 1
    max_modules = 1


class Fuse(Block):
    """Learned attention over two or more frozen intermediates, plus the target."""

    kind = "fuse"
    min_modules = 2

    def __init__(self, *modules: str, rank: int = 16):
        self.rank = int(rank)
        if self.rank < 1:
            raise XtlError(f"fusion rank must be >= 1, got {rank!r}", where="composition.fusion_rank")
        super().__init__(*modules)

    def params(self):
        return {"fusion_rank": self.rank}

    @classmethod
    def settings(cls):
        return ["fusion_rank"]

    @classmethod
    def _from_fields(cls, modules, fields):
        rank = fields.pop("fusion_rank", 16)
        cls._no_extra(fields)
        return cls(*modules, rank=rank)


class Merge(Block):
    """One module made from two or more intermediates' deltas (linear, TIES, DARE), then stacked."""

    kind = "merge"
    min_modules = 2

    def __init__(self, *modules: str, how: Literal["linear", "ties", "dare_linear", "dare_ties"] = "linear",
                 weights: list[float] | None = None, density: float = 0.5, seed: int = 0):
        how = "dare_linear" if how == "dare" else how
        if how not in MERGE_HOWS:
            raise XtlError(f"unknown merge {how!r}", where="composition.merge.how", fix=did_you_mean(str(how), MERGE_HOWS))
        if not 0.0 < float(density) <= 1.0:
            raise XtlError(f"merge density must be in (0, 1], got {density!r}", where="composition.merge.density")
        self.how, self.density, self.seed = how, float(density), int(seed)
        self.weights = [float(w) for w in weights] if weights is not None else None
        super().__init__(*modules)
        if self.weights is not None and len(self.weights) != len(self.modules):
            raise XtlError(f"merge.weights has {len(self.weights)} entries for {len(self.modules)} modules",
                           where="composition.merge.weights", fix="give one weight per module, or none (1/n each)")

    def params(self):
        return {"merge": {"how": self.how, "weights": self.weights, "density": self.density, "seed": self.seed}}

    @classmethod
    def settings(cls):
        return ["merge.how", "merge.weights", "merge.density", "merge.seed"]

    @classmethod
    def _from_fields(cls, modules, fields):
        fields.pop("fusion_rank", None)
        m = dict(fields.pop("merge", None) or {})
        cls._no_extra(fields)
        unknown = set(m) - {"how", "weights", "density", "seed"}
        if unknown:
            raise XtlError(f"merge has no setting {sorted(unknown)[0]!r}", where="composition.merge",
                           fix="settings: how, weights, density, seed")
        return cls(*modules, **m)


_LANG_CODE = re.compile(r"^[a-z]{2,3}(_[A-Z][a-z]{3})?$")


class Language(Block):
    """MAD-X (Pfeiffer et al. 2020): a frozen language module below the whole inner composition.

    The target trains on top of the training language's module (English); when it is scored on
    another language, that language's module takes its place. `languages` says which module
    serves which language: a mapping `{lang: "name[@version]"}`, language codes alone (their
    modules are looked up in the registry: the newest module registered for task `mlm:<lang>`),
    or nothing (every language is looked up). A language the mapping leaves out is looked up too.
    """

    kind = "language"

    def __init__(self, languages: "dict[str, str | None] | list[str] | str | None" = None, *more: str,
                 then: "Block | dict | str | None" = None):
        if isinstance(languages, str) and languages in ("auto", "madx", "all"):
            languages = None
        if isinstance(languages, str):
            languages = [languages, *more]
        elif more:
            raise XtlError("Language takes language codes or one mapping {lang: module}, not both", where="composition",
                           fix=self.usage())
        if languages is None:
            languages = {}
        if isinstance(languages, (list, tuple)):
            languages = {code: None for code in languages}
        if not isinstance(languages, dict):
            raise XtlError(f"Language takes a mapping {{lang: module}} or language codes, got {languages!r}",
                           where="composition.languages", fix=self.usage())
        for code, ref in languages.items():
            if not isinstance(code, str) or not _LANG_CODE.match(code):
                raise XtlError(f"{code!r} is not a language code", where="composition.languages",
                               fix="codes as the tasks use them: sw, yo, en (or a FLORES code like swh_Latn)")
            if ref is not None and (not isinstance(ref, str) or not ref):
                raise XtlError(f"language {code!r}: module {ref!r} is not a registry reference",
                               where="composition.languages", fix="name[@version] of a module made by train-language")
        self.languages: dict[str, str | None] = dict(languages)
        inner = as_block(then)
        if isinstance(inner, Language):
            raise XtlError("a composition has one language block", where="composition",
                           fix="Language(...) + Stack('inter-a'): the language module sits below everything else")
        self.then = inner
        self.modules = list(inner.modules)

    @property
    def inner(self) -> Block:
        return self.then

    def __add__(self, other) -> "Language":
        if isinstance(self.then, Single):
            return Language(self.languages, then=as_block(other))
        raise XtlError(f"{self!r} already has a composition above it", where="composition",
                       fix="Language(...) + Stack('a', 'b'): one block above the language module")

    def params(self):
        inner = self.then.to_dict()
        inner.pop("modules", None)
        return {"languages": dict(self.languages), "then": inner}

    def with_modules(self, modules: list[str]) -> "Language":
        return Language(self.languages, then=self.then.with_modules(modules))

    def with_inner(self, inner: "Block") -> "Language":
        return Language(self.languages, then=inner)

    def with_languages(self, languages: dict[str, str | None]) -> "Language":
        return Language(dict(languages), then=self.then)

    @classmethod
    def settings(cls):
        return ["languages", "then"]

    @classmethod
    def _from_fields(cls, modules, fields):
        languages = fields.pop("languages", None)
        then = dict(fields.pop("then", None) or {"kind": "single"})
        cls._no_extra(fields)
        then["modules"] = list(modules)
        return cls(languages, then=Block.from_dict(then))

    def __repr__(self) -> str:
        return f"Language({self.languages!r}, then={self.then!r})"


def kinds() -> list[str]:
    return list(_KINDS)


def as_block(value: "Block | dict | str | None") -> Block:
    """Whatever a caller passes as a composition: a block, its dict, a kind name, or nothing."""
    if isinstance(value, str):
        return Block.from_dict({"kind": value})
    return Block.from_dict(value)
