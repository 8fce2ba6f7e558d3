"""The canvas a diffusion take is made on, and the selection a continuation keeps before it.

A diffusion model makes a whole take at once, on a canvas a little longer than the take: the take x
``MARGIN`` plus one bar (conform may stretch by the tempo it finds, and the first downbeat may come
late), in whole latent frames, never past the model's longest canvas. The limits allow ``BAR_SECONDS``
for that bar: a model whose longest canvas is L seconds makes takes up to ``longest_take(L)``.

A continuation keeps the selection's tail before the canvas: whole latent frames counted back from the
selection's end (a part frame at its start is dropped), at most ``KEEP_SECONDS``, and never so many that
tail and canvas together pass the longest canvas. The pipeline makes tail + canvas with the canvas masked
to be made anew, and the tail is trimmed from what it returns. A selection shorter than one frame keeps
nothing: the take is made from the prompt alone.

Every diffusion family uses this module; it imports no torch until a continuation is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

MARGIN = 1.1          # the canvas is the take x this, plus one bar
BAR_SECONDS = 8.0     # what the limits allow for that bar
KEEP_SECONDS = 10.0   # the most of a selection a continuation keeps


def longest_take(longest_canvas: float) -> float:
    """The longest take (seconds) whose canvas fits in ``longest_canvas`` seconds."""
    return max(1.0, (longest_canvas - BAR_SECONDS) / MARGIN)


def canvas_bound(take_seconds: float) -> float:
    """The canvas a take of ``take_seconds`` needs at most, whatever its bar (for memory estimates)."""
    return take_seconds * MARGIN + BAR_SECONDS


@dataclass(frozen=True)
class Continuation:
    """What a pipeline is given to continue a selection: ``audio`` is ``(channels, keep + canvas)``, the
    kept tail then silence for the canvas; ``keep`` the tail's samples (``frame`` samples a latent frame)."""

    audio: object
    keep: int
    frame: int
    sample_rate: int
    canvas_seconds: float

    @property
    def seconds(self) -> float:
        """The length the pipeline makes: the tail and the canvas."""
        return self.keep / self.sample_rate + self.canvas_seconds

    @property
    def mask_start(self) -> float:
        """Where the canvas starts, in the seconds the pipelines take: they floor seconds x frames per second
        to a latent frame, and the canvas's exact start can floor to the frame before in floating point (15
        frames of 4096 samples at 44.1 kHz, 29 of 1920 at 48 kHz do), so this names the middle of its first frame."""
        return (self.keep + self.frame / 2) / self.sample_rate

    @property
    def mask_end(self) -> float:
        """Past the canvas's last frame by one (a pipeline clamps an end to its last frame; the exact end can
        floor to the frame before, which would then be kept as silence)."""
        return (self.keep + self.frame) / self.sample_rate + self.canvas_seconds

    def trim(self, out):
        """The pipeline's output ``(..., samples)`` without the kept tail."""
        return out[..., self.keep:]


@dataclass(frozen=True)
class LatentFrames:
    """A model's latent grid: ``frame`` samples a latent frame at ``sample_rate``; canvases of at most
    ``longest`` seconds."""

    frame: int
    sample_rate: int
    longest: float

    @property
    def frame_seconds(self) -> float:
        return self.frame / self.sample_rate

    @property
    def longest_frames(self) -> int:
        return math.floor(self.longest / self.frame_seconds + 1e-9)

    @property
    def longest_take(self) -> float:
        return longest_take(self.longest)

    def canvas_seconds(self, take_seconds: float, bar_seconds: float) -> float:
        """The canvas for a take of ``take_seconds`` whose first bar lasts ``bar_seconds``."""
        frames = math.ceil((take_seconds * MARGIN + bar_seconds) / self.frame_seconds - 1e-9)
        return min(frames, self.longest_frames) * self.frame_seconds

    def keep_frames(self, selection: int, canvas_seconds: float) -> int:
        """Latent frames kept of a selection of ``selection`` samples, before a canvas of ``canvas_seconds``."""
        room = self.longest_frames - round(canvas_seconds / self.frame_seconds)
        return max(0, min(selection // self.frame, math.floor(KEEP_SECONDS / self.frame_seconds + 1e-9), room))

    def continuation(self, source, canvas_seconds: float) -> Optional[Continuation]:
        """``source`` (a ``(channels, n)`` tensor at ``sample_rate``) continued by a canvas of ``canvas_seconds``;
        None when not one whole frame of it is kept."""
        import torch

        keep = self.keep_frames(source.shape[-1], canvas_seconds) * self.frame
        if keep == 0:
            return None
        silence = int(round(canvas_seconds * self.sample_rate))
        audio = torch.nn.functional.pad(source[..., source.shape[-1] - keep:], (0, silence))
        return Continuation(audio, keep, self.frame, self.sample_rate, canvas_seconds)
