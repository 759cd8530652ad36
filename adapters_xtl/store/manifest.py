"""What a saved task module *is*: the provenance record kept next to its weights.

The manifest is the unit of trust in the registry: a module is reused only when its task, method
config and backbone fingerprint match what a run asks for, and its weight files still hash to
what was recorded when it was written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import XtlError

MANIFEST = "manifest.json"

log = logging.getLogger(__name__)

__all__ = ["MANIFEST", "BackboneFingerprint", "Manifest", "check_backbone", "check_scores", "config_hash",
           "library_versions", "read_manifest"]


class BackboneFingerprint(BaseModel):
    """Identifies the frozen encoder a module was trained on.

    Two backbones are interchangeable for a module only when all three fields agree: the same
    weights quantized differently give different hidden states, so the module would not transfer.
    """

    model_config = ConfigDict(frozen=True)

    model_id: str
    weights_sha256: str
    quantization: str = "none"

    def short(self) -> str:
        return f"{self.model_id}@{self.weights_sha256[:12]}/{self.quantization}"

    def differences(self, other: "BackboneFingerprint") -> list[str]:
        out = []
        for field in ("model_id", "weights_sha256", "quantization"):
            a, b = getattr(self, field), getattr(other, field)
            if a != b:
                out.append(f"{field}: {a!r} != {b!r}")
        return out


class Manifest(BaseModel):
    """manifest.json of one module version in the registry."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = 1
    name: str
    version: str = "1"
    task: str
    format: str
    method: str
    method_config: dict[str, Any] = Field(default_factory=dict)
    head: dict[str, Any] = Field(default_factory=dict)
    composition: dict[str, Any] | None = None
    backbone: BackboneFingerprint
    languages_trained: list[str] = Field(default_factory=lambda: ["en"])
    recipe_hash: str | None = None
    steps: int = 0
    seed: int = 0
    train_examples: int = 0
    scores: dict[str, dict[str, float]] = Field(default_factory=dict)  # language -> metric -> value
    trainable_params: int = 0
    library_versions: dict[str, str] = Field(default_factory=dict)
    created_at: str = Field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    files: dict[str, str] = Field(default_factory=dict)  # file name -> sha256
    hub: dict[str, Any] | None = None  # repo_id, revision once pushed/pulled
    # dataset id -> the revision (commit) it resolved to when the module was trained; empty for
    # local files and for manifests written before this field existed
    data_revisions: dict[str, str] = Field(default_factory=dict)

    def reuse_key(self) -> str:
        """Hash of what makes two modules interchangeable (not scores, dates or files)."""
        return config_hash(
            {
                "task": self.task,
                "method": self.method,
                "method_config": self.method_config,
                "composition": self.composition,
                "backbone": self.backbone.model_dump(),
                "steps": self.steps,
                "seed": self.seed,
            }
        )


def check_backbone(m: Manifest, expect: "BackboneFingerprint | Mapping[str, Any]", *, allow_mismatch: bool,
                   where: str) -> None:
    """Refuse (or, when allowed, warn about) a module trained on another backbone than `expect`."""
    if isinstance(expect, Mapping):
        expect = BackboneFingerprint.model_validate(expect)
    diffs = m.backbone.differences(expect)
    if not diffs:
        return
    msg = (f"module {m.name!r} version {m.version} was trained on backbone {m.backbone.short()}, "
           f"but this run uses {expect.short()}; differs in " + "; ".join(diffs) + " (module's != this run's)")
    if not allow_mismatch:
        raise XtlError(msg, where=where,
                       fix="retrain the module on this backbone (or pick one registered for it: `xtl registry "
                       "list`), or load it anyway with --allow-backbone-mismatch "
                       "(allow_backbone_mismatch=True); its recorded scores will not carry over")
    log.warning("loading despite backbone mismatch: %s", msg)


def check_scores(scores: Any, where: str = "Registry.update_scores(scores=...)") -> dict[str, dict[str, float]]:
    """`scores` as language -> metric -> float, or an XtlError naming the first bad entry."""
    example = "e.g. {'de': {'accuracy': 0.71}}"
    if not isinstance(scores, Mapping):
        raise XtlError(f"scores must be a dict language -> metric -> value, got {type(scores).__name__}",
                       where=where, fix=example)
    clean: dict[str, dict[str, float]] = {}
    for lang, per_metric in scores.items():
        if not isinstance(lang, str) or not isinstance(per_metric, Mapping):
            raise XtlError(f"scores[{lang!r}] must map metric names to numbers", where=where, fix=example)
        for metric, value in per_metric.items():
            try:
                clean.setdefault(lang, {})[str(metric)] = float(value)
            except (TypeError, ValueError):
                raise XtlError(f"scores[{lang!r}][{metric!r}] = {value!r} is not a number", where=where,
                               fix="pass floats") from None
    return clean


def config_hash(obj: Any, n: int = 16) -> str:
    """Stable short hash of a JSON-able config (sorted keys), used for cache and reuse keys."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("adapters_xtl", "torch", "transformers", "peft", "adapters", "bitsandbytes", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def read_manifest(path: Path) -> Manifest:
    """Parse one manifest.json, with an XtlError naming the file when it is missing or unreadable."""
    name = Path(path).name
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Manifest.model_validate(data)
    except FileNotFoundError:
        raise XtlError(f"{name} is missing", where=str(path),
                       fix="restore the file, or delete this version folder and retrain") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise XtlError(f"{name} is not readable JSON ({e})", where=str(path),
                       fix="restore the file from a backup or the Hub, or delete this version folder") from None
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise XtlError(f"{name} is not a valid manifest: field {loc!r}: {first.get('msg')} "
                       f"({e.error_count()} problem(s))", where=str(path),
                       fix="restore the file, or delete this version folder and retrain") from None
