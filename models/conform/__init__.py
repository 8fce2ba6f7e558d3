"""Conform: every take arrives at the DAW's rate and tempo with its first downbeat on its bar line.

    >>> placed = conform(audio, 32000, Grid(120, "4/4"), target_rate=48000, bars=8)

Offline functions take ``(audio, sample_rate)`` and return audio; ``StreamConformer`` does the same
to a stream as it is generated (the pipeline uses it for engines that are not on the grid).
"""

from stemd.models.conform.loop import make_loop
from stemd.models.conform.resample import Resampler, resample
from stemd.models.conform.stream import StreamConformer, conform, stretch_ratio
from stemd.models.conform.stretch import Stretcher, time_stretch
from stemd.models.conform.tempo import Timing, detect_timing

__all__ = [
    "StreamConformer", "conform", "detect_timing", "Timing", "resample", "Resampler", "time_stretch",
    "Stretcher", "make_loop", "stretch_ratio",
]
