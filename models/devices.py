"""Where an engine runs: the devices ``--device`` names (or the best one here), dtype names, the CPU's name.

torch is imported where it is used: a daemon serving only the click resolves its devices without it.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

#: the dtypes ``--dtype`` takes, by name
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16"}


def pick_device(device: Optional[str]) -> "torch.device":
    """``device`` when given (not ``auto``), else CUDA, then Apple's MPS, then the CPU."""
    import torch

    if device and device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_type(device: str) -> str:
    """``cuda:1`` -> ``cuda``."""
    return device.split(":", 1)[0]


def resolve_devices(requested: list[str], sources: list[str]) -> list[str]:
    """The devices workers run on, by their canonical names (``cuda`` -> ``cuda``, ``cuda:1``); none
    asked: the best one here (the CPU, without importing torch, when every model is ``click``)."""
    from stemd.models.entries import ModelsFileError

    if not requested and all(s == "click" for s in sources):
        return ["cpu"]
    import torch

    out = []
    for name in requested or [None]:
        try:
            device = str(pick_device(name))
        except RuntimeError as e:
            raise ModelsFileError(f"--device {name}: {e}") from None
        if device in out:
            raise ModelsFileError(f"--device {device} is given twice (several CPU workers: cpu:0, cpu:1)")
        if device_type(device) == "cuda":
            index = torch.device(device).index or 0
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                raise ModelsFileError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
        out.append(device)
    return out


def named_dtype(dtype: str) -> "torch.dtype":
    import torch

    from stemd.models.base import EngineError

    if dtype not in DTYPE_NAMES:
        raise EngineError(f"dtype must be one of auto, {', '.join(DTYPE_NAMES)}; got {dtype!r}")
    return getattr(torch, DTYPE_NAMES[dtype])


def gpu_dtype(device: "torch.device") -> Optional["torch.dtype"]:
    """bfloat16 on CUDA devices that compute in it, float16 on other GPUs (and Apple's); None on a CPU."""
    import torch

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
