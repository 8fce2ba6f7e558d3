"""From a spec to bar-exact chunks at the DAW's rate: engine -> conform -> chunker.

This is the one path every take goes through, streamed (daemon) or offline (``stemd render``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Optional

import numpy as np

from stemd.models.base import AudioStream, Engine, GenerationSpec, never_stop, no_progress
from stemd.models.chunker import BarChunk, chunk_blocks


def match_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """Up- or down-mix ``(variations, c, n)`` to ``channels`` (mono is copied, stereo is averaged)."""
    have = block.shape[1]
    if have == channels:
        return block
    if have == 1:
        return np.repeat(block, channels, axis=1)
    mono = block.mean(axis=1, keepdims=True)
    return mono if channels == 1 else np.repeat(mono, channels, axis=1)


def conformed_blocks(stream: AudioStream, spec: GenerationSpec,
                     decisions: Optional[list] = None) -> Iterator[np.ndarray]:
    """The engine's blocks at the spec's rate, tempo and channel count. ``decisions``, when given, gets
    how each variation was conformed (``conform.canvas.Decision``) as each block leaves (a streamed take's
    tempo is read again after its first bars)."""
    if stream.on_grid and stream.sample_rate == spec.sample_rate:
        for block in stream.blocks:
            yield match_channels(block, spec.channels)
        return
    from stemd.models.conform import StreamConformer  # imported here: pulls soxr and the stretcher

    conformer = StreamConformer(stream, spec)
    for block in conformer.blocks():
        if decisions is not None:
            decisions[:] = conformer.decisions
        yield match_channels(block, spec.channels)


def warm_conform() -> None:
    """Load what conform runs on ahead of a request: scipy's filters for the downbeat, soxr and Rubber Band
    (each imported on first use: about 1.3, 0.2 and 0.05 s here on a cold process, which would land on
    the first request's bar 1). ``stemd serve`` calls it before it listens when it serves a model that
    is conformed."""
    from stemd.models.conform import Resampler, Stretcher
    from stemd.models.conform.tempo import load_filters

    load_filters()
    Resampler(32000, 48000, (1,))
    Stretcher(32000, 1, 1.0)


def bar_chunks(engine: Engine, spec: GenerationSpec, *, should_stop=never_stop,
               on_progress=no_progress) -> Iterator[BarChunk]:
    """Generate ``spec`` and yield each bar the moment it exists; closing the iterator stops the engine. Each
    chunk of a conformed take carries how each variation was conformed (``BarChunk.conform``)."""
    stream = engine.stream(spec, should_stop=should_stop, on_progress=on_progress)
    decisions: list = []
    try:
        for chunk in chunk_blocks(conformed_blocks(stream, spec, decisions), spec.grid, spec.sample_rate,
                                  spec.start_bar, spec.bars):
            yield replace(chunk, conform=tuple(d.sidecar() for d in decisions)) if decisions else chunk
    finally:
        stream.close()


def render_take(engine: Engine, spec: GenerationSpec, conform: Optional[list] = None, **kwargs) -> np.ndarray:
    """The whole take at once: ``(variations, channels, n)`` with n exactly ``spec.bars`` bars. ``conform``, when
    given, gets how each variation was conformed (``BarChunk.conform``; nothing for a take on the grid)."""
    chunks = list(bar_chunks(engine, spec, **kwargs))
    if conform is not None:
        conform[:] = chunks[-1].conform if chunks else ()
    return np.concatenate([c.audio for c in chunks], axis=2)
