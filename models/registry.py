"""``--model`` to an engine: ``click`` is the metronome; anything else is a MusicGen checkpoint
(a hub id such as facebook/musicgen-small, or a local folder)."""

from __future__ import annotations

from typing import Optional

from stemd.models.base import Engine

#: MusicGen's decoding backends (models/musicgen/fast): the step run eagerly, compiled, replayed as CUDA
#: graphs, or in ONNX Runtime (CPU, float32); auto picks one for the device. Here, without torch, for the
#: command lines' choices.
DECODE_BACKENDS = ("auto", "eager", "compiled", "cuda-graph", "onnx")


def load_engine(model: str, *, device: Optional[str] = None, dtype: Optional[str] = None,
                backend: Optional[str] = None) -> Engine:
    """``backend``: MusicGen's decoding backend (auto, eager, compiled, cuda-graph, onnx); None: the
    engine's default ($STEMD_DECODE_BACKEND, else eager). The click engine has none."""
    if model == "click":
        from stemd.models.click import ClickEngine

        return ClickEngine()
    from stemd.models.musicgen.engine import MusicGenEngine  # imports torch

    return MusicGenEngine.load(model, device=device, dtype=dtype, backend=backend)
