"""``--model`` to an engine: ``click`` is the metronome; anything else is a MusicGen checkpoint
(a hub id such as facebook/musicgen-small, or a local folder)."""

from __future__ import annotations

from typing import Optional

from stemd.models.base import Engine


def load_engine(model: str, *, device: Optional[str] = None, dtype: Optional[str] = None,
                backend: Optional[str] = None) -> Engine:
    """``backend``: MusicGen's decoding backend (auto, eager, compiled, cuda-graph, onnx); None: the
    engine's default ($STEMD_DECODE_BACKEND, else eager). The click engine has none."""
    if model == "click":
        from stemd.models.click import ClickEngine

        return ClickEngine()
    from stemd.models.musicgen.engine import MusicGenEngine  # imports torch

    return MusicGenEngine.load(model, device=device, dtype=dtype, backend=backend)
