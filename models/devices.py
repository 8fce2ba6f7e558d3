"""Where an engine runs: the device ``--device`` names (or the best one here), dtype names, the CPU's name."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_device(device: Optional[str]) -> torch.device:
    """``device`` when given (not ``auto``), else CUDA, then Apple's MPS, then the CPU."""
    if device and device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def named_dtype(dtype: str) -> torch.dtype:
    from stemd.models.base import EngineError

    if dtype not in DTYPES:
        raise EngineError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def gpu_dtype(device: torch.device) -> Optional[torch.dtype]:
    """bfloat16 on CUDA devices that compute in it, float16 on other GPUs (and Apple's); None on a CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
