"""What a model will run as, planned before it loads: MusicGen's decoding backend and the dtype.

The pool sizes a model's footprint from these before anything loads (models/memory.py); once the
engine is loaded, its own choice and the bytes it really holds replace the plan.
"""

from __future__ import annotations

from typing import Optional


def planned_backend(family: str, device: str, asked: Optional[str], dtype: Optional[str] = None) -> Optional[str]:
    """MusicGen's decoding backend on ``device`` as the pool plans for it (None for other families):
    the one asked for, else $STEMD_DECODE_BACKEND, else auto, which on a CPU is planned as ``onnx-int8``
    (what it picks on CPUs with int8 dot products; the loaded engine's own bytes replace the estimate)."""
    if family == "musicgen-melody":
        return "eager"                  # what a melody checkpoint decodes with (musicgen/decoding.py)
    if family != "musicgen":
        return None
    import torch

    from stemd.models.musicgen.decoding import auto_without_timing
    from stemd.models.registry import chosen_backend

    backend = chosen_backend(asked)[0]
    if backend == "auto":
        fixed = auto_without_timing(torch.device(device), dtype)
        return fixed[0] if fixed is not None else "onnx-int8"
    return backend


def planned_dtype(family: str, device: str, asked: Optional[str], backend: Optional[str] = None) -> str:
    """The dtype a model of ``family`` will run in on ``device`` (as its engine picks it), by name;
    ``backend``: MusicGen's planned backend (``planned_backend``): its CPU paths load float32."""
    if family == "click":
        return "float32"
    import torch

    if family in ("musicgen", "musicgen-melody"):
        from stemd.models.musicgen.decoding import CPU_BACKENDS, pick_dtype

        if backend in CPU_BACKENDS and asked in (None, "auto"):
            return "float32"
    else:
        from stemd.models.diffusion.engine import pick_dtype
    return str(pick_dtype(asked, torch.device(device))).replace("torch.", "")
