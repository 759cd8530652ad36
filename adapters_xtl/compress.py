"""Memory measures for training task modules on a frozen backbone.

Four independent measures; each returns a configured object (or changes the loaded backbone) so
the trainer and the runner only have to pass a setting through:

- **Vocabulary trimming** (`trim_vocabulary`): keep only the rows of the word-embedding matrix
  that a recipe's texts use. XLM-R has 250,002 pieces; the embeddings are 46% of XLM-R large and
  81% of e5-small. Token ids are remapped on the fly by a tokenizer wrapper. Task modules never
  touch the embeddings, so a module trained on a trimmed backbone loads and runs unchanged on the
  full one, and on covered text the hidden states are bit-identical (tests/test_compress.py).
- **8-bit / 4-bit embeddings** (`quantize_embeddings`): bitsandbytes `Embedding8bit` (LLM.int8
  row-wise absmax) / `Embedding4bit` (NF4 blocks). bitsandbytes quantizes `Linear` layers only,
  so a 4-bit backbone still carries fp32 embeddings until this is applied. Both work on CPU in
  bitsandbytes 0.50.
- **Gradient checkpointing** (`enable_gradient_checkpointing`): recompute each encoder layer in
  the backward pass. With a frozen base the reentrant variant (transformers' default) gets no
  input that requires grad and fails ("element 0 of tensors does not require grad") or silently
  drops gradients; the non-reentrant one (`use_reentrant=False`) works with peft's injected LoRA
  and with `adapters` (which refuses the reentrant one), and gives the same loss and gradients.
- **8-bit / paged optimizers** (`make_optimizer`): bitsandbytes `AdamW8bit` / `PagedAdamW8bit`.
  For adapters the optimizer state is small (2 x trainable params), so the saving is small too;
  paged optimizers need CUDA unified memory and are refused on CPU.

Knobs as the trainer/recipe should expose them:
  TrainConfig.gradient_checkpointing: bool = False
  TrainConfig.optimizer: "adamw" | "adamw8bit" | "paged_adamw8bit" = "adamw"
  backbone (load time, beside quantization): embeddings: "full" | "trimmed" | "8bit" | "4bit" |
      "trimmed+8bit" | "trimmed+4bit" = "full"
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch

from .backbone import Backbone
from .errors import XtlError, did_you_mean

OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")
EMBEDDING_MODES = ("full", "trimmed", "8bit", "4bit", "trimmed+8bit", "trimmed+4bit")


# ------------------------------------------------------------------------------------------ helpers
def word_embeddings(backbone: Backbone) -> torch.nn.Module:
    return backbone.model.get_input_embeddings()


def _set_word_embeddings(backbone: Backbone, module: torch.nn.Module) -> None:
    backbone.model.set_input_embeddings(module)


def embedding_bytes(backbone: Backbone) -> int:
    """Bytes held by the word-embedding module (weights and quantization statistics)."""
    emb = word_embeddings(backbone)
    n = 0
    for t in list(emb.parameters()) + list(emb.buffers()):
        n += t.numel() * t.element_size()
        qs = getattr(t, "quant_state", None)
        if qs is not None and getattr(qs, "absmax", None) is not None:
            n += qs.absmax.numel() * qs.absmax.element_size()
            if getattr(qs, "state2", None) is not None:
                n += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
        scb = getattr(t, "SCB", None)
        if scb is not None:
            n += scb.numel() * scb.element_size()
    return n


# ------------------------------------------------------------------------------ gradient checkpointing
def enable_gradient_checkpointing(backbone: Backbone) -> None:
    """Recompute encoder layers in the backward pass (non-reentrant: works with a frozen base).

    Only active while the model is in training mode; evaluation is unaffected. Call it after the
    method library has been attached (`adapters.init` overrides the method on the model).
    """
    model = backbone.model
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise XtlError(f"{type(model).__name__} does not support gradient checkpointing", where="gradient_checkpointing")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_gradient_checkpointing(backbone: Backbone) -> None:
    if getattr(backbone.model, "is_gradient_checkpointing", False):
        backbone.model.gradient_checkpointing_disable()


@contextlib.contextmanager
def gradient_checkpointing(backbone: Backbone, enabled: bool = True):
    """`with gradient_checkpointing(bb, cfg.gradient_checkpointing): train(...)` (shared backbones
    go back to normal afterwards)."""
    if not enabled:
        yield
        return
    enable_gradient_checkpointing(backbone)
    try:
        yield
    finally:
        disable_gradient_checkpointing(backbone)


# ------------------------------------------------------------------------------------------ optimizers
def make_optimizer(param_groups: list[dict] | Iterable[torch.nn.Parameter], kind: str = "adamw",
                   device: torch.device | str | None = None, **defaults: Any) -> torch.optim.Optimizer:
    """The optimizer the trainer uses, by name.

    `adamw`: torch AdamW, fused on CUDA and foreach on CPU (what train.py does);
    `adamw8bit`: bitsandbytes AdamW8bit (state in 8 bits; tensors under 4096 elements stay 32-bit);
    `paged_adamw8bit`: the same with state in CUDA unified memory (CUDA only).
    """
    if kind not in OPTIMIZERS:
        raise XtlError(f"unknown optimizer {kind!r}", where="optimizer", fix=did_you_mean(kind, OPTIMIZERS))
    dev = torch.device(device) if device is not None else None
    if dev is None:
        groups = param_groups if isinstance(param_groups, list) else list(param_groups)
        first = groups[0]["params"][0] if groups and isinstance(groups[0], dict) else (groups[0] if groups else None)
        dev = first.device if first is not None else torch.device("cpu")
        param_groups = groups
    if kind == "adamw":
        if dev.type == "cuda":
            return torch.optim.AdamW(param_groups, fused=True, **defaults)
        return torch.optim.AdamW(param_groups, foreach=True, **defaults)
    if kind == "paged_adamw8bit" and dev.type != "cuda":
        raise XtlError("paged optimizers need CUDA (their state lives in CUDA unified memory)", where="optimizer",
                       fix="use optimizer: adamw (or adamw8bit) on CPU")
    try:
        import bitsandbytes as bnb
    except Exception as e:  # pragma: no cover - bnb is a dependency
        raise XtlError(f"optimizer {kind!r} needs bitsandbytes ({e})", where="optimizer", fix="use optimizer: adamw") from e
    cls = bnb.optim.AdamW8bit if kind == "adamw8bit" else bnb.optim.PagedAdamW8bit
    return cls(param_groups, **defaults)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    n = 0
    for st in optimizer.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                n += v.numel() * v.element_size()
    return n


# --------------------------------------------------------------------------------- 8/4-bit embeddings
def _bnb():
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes as bnb

    return bnb


def _embedding_classes():
    """bnb's embeddings refuse `state_dict()` (NotImplementedError), which would break saving a
    task module (`Method.state_dict` reads the whole model's state dict and keeps its own keys).
    These subclasses write the packed tensors instead; they are informative, not reloadable: the
    embeddings are re-quantized from the full backbone at load time."""
    bnb = _bnb()

    class XtlEmbedding8bit(bnb.nn.Embedding8bit):
        def _save_to_state_dict(self, destination, prefix, keep_vars):
            destination[prefix + "weight"] = self.weight.data if keep_vars else self.weight.data.detach()
            if getattr(self.weight, "SCB", None) is not None:
                destination[prefix + "weight_scb"] = self.weight.SCB.detach()

    class XtlEmbedding4bit(bnb.nn.Embedding4bit):
        def _save_to_state_dict(self, destination, prefix, keep_vars):
            destination[prefix + "weight"] = self.weight.data.detach()

    return XtlEmbedding8bit, XtlEmbedding4bit


def quantized_embedding(emb: torch.nn.Embedding, bits: int, quant_type: str = "nf4") -> torch.nn.Module:
    """A bnb 8-bit (LLM.int8 row-wise) or 4-bit (`nf4`/`fp4` blocks of 64) copy of `emb`."""
    bnb = _bnb()
    if bits not in (8, 4):
        raise XtlError(f"embedding bits must be 8 or 4, not {bits}", where="embeddings")
    if not isinstance(emb, torch.nn.Embedding) or isinstance(emb, (bnb.nn.Embedding8bit, bnb.nn.Embedding4bit)):
        raise XtlError("the word embeddings are already quantized", where="embeddings")
    C8, C4 = _embedding_classes()
    n, d = emb.weight.shape
    device, dtype = emb.weight.device, emb.weight.dtype
    w = emb.weight.data.detach().to("cpu")  # bnb quantizes when a parameter moves off the CPU copy
    with torch.device("meta"):  # no second full-size fp32 matrix for the random init
        q = C8(n, d, dtype=dtype) if bits == 8 else C4(n, d, dtype=dtype, quant_type=quant_type)
    q.padding_idx = emb.padding_idx
    if bits == 8:
        q.weight = bnb.nn.Int8Params(w, has_fp16_weights=False, requires_grad=False)
    else:
        import warnings

        q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=None, quant_type=quant_type,
                                     quant_storage=torch.uint8, module=q)
        if d % q.weight.blocksize:
            warnings.warn(f"embedding width {d} is not a multiple of the 4-bit block size {q.weight.blocksize}: "
                          "lookups dequantize the whole matrix (slow)", stacklevel=2)
    q = q.to(device)
    q.dtype = dtype
    return q


def quantize_embeddings(backbone: Backbone, bits: int = 8, quant_type: str = "nf4") -> dict:
    """Replace the backbone's word embeddings by an 8-bit or 4-bit copy, in place.

    Returns {bytes_before, bytes_after}. Position and token-type tables stay fp32 (tiny).
    """
    before = embedding_bytes(backbone)
    q = quantized_embedding(word_embeddings(backbone), bits, quant_type)
    _set_word_embeddings(backbone, q)
    if backbone.device.type == "cuda":
        torch.cuda.empty_cache()
    backbone.embeddings_mode = _join_mode(getattr(backbone, "embeddings_mode", "full"), f"{bits}bit")
    return {"bytes_before": before, "bytes_after": embedding_bytes(backbone)}


@torch.no_grad()
def embedding_quantization_error(weight: torch.Tensor, bits: int, quant_type: str = "nf4",
                                 rows: int | None = 20000, seed: int = 0) -> dict:
    """How far the quantized rows are from the originals (on a sample of `rows` rows).

    rel_error: ||Q - W|| / ||W|| (Frobenius); max_abs: largest absolute element error;
    min_cosine / mean_cosine: cosine between each quantized row and its original (non-zero rows).
    """
    w = weight.detach().float().cpu()
    if rows and w.shape[0] > rows:
        g = torch.Generator().manual_seed(seed)
        w = w[torch.randperm(w.shape[0], generator=g)[:rows]]
    emb = torch.nn.Embedding(w.shape[0], w.shape[1])
    emb.weight.data.copy_(w)
    q = quantized_embedding(emb, bits, quant_type)
    ids = torch.arange(w.shape[0])
    out = torch.cat([q(ids[i:i + 4096]).float() for i in range(0, len(ids), 4096)])
    diff = out - w
    nonzero = w.norm(dim=1) > 0  # the padding row is all zeros: no direction to compare
    cos = torch.nn.functional.cosine_similarity(out[nonzero], w[nonzero], dim=1)
    return {
        "bits": bits,
        "quant_type": quant_type if bits == 4 else "int8-rowwise",
        "rows": int(w.shape[0]),
        "rel_error": float(diff.norm() / w.norm()),
        "max_abs": float(diff.abs().max()),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
    }


# ------------------------------------------------------------------------------- vocabulary trimming
class RemappedTokenizer:
    """A tokenizer whose ids are those of a trimmed vocabulary.

    Wraps the original (fast) tokenizer: every call returns the same `BatchEncoding` (offsets,
    word_ids, sequence_ids unchanged) with `input_ids` mapped old -> new. Pieces outside the kept
    vocabulary become `<unk>`; `dropped_tokens` counts how often that happened. Special-token ids
    (`pad_token_id`, ...) are reported in the new numbering; the lowest ids (<s>, <pad>, </s>,
    <unk>) keep their numbers, so XLM-R's position ids (computed from the pad id) are unchanged.
    """

    def __init__(self, tokenizer, old_to_new: np.ndarray, kept: np.ndarray, unk_new: int):
        self._tok = tokenizer
        self._o2n = old_to_new
        self._kept = kept
        self._unk_new = int(unk_new)
        self.dropped_tokens = 0
        self.total_tokens = 0

    # -- mapping
    def _map_seq(self, seq):
        a = np.asarray(seq, dtype=np.int64)
        m = self._o2n[a]
        self.total_tokens += int(a.size)
        dropped = m < 0
        if dropped.any():
            self.dropped_tokens += int(dropped.sum())
            m = np.where(dropped, self._unk_new, m)
        return m

    def remap(self, ids):
        """Old ids (int, list, nested lists, numpy array or tensor) -> new ids, same shape and type."""
        if isinstance(ids, torch.Tensor):
            return torch.from_numpy(self._map_seq(ids.cpu().numpy())).to(ids.device)
        if isinstance(ids, np.ndarray):
            return self._map_seq(ids)
        if isinstance(ids, (int, np.integer)):
            return int(self._map_seq([ids])[0])
        if len(ids) and isinstance(ids[0], (list, tuple)):
            return [self._map_seq(s).tolist() for s in ids]
        if len(ids) and isinstance(ids[0], (np.ndarray, torch.Tensor)):
            return [self.remap(s) for s in ids]
        return self._map_seq(ids).tolist()

    def unmap(self, ids):
        """New ids -> the original tokenizer's ids."""
        if isinstance(ids, torch.Tensor):
            return torch.from_numpy(self._kept[ids.cpu().numpy()]).to(ids.device)
        if isinstance(ids, (int, np.integer)):
            return int(self._kept[ids])
        if ids and isinstance(ids[0], (list, tuple)):
            return [self._kept[np.asarray(s, dtype=np.int64)].tolist() for s in ids]
        return self._kept[np.asarray(ids, dtype=np.int64)].tolist()

    # -- the tokenizer API the formats use
    def __call__(self, *args, **kwargs):
        enc = self._tok(*args, **kwargs)
        if "input_ids" in enc:
            enc["input_ids"] = self.remap(enc["input_ids"])
        return enc

    def encode(self, *args, **kwargs):
        return self.remap(self._tok.encode(*args, **kwargs))

    def convert_tokens_to_ids(self, tokens):
        return self.remap(self._tok.convert_tokens_to_ids(tokens))

    def convert_ids_to_tokens(self, ids, *args, **kwargs):
        return self._tok.convert_ids_to_tokens(self.unmap(ids), *args, **kwargs)

    def decode(self, ids, *args, **kwargs):
        return self._tok.decode(self.unmap(ids), *args, **kwargs)

    def batch_decode(self, seqs, *args, **kwargs):
        return self._tok.batch_decode([self.unmap(s) for s in seqs], *args, **kwargs)

    def pad(self, *args, **kwargs):  # pads already-remapped features with the (unchanged) pad id
        return self._tok.pad(*args, **kwargs)

    @property
    def vocab_size(self) -> int:
        return int(len(self._kept))

    def __len__(self) -> int:
        return int(len(self._kept))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.remap(i) for i in self._tok.all_special_ids]

    @property
    def wrapped(self):
        return self._tok

    def __getattr__(self, name):
        value = getattr(self._tok, name)
        if name.endswith("_token_id") and isinstance(value, int):
            return self.remap(value)
        return value

    def save_pretrained(self, *args, **kwargs):
        raise XtlError("a trimmed tokenizer is not saved: save the full one (trimming is redone at load)",
                       where="tokenizer")


@dataclass
class TrimmedBackbone(Backbone):
    """A backbone whose word embeddings keep only `kept_ids` (new id i = old id kept_ids[i]).

    Same fingerprint as the full backbone: on covered text the outputs are identical, and task
    modules never contain embedding weights, so modules move freely between the two.
    """

    kept_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    old_to_new: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # -1 = dropped
    full_vocab_size: int = 0

    @property
    def vocab_size(self) -> int:
        return int(self.kept_ids.numel())

    def coverage(self, texts: list[str]) -> float:
        """Share of the pieces of `texts` that the trimmed vocabulary keeps (1.0 = identical outputs)."""
        tok = self.tokenizer.wrapped if isinstance(self.tokenizer, RemappedTokenizer) else self.tokenizer
        ids = tok(list(texts), add_special_tokens=False)["input_ids"]
        flat = np.fromiter((i for s in ids for i in s), dtype=np.int64)
        if flat.size == 0:
            return 1.0
        return float((self.old_to_new.numpy()[flat] >= 0).mean())


def _token_ids_of(backbone: Backbone, texts_or_token_ids) -> np.ndarray:
    items = list(texts_or_token_ids)
    if not items:
        return np.zeros(0, dtype=np.int64)
    tok = backbone.tokenizer.wrapped if isinstance(backbone.tokenizer, RemappedTokenizer) else backbone.tokenizer
    if isinstance(items[0], str):
        ids = []
        for i in range(0, len(items), 2048):
            for s in tok(items[i:i + 2048], add_special_tokens=False)["input_ids"]:
                ids.extend(s)
        return np.unique(np.asarray(ids, dtype=np.int64))
    if isinstance(items[0], (int, np.integer)):
        return np.unique(np.asarray(items, dtype=np.int64))
    return np.unique(np.fromiter((int(i) for s in items for i in s), dtype=np.int64))


@torch.no_grad()
def trim_vocabulary(backbone: Backbone, texts_or_token_ids, *, keep_ids: Iterable[int] = ()) -> TrimmedBackbone:
    """Keep only the embedding rows that `texts_or_token_ids` use (plus all special tokens).

    `texts_or_token_ids`: strings (tokenized here, without special tokens), token ids, or lists
    of token ids, in the *full* tokenizer's numbering. The backbone is changed in place: its word
    embeddings shrink (the full matrix is freed) and its tokenizer is replaced by a
    `RemappedTokenizer`; the returned `TrimmedBackbone` shares the model and carries the id maps.
    Trim before quantizing the embeddings. Text outside the kept vocabulary still runs (as
    `<unk>`), with different outputs than on the full backbone: trim on every language a recipe
    evaluates, and check `TrimmedBackbone.coverage`.
    """
    if isinstance(backbone, TrimmedBackbone) or isinstance(backbone.tokenizer, RemappedTokenizer):
        raise XtlError("this backbone is already trimmed", where="trim_vocabulary",
                       fix="trim the full backbone once, on the union of all texts")
    emb = word_embeddings(backbone)
    if type(emb) is not torch.nn.Embedding:
        raise XtlError("trim the vocabulary before quantizing the embeddings", where="trim_vocabulary",
                       fix="use embeddings mode 'trimmed+8bit' (trimming runs first)")
    full = int(emb.weight.shape[0])
    tok = backbone.tokenizer
    specials = [i for i in tok.all_special_ids if i is not None]
    low = max([tok.pad_token_id, tok.unk_token_id, tok.bos_token_id or 0, tok.eos_token_id or 0] + [0])
    used = _token_ids_of(backbone, texts_or_token_ids)
    if used.size and (used.min() < 0 or used.max() >= full):
        raise XtlError(f"token ids must lie in [0, {full}) (the full vocabulary)", where="trim_vocabulary")
    kept = np.unique(np.concatenate([used, np.asarray(specials, dtype=np.int64), np.arange(low + 1),
                                     np.asarray(list(keep_ids), dtype=np.int64)])).astype(np.int64)
    old_to_new = np.full(full, -1, dtype=np.int64)
    old_to_new[kept] = np.arange(len(kept))
    assert old_to_new[tok.pad_token_id] == tok.pad_token_id  # position ids depend on the pad id
    kept_t = torch.from_numpy(kept)
    new = torch.nn.Embedding(len(kept), emb.weight.shape[1], padding_idx=emb.padding_idx,
                             device=emb.weight.device, dtype=emb.weight.dtype)
    new.weight.copy_(emb.weight[kept_t.to(emb.weight.device)])
    new.weight.requires_grad_(False)
    new.train(emb.training)
    _set_word_embeddings(backbone, new)
    del emb
    backbone.model.config.vocab_size = len(kept)
    if backbone.device.type == "cuda":
        torch.cuda.empty_cache()
    remapped = RemappedTokenizer(tok, old_to_new, kept, unk_new=int(old_to_new[tok.unk_token_id]))
    backbone.tokenizer = remapped
    backbone.embeddings_mode = "trimmed"
    trimmed = TrimmedBackbone(
        model=backbone.model, tokenizer=remapped, fingerprint=backbone.fingerprint, source=backbone.source,
        device=backbone.device, methods_prepared=backbone.methods_prepared,
        kept_ids=kept_t, old_to_new=torch.from_numpy(old_to_new), full_vocab_size=full,
    )
    if hasattr(backbone, "_library"):
        trimmed._library = backbone._library
    trimmed.embeddings_mode = "trimmed"
    return trimmed


# ------------------------------------------------------------------------------- one knob for all
def _join_mode(current: str, extra: str) -> str:
    return extra if current in ("", "full") else f"{current}+{extra}"


def parse_embeddings_mode(mode: str) -> tuple[bool, int | None]:
    """'full' | 'trimmed' | '8bit' | '4bit' | 'trimmed+8bit' | 'trimmed+4bit' -> (trim, bits)."""
    if mode not in EMBEDDING_MODES:
        raise XtlError(f"unknown embeddings mode {mode!r}", where="embeddings", fix=did_you_mean(mode, EMBEDDING_MODES))
    parts = mode.split("+")
    bits = next((int(p[0]) for p in parts if p.endswith("bit")), None)
    return "trimmed" in parts, bits


def apply_embeddings(backbone: Backbone, mode: str = "full", texts_or_token_ids=None) -> Backbone:
    """Apply an embeddings mode right after `load_backbone`; returns the backbone to use from then
    on (a `TrimmedBackbone` when trimming). Trimming needs the texts (all splits, all languages a
    recipe touches)."""
    trim, bits = parse_embeddings_mode(mode)
    bb = backbone
    if trim:
        if texts_or_token_ids is None:
            raise XtlError("embeddings mode 'trimmed' needs the texts to keep", where="embeddings",
                           fix="pass the recipe's texts (every task, split and language it uses)")
        bb = trim_vocabulary(bb, texts_or_token_ids)
    if bits:
        quantize_embeddings(bb, bits)
    return bb


# ------------------------------------------------------------------ a backbone option in train/run
def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return [" ".join(value)]  # pre-split words (tagging): their pieces as one sentence's
        return [s for v in value for s in _strings(v)]
    return []


def task_texts(tasks: Iterable[tuple[Any, Iterable[str] | None]], data_dir=None) -> list[str]:
    """Every text a run touches, for `embeddings: trimmed`: each (task spec, languages) pair's
    English train and validation data and the evaluation split of each language (None: all of
    the task's). Labels and ids are not text; lists of words count as one sentence."""
    from .data import load_examples

    texts: list[str] = []
    for spec, languages in tasks:
        wanted = [(s, spec.train_language) for s in ("train", "validation") if s in spec.splits]
        wanted += [(spec.eval_split, lang) for lang in (languages or list(spec.languages))]
        for split, lang in dict.fromkeys(wanted):
            for ex in load_examples(spec, split, lang, data_dir):
                for key, value in ex.items():
                    if key not in ("id", "label", "labels", "tags", "answers", "answer"):
                        texts.extend(_strings(value))
    return texts


def load_compressed(name: str = "xlmr-e5-small", quantization: str = "none", device: str | None = None, *,
                    embeddings: str = "full", texts=None, precision: str | None = None,
                    warn: bool = True) -> Backbone:
    """`load_backbone` plus an embeddings mode (`full | trimmed | 8bit | 4bit | trimmed+8bit |
    trimmed+4bit`): the one call train/run use for a backbone. `texts` (a list, or a callable
    returning one, called only when trimming) are the texts to keep. A configuration that costs
    time and saves no memory on this device is said once, as a `UserWarning` (`cost_notes`;
    `warn=False`: the caller prints them itself)."""
    import warnings

    from .backbone import load_backbone, pick_device

    trim, _ = parse_embeddings_mode(embeddings)
    for note in cost_notes(pick_device(device), quantization, embeddings, precision) if warn else ():
        warnings.warn(note, UserWarning, stacklevel=2)
    from .backbone import release_file_pages

    bb = load_backbone(name, quantization, device)
    if embeddings == "full":
        return bb
    bb = apply_embeddings(bb, embeddings, (texts() if callable(texts) else texts) if trim else None)
    release_file_pages()  # the full matrix's pages that trimming/quantizing read stay mapped otherwise
    return bb


def cost_notes(device: torch.device, quantization: str = "none", embeddings: str = "full",
               precision: str | None = None) -> list[str]:
    """What a configuration costs for nothing on this device, one line each (measured on a
    2-core CPU, docs/benchmarks.md): a quantized backbone on CPU dequantizes every Linear on
    every step; with the fp32 word embeddings kept, a small backbone (xlmr-e5-small, 81%
    embeddings) got slower without saving memory. bf16 on a CPU without native bf16 is
    emulated (slower, no memory saved)."""
    from .speed import cpu_has_fast_bf16

    notes = []
    trim, bits = parse_embeddings_mode(embeddings)
    if device.type == "cpu" and quantization != "none" and not trim and not bits:
        notes.append(f"quantization {quantization} on CPU with full fp32 embeddings: every step dequantizes the "
                     "Linear weights, and on a backbone whose weights are mostly embeddings (xlmr-e5-small: 81%) "
                     "that costs time for no memory (e5-small + LoRA measured 0.82x the fp32 speed at 1.03x its "
                     "peak memory); add embeddings trimmed+4bit (--embeddings trimmed+4bit), or train without "
                     "quantization")
    if device.type == "cpu" and precision == "bf16" and not cpu_has_fast_bf16():
        notes.append("precision bf16 on a CPU without AVX512-BF16/AMX: bf16 is emulated (slower than fp32) and saves "
                     "no memory; use precision auto or fp32")
    return notes
