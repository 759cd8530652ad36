"""Language modules (MAD-X, Pfeiffer et al. 2020): a module per language, trained with masked
language modelling on unlabeled text, registered like any module under task `mlm:<lang>`.

A task module trained in a `Language(...)` composition sits on top of the training language's
module; scored on another language it runs on that language's module instead (session.py,
`use_language`). Bottleneck language modules are adapters' `seq_bn_inv` (the Pfeiffer adapter
plus a NICE invertible adapter on the embeddings, reduction factor 2 as in the paper); LoRA
language modules are plain LoRA modules.

The LM head: a backbone whose checkpoint holds a pretrained one (`lm_head.*`, as XLM-R's) uses
it, frozen, as MAD-X does; one without (the offline `xlmr-e5-small` is an encoder only) gets
RobertaLMHead's shape with a fresh transform (dense + gelu + layer norm) and the decoder tied to
the input embeddings, trained with the module. The manifest's `head` says which.

Text: a local UTF-8 file (one sentence or paragraph per line), or the unlabeled side of a task's
split in that language. A task's evaluation split is never training text, and a language
module whose text holds any sentence of the test data it would then be evaluated with is
refused when it is composed (`check_no_test_text`): a module that has read the test sentences
makes the zero-shot scores on them meaningless.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backbone import Backbone
from .errors import XtlError, did_you_mean
from .formats.mlm import LMHead, MLMObjective
from .methods import get_method
from .model import Encoder
from .session import ModuleSession
from .store.manifest import Manifest
from .store.registry import Registry
from .trainer import TrainConfig, TrainResult, train, training_record

LANGUAGE_METHODS = ("bottleneck", "lora")
DEFAULT_METHOD_CONFIG = {"bottleneck": {"variant": "seq_bn_inv", "reduction_factor": 2}, "lora": {}}
DEFAULT_TRAIN = {"steps": 200, "batch_size": 16, "lr": 5e-4, "eval_every": 50, "log_every": 10, "eval_examples": None}
DEV_SEED = 1234  # the dev features' one masking
MAX_DEV_LINES = 500


def task_of(language: str) -> str:
    return f"mlm:{language}"


# ------------------------------------------------------------------------------- languages
def known_languages() -> dict[str, str]:
    """Every language code a task of the catalog knows: ours (`sw`) and the tasks' own codes
    (`swh_Latn`), each mapped to ours."""
    from .tasks import active_catalog, get_task

    out: dict[str, str] = {}
    for name in active_catalog().names():
        try:
            spec = get_task(name)
        except XtlError:
            continue
        for ours, code in spec.languages.items():
            out.setdefault(ours, ours)
            out.setdefault(code, ours)
    return out


def language_code(language: str, where: str = "--lang") -> str:
    """Our code of `language` (`sw` for `sw` or `swh_Latn`), or an XtlError naming close ones."""
    if not isinstance(language, str) or not language.strip():
        raise XtlError(f"{language!r} is not a language code", where=where, fix="e.g. sw, yo, en")
    known = known_languages()
    if language not in known:
        raise XtlError(f"unknown language code {language!r}: no task of the catalog has it", where=where,
                       fix=did_you_mean(language, sorted(k for k in known if "_" not in k)) +
                       " (codes as the tasks use them; a task of your own in --tasks-dir adds its languages)")
    return known[language]


# ------------------------------------------------------------------------------------ text
def _line_hash(text: str) -> bytes:
    from .data import normalise_text

    return hashlib.blake2b(normalise_text(text).encode("utf-8"), digest_size=8).digest()


def _hashes_b64(lines: list[str]) -> str:
    return base64.b64encode(b"".join(sorted({_line_hash(x) for x in lines}))).decode("ascii")


def _hash_set(b64: str) -> set[bytes]:
    raw = base64.b64decode(b64.encode("ascii"))
    return {raw[i:i + 8] for i in range(0, len(raw), 8)}


def _example_texts(example: dict) -> list[str]:
    from .data import NOT_TEXT

    out = []
    for k, v in example.items():
        if k in NOT_TEXT or v is None:
            continue
        if isinstance(v, str) and v.strip():
            out.append(v.strip())
        elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            out.append(" ".join(v))
    return out


@dataclass
class Text:
    """Training text of one language module, and where it came from (the manifest records it)."""

    lines: list[str]
    record: dict[str, Any]


def read_text_file(path: Path, language: str) -> Text:
    where = str(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise XtlError(f"{path} is a folder, not a text file", where="--text", fix="name one UTF-8 text file") from None
    except OSError as e:
        raise XtlError(f"cannot read {path}: {e.strerror}", where="--text") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise XtlError(f"not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})", where=where,
                       fix="save the file as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)") from None
    lines = [x.strip() for x in text.lstrip("\ufeff").splitlines() if x.strip()]
    if not lines:
        raise XtlError("the text file has no text (every line is empty)", where=where,
                       fix=f"give a file with {language} sentences, one per line")
    return Text(lines, {"source": "file", "path": str(path.resolve()), "language": language})


def read_task_text(task: str, split: str | None, language: str, data_dir: Path | None) -> Text:
    """The text roles of a task's split in `language`; never its evaluation split."""
    from .data import load_examples
    from .tasks import get_task

    spec = get_task(task)
    spec.language_code(language)  # the task does not have this language: its own clear error
    test = spec.eval_split
    other = f"a text file of {language} sentences (--text FILE), or another task's train/validation side"
    if split == test:
        raise XtlError(f"the {test} split of {spec.name!r} in {language!r} is the text {spec.name} is evaluated on: "
                       f"a language module trained on it would have read the test sentences, and a zero-shot score "
                       f"on them would measure that", where="--text",
                       fix=f"pick another split ({', '.join(s for s in spec.splits if s != test) or 'it has none'}) or "
                           f"{other}")
    if split is not None and split not in spec.splits and not (spec.id_split and split in ("train", "validation")):
        raise XtlError(f"task {spec.name!r} has no split {split!r}", where="--text",
                       fix=f"splits: {', '.join(s for s in spec.splits if s != test)} (not {test}: it is evaluated on)")
    tried = []
    for s in [split] if split else [s for s in ("train", "validation") if s in spec.splits or spec.id_split]:
        try:
            examples = load_examples(spec, s, language, data_dir)
        except XtlError as e:
            if split:
                raise
            tried.append(f"{s}: {str(e).splitlines()[0]}")
            continue
        lines = [t for ex in examples for t in _example_texts(ex)]
        if lines:
            return Text(lines, {"source": "task", "task": spec.name, "split": s, "language": language})
        tried.append(f"{s}: no text")
    raise XtlError(f"task {spec.name!r} has no {language!r} text besides its {test} split"
                   + (f" ({'; '.join(tried)})" if tried else "") +
                   f"; {test} is what {spec.name} is evaluated on, so it is never training text for a language module",
                   where="--text", fix=f"use {other}")


def read_text(sources: "list[str | Path] | str | Path", language: str, data_dir: Path | None = None) -> Text:
    """Lines from each source (a file path, or `TASK[:SPLIT]`), in order, as one text."""
    from .tasks import task_names

    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise XtlError("no text given", where="--text", fix="--text FILE (one sentence per line) or --text TASK[:SPLIT]")
    parts = []
    for src in sources:
        p = Path(str(src)).expanduser()
        if p.exists():
            parts.append(read_text_file(p, language))
            continue
        name, _, split = str(src).partition(":")
        if name in task_names() or name.endswith((".yaml", ".yml")) and Path(name).exists():
            parts.append(read_task_text(name, split or None, language, data_dir))
            continue
        raise XtlError(f"--text {str(src)!r} is neither a file nor a task", where="--text",
                       fix="a UTF-8 text file (one sentence per line), or TASK[:SPLIT] of the catalog (`xtl tasks`); "
                           + did_you_mean(name, task_names()))
    lines = [x for part in parts for x in part.lines]
    records = [part.record for part in parts]
    record: dict[str, Any] = {"sources": records, "language": language, "lines": len(lines),
                              "sha256": hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest(),
                              "line_hashes": _hashes_b64(lines)}
    return Text(lines, record)


def check_no_test_text(spec, split: str, language_manifests: dict[str, Manifest], languages: list[str] | None,
                       data_dir: Path | None) -> None:
    """Refuse language modules whose training text holds test text of `spec` they would be
    evaluated with: the module of language L against L's `split` examples."""
    from .data import load_examples

    for lang in languages or list(spec.languages):
        man = language_manifests.get(lang)
        if man is None or spec.format == "retrieval":
            continue
        text = (getattr(man, "language_module", None) or {}).get("text") or {}
        for src in text.get("sources", []):
            if src.get("source") == "task" and src.get("task") == spec.name and src.get("split") == split:
                raise _leak(man, spec, split, lang, f"it was trained on that very split")
        hashes = text.get("line_hashes")
        if not hashes:
            continue
        seen = _hash_set(hashes)
        examples = load_examples(spec, split, lang, data_dir)
        hits = [t for ex in examples for t in _example_texts(ex) if _line_hash(t) in seen]
        if hits:
            raise _leak(man, spec, split, lang, f"{len(hits)} of its lines are {split} text (e.g. {hits[0][:60]!r})")


def _leak(man: Manifest, spec, split: str, lang: str, why: str) -> XtlError:
    return XtlError(f"language module {man.name}@{man.version} ({man.task}) has read {spec.name}'s {split} text in "
                    f"{lang!r}: {why}; scoring {spec.name} in {lang} on top of it would measure memorised test "
                    f"sentences", where="language",
                    fix=f"train the {lang} language module on other text (another split, or a file without "
                        f"{spec.name}'s {split} sentences), or evaluate another task")


# ----------------------------------------------------------------------------------- model
class MaskedLM(Encoder, torch.nn.Module):
    """The backbone with a language module active, plus the LM head: what the trainer trains."""

    def __init__(self, backbone: Backbone, head: LMHead, objective: MLMObjective, method: str):
        torch.nn.Module.__init__(self)
        self.backbone = backbone
        self.head = head.to(backbone.device)
        self.format = objective
        self.spec = None
        self.method = get_method(method)

    def forward(self, batch):
        hidden = self.encode(batch).last_hidden_state
        labels = batch["labels"]
        chosen = labels != -100
        logits = self.head(hidden[chosen].float(), inverse=self.method.inverse_embedding_transform(self.backbone))
        return {"logits": logits, "labels": labels[chosen]}

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.model.train(mode)
        return self


def pretrained_lm_head(backbone: Backbone) -> dict[str, torch.Tensor] | None:
    """`lm_head.*` of the backbone's checkpoint (transform, layer norm, bias), when it has one."""
    folder = Path(str(backbone.source))
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                if k.startswith("lm_head.") and k.split(".", 1)[1] in ("dense.weight", "dense.bias", "layer_norm.weight",
                                                                       "layer_norm.bias", "bias"):
                    out[k.split(".", 1)[1]] = fh.get_tensor(k)
    return out if len(out) == 5 else None


def make_head(backbone: Backbone) -> tuple[LMHead, dict[str, Any]]:
    """The LM head and what the manifest says of it."""
    emb = backbone.model.get_input_embeddings()
    head = LMHead(backbone.hidden_size, emb, eps=float(getattr(backbone.config, "layer_norm_eps", 1e-5)))
    pre = pretrained_lm_head(backbone)
    if pre is not None:
        head.load_state_dict(pre, strict=True)
        head.requires_grad_(False)
        return head, {"kind": "lm", "decoder": "tied to the input embeddings", "transform": "pretrained",
                      "trained": False, "note": "the backbone's own LM head, frozen (MAD-X)"}
    return head, {"kind": "lm", "decoder": "tied to the input embeddings", "transform": "fresh",
                  "trained": True, "note": "the backbone has no pretrained LM head: a RobertaLMHead-shaped head "
                  "(dense + gelu + layer norm, decoder tied to the input embeddings) was trained with the module"}


# -------------------------------------------------------------------------------- training
@dataclass
class LanguageModule:
    manifest: Manifest
    result: TrainResult
    dev_before: dict[str, float] = field(default_factory=dict)  # masked-token accuracy and loss, untrained
    dev_after: dict[str, float] = field(default_factory=dict)
    text_lines: int = 0

    @property
    def name(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"


def language_train_config(layers: "dict | TrainConfig | None" = None) -> TrainConfig:
    if isinstance(layers, TrainConfig):
        return layers
    return TrainConfig.resolve(None, DEFAULT_TRAIN, layers, where="train-language")


def train_language(backbone: Backbone, language: str, text: "list[str | Path] | str | Path", *,
                   method: str = "bottleneck", method_config: dict | None = None,
                   train_config: "TrainConfig | dict | None" = None, registry: Registry | None = None,
                   name: str | None = None, data_dir: Path | None = None, max_length: int = 128,
                   checkpoint_dir: Path | None = None, progress=None) -> LanguageModule:
    """Train one language module with masked language modelling on `text` (files and/or
    `TASK[:SPLIT]`) and register it as `name` (default `mlm-<lang>-<method>`), task `mlm:<lang>`."""
    from . import checks

    lang = language_code(language)
    if method not in LANGUAGE_METHODS:
        raise XtlError(f"language modules are {' or '.join(LANGUAGE_METHODS)} modules, not {method!r}",
                       where="--method", fix=did_you_mean(method, LANGUAGE_METHODS))
    m = get_method(method)
    mcfg = m.make_config({**DEFAULT_METHOD_CONFIG[method], **(method_config or {})}, where="--method-config")
    cfg = language_train_config(train_config)
    name = checks.module_name(name or f"mlm-{lang}-{method}", "--name")
    registry = registry or Registry()
    corpus = read_text(text, lang, data_dir)
    objective = MLMObjective(backbone.tokenizer, max_length=max_length)
    features = objective.encode(corpus.lines)
    if not features:
        raise XtlError("the text has no line with a token besides the special ones", where="--text",
                       fix=f"give {lang} sentences")
    n_dev = min(MAX_DEV_LINES, len(features) // 20) if len(features) >= 40 else 0
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(features), generator=g).tolist()
    dev = objective.mask_once([features[i] for i in order[:n_dev]], DEV_SEED)
    train_feats = [features[i] for i in order[n_dev:]]

    with ModuleSession.new(backbone, name, method, mcfg, registry=registry, seed=cfg.seed) as session:
        head, head_info = make_head(backbone)
        model = MaskedLM(backbone, head, objective, method)
        trainable = session.trainable(heads={"head": head} if head_info["trained"] else {})
        before = objective.score(model.eval(), dev, None, None, cfg.batch_size * 2) if dev else {}
        result = train(model, trainable, train_feats, dev or None, dev or None, cfg, checkpoint_dir=checkpoint_dir,
                       main_metric="accuracy", progress=progress, description=name)
        session.train_mode(False)
        after = objective.score(model.eval(), dev, None, None, cfg.batch_size * 2) if dev else {}
        weights = session.weights(trainable)
        weights.update({f"head.{k}": v.detach().cpu() for k, v in head.state_dict().items()})
        manifest = session.manifest(
            name=name, task=task_of(lang), format="mlm", head={**head_info, "max_length": max_length},
            trainable=trainable, steps=cfg.steps, seed=cfg.seed, train_examples=len(train_feats),
            languages_trained=[lang],
            training=training_record(cfg, result, padding_waste=round(result.padding_waste, 4)),
            language_module={"language": lang, "text": corpus.record, "dev_lines": len(dev),
                             "dev_before": before, "dev_after": after,
                             "objective": "masked LM (transformers DataCollatorForLanguageModeling, 15%)"},
        )
        manifest = registry.save(manifest, weights)
    return LanguageModule(manifest, result, before, after, len(corpus.lines))


def evaluate_language(backbone: Backbone, ref: str, text: "list[str | Path] | str | Path", *,
                      registry: Registry | None = None, data_dir: Path | None = None, seed: int = DEV_SEED,
                      batch_size: int = 32) -> dict[str, float]:
    """Masked-token accuracy (percent) and loss of a registered language module (with its saved
    head) on `text`, masked once with `seed`: the same text and seed give the same masks, so two
    modules, or one module before and after a reload, are compared on the same tokens."""
    registry = registry or Registry()
    from .model import split_weights
    from .session import parse_ref

    n, v = parse_ref(ref)
    man = registry.manifest(n, v)
    if not str(man.task).startswith("mlm:"):
        raise XtlError(f"{man.name}@{man.version} (task {man.task!r}) is not a language module", where="module",
                       fix="evaluate task modules with xtl eval")
    corpus = read_text(text, man.task[4:], data_dir)
    objective = MLMObjective(backbone.tokenizer, max_length=int(man.head.get("max_length", 128)))
    features = objective.mask_once(objective.encode(corpus.lines), seed)
    with ModuleSession.saved_module(backbone, registry, f"{man.name}@{man.version}", purpose="mlm") as session:
        head, _ = make_head(backbone)
        _, head_w = split_weights(session.saved[1])
        head.load_state_dict(head_w)
        model = MaskedLM(backbone, head, objective, man.method).eval()
        session.train_mode(False)
        return objective.score(model, features, None, None, batch_size)
