"""adapters_xtl: which English intermediate task helps zero-shot transfer to which language?

Parameter-efficient intermediate-task training (X-STILTs, Phang et al. 2020) with LoRA (peft) and
bottleneck adapters (adapters) on a frozen, optionally quantized XLM-R backbone.
"""

__version__ = "0.1.0"

# The public API (adapters_xtl/api.py), imported on first use as lm-eval-harness does, so that
# `import adapters_xtl` and `xtl --help` stay fast and torch loads only when it is needed.
_PUBLIC = {
    "Backbone", "TaskCatalog", "LoRA", "Bottleneck", "IA3", "TrainConfig", "Single", "Stack", "Fuse", "Merge",
    "Continue", "MultiTask", "Block", "train", "evaluate", "predict", "Registry", "TaskModule", "Recipe", "run",
    "report", "study", "suggest", "XtlError", "LocalExecutor", "RayExecutor", "Tracker",
    "Language", "train_language",
}
__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        from . import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adapters_xtl' has no attribute {name!r}")


def __dir__():
    return __all__


def _quiet_known_warnings() -> None:
    """bitsandbytes warns on import, on CPUs with AVX512-BF16, that it cannot fetch an optional
    kernel from the Hub. We never use that kernel (`backbone.fix_cpu_4bit` keeps 4-bit layers on
    the portable path), so the warning only alarms users; every other bitsandbytes message stays."""
    import logging

    class _DropKernelsHint(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "gemm_4bit_forward from kernels-community" not in record.getMessage()

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropKernelsHint())


_quiet_known_warnings()
