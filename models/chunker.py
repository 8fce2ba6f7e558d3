"""Cut any audio stream into chunks of exactly one bar at the DAW's rate.

Bar k of the grid starts at ``grid.bar_start_sample(k, rate)``; a chunk holds the samples from that
start to the next bar's start, so bar lengths may differ by one sample and never drift. Meter and
tempo changes at bar lines are the grid's business; the chunker only asks it where bars start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from stemd.timing import Grid


@dataclass(frozen=True)
class BarChunk:
    """One bar of a take: ``audio`` is float32 ``(variations, channels, n)``.

    ``bar`` is the bar on the DAW's grid (start_bar + i) and ``start_sample`` where it starts on the
    DAW's timeline (from the grid's origin) at ``sample_rate``; ``index`` counts bars within the take.
    """

    index: int
    bar: int
    start_sample: int
    sample_rate: int
    audio: np.ndarray
    #: per variation, how conform placed it on the grid (its sidecar's ``conform``); empty: not conformed
    conform: tuple = ()

    @property
    def variations(self) -> int:
        return self.audio.shape[0]

    @property
    def channels(self) -> int:
        return self.audio.shape[1]

    @property
    def frames(self) -> int:
        return self.audio.shape[2]


class BarChunker:
    """Feed blocks of any size with ``push``; take finished bars from its return value."""

    def __init__(self, grid: Grid, sample_rate: int, start_bar: int, bars: int):
        self.grid, self.rate, self.start_bar, self.bars = grid, sample_rate, start_bar, bars
        self.origin = grid.bar_start_sample(start_bar, sample_rate)
        self.emitted = 0
        self._pending: list[np.ndarray] = []
        self._pending_frames = 0
        self._shape = (1, 1)  # (variations, channels) of the blocks seen so far

    @property
    def done(self) -> bool:
        return self.emitted >= self.bars

    def _bar_bounds(self, index: int) -> tuple[int, int]:
        bar = self.start_bar + index
        return self.grid.bar_start_sample(bar, self.rate), self.grid.bar_start_sample(bar + 1, self.rate)

    def push(self, block: np.ndarray) -> list[BarChunk]:
        if block.ndim != 3:
            raise ValueError(f"blocks must be (variations, channels, n), got shape {block.shape}")
        out: list[BarChunk] = []
        if self._pending and block.shape[:2] != self._shape:
            raise ValueError(f"blocks changed shape mid-take: {self._shape} then {block.shape[:2]}")
        self._shape = block.shape[:2]
        if self.done or block.shape[2] == 0:
            return out
        # a copy: an engine may reuse its buffer for the next block while we still hold this one
        self._pending.append(np.array(block, dtype=np.float32))
        self._pending_frames += block.shape[2]
        while not self.done:
            start, end = self._bar_bounds(self.emitted)
            need = end - start
            if self._pending_frames < need:
                break
            joined = np.concatenate(self._pending, axis=2) if len(self._pending) > 1 else self._pending[0]
            audio, rest = joined[:, :, :need], joined[:, :, need:]
            self._pending = [rest] if rest.shape[2] else []
            self._pending_frames = rest.shape[2]
            out.append(BarChunk(self.emitted, self.start_bar + self.emitted, start, self.rate,
                                np.ascontiguousarray(audio, dtype=np.float32)))
            self.emitted += 1
        return out

    def finish(self) -> list[BarChunk]:
        """Pad what is missing of the take with silence (an engine that ended a few samples short)."""
        out: list[BarChunk] = []
        while not self.done:
            start, end = self._bar_bounds(self.emitted)
            missing = max(0, end - start - self._pending_frames)
            out += self.push(np.zeros((*self._shape, missing), dtype=np.float32))
        return out


def chunk_blocks(blocks: Iterable[np.ndarray], grid: Grid, sample_rate: int, start_bar: int,
                 bars: int) -> Iterator[BarChunk]:
    chunker = BarChunker(grid, sample_rate, start_bar, bars)
    for block in blocks:
        yield from chunker.push(block)
        if chunker.done:
            return
    yield from chunker.finish()
