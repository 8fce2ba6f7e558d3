"""Conform of a finished canvas (a diffusion model's whole take at once), bar by bar.

The canvas is all there, so nothing waits for audio: tempo and first downbeat are read once, from the
first ``analysis_bars`` bars (the tempo then fitted through every beat of the take's span: one attack
search per beat), and the take is decided on (:func:`decide`):

* **none**: the tempo taken is within the tolerance that keeps every beat of the take within
  :data:`BEAT_TOLERANCE_SECONDS` of the grid: the canvas is only cut at its downbeat and resampled;
* **splice**: within :data:`~stemd.models.conform.splice.SPLICE_LIMIT`: one splice per beat
  (:mod:`stemd.models.conform.splice`), milliseconds for a whole take, where its first bar shows
  the splices would not be heard (:data:`SPLICE_AUDIBLE`; a held chord would);
* **rubberband**: further off: Rubber Band R3, as for streamed engines.

The tempo taken is the detected one, unless the engine was told a tempo (``AudioStream.tempo_hint``:
ACE-Step's ``bpm``, Stable Audio's prompt) and detection agrees with it (the difference would move no
beat of the take by more than the tolerance, or is within the fit's own uncertainty) or is unsure
(:data:`SURE`): then the told tempo. Each variation's decision is a :class:`Decision`, which the take's
sidecar carries as ``conform``.

Then bar 1 is made (stretched, resampled) and leaves, and each later bar follows: bar 1 waits for one
bar's conform, not the take's. Every stage keeps its state, so the bars joined are the same samples as
the take conformed whole (``conform()`` goes this way too).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Optional

import numpy as np

from stemd.models.conform.resample import Resampler
from stemd.models.conform.splice import SPLICE_LIMIT, BeatSplicer
from stemd.models.conform.tempo import Timing, detect_timing, period_error, refit_tempo

#: every beat of a take within this of the grid: no stretch is needed
BEAT_TOLERANCE_SECONDS = 0.005
#: below this confidence the detected tempo is not taken over the one the engine was told
SURE = 0.5
#: the median splice cost over a take's first bar above which Rubber Band stretches it instead:
#: measured on fluidsynth canvases 2 % off, drum grooves 0-0.01 (0.24 on a crash; medians 0), with
#: bass and a pad 0.01-0.16 (medians 0.06-0.07), clicks over a held three-note chord 0.18-0.63
#: (median 0.24), the chord alone 0.42-0.72 (splice.splice_beat)
SPLICE_AUDIBLE = 0.15
#: source audio past the take's end fed before the resampler is flushed (its filter reaches ~25 ms)
FLUSH_MARGIN_SECONDS = 0.1


@dataclass(frozen=True)
class Decision:
    """How one variation was conformed (the sidecar's ``conform``)."""

    detected_bpm: Optional[float]   # None: no beat was heard
    confidence: float               # 0..1: share of the beats heard, times how close they sit to the fit
    tempo_bpm: float                # the tempo taken for the canvas
    tempo_from: str                 # "detected" or "told"
    ratio: Optional[float]          # output over input duration; None: not stretched
    stretch: str                    # "none", "splice" or "rubberband"
    downbeat_seconds: float         # where the first downbeat is in the engine's audio

    def sidecar(self) -> dict:
        return {"detected_bpm": None if self.detected_bpm is None else round(self.detected_bpm, 4),
                "confidence": round(self.confidence, 3), "tempo_bpm": round(self.tempo_bpm, 4),
                "tempo_from": self.tempo_from, "ratio": None if self.ratio is None else round(self.ratio, 6),
                "stretch": self.stretch, "downbeat_seconds": round(self.downbeat_seconds, 5)}


def confidence(timing: Timing, seconds: float) -> float:
    """Share of the beats in ``seconds`` that had an attack, times how close they sit to the fitted line
    (1 at 0 ms RMS, 0 at 10 ms). Measured: fluidsynth drum grooves 0.6 ms RMS (0.94), with bass and a
    pad 3-3.5 ms (0.65-0.7), a held chord without beats, whose "attacks" are where its partials beat,
    6-8 ms (0.2-0.4)."""
    if len(timing.beats) < 3 or not np.isfinite(timing.residual_ms):
        return 0.0
    expected = max(1.0, (seconds - max(0.0, timing.first_beat)) / timing.beat_seconds)
    heard = min(1.0, len(timing.beats) / expected)
    return float(heard * np.clip(1.0 - timing.residual_ms / 10.0, 0.0, 1.0))


def decide(timing: Timing, told_bpm: float, grid_bpm: float, take_seconds: float, sure: float) -> Decision:
    """The tempo to take and how to stretch (see the module's docstring). ``sure``: :func:`confidence`."""
    heard = len(timing.beats) >= 3
    detected = timing.bpm if heard else None
    told_period = timing.beat_seconds * timing.bpm / told_bpm if heard else None
    agrees = heard and (abs(timing.beat_seconds - told_period) * take_seconds / told_period
                        <= BEAT_TOLERANCE_SECONDS
                        or abs(timing.beat_seconds - told_period) <= 3 * period_error(timing))
    if not heard or sure < SURE or agrees:
        tempo, source = told_bpm, "told"
    else:
        tempo, source = timing.bpm, "detected"
    ratio = tempo / grid_bpm
    downbeat = timing.downbeat if heard else 0.0
    if abs(ratio - 1) * take_seconds <= BEAT_TOLERANCE_SECONDS:
        return Decision(detected, sure, tempo, source, None, "none", downbeat)
    how = "splice" if abs(ratio - 1) <= SPLICE_LIMIT else "rubberband"
    return Decision(detected, sure, tempo, source, ratio, how, downbeat)


def streamed(timing: Timing, ratio: float, heard_seconds: float) -> Decision:
    """The decision of a streamed conform (an engine that streams: Rubber Band at the detected tempo)."""
    heard = len(timing.beats) >= 3
    return Decision(timing.bpm if heard else None, confidence(timing, heard_seconds), timing.bpm,
                    "detected" if heard else "told", ratio, "rubberband", timing.downbeat)


class Canvas:
    """The engine's audio ``(variations, channels, n)``: what has come, and more pulled from ``rest``
    (a stream that goes on) when a lane reads past it; silence before its start and after its end."""

    def __init__(self, head: np.ndarray, rest: Iterator[np.ndarray]):
        self.audio, self.rest, self.ended = head, rest, False

    def ensure(self, n: int) -> int:
        """Pull blocks until ``n`` samples are here or the stream ends; the samples here."""
        while self.audio.shape[2] < n and not self.ended:
            block = next(self.rest, None)
            if block is None:
                self.ended = True
            else:
                self.audio = np.concatenate([self.audio, np.asarray(block, np.float32)], axis=2)
        return self.audio.shape[2]

    def read(self, v: int, lo: int, hi: int) -> np.ndarray:
        have = self.ensure(hi)
        out = np.zeros((self.audio.shape[1], max(0, hi - lo)), np.float32)
        a, b = max(lo, 0), min(hi, have)
        if b > a:
            out[:, a - lo:b - lo] = self.audio[v, :, a:b]
        return out


class CopyLane:
    """``none``: the canvas from its downbeat on, resampled."""

    def __init__(self, canvas: Canvas, v: int, downbeat: float, source_rate: int, target_rate: int):
        self.canvas, self.v, self.source_rate, self.target_rate = canvas, v, source_rate, target_rate
        self.start = int(round(downbeat * source_rate))
        self.made = 0                    # source-rate samples put out
        self.resampler = Resampler(source_rate, target_rate, (canvas.audio.shape[1],))
        self.hold = 0 if source_rate == target_rate else int(np.ceil(0.04 * source_rate))

    def source_needed(self, out_samples: int) -> int:
        return int(np.ceil(out_samples * self.source_rate / self.target_rate)) + self.hold

    def make(self, upto: int) -> np.ndarray:
        """Source-rate output samples ``made .. upto``."""
        if upto <= self.made:
            return np.zeros((self.canvas.audio.shape[1], 0), np.float32)
        out = self.canvas.read(self.v, self.start + self.made, self.start + upto)
        self.made = upto
        return out

    def advance(self, out_samples: int) -> np.ndarray:
        """What is new at the target rate once ``out_samples`` of it (in all) can be put out."""
        return self.resampler.process(self.make(self.source_needed(out_samples)))

    def finish(self, out_samples: int) -> np.ndarray:
        margin = int(FLUSH_MARGIN_SECONDS * self.source_rate)
        last = self.resampler.process(self.make(self.source_needed(out_samples) + margin))
        return np.concatenate([last, self.resampler.flush()], axis=1)


class SpliceLane(CopyLane):
    """``splice``: beat by beat onto the grid's beats (:class:`BeatSplicer`), resampled."""

    def __init__(self, canvas: Canvas, v: int, downbeat: float, source_beat: float, out_beat: float,
                 source_rate: int, target_rate: int):
        super().__init__(canvas, v, downbeat, source_rate, target_rate)
        self.splicer = BeatSplicer(lambda lo, hi: canvas.read(v, lo, hi), source_rate, downbeat, source_beat,
                                   out_beat)
        self.pending = np.zeros((canvas.audio.shape[1], 0), np.float32)

    def probe(self, beats: int) -> float:
        """Splice the first ``beats`` (kept for the output) and say how audible that is: the median
        splice cost (:func:`~stemd.models.conform.splice.splice_beat`)."""
        self.pending = np.concatenate([self.pending, self.splicer.until(beats)], axis=1)
        return float(np.median(self.splicer.costs)) if self.splicer.costs else 0.0

    def make(self, upto: int) -> np.ndarray:
        beat = int(np.ceil(upto / (self.splicer.out_beat * self.source_rate))) + 1
        out = np.concatenate([self.pending, self.splicer.until(beat)], axis=1)
        self.pending = out[:, :0]
        self.made += out.shape[1]
        return out


class StretchLane:
    """``rubberband``: the streamed conform's lane, fed the canvas piece by piece."""

    def __init__(self, canvas: Canvas, v: int, lane, target_rate: int):
        self.canvas, self.v, self.lane, self.target_rate = canvas, v, lane, target_rate
        self.fed = 0

    def _feed(self, upto: int) -> np.ndarray:
        upto = min(upto, self.canvas.ensure(upto))
        if upto <= self.fed:
            return np.zeros((self.canvas.audio.shape[1], 0), np.float32)
        piece = self.canvas.audio[self.v, :, self.fed:upto]
        self.fed = upto
        return self.lane.process(piece)

    def advance(self, out_samples: int) -> np.ndarray:
        return self._feed(self.lane.input_for(out_samples / self.target_rate))

    def finish(self, out_samples: int) -> np.ndarray:
        margin = int(FLUSH_MARGIN_SECONDS * self.lane.source_rate)
        last = self._feed(self.lane.input_for(out_samples / self.target_rate) + margin)
        return np.concatenate([last, self.lane.flush()], axis=1)


def read_timing(canvas: np.ndarray, sample_rate: int, meter, expected_bpm: float, analysis_seconds: float,
                take_seconds: float, more_seconds: Optional[float] = None) -> tuple[Timing, float]:
    """One variation's timing: detected on its first ``analysis_seconds``, the tempo fitted again through
    the beats of the take's span; and the confidence in it. Where that is unsure (:data:`SURE`) and
    ``more_seconds`` is given, detected again on that much (a band's bass and pad blur one bar's attacks;
    two bars hold them), and the surer of the two is taken."""
    head = canvas[:, : int(analysis_seconds * sample_rate)]
    timing = detect_timing(head, sample_rate, meter, expected_bpm)
    if len(timing.beats) < 3:
        sure = 0.0
    else:
        span = min(timing.downbeat + take_seconds * timing.bpm / expected_bpm + timing.beat_seconds,
                   canvas.shape[1] / sample_rate)
        refit = refit_tempo(canvas, sample_rate, timing, span)
        if refit is timing:        # the take's span did not hold the tempo read on its head
            sure = confidence(timing, head.shape[1] / sample_rate)
        else:
            timing, sure = refit, confidence(refit, span)
    if sure < SURE and more_seconds and more_seconds > analysis_seconds:
        again, more = read_timing(canvas, sample_rate, meter, expected_bpm, more_seconds, take_seconds)
        if more > sure:
            return again, more
    return timing, sure


def lane_for(decision: Decision, timing: Timing, canvas: Canvas, v: int, grid_beat: float, source_rate: int,
             target_rate: int) -> tuple[object, Decision]:
    """The lane that carries out ``decision`` for variation ``v``, and the decision as carried out: a
    splice whose first bar would be heard (:data:`SPLICE_AUDIBLE`: held chords whose phases do not
    meet) is Rubber Band's instead."""
    if decision.stretch == "none":
        return CopyLane(canvas, v, decision.downbeat_seconds, source_rate, target_rate), decision
    source_beat = grid_beat / decision.ratio
    if decision.stretch == "splice":
        lane = SpliceLane(canvas, v, decision.downbeat_seconds, source_beat, grid_beat, source_rate, target_rate)
        if lane.probe(timing.beats_per_bar) <= SPLICE_AUDIBLE:
            return lane, decision
        decision = replace(decision, stretch="rubberband")
    from stemd.models.conform.stream import _Lane

    taken = replace(timing, beat_seconds=source_beat, downbeat=decision.downbeat_seconds)
    lane = _Lane(taken, decision.ratio, source_rate, target_rate, canvas.audio.shape[1])
    return StretchLane(canvas, v, lane, target_rate), decision
