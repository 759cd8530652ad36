"""Bottleneck `merge` is adapters' own `average_adapter` (linear): the same merged weights, to
1e-6, and the same outputs, for its default weights and for given ones; what it leaves
undefined is refused with the reason."""

from __future__ import annotations

import pytest
import torch

from adapters_xtl.backbone import load_backbone
from adapters_xtl.compose import Merge
from adapters_xtl.errors import XtlError
from adapters_xtl.methods import get_method
from adapters_xtl.pipeline import train_module
from test_core import FAST, write_toy_task
from test_interop import IDS, MASK, fresh_encoder

SLOTS = ("i1", "i2", "i3")


def random_bottlenecks(bb, config=None):
    m = get_method("bottleneck")
    for s in SLOTS + ("t",):
        m.add(bb, s, m.make_config(config or {"reduction_factor": 8}))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if ".adapters." in n:
                # T is the identity (up-projection 0), so Stack(merged, T) shows the merged module alone
                p.zero_() if ".adapters.t." in n and "adapter_up" in n else p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def reference(tiny_backbone_dir, bb, config, weights, normalize):
    """The same three adapters in a plain adapters model, averaged by adapters itself."""
    import adapters

    model = fresh_encoder(tiny_backbone_dir)
    adapters.init(model)
    for s in SLOTS:
        model.add_adapter(s, config=config)
    theirs = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if ".adapters.i" in n:
                theirs[n].copy_(p)
    model.average_adapter("avg", list(SLOTS), weights=weights, normalize_weights=normalize)
    model.set_active_adapters("avg")
    return model.eval()


@pytest.mark.parametrize("weights,adapters_weights,normalize", [
    (None, None, True),  # default: 1/n each, adapters' default average
    ([0.5, 0.3, 0.2], [0.5, 0.3, 0.2], True),
    ([-1.0, 1.2, 0.8], [-1.0, 1.2, 0.8], True),  # adapters' documented example (unlearning)
    ([2.0, -0.5, 0.25], [2.0, -0.5, 0.25], False),  # weights used as given, not normalised
])
def test_bottleneck_merge_equals_adapters_average_adapter(tiny_backbone_dir, weights, adapters_weights, normalize):
    from adapters import SeqBnConfig

    bb = load_backbone(str(tiny_backbone_dir))
    m = random_bottlenecks(bb)
    state = m.compose(bb, Merge(*SLOTS, weights=weights), "t", list(SLOTS), {})
    ref = reference(tiny_backbone_dir, bb, SeqBnConfig(reduction_factor=8), adapters_weights, normalize)
    mine = m.state_dict(bb, "t_merged")
    theirs = {k: v for k, v in ref.state_dict().items() if ".adapters.avg." in k}
    assert len(mine) == len(theirs) == 8  # down weight/bias, up weight/bias, in 2 layers
    for k, v in mine.items():
        assert torch.allclose(v, theirs[k.replace(".__module__.", ".avg.")], atol=1e-6), k
    state.activate(bb, train=False)
    with torch.no_grad():
        ours = bb.model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        avg = ref(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert torch.allclose(ours, avg, atol=1e-5), (ours - avg).abs().max()
    state.teardown(bb)
    assert "t_merged" not in bb.model.adapters_config.adapters


def test_double_seq_bn_merges_too(tiny_backbone_dir):
    from adapters import DoubleSeqBnConfig

    bb = load_backbone(str(tiny_backbone_dir))
    m = random_bottlenecks(bb, {"variant": "double_seq_bn", "reduction_factor": 8})
    m.compose(bb, Merge(*SLOTS), "t", list(SLOTS), {})
    ref = reference(tiny_backbone_dir, bb, DoubleSeqBnConfig(reduction_factor=8), None, True)
    theirs = ref.state_dict()
    mine = m.state_dict(bb, "t_merged")
    assert len(mine) == 16 and all(torch.allclose(v, theirs[k.replace(".__module__.", ".avg.")], atol=1e-6)
                                   for k, v in mine.items())


def test_bottleneck_merge_refuses_what_is_undefined(tiny_backbone_dir, tmp_path, registry):
    task = write_toy_task(tmp_path / "toy")
    bb = load_backbone(str(tiny_backbone_dir))
    for name, cfg in (("rf8", {"reduction_factor": 8}), ("rf4", {"reduction_factor": 4}),
                      ("swish", {"reduction_factor": 8, "non_linearity": "swish"})):
        train_module(bb, str(task), name=name, method="bottleneck", method_config=cfg, registry=registry,
                     train_config=FAST)
    for other in ("rf4", "swish"):
        with pytest.raises(XtlError, match="(?s)parameter by parameter, so they need one config.*differ"):
            train_module(bb, str(task), name="t", method="bottleneck", registry=registry, train_config=FAST,
                         composition={"kind": "merge", "modules": ["rf8", other]})
    with pytest.raises(XtlError, match="merge linearly only, not 'dare_linear'.*random down-projections"):
        train_module(bb, str(task), name="t", method="bottleneck", registry=registry, train_config=FAST,
                     composition={"kind": "merge", "modules": ["rf8", "rf8"], "merge": {"how": "dare_linear"}})
    assert sorted(registry.names()) == ["rf4", "rf8", "swish"]  # nothing half-made was registered
