"""One exception type for every mistake a user can fix.

The CLI turns an `XtlError` into a one-paragraph message and exit code 2 instead of a traceback,
so each raise site must say *where* (file, field, value) and *what would fix it*.
"""

from __future__ import annotations


class XtlError(Exception):
    """A user-fixable problem: bad input, unknown name, mismatched module."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.where = where
        self.fix = fix
        parts = []
        if where:
            parts.append(f"{where}: ")
        parts.append(message)
        if fix:
            parts.append(f"\n  fix: {fix}")
        super().__init__("".join(parts))


def did_you_mean(value: str, options) -> str:
    """A short hint listing the valid options, closest first."""
    import difflib

    options = sorted(options)
    close = difflib.get_close_matches(value, options, n=3)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return hint + f"valid: {', '.join(options)}"
