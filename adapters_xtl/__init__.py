"""adapters_xtl: which English intermediate task helps zero-shot transfer to which language?

Parameter-efficient intermediate-task training (X-STILTs, Phang et al. 2020) with LoRA (peft) and
bottleneck adapters (adapters) on a frozen, optionally quantized XLM-R backbone.
"""

__version__ = "0.1.0"
