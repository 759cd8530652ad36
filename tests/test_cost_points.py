"""The cost model's view of where each method trains: the sites whose gradients it prices."""

from adapters_xtl import cost as C


def test_ia3_trains_keys_values_and_the_feed_forward_output_like_its_peft_targets():
    assert C.trainable_points("ia3") == {"key", "value", "attn_out", "ffn_out"}
    assert C.trainable_points("ia3", {"target_modules": ["key", "value"]}) == {"key", "value"}
    assert C.trainable_points("ia3") != set(C.POINTS)  # no longer priced as "every site"
