"""Training settings are checked when built: every impossible value is one XtlError naming the
field, the value and the fix, from the constructor, from `resolve` and from a recipe's cells."""

from __future__ import annotations

import pytest
import yaml

from adapters_xtl.errors import XtlError
from adapters_xtl.trainer import TrainConfig

BAD = [
    # (settings, text the message must contain, text the fix must contain)
    ({"steps": 0}, "steps=0", "steps to an integer >= 1"),
    ({"steps": -5}, "steps=-5", "steps to an integer >= 1"),
    ({"steps": "abc"}, "steps='abc'", "steps to an integer"),
    ({"steps": 1.5}, "steps=1.5", "steps to an integer"),
    ({"steps": True}, "steps=True", "steps to an integer"),
    ({"batch_size": 0}, "batch_size=0", "batch_size to an integer >= 1"),
    ({"grad_accum": 0}, "grad_accum=0", "grad_accum to an integer >= 1"),
    ({"lr": -1}, "lr=-1", "lr to a number > 0"),
    ({"lr": 0}, "lr=0", "lr to a number > 0"),
    ({"lr": float("nan")}, "lr=nan", "lr to a number > 0"),
    ({"lr": "fast"}, "lr='fast'", "lr to a number > 0"),
    ({"head_lr": 0}, "head_lr=0", "head_lr to a number > 0"),
    ({"head_lr": float("inf")}, "head_lr=inf", "head_lr to a number > 0"),
    ({"weight_decay": -0.1}, "weight_decay=-0.1", "weight_decay to a number >= 0"),
    ({"warmup_ratio": 1.5}, "warmup_ratio=1.5", "warmup_ratio to a number from 0 to 1"),
    ({"warmup_ratio": -0.1}, "warmup_ratio=-0.1", "warmup_ratio to a number from 0 to 1"),
    ({"max_grad_norm": -1}, "max_grad_norm=-1", "max_grad_norm to a number >= 0"),
    ({"eval_every": 0}, "eval_every=0", "eval_every to an integer >= 1"),
    ({"eval_examples": 0}, "eval_examples=0", "eval_examples to an integer >= 1"),
    ({"eval_examples": -3}, "eval_examples=-3", "eval_examples to an integer >= 1"),
    ({"max_train_examples": 0}, "max_train_examples=0", "max_train_examples to an integer >= 1"),
    ({"seed": -1}, "seed=-1", "seed to an integer >= 0"),
    ({"log_every": 0}, "log_every=0", "log_every to an integer >= 1"),
    ({"checkpoint_every": 0}, "checkpoint_every=0", "checkpoint_every to an integer >= 1"),
    ({"gradient_checkpointing": "sometimes"}, "gradient_checkpointing='sometimes'", "true or false"),
    ({"optimizer": "sgd"}, "optimizer='sgd'", "adamw, adamw8bit, paged_adamw8bit"),
    ({"stpes": 10}, "'stpes' is not a training setting", "did you mean 'steps'"),
    ({"batch_size": 16, "grad_accum": 3}, "batch_size=16 is not a multiple of grad_accum=3", "batch_size 15"),
]


@pytest.mark.parametrize("settings, says, fix", BAD, ids=[str(b[0]) for b in BAD])
def test_an_impossible_setting_is_one_clear_error(settings, says, fix):
    with pytest.raises(XtlError) as e:
        TrainConfig(**settings)
    text = str(e.value)
    assert says in text and fix in e.value.fix
    assert e.value.where == "TrainConfig"
    assert "pydantic" not in text and "errors.pydantic.dev" not in text


def test_resolve_names_where_the_value_came_from_and_every_bad_field():
    with pytest.raises(XtlError) as e:
        TrainConfig.resolve(None, {"steps": 5}, {"batch_size": 0, "lr": -1.0}, where="grid.yaml: target x")
    assert e.value.where == "grid.yaml: target x"
    assert "batch_size=0" in str(e.value) and "lr=-1.0" in str(e.value)
    assert "set batch_size" in e.value.fix and "set lr" in e.value.fix
    with pytest.raises(XtlError, match="must be a mapping"):
        TrainConfig.resolve(None, ["steps", 3], where="recipe train")


def test_good_settings_pass_and_none_means_not_given():
    cfg = TrainConfig.resolve(None, {"steps": "12", "lr": 5e-3, "grad_accum": 2, "batch_size": 8},
                              {"steps": None, "eval_examples": None}, where="cli")
    assert (cfg.steps, cfg.lr, cfg.grad_accum, cfg.batch_size, cfg.eval_examples) == (12, 5e-3, 2, 8, 500)
    assert TrainConfig(eval_examples=None, head_lr=None, max_grad_norm=0, warmup_ratio=0).eval_examples is None


def test_a_recipe_cell_with_a_bad_step_count_fails_before_any_work(tmp_path, tiny_backbone_dir, registry):
    from test_core import write_toy_task

    from adapters_xtl.recipe import expand, load_recipe
    from adapters_xtl.runner import describe, run_plan

    task = write_toy_task(tmp_path / "t")
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({
        "name": "bad", "backbone": str(tiny_backbone_dir), "seeds": [1], "train": {"steps": 4},
        "intermediate": [{"task": str(task), "name": "i"}],
        "targets": [{"task": str(task), "train": {"steps": "abc"}}], "compositions": ["single", "stack"],
    }))
    try:
        plan = expand(load_recipe(r))
    except XtlError as e:  # the recipe loader may refuse it itself: as good, if it says what
        assert "steps" in str(e) and "abc" in str(e)
    else:
        with pytest.raises(XtlError, match="steps='abc'") as e:
            describe(plan, registry)
        assert "target" in e.value.where
        with pytest.raises(XtlError, match="steps='abc'"):
            run_plan(plan, tmp_path / "run", registry=registry)
    assert not (tmp_path / "run").exists() and registry.names() == []  # nothing trained, nothing written


def test_zero_steps_only_where_an_untrained_baseline_is_asked_for():
    assert TrainConfig.resolve(None, {"steps": 0}, where="steps study", allow_untrained=True).steps == 0
    with pytest.raises(XtlError, match="steps=0: a module needs at least one training step"):
        TrainConfig.resolve(None, {"steps": 0}, where="--steps")
    with pytest.raises(XtlError, match="steps=-1"):
        TrainConfig.resolve(None, {"steps": -1}, where="steps study", allow_untrained=True)
