"""The click engine: a deterministic metronome stem, on the grid to the sample.

One click per meter unit (every eighth note in 7/8), the downbeat accented (higher and louder).
Each click starts at ``round(exact unit time x rate)``, so it is both the pipeline's offline source
and a producer's sync check. It renders straight at the DAW's rate and grid, bar by bar.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from stemd.families import check_spec
from stemd.models.base import AudioStream, Cancelled, Engine, GenerationSpec, never_stop, no_progress
from stemd.timing import samples_at

CLICK_SECONDS = 0.03
DOWNBEAT_HZ, BEAT_HZ = 1760.0, 880.0
DOWNBEAT_GAIN, BEAT_GAIN = 0.9, 0.5


def click_sound(sample_rate: int, accent: bool) -> np.ndarray:
    """A short sine burst with a sharp attack (full level on its first sample) and an exponential decay."""
    n = max(1, int(round(CLICK_SECONDS * sample_rate)))
    t = np.arange(n) / sample_rate
    freq, gain = (DOWNBEAT_HZ, DOWNBEAT_GAIN) if accent else (BEAT_HZ, BEAT_GAIN)
    # cosine so that the very first sample is at full level: the onset is the first sample
    return (gain * np.cos(2 * np.pi * freq * t) * np.exp(-t / (CLICK_SECONDS / 5))).astype(np.float32)


class ClickEngine(Engine):
    name = "click"
    max_seconds = 3600.0
    max_variations = 16

    def stream(self, spec: GenerationSpec, *, should_stop=never_stop, on_progress=no_progress) -> AudioStream:
        check_spec(spec, "click", self.name)     # none of the family-only keys: stemd/families.py's table
        return AudioStream(sample_rate=spec.sample_rate, channels=spec.channels,
                           blocks=self._bars(spec, should_stop, on_progress), on_grid=True,
                           tempo_hint=float(spec.grid.tempo.bpm))

    def info(self) -> dict:
        from stemd.licenses import card

        return {**super().info(), "family": "click", "license": card("click")}

    def _bars(self, spec: GenerationSpec, should_stop, on_progress) -> Iterator[np.ndarray]:
        rate, grid = spec.sample_rate, spec.grid
        sounds = {True: click_sound(rate, True), False: click_sound(rate, False)}
        origin = grid.bar_start_sample(spec.start_bar, rate)
        # audio written so far, and clicks that ring over a bar line carry into the next bar
        carry = np.zeros(0, dtype=np.float32)
        for i, bar in enumerate(range(spec.start_bar, spec.start_bar + spec.bars)):
            if should_stop():
                raise Cancelled()
            bar_start = grid.bar_start_sample(bar, rate) - origin
            bar_len = grid.bar_length_samples(bar, rate)
            buf = np.zeros(bar_len + len(sounds[True]), dtype=np.float32)
            buf[: len(carry)] += carry
            for _bar, unit, t in grid.unit_onsets_seconds(bar, 1):
                at = samples_at(t, rate) - origin - bar_start
                sound = sounds[unit == 0]
                buf[at: at + len(sound)] += sound
            carry = buf[bar_len:].copy()
            mono = buf[:bar_len]
            block = np.broadcast_to(mono, (spec.variations, spec.channels, bar_len)).astype(np.float32)
            on_progress((i + 1) / spec.bars)
            yield block
