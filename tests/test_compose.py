"""Compositions: the arithmetic of each kind on a toy layer, computed by hand, and each kind end
to end (train on top of registry modules, re-evaluate from the registry) on a tiny XLM-R."""

from __future__ import annotations

import math

import pytest
import torch

from adapters_xtl.backbone import Backbone, load_backbone
from adapters_xtl.compose import Block, Continue, Fuse, Merge, Single, Stack
from adapters_xtl.errors import XtlError
from adapters_xtl.store.manifest import BackboneFingerprint
from adapters_xtl.methods import get_method
from adapters_xtl.pipeline import evaluate_module, train_module
from adapters_xtl.session import compose_into
from adapters_xtl.trainer import TrainConfig

from test_core import FAST, write_toy_task


class Toy(torch.nn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.query = torch.nn.Linear(d, d)

    def forward(self, x):
        return self.query(x)


def toy_backbone(d=6) -> Backbone:
    torch.manual_seed(0)
    return Backbone(model=Toy(d).eval(), tokenizer=None, source="toy", device=torch.device("cpu"),
                    fingerprint=BackboneFingerprint(model_id="toy", weights_sha256="0"))


def add_lora(bb, slot, r=2, alpha=4):
    m = get_method("lora")
    m.add(bb, slot, m.make_config({"r": r, "alpha": alpha, "dropout": 0.0, "target_modules": ["query"]}))
    layer = bb.model.query
    with torch.no_grad():
        layer.lora_A[slot].weight.normal_()
        layer.lora_B[slot].weight.normal_()
    return layer


def delta(layer, slot):
    """The LoRA update of one slot as a matrix: s * B A."""
    return layer.scaling[slot] * layer.lora_B[slot].weight @ layer.lora_A[slot].weight


def setup(bb, block, method, target, frozen, target_modules=None):
    """Arrange loaded slots as the method carries the block out (what a ModuleSession does)."""
    return get_method(method).compose(bb, block, target, frozen, {"target_modules": target_modules})


def test_comp_validation_and_json_round_trip():
    c = Merge("a", "b", how="ties", density=0.3)
    assert Block.from_dict(c.to_dict()) == c
    for block in (Single(), Stack("a", "b"), Fuse("a", "b", rank=3), Continue("a"), Merge("a", "b", weights=[0.3, 0.7])):
        assert Block.from_dict(block.to_dict()) == block
        assert type(Block.from_dict(block.to_dict())) is type(block)
    for bad in ({"kind": "single", "modules": ["a"]}, {"kind": "stack"}, {"kind": "fuse", "modules": ["a"]},
                {"kind": "continue", "modules": ["a", "b"]}, {"kind": "stack", "modules": ["a"], "merge": {}},
                {"kind": "merge", "modules": ["a", "b"], "merge": {"weights": [1.0]}},
                {"kind": "merge", "modules": ["a", "b"], "merge": {"how": "avg"}}, {"kind": "nope"}):
        with pytest.raises(XtlError):
            Block.from_dict(bad)
    with pytest.raises(XtlError, match="cannot contain"):
        Stack(Fuse("a", "b"))


def test_old_manifest_compositions_still_read():
    """Manifests written before compositions were classes stored fusion_rank for every kind."""
    assert Block.from_dict({"kind": "stack", "modules": ["a@1"], "fusion_rank": 16}) == Stack("a@1")
    assert Block.from_dict({"kind": "single", "modules": [], "fusion_rank": 16}) == Single()
    assert Block.from_dict(None) == Single()


def test_each_method_refuses_what_it_does_not_support_and_says_why(tiny_backbone_dir):
    bb = load_backbone(str(tiny_backbone_dir))
    with pytest.raises(XtlError, match="ia3 modules do not support the composition 'fuse': .*no additive delta"):
        get_method("ia3").compose(bb, Fuse("a", "b"), "t", ["a", "b"], {})
    for method in ("bottleneck", "ia3"):
        with pytest.raises(XtlError, match="merge linearly only, not 'ties'"):
            get_method(method).check_composable(Merge("a", "b", how="ties"), {}, [])


def test_lora_stack_adds_frozen_and_target_deltas():
    bb = toy_backbone()
    layer = add_lora(bb, "i1")
    add_lora(bb, "i2")
    add_lora(bb, "t")
    state = setup(bb, Stack("x", "y"), "lora", "t", ["i1", "i2"])
    state.activate(bb, train=True)
    x = torch.randn(3, 6)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    expected = x @ (W + delta(layer, "i1") + delta(layer, "i2") + delta(layer, "t")).T + b
    assert torch.allclose(bb.model(x), expected, atol=1e-5)
    grads = {n for n, p in bb.model.named_parameters() if p.requires_grad}
    assert grads and all(".t." in n for n in grads)  # only the target trains


def test_lora_fuse_is_attention_over_frozen_deltas():
    bb = toy_backbone()
    layer = add_lora(bb, "i1")
    add_lora(bb, "i2")
    add_lora(bb, "t")
    state = setup(bb, Fuse("x", "y", rank=3), "lora", "t", ["i1", "i2"])
    state.activate(bb, train=True)
    x = torch.randn(4, 6)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    d = torch.stack([x @ delta(layer, "i1").T, x @ delta(layer, "i2").T])  # (2, 4, 6)
    # K starts at zero: the attention is uniform, the fused delta is the mean of the deltas
    start = x @ (W + delta(layer, "t")).T + b + d.mean(0)
    assert torch.allclose(bb.model(x), start, atol=1e-5)
    # with set projections: a = softmax_i((x Wq) . (d_i Wk) / sqrt(r))
    (key,) = state.fusion.q.keys()
    with torch.no_grad():
        state.fusion.q[key].normal_()
        state.fusion.k[key].normal_()
    q = x @ state.fusion.q[key]
    k = d @ state.fusion.k[key]
    a = torch.softmax((k * q).sum(-1) / math.sqrt(3), dim=0)  # (2, 4)
    expected = x @ (W + delta(layer, "t")).T + b + (a.unsqueeze(-1) * d).sum(0)
    assert torch.allclose(bb.model(x), expected, atol=1e-5)
    assert state.extra_parameters(bb) and all(p.requires_grad for p in state.extra_parameters(bb).values())
    state.teardown(bb)
    assert not layer._forward_hooks


@pytest.mark.parametrize("how", ["linear", "ties", "dare_linear"])
def test_lora_merge_merges_deltas_then_stacks(how):
    from peft.utils import merge_utils

    bb = toy_backbone()
    layer = add_lora(bb, "i1")
    add_lora(bb, "i2")
    add_lora(bb, "t")
    spec = Merge("x", "y", how=how, weights=[0.7, 0.3], density=0.5, seed=5)
    state = setup(bb, spec, "lora", "t", ["i1", "i2"],
                  target_modules=["query"])
    state.activate(bb, train=True)
    x = torch.randn(3, 6)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    deltas = [delta(layer, "i1"), delta(layer, "i2")]
    w = torch.tensor([0.7, 0.3])
    torch.manual_seed(5)
    merged = {"linear": lambda: w[0] * deltas[0] + w[1] * deltas[1],
              "ties": lambda: merge_utils.ties(deltas, w, 0.5),
              "dare_linear": lambda: merge_utils.dare_linear(deltas, w, 0.5)}[how]()
    # rank of the merged module = r1 + r2 = 4; linear (rank <= 4) is exact, others are the
    # best rank-4 approximation (truncated SVD)
    U, S, Vh = torch.linalg.svd(merged)
    approx = (U[:, :4] * S[:4]) @ Vh[:4]
    expected = x @ (W + approx + delta(layer, "t")).T + b
    assert torch.allclose(bb.model(x), expected, atol=1e-4)
    if how == "linear":
        assert torch.allclose(approx, merged, atol=1e-5)


def test_bottleneck_stack_is_sequential_and_fuse_is_adapterfusion(tiny_backbone_dir):
    from adapters.composition import Fuse as AFuse, Stack as AStack

    bb = load_backbone(str(tiny_backbone_dir))
    m = get_method("bottleneck")
    for s in ("i1", "i2", "t"):
        m.add(bb, s, m.make_config({}))
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    with torch.no_grad():  # the intermediates do something; T starts as the identity (up = 0)
        for n, p in bb.model.named_parameters():
            if ".adapters." in n and "adapter_up" in n:
                p.zero_() if ".adapters.t." in n else p.normal_(0, 0.5)
    state = setup(bb, Stack("x"), "bottleneck", "t", ["i1"])
    state.activate(bb, train=True)
    assert bb.model.active_adapters == AStack("i1", "t")
    with_t_identity = bb.model(input_ids=ids).last_hidden_state
    m.activate(bb, ["i1"], trainable=[])
    alone = bb.model(input_ids=ids).last_hidden_state
    # T's up-projection is zero: T is the identity, the stack equals I alone ...
    assert torch.allclose(with_t_identity, alone, atol=1e-6)
    # ... and once T does something, Stack(I, T) applies T to I's output (differs from either alone)
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if ".adapters.t." in n and "adapter_up" in n:
                p.normal_(0, 0.5)
    state.activate(bb, train=False)
    stacked = bb.model(input_ids=ids).last_hidden_state
    m.activate(bb, ["t"], trainable=[])
    assert not torch.allclose(stacked, alone) and not torch.allclose(stacked, bb.model(input_ids=ids).last_hidden_state)
    state.teardown(bb)

    fuse = setup(bb, Fuse("x", "y"), "bottleneck", "t", ["i1", "i2"])
    fuse.activate(bb, train=True)
    assert bb.model.active_adapters == AStack(AFuse("i1", "i2"), "t")
    trainable = {n for n, p in bb.model.named_parameters() if p.requires_grad}
    assert any("adapter_fusion_layer" in n for n in trainable)
    assert all(".adapters.t." in n or "adapter_fusion_layer" in n for n in trainable)
    assert set(fuse.extra_parameters(bb)) and all("__fusion__" in k for k in fuse.extra_parameters(bb))
    fuse.teardown(bb)


@pytest.mark.parametrize("method", ["lora", "bottleneck", "ia3"])
def test_every_kind_trains_on_registry_modules_and_reloads(tiny_backbone_dir, tmp_path, registry, method):
    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    for name in ("inter-a", "inter-b"):
        train_module(bb, str(task), name=name, method=method, registry=registry, train_config=FAST)
    kinds = [("single", []), ("stack", ["inter-a"]), ("fuse", ["inter-a", "inter-b"]), ("continue", ["inter-a"]),
             ("merge", ["inter-a", "inter-b"])]
    kinds = [(k, mods) for k, mods in kinds if k in get_method(method).supported_compositions]
    assert len(kinds) == (4 if method == "ia3" else 5)
    for kind, mods in kinds:
        tm = train_module(bb, str(task), name=f"t-{kind}", method=method, registry=registry, train_config=FAST,
                          composition={"kind": kind, "modules": mods})
        man = tm.manifest
        assert man.composition["kind"] == kind
        assert man.composition.get("modules", []) == [f"{m}@1" for m in mods]
        if kind == "fuse":
            assert any(k.startswith("fusion.") for k in registry.load(man.name)[1])
        # re-evaluating from the registry rebuilds the composition and gives the same scores
        again = evaluate_module(bb, man.name, str(task), registry=registry, update_registry=False)
        for lang, ms in tm.scores.items():
            assert again[lang] == pytest.approx(ms), (kind, lang)
        assert not any(p.requires_grad for p in bb.model.parameters())


def test_composition_refuses_mixed_methods_and_mismatched_continue(tiny_backbone_dir, tmp_path, registry):
    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    train_module(bb, str(task), name="r8", method="lora", registry=registry, train_config=FAST)
    with pytest.raises(XtlError, match="cannot continue from 'r8'"):
        train_module(bb, str(task), name="t", method="lora", method_config={"r": 4}, registry=registry,
                     train_config=FAST, init_from="r8")
    with pytest.raises(XtlError, match="same target_modules"):
        train_module(bb, str(task), name="t", method="lora", method_config={"target_modules": ["query"]},
                     registry=registry, train_config=FAST, composition={"kind": "fuse", "modules": ["r8", "r8"]})
    bb2 = load_backbone(str(tiny_backbone_dir))
    with pytest.raises(XtlError, match="is lora; the target module is bottleneck"):
        train_module(bb2, str(task), name="t", method="bottleneck", registry=registry, train_config=FAST,
                     composition={"kind": "stack", "modules": ["r8"]})


def test_continue_starts_the_target_as_an_exact_copy_of_the_intermediate(tiny_backbone_dir, tmp_path, registry):
    from adapters_xtl.model import attach_new

    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    train_module(bb, str(task), name="inter-a", registry=registry, train_config=FAST)
    m = get_method("lora")
    cfg = m.make_config({})
    attach_new(bb, "lora", cfg, "tgt")
    state, mans = compose_into(bb, registry, Continue("inter-a"), "lora", "tgt",
                               cfg.model_dump())
    saved = registry.load("inter-a")[1]
    now = m.state_dict(bb, "tgt")
    assert now and all(torch.equal(v, saved[f"module.{k}"]) for k, v in now.items())
    assert [man.name for man in mans] == ["inter-a"]
    state.teardown(bb)
    m.remove(bb, "tgt")


@pytest.mark.parametrize("method,kind", [("lora", "continue"), ("lora", "stack"), ("bottleneck", "continue"),
                                         ("ia3", "stack")])
def test_a_cell_trains_the_same_whether_its_intermediate_was_loaded_before_or_not(
        tiny_backbone_dir, tmp_path, registry, method, kind):
    """A grid keeps a loaded intermediate for the next cell, so a cell runs either on a backbone
    that loads it now or on one that already holds it (an earlier cell, another process's
    history). Loading must not draw from the seeded random stream, or the head is initialised
    differently and the same cell gives other weights (found as `continue` cells that differed
    between a Ray worker and a local run)."""
    from adapters_xtl.session import load_module_into

    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    train_module(bb, str(task), name="inter-a", method=method, registry=registry, train_config=FAST)
    fresh = load_backbone(str(tiny_backbone_dir))
    cold = train_module(fresh, str(task), name="t-cold", method=method, registry=registry, train_config=FAST,
                        composition={"kind": kind, "modules": ["inter-a"]})
    warm_bb = load_backbone(str(tiny_backbone_dir))
    load_module_into(warm_bb, registry, "inter-a")  # what an earlier cell of the grid left loaded
    warm = train_module(warm_bb, str(task), name="t-warm", method=method, registry=registry, train_config=FAST,
                        composition={"kind": kind, "modules": ["inter-a"]})
    a, b = registry.load("t-cold")[1], registry.load("t-warm")[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert cold.scores == warm.scores


def test_multitask_mixing_is_proportional_capped_or_uniform():
    from adapters_xtl.multitask import mixing_weights

    assert mixing_weights([100, 300], "proportional", None) == pytest.approx([0.25, 0.75])
    # T5-style cap: a huge task counts as `cap` examples
    assert mixing_weights([100, 300, 50_000], "proportional", 1000) == pytest.approx([100 / 1400, 300 / 1400, 1000 / 1400])
    assert mixing_weights([100, 300, 50_000], "uniform", 1000) == pytest.approx([1 / 3] * 3)


# ------------------------------------------------------------------------ peft's variants and IA3
def add_dora(bb, slot, r=2, alpha=4, dropout=0.0):
    m = get_method("lora")
    m.add(bb, slot, m.make_config({"r": r, "alpha": alpha, "dropout": dropout, "target_modules": ["query"],
                                   "use_dora": True}))
    layer = bb.model.query
    with torch.no_grad():
        layer.lora_A[slot].weight.normal_()
        layer.lora_B[slot].weight.normal_()
        layer.lora_magnitude_vector[slot].weight.mul_(1 + 0.3 * torch.randn(layer.out_features))
    return layer


def dora_weight(layer, slot):
    """DoRA's effective weight by hand: m / ||W + s B A||_row * (W + s B A)."""
    W = layer.base_layer.weight + delta(layer, slot)
    return (layer.lora_magnitude_vector[slot].weight / W.norm(dim=1))[:, None] * W


def test_dora_stack_adds_each_modules_own_delta():
    """Several DoRA modules (and plain LoRA ones) stack as a sum of their deltas on W, in
    training as in evaluation; peft alone would fold earlier modules into later rescalings."""
    bb = toy_backbone()
    layer = add_dora(bb, "i1")
    add_dora(bb, "i2")
    add_lora(bb, "i3")
    add_dora(bb, "t")
    W, b = layer.base_layer.weight, layer.base_layer.bias
    x = torch.randn(3, 6)
    expected = x @ (W + sum(dora_weight(layer, s) - W for s in ("i1", "i2", "t")) + delta(layer, "i3")).T + b
    state = setup(bb, Stack("x", "y", "z"), "lora", "t", ["i1", "i2", "i3"])
    for train in (False, True):
        bb.model.train(train)
        state.activate(bb, train=train)
        assert torch.allclose(bb.model(x), expected, atol=1e-5), train
    grads = {n for n, p in bb.model.named_parameters() if p.requires_grad}
    assert grads == {"query.lora_A.t.weight", "query.lora_B.t.weight", "query.lora_magnitude_vector.t.weight"}
    state.teardown(bb)
    assert not layer._forward_hooks  # the extra DoRA modules' hook is gone
    # what peft computes with the three DoRA modules simply active in order: not a sum of deltas
    layer._active_adapter = ["i1", "i2", "t"]
    with torch.no_grad():
        assert not torch.allclose(bb.model(x), x @ (W + sum(dora_weight(layer, s) - W for s in ("i1", "i2", "t"))).T + b,
                                  atol=1e-3)


def test_dora_fuse_attends_over_dora_deltas():
    bb = toy_backbone()
    layer = add_dora(bb, "i1")
    add_dora(bb, "i2")
    add_dora(bb, "t")
    state = setup(bb, Fuse("x", "y", rank=3), "lora", "t", ["i1", "i2"])
    state.activate(bb, train=False)
    x = torch.randn(4, 6)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    d = torch.stack([x @ (dora_weight(layer, s) - W).T for s in ("i1", "i2")])
    with torch.no_grad():  # Wk = 0: uniform attention, the mean of the deltas
        assert torch.allclose(bb.model(x), x @ dora_weight(layer, "t").T + b + d.mean(0), atol=1e-5)
    state.teardown(bb)


def test_lora_merge_of_rslora_modules_on_different_layers(tiny_backbone_dir):
    """Per layer the merge is sum_i w_i dI_i, a layer an intermediate leaves alone counting as 0;
    rsLoRA's scaling alpha / sqrt(r) is part of each delta."""
    from peft.tuners.lora import LoraLayer

    bb = load_backbone(str(tiny_backbone_dir))
    m = get_method("lora")
    m.add(bb, "a", m.make_config({"r": 2, "alpha": 4, "use_rslora": True, "layers_to_transform": [0],
                                  "target_modules": ["query"]}))
    m.add(bb, "b", m.make_config({"r": 4, "alpha": 4, "layers_to_transform": [0, 1], "target_modules": ["query"],
                                  "rank_pattern": {"layer.1.attention.self.query": 3}}))
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if ".lora_" in n:
                p.normal_()
    setup(bb, Merge("x", "y", weights=[0.6, 0.4]), "lora", "t", ["a", "b"], target_modules=["query"])
    layers = {n: mod for n, mod in bb.model.named_modules() if isinstance(mod, LoraLayer)}
    assert set(layers) == {"encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"}
    for n, layer in layers.items():
        want = sum(w * delta(layer, s) for w, s in ((0.6, "a"), (0.4, "b")) if s in layer.lora_A)
        assert torch.allclose(delta(layer, "t_merged"), want, atol=1e-4), n
    assert layers["encoder.layer.0.attention.self.query"].scaling["a"] == pytest.approx(4 / 2 ** 0.5)


class ToyIA3(torch.nn.Module):
    """`key` (IA3 scales its output) then `output.dense` (IA3 scales its input)."""

    def __init__(self, d=6):
        super().__init__()
        self.key = torch.nn.Linear(d, d)
        self.output = torch.nn.Module()
        self.output.dense = torch.nn.Linear(d, d)

    def forward(self, x):
        return self.output.dense(self.key(x))


def test_ia3_stack_multiplies_and_merge_sums_the_vectors():
    torch.manual_seed(0)
    bb = Backbone(model=ToyIA3().eval(), tokenizer=None, source="toy", device=torch.device("cpu"),
                  fingerprint=BackboneFingerprint(model_id="toy", weights_sha256="0"))
    m = get_method("ia3")
    cfg = {"target_modules": ["key", "output.dense"], "feedforward_modules": ["output.dense"]}
    for s in ("i1", "i2", "t"):
        m.add(bb, s, m.make_config(cfg))
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if "ia3_l" in n:
                p.copy_(1 + 0.5 * torch.randn_like(p))
    key, dense = bb.model.key, bb.model.output.dense
    lk = {s: key.ia3_l[f"{s}-ia3"].flatten() for s in ("i1", "i2", "t")}
    lo = {s: dense.ia3_l[f"{s}-ia3"].flatten() for s in ("i1", "i2", "t")}
    x = torch.randn(3, 6)

    def by_hand(k, o):
        h = k * (x @ key.base_layer.weight.T + key.base_layer.bias)
        return (o * h) @ dense.base_layer.weight.T + dense.base_layer.bias

    state = setup(bb, Stack("x", "y"), "ia3", "t", ["i1", "i2"])
    state.activate(bb, train=True)
    assert torch.allclose(bb.model(x), by_hand(lk["i1"] * lk["i2"] * lk["t"], lo["i1"] * lo["i2"] * lo["t"]), atol=1e-5)
    assert {n for n, p in bb.model.named_parameters() if p.requires_grad} == {"key.ia3_l.t-ia3", "output.dense.ia3_l.t-ia3"}
    state.teardown(bb)
    merged = m.compose(bb, Merge("x", "y", weights=[0.7, 0.3]), "t", ["i1", "i2"], cfg)
    merged.activate(bb, train=False)
    mk, mo = 0.7 * lk["i1"] + 0.3 * lk["i2"], 0.7 * lo["i1"] + 0.3 * lo["i2"]
    assert torch.allclose(bb.model(x), by_hand(mk * lk["t"], mo * lo["t"]), atol=1e-5)
    merged.teardown(bb)
    assert not [n for n in dict(bb.model.named_parameters()) if "merged" in n]
