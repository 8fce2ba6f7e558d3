"""``--model`` to an engine: ``click`` is the metronome; a diffusers pipeline (a folder or cached hub id
with ``model_index.json``) is Stable Audio 3 or ACE-Step 1.5 by its pipeline class; anything else is a
MusicGen checkpoint (a hub id such as facebook/musicgen-small, or a local folder)."""

from __future__ import annotations

import os
import re
from typing import Optional

from stemd.models.base import Engine

#: a Hugging Face hub id (owner/name) as stemd takes one: what ``stemd pull`` fetches and the HF cache is searched for
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+", re.ASCII)

#: MusicGen's decoding backends (models/musicgen/fast): the step run eagerly, compiled, replayed as CUDA
#: graphs, or in ONNX Runtime (CPU, float32); auto picks one for the device. Here, without torch, for the
#: command lines' choices.
DECODE_BACKENDS = ("auto", "eager", "compiled", "cuda-graph", "onnx", "onnx-int8", "int8")
#: what runs when nothing is asked for: measured per machine (docs/backends.md)
DEFAULT_BACKEND = "auto"
BACKEND_ENV = "STEMD_DECODE_BACKEND"


def env_backend() -> Optional[str]:
    """The decoding backend named by $STEMD_DECODE_BACKEND (None when unset or empty)."""
    return os.environ.get(BACKEND_ENV) or None


def chosen_backend(asked: Optional[str]) -> tuple[str, str]:
    """The MusicGen decoding backend to run, and why: the one asked for, else $STEMD_DECODE_BACKEND,
    else ``DEFAULT_BACKEND``."""
    if asked:
        return asked, "asked for"
    if env_backend():
        return env_backend(), f"${BACKEND_ENV}"
    return DEFAULT_BACKEND, "the default"


def engine_class(family: str) -> type:
    """The engine class of a model family (MusicGen's imports torch; the others do not)."""
    if family == "click":
        from stemd.models.click import ClickEngine as cls
    elif family == "stable-audio-3":
        from stemd.models.stable_audio3.engine import StableAudio3Engine as cls
    elif family == "ace-step":
        from stemd.models.ace_step.engine import AceStepEngine as cls
    elif family == "musicgen-melody":
        from stemd.models.musicgen.melody import MelodyEngine as cls
    else:
        from stemd.models.musicgen.engine import MusicGenEngine as cls
    return cls


def load_engine(model: str, *, device: Optional[str] = None, dtype: Optional[str] = None,
                backend: Optional[str] = None) -> Engine:
    """``backend``: MusicGen's decoding backend (auto, eager, compiled, cuda-graph, onnx, onnx-int8,
    int8); None: $STEMD_DECODE_BACKEND, else auto (``chosen_backend``). The click engine has none. A
    diffusion model runs its DiT compiled where ``backend`` is ``compiled`` (diffusion/compiled.py), else
    eagerly (compiled measured slower on this CPU)."""
    if model == "click":
        from stemd.models.click import ClickEngine

        return ClickEngine()
    from stemd.models.diffusion.loading import find_pipeline

    found = find_pipeline(model)
    if found is not None:
        folder, family = found
        engine = engine_class(family).load(model, folder, device=device, dtype=dtype)
        if backend == "compiled":
            from stemd.models.diffusion.compiled import use_backend

            use_backend(engine, "compiled")
        return engine
    from stemd.models.musicgen.engine import MusicGenEngine  # imports torch

    return MusicGenEngine.load(model, device=device, dtype=dtype, backend=backend)
