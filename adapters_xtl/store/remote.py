"""The one seam between the registry and the place a lazily pulled module's files still live.

A version pulled with `--lazy` is a stub: manifest and card only, pinned to `hub: {repo_id,
revision}`. The registry completes it on first load, but it must not know how files travel (that
is `store.hub`, built on huggingface_hub), so it asks a `Remote`: one function that checks a pin,
one that downloads files of a pinned revision. `adapters_xtl.store` installs the Hub transport as
the default when the package is first imported; `Registry(remote=...)` overrides it (tests, or
another transport).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import XtlError

__all__ = ["Remote", "default_remote", "set_default_remote"]


@dataclass(frozen=True)
class Remote:
    """`check_pin(repo_id, revision) -> (repo_id, revision)` raises XtlError on anything unsafe or
    not pinned to one commit; `download(repo_id, revision, filenames, dest, *, token, endpoint)`
    returns file name -> local path inside `dest`."""

    check_pin: Callable[[Any, Any], tuple[str, str]]
    download: Callable[..., dict[str, Path]]


_default: Remote | None = None


def set_default_remote(remote: Remote | None) -> None:
    global _default
    _default = remote


def default_remote() -> Remote:
    if _default is None:
        raise XtlError("no transport is installed for modules pulled with --lazy", where="adapters_xtl.store",
                       fix="import adapters_xtl.store (it installs the Hub transport), or pass "
                       "Registry(remote=...)")
    return _default
