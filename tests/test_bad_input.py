"""Every bad input is one clear error before any work (issue 14): a table of command lines and
recipes, each of which must exit with code 2, name the option or field and the value in its
message, and leave every folder exactly as it was.

The CLI runs in-process (`adapters_xtl.cli.main`). A guard makes loading backbone weights,
building xlmr-e5-small, measuring the matmul peak and running bench configurations fail the
test, so each error is shown to come before any of that work. The world each case runs in: a toy
task folder, a registry holding one trained module (`toy-mod`, trained once per module of tests
on the tiny backbone), an empty working directory, a plain file and an empty folder.

Cases for data files, task YAML and registry internals (symlinks, export, verify) live in the
test files of the code that reads them.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from test_core import write_toy_task


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # {tmp} {task} {taskdir} {bb} {reg} {recipe} are filled in per test
    expect: tuple[str, ...]  # substrings of the message (case-insensitive)
    recipe: str | bytes | None = None  # written to {recipe} first
    files: dict = field(default_factory=dict)  # more files under {tmp}: relative path -> text or bytes
    xfail: str | None = None  # a known failure outside this suite's files, and what fixes it


def C(id: str, argv: str, *expect: str, recipe=None, files=None, xfail=None) -> Case:
    return Case(id, argv, expect, recipe, files or {}, xfail)


TRAIN = "train --task {task} --backbone {bb} --registry {reg}"
EVAL = "eval --task {task} --module toy-mod --backbone {bb} --registry {reg}"
PRED = "predict --module toy-mod --backbone {bb} --registry {reg}"
RUN = "run {recipe} --out {tmp}/work/runs/x --registry {reg}"
BENCH = "bench --in-process --peak-flops 1e12 --json {tmp}/work/bench.json"

BASE_RECIPE = """\
name: bad-input
backbone: {bb}
tasks_dir: [{taskdir}]
intermediate:
  - task: toy-sentiment
    name: inter
targets:
  - task: toy-sentiment
    languages: [de]
compositions: [single, stack]
train: {steps: 2, batch_size: 4, eval_every: 2}
"""


def R(old: str, new: str) -> str:
    """The base recipe with one piece of text replaced (the one mistake a case makes)."""
    assert old in BASE_RECIPE, old
    return BASE_RECIPE.replace(old, new, 1)


TRAIN_LINE = "train: {steps: 2, batch_size: 4, eval_every: 2}"
TARGET = "  - task: toy-sentiment\n    languages: [de]\n"
INTER = "  - task: toy-sentiment\n    name: inter\n"

CASES = [
    # ------------------------------------------------------------------ xtl train
    C("train-unknown-task", "train --task nope-task --backbone {bb}", "nope-task"),
    C("train-task-file-missing", "train --task {tmp}/missing.yaml --backbone {bb}", "missing.yaml", "not found"),
    C("train-missing-task-option", "train --backbone {bb}", "--task"),
    C("train-unknown-option", TRAIN + " --stepz 3", "--stepz"),
    C("train-unknown-method", TRAIN + " --method lorax", "lorax", "lora"),
    C("train-method-config-not-json", TRAIN + " --method-config {r:", "--method-config", "JSON"),
    C("train-method-config-not-an-object", TRAIN + " --method-config [16]", "--method-config", "[16]"),
    C("train-method-config-unknown-field", TRAIN + " --method-config '{\"rr\": 16}'", "--method-config", "rr"),
    C("train-method-config-wrong-type", TRAIN + " --method-config '{\"r\": \"big\"}'", "--method-config", "r"),
    C("train-unknown-language", TRAIN + " --languages de,xx", "xx"),
    C("train-language-like-markup", TRAIN + " --languages [/x]", "[/x]"),
    C("train-unknown-quantization", TRAIN + " --quantization 3bit", "3bit", "4bit"),
    C("train-unknown-backbone", "train --task {task} --backbone nope-model --registry {reg}", "nope-model"),
    C("train-backbone-folder-without-config", "train --task {task} --backbone {tmp}/adir --registry {reg}",
      "config.json", "adir"),
    C("train-steps-zero", TRAIN + " --steps 0", "--steps", "0"),
    C("train-steps-negative", TRAIN + " --steps -5", "--steps", "-5"),
    # typer's own message for a value of the wrong type names the option, not the value
    C("train-steps-not-a-number", TRAIN + " --steps abc", "--steps", "integer"),
    C("train-lr-not-a-number", TRAIN + " --lr fast", "--lr", "number"),
    C("train-batch-size-zero", TRAIN + " --batch-size 0", "--batch-size", "0"),
    C("train-batch-size-negative", TRAIN + " --batch-size -2", "--batch-size", "-2"),
    C("train-lr-negative", TRAIN + " --lr -1", "--lr", "-1"),
    C("train-lr-zero", TRAIN + " --lr 0", "--lr", "0"),
    C("train-lr-nan", TRAIN + " --lr nan", "--lr", "nan"),
    C("train-lr-inf", TRAIN + " --lr inf", "--lr", "inf"),
    C("train-eval-every-zero", TRAIN + " --eval-every 0", "--eval-every", "0"),
    C("train-max-train-examples-zero", TRAIN + " --max-train-examples 0", "--max-train-examples", "0"),
    C("train-eval-limit-negative", TRAIN + " --eval-limit -3", "--eval-limit", "-3"),
    C("train-eval-limit-zero", TRAIN + " --eval-limit 0", "--eval-limit", "0"),
    C("train-name-absolute", TRAIN + " --name /abs", "--name", "/abs"),
    C("train-name-traversal", TRAIN + " --name ../../x", "--name", "../../x"),
    C("train-name-with-a-slash", TRAIN + " --name a/b", "--name", "a/b"),
    C("train-name-reserved", TRAIN + " --name index.json", "--name", "index.json"),
    C("train-init-from-unknown-module", TRAIN + " --init-from ghost", "ghost"),
    C("train-init-from-unknown-version", TRAIN + " --init-from toy-mod@9", "toy-mod", "9"),
    C("train-init-from-bad-name", TRAIN + " --init-from ../up", "../up"),
    C("train-results-is-a-directory", TRAIN + " --results {tmp}/adir", "--results", "adir"),
    C("train-results-under-a-file", TRAIN + " --results {tmp}/afile.txt/r.jsonl", "--results", "afile.txt"),
    C("train-results-unwritable", TRAIN + " --results /proc/xtl-nope/r.jsonl", "--results", "/proc/xtl-nope"),
    C("train-registry-is-a-file", "train --task {task} --backbone {bb} --registry {tmp}/afile.txt",
      "--registry", "afile.txt"),
    C("train-checkpoint-dir-is-a-file", TRAIN + " --checkpoint-dir {tmp}/afile.txt", "--checkpoint-dir", "afile.txt"),
    C("train-data-dir-missing", TRAIN + " --data-dir {tmp}/no-data", "--data-dir", "no-data"),
    C("train-data-dir-is-a-file", TRAIN + " --data-dir {tmp}/afile.txt", "--data-dir", "afile.txt"),
    C("train-device-unknown", TRAIN + " --device tpu9", "--device", "tpu9"),
    C("train-device-not-here", TRAIN + " --device cuda:99", "--device", "cuda:99"),
    C("train-retrieval-task", "train --task tatoeba --backbone {bb} --registry {reg}", "tatoeba", "xtl eval"),
    C("train-tasks-dir-missing", "--tasks-dir {tmp}/no-tasks " + TRAIN, "no-tasks"),
    # ------------------------------------------------------------------ xtl eval
    C("eval-limit-zero", EVAL + " --limit 0", "--limit", "0"),
    C("eval-limit-negative", EVAL + " --limit -2", "--limit", "-2"),
    C("eval-unknown-module", "eval --task {task} --module ghost --backbone {bb} --registry {reg}", "ghost"),
    C("eval-unknown-version", "eval --task {task} --module toy-mod@7 --backbone {bb} --registry {reg}", "7"),
    C("eval-bad-module-name", "eval --task {task} --module ../x --backbone {bb} --registry {reg}", "../x"),
    C("eval-classification-without-module", "eval --task {task} --backbone {bb} --registry {reg}", "--module"),
    C("eval-unknown-task", "eval --task nope-task --module toy-mod --backbone {bb} --registry {reg}", "nope-task"),
    C("eval-unknown-language", EVAL + " --languages zz", "zz"),
    C("eval-results-is-a-directory", EVAL + " --results {tmp}/adir", "--results", "adir"),
    C("eval-results-under-a-file", EVAL + " --results {tmp}/afile.txt/r.jsonl", "--results", "afile.txt"),
    C("eval-save-predictions-is-a-directory", EVAL + " --save-predictions {tmp}/adir", "--save-predictions", "adir"),
    C("eval-unknown-quantization", EVAL + " --quantization 3bit", "3bit"),
    C("eval-unknown-backbone", "eval --task {task} --module toy-mod --backbone nope-model --registry {reg}",
      "nope-model"),
    C("eval-data-dir-missing", EVAL + " --data-dir {tmp}/no-data", "--data-dir", "no-data"),
    C("eval-device-unknown", EVAL + " --device tpu9", "--device", "tpu9"),
    C("eval-limit-not-a-number", EVAL + " --limit lots", "--limit", "integer"),
    # ------------------------------------------------------------------ xtl predict
    C("predict-nothing-to-predict", PRED, "--text"),
    C("predict-batch-size-zero", PRED + " --text hello --batch-size 0", "--batch-size", "0"),
    C("predict-file-missing", PRED + " --file {tmp}/nope.jsonl", "--file", "nope.jsonl"),
    C("predict-file-unknown-format", PRED + " --file {tmp}/afile.txt", "--file", ".txt"),
    C("predict-file-not-utf8", PRED + " --file {tmp}/latin1.jsonl", "latin1.jsonl", "UTF-8", "byte 13",
      files={"latin1.jsonl": b'{"text": "caf\xe9"}\n'}),
    C("predict-file-bad-json-line", PRED + " --file {tmp}/broken.jsonl", "broken.jsonl", "line 2",
      files={"broken.jsonl": '{"text": "a"}\n{oops\n'}),
    C("predict-unknown-module", "predict --module ghost --text hi --backbone {bb} --registry {reg}", "ghost"),
    C("predict-unknown-version", "predict --module toy-mod@x9 --text hi --backbone {bb} --registry {reg}", "x9"),
    C("predict-out-is-a-directory", PRED + " --text hello --out {tmp}/adir", "--out", "adir"),
    C("predict-out-under-a-file", PRED + " --text hello --out {tmp}/afile.txt/p.jsonl", "--out", "afile.txt"),
    C("predict-unknown-quantization", PRED + " --text hello --quantization 3bit", "3bit"),
    C("predict-unknown-task", PRED + " --text hello --task nope-task", "nope-task"),
    C("predict-device-unknown", PRED + " --text hello --device tpu9", "--device", "tpu9"),
    # ------------------------------------------------------------------ xtl run: the recipe file
    C("run-recipe-missing", "run {tmp}/nope.yaml", "nope.yaml", "not found"),
    C("run-recipe-is-a-directory", "run {tmp}/adir", "adir"),
    C("run-recipe-bad-yaml", RUN, "recipe.yaml", "YAML", recipe="name: [unclosed\n"),
    C("run-recipe-not-a-mapping", RUN, "recipe.yaml", "mapping", recipe="- a\n- b\n"),
    C("run-recipe-empty", RUN, "recipe.yaml", "mapping", recipe=""),
    C("run-recipe-not-utf8", RUN, "recipe.yaml", "UTF-8", "byte 9", recipe=b"name: caf\xe9\n"),
    C("run-recipe-unknown-key", RUN, "recipe.yaml", "epochs", recipe=BASE_RECIPE + "epochs: 3\n"),
    C("run-recipe-file-key", RUN, "recipe.yaml", "file", recipe=BASE_RECIPE + "file: other.yaml\n"),
    C("run-recipe-missing-name", RUN, "recipe.yaml", "name", recipe=R("name: bad-input\n", "")),
    C("run-recipe-include-missing", RUN, "recipe.yaml", "nope-base.yaml",
      recipe="include: nope-base.yaml\n" + BASE_RECIPE),
    C("run-recipe-include-not-a-string", RUN, "recipe.yaml", "include", "5", recipe="include: 5\n" + BASE_RECIPE),
    C("run-recipe-include-not-utf8", RUN, "base.yaml", "UTF-8", recipe="include: base.yaml\n" + BASE_RECIPE,
      files={"base.yaml": b"description: caf\xe9\n"}),
    C("run-recipe-data-dir-not-a-string", RUN, "recipe.yaml", "data_dir", "5", recipe=BASE_RECIPE + "data_dir: 5\n"),
    C("run-recipe-tasks-dir-missing", RUN, "recipe.yaml", "tasks_dir", "no-tasks", recipe=R("tasks_dir: [{taskdir}]", "tasks_dir: [{tmp}/no-tasks]")),
    C("run-recipe-tasks-dir-not-a-string", RUN, "recipe.yaml", "tasks_dir", recipe=R("tasks_dir: [{taskdir}]",
                                                                                       "tasks_dir: [{taskdir}, 7]")),
    # ------------------------------------------------------------------ xtl run: names
    C("run-recipe-name-absolute", RUN, "recipe.yaml", "name", "/abs", recipe=R("name: bad-input", "name: /abs")),
    C("run-recipe-name-traversal", RUN, "recipe.yaml", "name", "../../x", recipe=R("name: bad-input", 'name: "../../x"')),
    C("run-recipe-name-traversal-dry-run", RUN + " --dry-run", "recipe.yaml", "../../x",
      recipe=R("name: bad-input", 'name: "../../x"')),
    C("run-recipe-name-with-a-slash", "run {recipe} --registry {reg}", "recipe.yaml", "a/b",
      recipe=R("name: bad-input", "name: a/b")),
    C("run-recipe-intermediate-name-traversal", RUN, "recipe.yaml", "intermediate", "../../evil",
      recipe=R("name: inter", 'name: "../../evil"')),
    C("run-recipe-intermediate-name-absolute", RUN, "recipe.yaml", "intermediate", "/tmp/evil",
      recipe=R("name: inter", "name: /tmp/evil")),
    C("run-recipe-intermediate-name-traversal-seeds", RUN, "recipe.yaml", "../evil",
      recipe=R("name: inter", 'name: "../evil"') + "seeds: [1, 2]\n"),
    # ------------------------------------------------------------------ xtl run: what the recipe names
    C("run-recipe-unknown-target-task", RUN, "recipe.yaml", "targets[0].task", "nope-task",
      recipe=R(TARGET, "  - task: nope-task\n")),
    C("run-recipe-unknown-intermediate-task", RUN, "recipe.yaml", "intermediate[0].task", "nope-inter",
      recipe=R(INTER, "  - task: nope-inter\n")),
    C("run-recipe-unknown-multitask-member", RUN, "recipe.yaml", "intermediate[1].multitask[1]", "nope-mt",
      recipe=R(INTER, INTER + "  - multitask: [toy-sentiment, nope-mt]\n")),
    C("run-recipe-unknown-language", RUN, "recipe.yaml", "targets[0].languages", "zz",
      recipe=R("languages: [de]", "languages: [de, zz]")),
    C("run-recipe-languages-not-a-list", RUN, "recipe.yaml", "languages", recipe=R("languages: [de]", "languages: 5")),
    C("run-recipe-unknown-method", RUN, "recipe.yaml", "method", "lorax", recipe=BASE_RECIPE + "method: lorax\n"),
    C("run-recipe-bad-method-config", RUN, "method_config", "rr", recipe=BASE_RECIPE + "method_config: {rr: 3}\n"),
    C("run-recipe-unknown-quantization", RUN, "recipe.yaml", "quantization", "3bit",
      recipe=BASE_RECIPE + "quantization: 3bit\n"),
    C("run-recipe-unknown-quantization-dry-run", RUN + " --dry-run", "recipe.yaml", "quantization", "3bit",
      recipe=BASE_RECIPE + "quantization: 3bit\n"),
    C("run-recipe-unknown-backbone", RUN, "recipe.yaml", "backbone", "nope-model",
      recipe=R("backbone: {bb}", "backbone: nope-model")),
    C("run-recipe-unknown-composition", RUN, "stacc", recipe=R("[single, stack]", "[single, stacc]")),
    C("run-recipe-composition-unknown-module", RUN, "ghost",
      recipe=R("[single, stack]", "[single, {kind: fuse, modules: [ghost]}]")),
    C("run-recipe-composition-without-intermediates", RUN, "stack", recipe=R(INTER, "").replace("intermediate:\n",
                                                                                                 "intermediate: []\n")),
    C("run-recipe-merge-density", RUN, "density", "3", recipe=R("[single, stack]", "[single, {kind: merge, density: 3}]")),
    C("run-recipe-merge-unknown-how", RUN, "how", recipe=R("[single, stack]", "[single, {kind: merge, how: mean}]")),
    C("run-recipe-duplicate-intermediates", RUN, "unique", recipe=R(INTER, INTER + INTER)),
    C("run-recipe-task-and-multitask", RUN, "multitask", recipe=R(INTER, INTER + "    multitask: [a, b]\n")),
    C("run-recipe-multitask-of-one", RUN, "multitask", recipe=R(INTER, "  - multitask: [toy-sentiment]\n")),
    C("run-recipe-multitask-sampling", RUN, "sampling",
      recipe=R(INTER, INTER + "  - multitask: [toy-sentiment, toy-sentiment]\n    sampling: weird\n")),
    C("run-recipe-multitask-cap-zero", RUN, "cap", "0",
      recipe=R(INTER, INTER + "  - multitask: [toy-sentiment, toy-sentiment]\n    name: mix\n    cap: 0\n")),
    C("run-recipe-seeds-not-integers", RUN, "seeds", recipe=BASE_RECIPE + "seeds: [a]\n"),
    C("run-recipe-no-seeds", RUN, "recipe.yaml", "seeds", recipe=BASE_RECIPE + "seeds: []\n"),
    C("run-recipe-no-targets", RUN, "recipe.yaml", "targets", recipe=R(TARGET, "").replace("targets:\n", "targets: []\n")),
    # ------------------------------------------------------------------ xtl run: training settings
    C("run-recipe-train-steps-abc", RUN, "recipe.yaml", "train.steps", "abc", recipe=R(TRAIN_LINE, "train: {steps: abc}")),
    C("run-recipe-train-steps-abc-dry-run", RUN + " --dry-run", "recipe.yaml", "train.steps", "abc",
      recipe=R(TRAIN_LINE, "train: {steps: abc}")),
    C("run-recipe-train-steps-zero", RUN, "recipe.yaml", "train.steps", "0", recipe=R(TRAIN_LINE, "train: {steps: 0}")),
    C("run-recipe-train-batch-size-zero", RUN, "recipe.yaml", "train.batch_size", "0",
      recipe=R(TRAIN_LINE, "train: {steps: 2, batch_size: 0}")),
    C("run-recipe-train-batch-size-zero-dry-run", RUN + " --dry-run", "recipe.yaml", "train.batch_size", "0",
      recipe=R(TRAIN_LINE, "train: {steps: 2, batch_size: 0}")),
    C("run-recipe-train-lr-negative", RUN, "recipe.yaml", "train.lr", "-1", recipe=R(TRAIN_LINE, "train: {lr: -1}")),
    C("run-recipe-train-lr-nan", RUN, "recipe.yaml", "train.lr", "nan", recipe=R(TRAIN_LINE, "train: {lr: .nan}")),
    C("run-recipe-train-unknown-field", RUN, "recipe.yaml", "train.stepz", recipe=R(TRAIN_LINE, "train: {stepz: 3}")),
    C("run-recipe-train-not-a-mapping", RUN, "recipe.yaml", "train", recipe=R(TRAIN_LINE, "train: 3")),
    C("run-recipe-train-warmup-ratio", RUN, "recipe.yaml", "warmup_ratio", "2",
      recipe=R(TRAIN_LINE, "train: {warmup_ratio: 2}")),
    C("run-recipe-train-optimizer", RUN, "recipe.yaml", "optimizer", "sgd", recipe=R(TRAIN_LINE, "train: {optimizer: sgd}")),
    C("run-recipe-target-steps-zero", RUN, "recipe.yaml", "targets[0].steps", "0", recipe=R(TARGET, TARGET + "    steps: 0\n")),
    C("run-recipe-target-train-batch-size", RUN, "recipe.yaml", "targets[0].train.batch_size", "-4",
      recipe=R(TARGET, TARGET + "    train: {batch_size: -4}\n")),
    C("run-recipe-target-eval-limit-negative", RUN, "recipe.yaml", "eval_limit", "-3",
      recipe=R(TARGET, TARGET + "    eval_limit: -3\n")),
    C("run-recipe-target-eval-limit-zero", RUN, "recipe.yaml", "eval_limit", "0",
      recipe=R(TARGET, TARGET + "    eval_limit: 0\n")),
    C("run-recipe-intermediate-steps-zero", RUN, "recipe.yaml", "intermediate[0].steps", "0",
      recipe=R(INTER, INTER + "    steps: 0\n")),
    C("run-recipe-intermediate-train-lr-abc", RUN, "recipe.yaml", "intermediate[0].train.lr", "abc",
      recipe=R(INTER, INTER + "    train: {lr: abc}\n")),
    # ------------------------------------------------------------------ xtl run: options
    C("run-out-is-a-file", "run {recipe} --out {tmp}/afile.txt --registry {reg}", "--out", "afile.txt",
      recipe=BASE_RECIPE),
    C("run-data-dir-missing", RUN + " --data-dir {tmp}/no-data", "--data-dir", "no-data", recipe=BASE_RECIPE),
    C("run-device-unknown", RUN + " --device tpu9", "--device", "tpu9", recipe=BASE_RECIPE),
    C("run-registry-is-a-file", "run {recipe} --out {tmp}/work/runs/x --registry {tmp}/afile.txt", "--registry",
      "afile.txt", recipe=BASE_RECIPE),
    C("quickstart-steps-zero", "quickstart --out {tmp}/work/qs --steps 0", "--steps", "0"),
    C("quickstart-steps-negative", "quickstart --out {tmp}/work/qs --steps -1", "--steps", "-1"),
    C("quickstart-out-is-a-file", "quickstart --out {tmp}/afile.txt --steps 2", "--out", "afile.txt"),
    # ------------------------------------------------------------------ xtl study
    C("study-unknown", "study nope-study", "nope-study"),
    C("study-recipe-missing", "study steps --recipe {tmp}/nope.yaml", "--recipe", "nope.yaml"),
    C("study-out-is-a-file", "study steps --out {tmp}/afile.txt --dry-run", "--out", "afile.txt"),
    C("study-data-dir-missing", "study steps --data-dir {tmp}/no-data --dry-run", "--data-dir", "no-data"),
    # ------------------------------------------------------------------ xtl bench
    C("bench-batch-zero", BENCH + " --batch 0", "--batch", "0"),
    C("bench-steps-zero", BENCH + " --steps 0", "--steps", "0"),
    C("bench-warmup-negative", BENCH + " --warmup -1", "--warmup", "-1"),
    C("bench-seq-zero", BENCH + " --seq 128,0", "--seq", "0"),
    C("bench-seq-not-integers", "bench --in-process --seq 128,abc --json {tmp}/work/bench.json", "--seq", "abc"),
    C("bench-grad-ckpt-bad", "bench --in-process --grad-ckpt maybe --json {tmp}/work/bench.json", "--grad-ckpt", "maybe"),
    C("bench-unknown-method", "bench --in-process --methods lorax --json {tmp}/work/bench.json", "--methods", "lorax"),
    C("bench-unknown-quantization", "bench --in-process --quant 3bit --json {tmp}/work/bench.json", "--quant", "3bit"),
    C("bench-unknown-optimizer", "bench --in-process --optimizer sgd --json {tmp}/work/bench.json", "--optimizer", "sgd"),
    C("bench-unknown-attention", "bench --in-process --attn flash9 --json {tmp}/work/bench.json", "--attn", "flash9"),
    C("bench-unknown-embeddings", "bench --in-process --embeddings 3bit --json {tmp}/work/bench.json", "3bit"),
    C("bench-unknown-shape", "bench --in-process --shapes huge --json {tmp}/work/bench.json", "--shapes", "huge"),
    C("bench-json-is-a-directory", "bench --in-process --peak-flops 1e12 --json {tmp}/adir", "--json", "adir"),
    C("bench-timeout-negative", BENCH + " --timeout -1", "--timeout", "-1"),
    C("bench-peak-flops-negative", "bench --in-process --peak-flops -5 --json {tmp}/work/bench.json", "--peak-flops", "-5"),
    C("bench-peak-size-zero", "bench --in-process --peak-size 0 --json {tmp}/work/bench.json", "--peak-size", "0"),
    C("bench-peer-steps-zero", BENCH + " --peer --peer-steps 0", "--peer-steps", "0"),
    C("bench-peer-batch-zero", BENCH + " --peer --peer-batch 0", "--peer-batch", "0"),
    C("bench-device-unknown", BENCH + " --device tpu9", "--device", "tpu9"),
    # ------------------------------------------------------------------ others
    C("report-without-results", "report {tmp}/adir", "results.jsonl"),
    C("unknown-command", "trian --task x", "trian"),
]


@pytest.fixture(scope="module")
def trained_registry(tiny_backbone_dir, tmp_path_factory) -> Path:
    """A registry with one module, `toy-mod`, trained for two steps on the tiny backbone."""
    import adapters_xtl as xtl

    root = tmp_path_factory.mktemp("bad-input")
    cat = xtl.TaskCatalog(include=[write_toy_task(root / "toy").parent])
    reg = xtl.Registry(root / "registry")
    with cat.active():
        xtl.train(xtl.Backbone.load(str(tiny_backbone_dir)), "toy-sentiment", registry=reg, name="toy-mod",
                  languages=["en"], config=xtl.TrainConfig(steps=2, batch_size=4, eval_every=2))
    return reg.root


class WorkStarted(AssertionError):
    """Raised by the guard: the command got past validation into real work."""


def guard_work(monkeypatch) -> None:
    """Make every expensive first step of a command fail the test instead of running."""
    import transformers

    import adapters_xtl.bench as bench
    import adapters_xtl.cost as cost
    import adapters_xtl.embedded as embedded

    def refuse(what):
        def f(*a, **k):
            raise WorkStarted(f"{what} started before the error")
        return f

    monkeypatch.setattr(transformers.XLMRobertaModel, "from_pretrained", refuse("loading backbone weights"))
    monkeypatch.setattr(embedded, "build_e5_small", refuse("building xlmr-e5-small"))
    monkeypatch.setattr(cost, "measure_peak_flops", refuse("measuring the matmul peak"))
    for name in ("run_configs", "padding_report", "embedding_report", "peer_compare"):
        monkeypatch.setattr(bench, name, refuse(f"bench {name}"))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root with its size and modification time."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = ()
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


def make_world(tmp: Path, trained_registry: Path, tiny_backbone_dir: Path, monkeypatch, case: Case) -> dict:
    task = write_toy_task(tmp / "toy")
    shutil.copytree(trained_registry, tmp / "registry")
    (tmp / "work").mkdir()
    (tmp / "adir").mkdir()
    (tmp / "afile.txt").write_text("a plain file, not a folder\n")
    subs = {"{tmp}": str(tmp), "{task}": str(task), "{taskdir}": str(task.parent), "{bb}": str(tiny_backbone_dir),
            "{reg}": str(tmp / "registry"), "{recipe}": str(tmp / "recipe.yaml")}

    def fill(s: str) -> str:
        for k, v in subs.items():
            s = s.replace(k, v)
        return s

    if case.recipe is not None:
        data = case.recipe if isinstance(case.recipe, bytes) else fill(case.recipe).encode()
        (tmp / "recipe.yaml").write_bytes(data)
    for rel, content in case.files.items():
        (tmp / rel).write_bytes(content if isinstance(content, bytes) else fill(content).encode())
    monkeypatch.chdir(tmp / "work")
    monkeypatch.setenv("XTL_REGISTRY", str(tmp / "registry"))
    monkeypatch.delenv("XTL_DATA", raising=False)
    return {"argv": [fill(a) for a in shlex.split(case.argv)]}


def run_cli(argv: list[str]) -> tuple[int, str]:
    """main(argv) in this process: (exit code, everything it printed)."""
    from adapters_xtl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue() + err.getvalue()


def test_the_table_is_big_and_its_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 80


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)]
                                              if c.xfail else []) for c in CASES])
def test_bad_input_is_one_clear_error_and_writes_nothing(case, trained_registry, tiny_backbone_dir, tmp_path,
                                                         monkeypatch):
    world = make_world(tmp_path, trained_registry, tiny_backbone_dir, monkeypatch, case)
    before = snapshot(tmp_path)
    guard_work(monkeypatch)
    rc, text = run_cli(world["argv"])
    assert rc == 2, f"exit {rc}:\n{text}"
    assert "Traceback" not in text
    missing = [s for s in case.expect if s.lower() not in text.lower()]
    assert not missing, f"message lacks {missing}:\n{text}"
    assert snapshot(tmp_path) == before, "the command wrote or changed files"
