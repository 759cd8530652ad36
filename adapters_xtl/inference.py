"""A registry module loaded for inference: `TaskModule.predict` on new text.

A trained module is only useful if it can be run on sentences nobody scored yet. `TaskModule`
holds one module (with the composition it was trained in) on a loaded backbone through a
`ModuleSession`; `predict` turns plain strings or dicts into the task's examples and returns
what a user reads: a label with probabilities, a tag per word, an answer span with its score,
the chosen option, or a sentence embedding. Several TaskModules may share one backbone: each
re-activates its own modules before it predicts. A module trained on language modules (MAD-X)
predicts with the module of the language its inputs are in: `predict(..., language="sw")`.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

from .backbone import Backbone
from .errors import XtlError
from .formats import get_format
from .store.registry import Registry
from .session import ModuleSession, parse_ref
from .tasks import TaskSpec, get_task


class TruncationWarning(UserWarning):
    """Some inputs were longer than the encoder's limit and were cut."""


class TaskModule:
    """One registry module ready to predict. Use as a context manager, or call `close()`, to
    take its weights off the backbone again."""

    def __init__(self, backbone: Backbone, registry: Registry, ref: str, *, task: "str | TaskSpec | None" = None,
                 allow_backbone_mismatch: bool = False, languages: "list[str] | None" = None):
        name, version = parse_ref(ref)
        man = registry.manifest(name, version)  # unknown name/version: names the ones there are
        if str(man.task).startswith("mlm:"):
            raise XtlError(f"{man.name}@{man.version} is a language module ({man.task}): it has no task head to "
                           "predict with", where="module",
                           fix="put it below a task module: train with compose=xtl.Language(...) + ...")
        if task is None and man.format == "mixture":
            raise XtlError(f"module {man.name}@{man.version} is multi-task ({', '.join(man.head.get('tasks', []))})",
                           where="task", fix="say which of its tasks to predict: task=NAME / --task NAME")
        self.spec = get_task(task if task is not None else man.task)
        self.backbone = backbone
        self._session = ModuleSession.saved_module(backbone, registry, f"{man.name}@{man.version}",
                                                   allow_backbone_mismatch=allow_backbone_mismatch, purpose="predict",
                                                   languages=languages)
        self._session.__enter__()
        try:
            self.model = self._session.task_model(self.spec)
        except BaseException:
            self.close()
            raise
        self.manifest = man
        self.format = get_format(self.spec.format)
        self._warned = False

    @property
    def name(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"

    @property
    def languages(self) -> list[str]:
        """The languages it has language modules for ([] for a module without them)."""
        return sorted(self._session.language_manifests) if self._session is not None else []

    def predict(self, inputs: "str | dict | Iterable[str | dict]", *, batch_size: int = 32,
                language: str | None = None) -> list[dict[str, Any]]:
        """One prediction per input, in order. A string is the task's main text (a pair task
        takes `{"text": ..., "text_pair": ...}` or "first<TAB>second"; QA takes
        `{"question": ..., "context": ...}`; multiple choice adds `"choices": [...]`).
        `language`: the inputs' language, for a module trained on language modules."""
        if self._session is None:
            raise XtlError(f"module {self.name} was closed", where="TaskModule.predict",
                           fix="load it again with registry.load_module(...)")
        if self._session.language_manifests:
            if language is None:
                raise XtlError(f"module {self.name} runs on language modules ({', '.join(self.languages)}): say which "
                               "language the inputs are in", where="language",
                               fix=f"predict(..., language={self.languages[0]!r})")
            self._session.use_language(language)  # (a module without them reads every language alike)
        if isinstance(inputs, (str, dict)):
            inputs = [inputs]
        inputs = list(inputs)
        if not inputs:
            return []
        examples = self.format.examples_from_inputs(inputs, self.spec)
        self._session.train_mode(False)  # another TaskModule on this backbone may have been active
        self.model.eval()  # no dropout: a prediction is a pure function of the input
        out = self.format.predict_examples(self.model, examples, self.spec, batch_size=batch_size)
        cut = sum(1 for o in out if o.get("truncated"))
        if cut and not self._warned:
            self._warned = True
            from .formats.base import encoder_limit

            limit = encoder_limit(self.spec, self.model.tokenizer)  # the task's max_length, capped by the tokenizer's
            warnings.warn(f"{cut} of {len(out)} inputs were longer than the encoder's limit and were truncated "
                          f"(at {limit} tokens); their predictions saw only the beginning",
                          TruncationWarning, stacklevel=2)
        return out

    def close(self) -> None:
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None

    def __enter__(self) -> "TaskModule":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TaskModule({self.name}, task={self.spec.name}, {self.manifest.method})"
