"""`xtl bench`: what a training step of a task module costs on this machine (CPU or CUDA).

`cli/bench.py` only parses flags and prints; the measuring is here, one job a file:
- `config.py`: `BenchConfig` (one row) and the lists the CLI runs: the grid (`expand_grid`,
  `default_axes`: backbone shape x method x quantization x sequence length x the memory/speed
  measures of `compress.py`) and the one-measure-at-a-time presets (`memory_configs`,
  `speed_configs`).
- `shapes.py`: the backbones a row runs on (real e5-small, random-weight XLM-R base/large
  shapes built once into `$XTL_CACHE/bench-shapes/`, or any folder / Hub id).
- `run.py`: one configuration timed (`run_config`: step time, samples/s, tokens/s, counted FLOPs
  and MFU, peak memory, trainable parameters, module size on disk), in its own subprocess
  (`run_isolated`, `python -m adapters_xtl.bench --worker`), over a list (`run_configs`), and
  plain rows logged for the dry-run (`remember_throughput`).
- `gpu.py`: issue 18's GPU rows (`gpu_configs`, `xtl bench --gpu`): XLM-R large + LoRA in bf16
  with 4-bit, checkpointing and compressed embeddings, and the e5-small grid.
- `attach.py`: the one chain that puts a fresh module and head on a backbone for measuring.
- `memory.py`: peak memory of a window (CUDA max allocated, CPU peak RSS).
- `reports.py`: padding waste of bucketed vs random batches; cost of compressed embeddings.
- `peer.py`: the same LoRA training through our trainer and a plain peft + `Trainer` script.
- `output.py`: the JSON file's header and its atomic writes.

FLOP counts, the matmul peak (the denominator of MFU) and grid projections are the project's one
cost model, `adapters_xtl/cost.py`; see docs/benchmarks.md for the formula.
"""

from .config import BenchConfig, bf16_rows_possible, default_axes, expand_grid, memory_configs, speed_configs
from .gpu import gpu_configs
from .memory import MemoryMeter, peak_rss_bytes, release_memory, reset_peak_rss, rss_bytes
from .output import SCHEMA_VERSION, bench_meta, write_json
from .peer import peer_compare
from .reports import embedding_report, padding_report
from .run import remember_throughput, run_config, run_configs, run_isolated
from .shapes import (RANDOM_SHAPES, REAL_SHAPES, SHAPE_BACKBONES, SHAPES, demo_texts, materialize_random_shape,
                     shape_source)

__all__ = [
    "BenchConfig", "bf16_rows_possible", "default_axes", "expand_grid", "memory_configs", "speed_configs", "gpu_configs",
    "MemoryMeter", "peak_rss_bytes", "release_memory", "reset_peak_rss", "rss_bytes",
    "SCHEMA_VERSION", "bench_meta", "write_json",
    "peer_compare", "embedding_report", "padding_report",
    "remember_throughput", "run_config", "run_configs", "run_isolated",
    "RANDOM_SHAPES", "REAL_SHAPES", "SHAPE_BACKBONES", "SHAPES", "demo_texts", "materialize_random_shape", "shape_source",
]
