"""What a task YAML's `defaults:` may hold, checked when the catalog is read.

A wrong value (`steps: "abc"`, `lr: -1`, a misspelt setting) is then an error naming the task
file, the field and the value, instead of a pydantic traceback when training starts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class TrainDefaults(BaseModel):
    """The type and range of each `defaults.train` field: trainer.TrainConfig's (this layer
    cannot import the trainer; tests/test_data_input.py keeps the two equal). Checked when the
    catalog is read, so `steps: "abc"` is an error naming the file, field and value."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    grad_accum: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0, allow_inf_nan=False)
    head_lr: float | None = Field(None, gt=0, allow_inf_nan=False)
    weight_decay: float | None = Field(None, ge=0, allow_inf_nan=False)
    warmup_ratio: float | None = Field(None, ge=0, le=1)
    max_grad_norm: float | None = Field(None, ge=0, allow_inf_nan=False)
    eval_every: int | None = Field(None, ge=1)
    eval_examples: int | None = Field(None, ge=1)
    max_train_examples: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)
    log_every: int | None = Field(None, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    gradient_checkpointing: bool | None = None
    optimizer: Literal["adamw", "adamw8bit", "paged_adamw8bit"] | None = None
    precision: Literal["fp32", "bf16", "auto"] | None = None
    # a rate, or "built" for the dropout the backbone / module was built with
    backbone_dropout: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] | Literal["built"] | None = None
    module_dropout: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] | Literal["built"] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, v, info):  # pydantic would read `steps: true` as 1
        if isinstance(v, bool) and info.field_name != "gradient_checkpointing":
            raise ValueError("a true/false value is not a number here")
        return v


class PaperDefaults(BaseModel):
    """The paper's fine-tuning settings (documentation for recipes that reproduce them)."""

    model_config = ConfigDict(extra="forbid")

    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0)
    grad_accum: int | None = Field(None, gt=0)
    max_length: int | None = Field(None, gt=0)
    epochs: int | None = Field(None, gt=0)


class TaskDefaults(BaseModel):
    """What a task's `defaults:` may hold: training settings, the paper's, and span QA's windowing."""

    model_config = ConfigDict(extra="forbid")

    train: TrainDefaults | None = None
    paper: PaperDefaults | None = None
    doc_stride: int | None = Field(None, gt=0)
    max_query_length: int | None = Field(None, gt=0)
    max_answer_length: int | None = Field(None, gt=0)
    n_best_size: int | None = Field(None, gt=0)


def defaults_error(e: ValidationError) -> str:
    first = e.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    if first["type"] == "extra_forbidden":
        parent = TaskDefaults
        for part in first["loc"][:-1]:
            parent = parent.model_fields[part].annotation.__args__[0]
        return f"defaults.{loc}: unknown setting; valid: {', '.join(parent.model_fields)}"
    return f"defaults.{loc} = {first.get('input')!r}: {first['msg']}"
