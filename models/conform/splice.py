"""Time-stretch by a few per cent with one splice per beat: beats land exactly, attacks are untouched.

A take that a model made a little off the asked tempo (a diffusion model told 120 BPM that plays 117.6)
needs each beat a few milliseconds longer or shorter. ``BeatSplicer`` copies the audio of each source
beat to its grid beat and makes up the difference (``J`` samples: dropped when the source beat is
longer, repeated when it is shorter) in one crossfaded splice inside that beat: in its later part, away
from the attack that starts it and at least ``GUARD_SECONDS`` before the next one, where the audio
before the splice and the audio ``J`` samples on are most alike (least difference energy over the
crossfade: a decay tail, a quiet spot or a steady tone), so the splice is heard least; the jump is then
moved by up to ``REACH_SECONDS`` to where the audio after it continues the audio before it best (as
WSOLA does: a held chord keeps its phase), so beat k starts within 2 ms of its grid sample, the error
never adding up. Every attack is the source's own, and a beat costs a few numpy operations: a whole take
in milliseconds, against Rubber Band's near real-time fraction.

It is for small ratios (:data:`SPLICE_LIMIT`): beyond them a splice would repeat or drop a
noticeable piece of each beat, and conform uses Rubber Band.
"""

from __future__ import annotations

import numpy as np

#: the largest relative change of beat length spliced (beyond it, Rubber Band stretches)
SPLICE_LIMIT = 0.05
#: crossfade of a splice
CROSSFADE_SECONDS = 0.01
#: a splice ends at least this long before the next beat's attack (the attack may come a hair early)
GUARD_SECONDS = 0.006
#: a beat may start this much off its grid sample (never more, never adding up) where a splice that
#: much longer or shorter continues a held tone in phase
REACH_SECONDS = 0.002


def splice_beat(segment: np.ndarray, out_length: int, sample_rate: int, late: int = 0,
                reach: int = 0) -> tuple[np.ndarray, int, float]:
    """``segment`` ``(channels, n)``, one source beat from its attack to the next, made ``out_length -
    late + e`` samples long with one crossfaded splice in its later part (see the module's docstring):
    ``late`` is how many samples late this beat started, ``e`` (within ``reach``) is chosen where the
    audio after the jump continues the audio before it best (a held tone keeps its phase). Returns the
    output, ``e`` (how late the next beat will start) and the splice's cost: the energy of the
    difference it crossfades over, per sample, against the beat's mean power (near 0 in a drum's decay
    or a quiet spot, about 1 and more across a held chord whose phases do not meet)."""
    n = segment.shape[1]
    jump = n - out_length + late        # > 0: skip that many samples; < 0: play that many again
    if jump == 0 and reach == 0:
        return segment, 0, 0.0
    fade = max(8, int(round(CROSSFADE_SECONDS * sample_rate)))
    guard = int(round(GUARD_SECONDS * sample_rate))
    lo = n // 4 + max(0, reach - jump)
    hi = n - fade - guard - max(0, jump + reach)
    if hi < lo:                         # a very short beat: splice where it fits, on the jump asked for
        fade, reach = max(8, min(fade, (n - abs(jump)) // 4)), 0
        lo, hi = max(0, -jump), max(max(0, -jump), n - fade - max(0, jump))
    a = lo
    if hi > lo:                         # where the splice is heard least: the least difference energy
        here = segment[:, lo:hi + fade]
        there = segment[:, lo + jump:hi + fade + jump]
        diff = np.square(here - there, dtype=np.float64).sum(axis=0)
        energy = np.concatenate([[0.0], np.cumsum(diff)])
        a = lo + int(np.argmin(energy[fade:] - energy[:-fade]))
    e = 0
    if reach:                           # then the jump, within reach, that continues the audio best
        e = _best_shift(segment, a, jump, fade, reach)
        jump -= e
    w = (0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)).astype(np.float32)
    before, after = segment[:, a:a + fade], segment[:, a + jump:a + jump + fade]
    power = float(np.square(segment, dtype=np.float64).mean())
    cost = float(np.square(before - after, dtype=np.float64).mean()) / power if power > 1e-12 else 0.0
    mixed = before * (1 - w) + after * w
    return np.concatenate([segment[:, :a], mixed, segment[:, a + jump + fade:]], axis=1), e, cost


def _best_shift(segment: np.ndarray, a: int, jump: int, fade: int, reach: int) -> int:
    """``e`` in ``-reach..reach`` for which the audio at ``a + jump - e`` is most like the audio at ``a``
    (normalised cross-correlation over the crossfade, summed over channels), slightly preferring 0."""
    template = segment[:, a:a + fade].astype(np.float64)
    norm = float(np.square(template).sum())
    if norm < 1e-12:
        return 0
    region = segment[:, a + jump - reach:a + jump + reach + fade].astype(np.float64)
    dots = sum(np.correlate(region[c], template[c], mode="valid") for c in range(segment.shape[0]))
    energy = np.concatenate([[0.0], np.cumsum(np.square(region).sum(axis=0))])
    window = energy[fade:] - energy[:-fade]
    score = dots / np.sqrt(norm * np.maximum(window, 1e-12))
    shifts = np.arange(-reach, reach + 1)       # region offset i is jump - reach + i: e = reach - i
    score = score - 0.1 * np.abs(shifts[::-1]) / reach
    return reach - int(np.argmax(score))


class BeatSplicer:
    """Output beat k (``round(k x out_beat x rate)``) from source beat k (``round((first + k x
    source_beat) x rate)``), beat by beat; ``read(lo, hi)`` gives the source's samples ``[lo, hi)``
    (silence outside it). Seconds throughout; both sides at ``sample_rate``."""

    def __init__(self, read, sample_rate: int, first: float, source_beat: float, out_beat: float,
                 reach_seconds: float = REACH_SECONDS):
        self.read, self.rate = read, sample_rate
        self.first, self.source_beat, self.out_beat = first, source_beat, out_beat
        self.reach = int(round(reach_seconds * sample_rate))
        self.beat = 0                     # the next beat to make
        self.late = 0                     # samples the next beat starts after its grid sample
        self.starts: list[int] = []       # where each beat made so far starts in the output
        self.costs: list[float] = []      # each beat's splice cost (splice_beat)

    def source_at(self, k: int) -> int:
        return int(round((self.first + k * self.source_beat) * self.rate))

    def out_at(self, k: int) -> int:
        return int(round(k * self.out_beat * self.rate))

    def until(self, beat: int) -> np.ndarray:
        """Beats ``self.beat`` .. ``beat - 1`` of the output, ``(channels, n)``."""
        parts = []
        for k in range(self.beat, beat):
            segment = self.read(self.source_at(k), self.source_at(k + 1))
            self.starts.append(self.out_at(k) + self.late)
            out, self.late, cost = splice_beat(segment, self.out_at(k + 1) - self.out_at(k), self.rate,
                                               self.late, self.reach)
            self.costs.append(cost)
            parts.append(out)
        self.beat = max(self.beat, beat)
        return np.concatenate(parts, axis=1) if parts else self.read(0, 0)
