"""Integration: the real xlmr-e5-small on real public data from ../shared/data.

Small on purpose (CI has 2 cores): a few dozen LoRA steps on SIB-200 English, zero-shot on 8+
languages; Tatoeba retrieval with the bare backbone on 8+ languages.
"""

from __future__ import annotations

from collections import Counter

import pytest

from adapters_xtl.backbone import load_backbone
from adapters_xtl.data import load_examples
from adapters_xtl.pipeline import evaluate_module, train_module
from adapters_xtl.tasks import get_task
from adapters_xtl.trainer import TrainConfig

pytestmark = pytest.mark.slow

SIB_LANGS = ["en", "de", "fr", "zh", "ru", "sw", "fi", "tr", "th", "yo"]
TATOEBA_LANGS = ["de", "fr", "es", "ru", "zh", "fi", "tr", "sw", "th", "eu"]


@pytest.fixture(scope="module")
def e5(e5_small_dir):
    return load_backbone("xlmr-e5-small")


def test_sib200_zero_shot_beats_majority_in_every_language(e5, shared_data, tmp_path):
    from adapters_xtl.store.registry import Registry

    spec = get_task("sib200")
    test_en = load_examples(spec, "test", "en", shared_data)
    majority = 100 * Counter(e["label"] for e in test_en).most_common(1)[0][1] / len(test_en)
    tm = train_module(e5, spec, name="sib-it", method="lora", registry=Registry(tmp_path / "reg"),
                      train_config=TrainConfig(steps=40, batch_size=16, lr=2e-3, eval_every=20, eval_examples=99),
                      eval_languages=SIB_LANGS, data_dir=shared_data)
    accs = {lang: s["accuracy"] for lang, s in tm.scores.items()}
    assert set(accs) == set(SIB_LANGS)
    # 40 steps is little training; still every language must clearly beat the majority class
    assert all(a > majority + 10 for a in accs.values()), (majority, accs)
    assert accs["en"] > 60


def test_tatoeba_retrieval_with_the_bare_backbone(e5, shared_data):
    scores = evaluate_module(e5, None, "tatoeba", languages=TATOEBA_LANGS, data_dir=shared_data, limit=200)
    assert set(scores) == set(TATOEBA_LANGS)
    acc = {lang: s["accuracy"] for lang, s in scores.items()}
    # chance is 1/200; e5 is a retrieval model, high-resource pairs are near perfect
    assert all(v > 20 for v in acc.values()), acc
    assert min(acc[l] for l in ("de", "fr", "es")) > 85, acc
