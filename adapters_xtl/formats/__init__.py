"""Task formats: how examples become tensors, what head sits on the encoder, how it is scored.

One class per format, registered by name; a task YAML's `format:` picks it.
"""

from __future__ import annotations

from ..errors import XtlError, did_you_mean
from .base import Format

_FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    if fmt.name in _FORMATS:
        raise ValueError(f"format {fmt.name!r} registered twice")
    _FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    if name not in _FORMATS:
        raise XtlError(f"format {name!r} is not implemented", where="format", fix=did_you_mean(name, _FORMATS))
    return _FORMATS[name]


from . import classification, multiple_choice, retrieval, span_qa, tagging  # noqa: E402,F401
