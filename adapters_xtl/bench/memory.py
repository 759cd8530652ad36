"""Peak memory of a measured window: CUDA max allocated, or on CPU the process's peak RSS
(VmHWM, reset through /proc/self/clear_refs), and giving freed memory back between windows so
one window's leftovers do not count in the next.
"""

from __future__ import annotations

import sys

import torch


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    v = _proc_status("VmRSS")
    if v is not None:
        return v
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # best effort off Linux


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM; resettable with `reset_peak_rss`)."""
    v = _proc_status("VmHWM")
    if v is not None:
        return v
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory over a window: CUDA max allocated, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"
        self.scope = "window"

    def current(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return rss_bytes()

    def start(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not reset_peak_rss():
            self.scope = "process"  # could not reset: the peak covers the whole process
        return self.current()

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        return peak_rss_bytes()


def release_memory(dev: torch.device) -> None:
    """Give freed memory back (CUDA cache; glibc's heap via malloc_trim) before the next side."""
    import ctypes
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass
