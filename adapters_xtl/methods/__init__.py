"""Task-module methods, registered by name (as peft's `register_peft_method`).

A recipe says `method: lora`, `method: bottleneck` or `method: ia3`; nothing else in the code
base needs to know which library implements it. Adding a method = one file that calls `register_method`.
"""

from __future__ import annotations

from ..errors import XtlError, did_you_mean
from .base import Method

_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise XtlError(f"unknown method {name!r}", where="method", fix=did_you_mean(name, _METHODS))
    return _METHODS[name]


def method_of_config(config) -> str:
    """The registered method whose config class `config` is (xtl.LoRA(...) -> "lora")."""
    for name, m in _METHODS.items():
        if type(config) is m.config_cls:
            return name
    raise XtlError(f"no method takes a {type(config).__name__}", where="method", fix=f"methods: {', '.join(_METHODS)}")


def method_names() -> list[str]:
    return sorted(_METHODS)


from . import bottleneck, ia3, lora  # noqa: E402,F401  (registration side effect)
