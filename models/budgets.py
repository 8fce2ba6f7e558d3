"""How much memory a device gives the model pool: what it has free now, less a margin.

A CPU's free memory is what the kernel says is available (``MemAvailable`` in /proc/meminfo, else
the free pages); CUDA's and Apple's come from torch. ``stemd serve --memory-budget`` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

from stemd.models.devices import device_type

#: kept free on a device when no --memory-budget is given: max(1 GiB, this share of what is free)
MARGIN_SHARE = {"cuda": 0.10, "mps": 0.25, "cpu": 0.20}
MIN_MARGIN = 2 ** 30
UNLIMITED = 2 ** 62


def free_bytes(device: str) -> int:
    """What ``device`` has free now (a CPU: the memory the kernel says is available)."""
    kind = device_type(device)
    if kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    if kind == "mps":
        import torch

        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def default_budget(device: str, sharing: int = 1) -> int:
    """What is free on ``device`` less a margin (max(1 GiB, 10% on CUDA, 20% on a CPU)), shared by
    ``sharing`` workers on the same memory (several CPU devices)."""
    free = free_bytes(device) // max(1, sharing)
    return max(0, free - max(MIN_MARGIN // max(1, sharing), int(free * MARGIN_SHARE.get(device_type(device), 0.2))))
