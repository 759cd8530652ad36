"""Memory measures on tiny random XLM-Rs: vocabulary trimming, 8/4-bit embeddings, gradient
checkpointing, optimizers."""

from __future__ import annotations

import pytest
import torch

from adapters_xtl.backbone import load_backbone
from adapters_xtl.compress import (
    RemappedTokenizer,
    TrimmedBackbone,
    apply_embeddings,
    embedding_bytes,
    embedding_quantization_error,
    enable_gradient_checkpointing,
    gradient_checkpointing,
    make_optimizer,
    quantize_embeddings,
    trim_vocabulary,
)
from adapters_xtl.errors import XtlError
from adapters_xtl.methods import get_method
from adapters_xtl.model import TaskModel
from adapters_xtl.tasks import get_task
from conftest import TINY_TEXT, build_tiny_backbone

COVERED = TINY_TEXT[:7]  # the texts the vocabulary is trimmed to
OTHER = ["hava bugün çok güzel", "kula chakula kizuri"]  # pieces outside COVERED


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    # hidden 64: a multiple of bnb's 4-bit block size (64), as real XLM-Rs are
    return build_tiny_backbone(tmp_path_factory.mktemp("tiny64"), hidden=64)


def _hidden(bb, texts):
    enc = bb.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return bb.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state, enc


# ------------------------------------------------------------------------------ trimming
def test_trim_maps_ids_and_keeps_outputs_identical_on_covered_text(tiny64):
    full = load_backbone(str(tiny64), device="cpu")
    bb = load_backbone(str(tiny64), device="cpu")
    tb = trim_vocabulary(bb, COVERED)
    assert isinstance(tb, TrimmedBackbone) and isinstance(tb.tokenizer, RemappedTokenizer)
    assert bb.tokenizer is tb.tokenizer and bb.model is tb.model  # trimmed in place
    n_full = full.model.get_input_embeddings().num_embeddings
    assert tb.full_vocab_size == n_full and 0 < tb.vocab_size < n_full
    assert tb.model.get_input_embeddings().num_embeddings == tb.vocab_size == len(tb.tokenizer)
    # the low special ids keep their numbers (XLM-R's position ids are computed from the pad id)
    for name in ("bos_token_id", "pad_token_id", "eos_token_id", "unk_token_id"):
        assert getattr(tb.tokenizer, name) == getattr(full.tokenizer, name)
    # id map: new = old_to_new[old], old = kept_ids[new], same pieces
    old = full.tokenizer(COVERED)["input_ids"]
    new = tb.tokenizer(COVERED)["input_ids"]
    for o, n in zip(old, new):
        assert n == [int(tb.old_to_new[i]) for i in o]
        assert o == [int(tb.kept_ids[i]) for i in n]
        assert tb.tokenizer.convert_ids_to_tokens(n) == full.tokenizer.convert_ids_to_tokens(o)
    # identical hidden states on covered text (padded batch included)
    h_full, _ = _hidden(full, COVERED)
    h_trim, _ = _hidden(tb, COVERED)
    assert torch.equal(h_full, h_trim)
    assert tb.coverage(COVERED) == 1.0
    # uncovered pieces become <unk>, and are counted
    assert tb.coverage(OTHER) < 1.0
    before = tb.tokenizer.dropped_tokens
    ids = tb.tokenizer(OTHER)["input_ids"]
    assert tb.tokenizer.dropped_tokens > before
    assert tb.tokenizer.unk_token_id in sum(ids, [])
    assert max(sum(ids, [])) < tb.vocab_size


def test_trim_through_a_format_and_token_id_inputs(tiny64):
    spec = get_task("demo-topic")
    full = load_backbone(str(tiny64), device="cpu")
    ids_used = sorted({i for s in full.tokenizer(COVERED, add_special_tokens=False)["input_ids"] for i in s})
    tb = trim_vocabulary(load_backbone(str(tiny64), device="cpu"), [ids_used])  # lists of token ids work too
    examples = [{"text": t, "label": "sports"} for t in COVERED]
    model_full, model_trim = TaskModel(full, spec), TaskModel(tb, spec)
    model_trim.head.load_state_dict(model_full.head.state_dict())
    f_full = model_full.format.encode(examples, spec, full.tokenizer, train=True)
    f_trim = model_trim.format.encode(examples, spec, tb.tokenizer, train=True)
    assert model_trim.pad_id == model_full.pad_id
    b_full = model_full.format.collate(f_full, model_full.pad_id)
    b_trim = model_trim.format.collate(f_trim, model_trim.pad_id)
    model_full.eval(), model_trim.eval()
    with torch.no_grad():
        assert torch.equal(model_full(b_full), model_trim(b_trim))
    with pytest.raises(XtlError, match="already trimmed"):
        trim_vocabulary(tb, COVERED)


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_module_trained_on_trimmed_backbone_runs_on_full_one(tiny64, method):
    full = load_backbone(str(tiny64), device="cpu")
    tb = trim_vocabulary(load_backbone(str(tiny64), device="cpu"), COVERED)
    m = get_method(method)
    for bb in (tb, full):
        m.add(bb, "mod", m.make_config({}))
        m.activate(bb, ["mod"], trainable=[])
    # "train" on the trimmed backbone: give the module non-trivial weights
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.named_parameters(tb, "mod").values():
            p.add_(torch.randn_like(p) * 0.1)
    sd = m.state_dict(tb, "mod")
    assert not any("embeddings" in k for k in sd)  # modules carry no embedding rows
    m.load_state_dict(full, "mod", sd)
    h_trim, _ = _hidden(tb, COVERED)
    h_full, _ = _hidden(full, COVERED)
    assert torch.allclose(h_trim, h_full, atol=1e-6)
    h0 = load_backbone(str(tiny64), device="cpu")
    assert not torch.allclose(_hidden(h0, COVERED)[0], h_full, atol=1e-3)  # the module does change outputs


# ------------------------------------------------------------------------------ 8/4-bit embeddings
def test_quantized_embedding_error_small(tiny64):
    bb = load_backbone(str(tiny64), device="cpu")
    w = bb.model.get_input_embeddings().weight
    e8 = embedding_quantization_error(w, 8)
    e4 = embedding_quantization_error(w, 4)
    assert e8["rel_error"] < 0.02 and e8["mean_cosine"] > 0.999
    assert e4["rel_error"] < 0.15 and e4["mean_cosine"] > 0.98
    assert e8["rel_error"] < e4["rel_error"]


@pytest.mark.parametrize("bits,max_rel,max_ratio", [(8, 0.02, 0.3), (4, 0.15, 0.2)])
def test_quantize_embeddings_in_place(tiny64, bits, max_rel, max_ratio):
    full = load_backbone(str(tiny64), device="cpu")
    bb = load_backbone(str(tiny64), device="cpu")
    sizes = quantize_embeddings(bb, bits)
    assert sizes["bytes_after"] < max_ratio * sizes["bytes_before"]
    assert embedding_bytes(bb) == sizes["bytes_after"]
    h_full, _ = _hidden(full, COVERED)
    h_q, _ = _hidden(bb, COVERED)
    assert float((h_q - h_full).norm() / h_full.norm()) < max_rel
    # saving a task module reads the whole state dict: quantized embeddings must not break it
    m = get_method("lora")
    m.add(bb, "mod", m.make_config({}))
    assert m.state_dict(bb, "mod")
    with pytest.raises(XtlError, match="before quantizing"):
        trim_vocabulary(bb, COVERED)


def test_apply_embeddings_modes(tiny64):
    import bitsandbytes as bnb

    bb = apply_embeddings(load_backbone(str(tiny64), device="cpu"), "trimmed+8bit", COVERED)
    assert isinstance(bb, TrimmedBackbone)
    assert isinstance(bb.model.get_input_embeddings(), bnb.nn.Embedding8bit)
    h, _ = _hidden(bb, COVERED)
    assert torch.isfinite(h).all()
    same = load_backbone(str(tiny64), device="cpu")
    assert apply_embeddings(same, "full") is same
    with pytest.raises(XtlError, match="needs the texts"):
        apply_embeddings(load_backbone(str(tiny64), device="cpu"), "trimmed")
    with pytest.raises(XtlError, match="unknown embeddings mode"):
        apply_embeddings(same, "2bit")


# ------------------------------------------------------------------------------ gradient checkpointing
@pytest.mark.parametrize("method,quant", [("lora", "none"), ("bottleneck", "none"), ("lora", "4bit")])
def test_gradient_checkpointing_same_loss_and_grads(tiny64, method, quant):
    bb = load_backbone(str(tiny64), quant, device="cpu")
    m = get_method(method)
    m.add(bb, "mod", m.make_config({}))
    m.activate(bb, ["mod"], trainable=["mod"])
    params = m.named_parameters(bb, "mod")
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero: make every gradient non-trivial
        for p in params.values():
            p.add_(torch.randn_like(p) * 0.05)
    enc = bb.tokenizer(COVERED, padding=True, return_tensors="pt")
    target = torch.randn(*enc["input_ids"].shape, bb.hidden_size)
    calls = {"n": 0}
    bb.model.encoder.layer[1].attention.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))

    def loss_and_grads():
        calls["n"] = 0
        torch.manual_seed(123)  # same dropout masks (non-reentrant checkpointing replays the RNG)
        bb.model.train()
        h = bb.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        loss = (h * target).mean()
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in params.items()}
        for p in params.values():
            p.grad = None
        return loss.item(), grads, calls["n"]

    l0, g0, n0 = loss_and_grads()
    with gradient_checkpointing(bb):
        l1, g1, n1 = loss_and_grads()
    assert n0 == 1 and n1 == 2  # the layer really was recomputed in the backward pass
    assert l1 == pytest.approx(l0, rel=1e-5, abs=1e-7)
    assert all(g.abs().sum() > 0 for g in g0.values())
    for n in g0:
        assert torch.allclose(g0[n], g1[n], rtol=1e-4, atol=1e-7), n
    assert not bb.model.is_gradient_checkpointing  # the context manager turned it off again
    enable_gradient_checkpointing(bb)
    assert bb.model.is_gradient_checkpointing


# ------------------------------------------------------------------------------ optimizers
def test_make_optimizer():
    import bitsandbytes as bnb

    p = torch.nn.Parameter(torch.randn(128, 64))
    groups = [{"params": [p], "weight_decay": 0.01, "lr": 1e-3}]
    opt = make_optimizer(groups, "adamw", "cpu")
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["foreach"]
    opt8 = make_optimizer([{"params": [p], "lr": 1e-3}], "adamw8bit", "cpu")
    assert isinstance(opt8, bnb.optim.AdamW8bit)
    before = p.detach().clone()
    p.grad = torch.randn_like(p)
    opt8.step()
    assert not torch.equal(before, p.detach())
    assert opt8.state[p]["state1"].dtype == torch.uint8  # 8-bit state (>= 4096 elements)
    with pytest.raises(XtlError, match="need CUDA"):
        make_optimizer([{"params": [p]}], "paged_adamw8bit", "cpu")
    with pytest.raises(XtlError, match="unknown optimizer"):
        make_optimizer([{"params": [p]}], "sgd", "cpu")
