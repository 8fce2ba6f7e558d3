"""Conform a take to the DAW: its rate, its tempo, its first downbeat on the take's first sample.

Per variation: detect the timing (tempo, downbeat), drop what comes before the first downbeat,
time-stretch by (DAW's seconds per quarter) / (take's seconds per quarter) with Rubber Band,
resample to the DAW's rate with soxr. Both stages are streams that keep their state, so a take
conformed bar by bar as it arrives equals the take conformed whole with the same timing.

Streamed, bar 1 does not wait for a long tempo estimate: the first estimate is made on the first
bar (``FIRST_BARS``), enough to place the downbeat and start; when ``ANALYSIS_BARS`` bars have come
the tempo is estimated again on all of them, and the stretch ratio is changed (Rubber Band takes a
new ratio mid-stream, without a seam) so that the next bar line but one lands on its grid line
exactly; from there on the refined tempo holds. A loop, held whole anyway, is estimated once on
the longer span.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

from stemd.models.base import AudioStream, GenerationSpec
from stemd.models.conform.loop import CROSSFADE_SECONDS, make_loop
from stemd.models.conform.resample import Resampler
from stemd.models.conform.stretch import FEED, Stretcher, fit_length
from stemd.models.conform.tempo import Timing, detect_timing
from stemd.timing import Grid

#: bars of the take heard before its tempo is decided (at the tempo the engine aimed for)
ANALYSIS_BARS = 2
#: bars heard before bar 1 may leave: the first estimate, refined once ANALYSIS_BARS have come
FIRST_BARS = 1
#: the first estimate only places bar 1 (the refined one corrects the tempo): little slack
FIRST_SLACK, FIRST_PAD = 1.05, 0.1
#: what the streaming resampler holds back, at most (1,088 source samples at 32 -> 48 kHz)
RESAMPLER_HOLD_SECONDS = 0.04


def heard_seconds(bars: float, bar_quarters: float, bpm: float, slack: float = 1.2, pad: float = 0.25) -> float:
    """``bars`` at ``bpm``, times ``slack`` (the take may be slower than the tempo aimed at) plus ``pad`` s."""
    return bars * bar_quarters * 60.0 / bpm * slack + pad


def first_heard_seconds(spec: GenerationSpec, bpm: Optional[float] = None) -> float:
    """Seconds of an engine's audio that a streamed conform of ``spec`` takes in before bar 1 can leave
    (at ``bpm``, the tempo the engine aimed at; default the grid's at the first bar): one bar with
    little slack for the first estimate, or the whole analysis span where the take is estimated once
    (a loop). Engines size their first block by it (``musicgen.streaming.StreamingDecoder``)."""
    _, section = spec.grid.section_at(spec.start_bar)
    bpm = float(bpm or section.tempo.bpm)
    quarters = float(section.meter.bar_quarters)
    if spec.loop or FIRST_BARS >= ANALYSIS_BARS:
        return heard_seconds(ANALYSIS_BARS, quarters, bpm)
    return heard_seconds(FIRST_BARS, quarters, bpm, FIRST_SLACK, FIRST_PAD)


class _Lane:
    """One variation's path: skip to the downbeat, stretch, resample. Blocks are ``(channels, n)``.

    ``fed`` counts source samples fed from the downbeat on and ``made`` the output samples (at the
    source rate) they make at the ratios they were fed with, so a later estimate (``retime``) knows
    where the output stands against the grid."""

    def __init__(self, timing: Timing, ratio: float, source_rate: int, target_rate: int, channels: int):
        self.source_rate = source_rate
        self.skip = int(round(timing.downbeat * source_rate))
        self.start = self.skip          # the source sample the output starts at (may be < 0: a lead-in)
        self.stretcher = Stretcher(source_rate, channels, ratio)
        self.resampler = Resampler(source_rate, target_rate, (channels,))
        self.fed, self.made = 0, 0.0
        self.switch: Optional[tuple[int, float]] = None   # (at fed sample, the ratio from there)
        if self.skip < 0:  # the downbeat is a hair before the first sample
            self.lead_in = np.zeros((channels, -self.skip), dtype=np.float32)
            self.skip = 0
        else:
            self.lead_in = None

    def input_for(self, out_seconds: float) -> int:
        """Source samples (counted from the stream's first) this lane must be fed before it has put out
        ``out_seconds``: from the downbeat, that much at the stretch ratio, plus what Rubber Band and
        the resampler hold back (the stretcher's start delay, two feed blocks, the resampler's filter;
        measured here at 2,000-3,000 and up to 1,100 samples at 32 kHz)."""
        sr, ratio = self.source_rate, self.stretcher.ratio
        held = self.stretcher.start_delay / ratio + 2 * FEED
        if self.resampler.sample_rate != self.resampler.target_rate:
            held += RESAMPLER_HOLD_SECONDS * sr
        return int(np.ceil(self.start + out_seconds * sr / ratio + held))

    def process(self, audio: np.ndarray) -> np.ndarray:
        if self.lead_in is not None:
            audio, self.lead_in = np.concatenate([self.lead_in, audio], axis=1), None
        if self.skip:
            cut = min(self.skip, audio.shape[1])
            audio, self.skip = audio[:, cut:], self.skip - cut
        parts = []
        if self.switch is not None and self.fed + audio.shape[1] >= self.switch[0]:
            cut = self.switch[0] - self.fed
            parts.append(self._stretch(audio[:, :cut]))
            audio = audio[:, cut:]
            self.stretcher.ratio, self.switch = self.switch[1], None
        parts.append(self._stretch(audio))
        return self.resampler.process(np.concatenate(parts, axis=1))

    def _stretch(self, audio: np.ndarray) -> np.ndarray:
        self.fed += audio.shape[1]
        self.made += audio.shape[1] * self.stretcher.ratio
        return self.stretcher.process(audio)

    def retime(self, refined: Timing, grid_bar_seconds: float) -> None:
        """Follow ``refined`` (estimated on more of the take) from here on without a seam: keep the
        downbeat already taken, stretch until the refined bar line at least half a bar ahead so that it
        lands on its grid line, then at the refined tempo's steady ratio."""
        sr = self.source_rate
        beat, bar = refined.beat_seconds * sr, refined.bar_seconds * sr
        anchor = refined.first_beat * sr + round((self.start - refined.first_beat * sr) / beat) * beat
        now = self.start + self.fed
        m = int(np.ceil((now + bar / 2 - anchor) / bar))
        target = m * grid_bar_seconds * sr           # where bar line m is in the output (source rate)
        span = anchor + m * bar - now
        steady = grid_bar_seconds * sr / bar
        bridge = (target - self.made) / span if span > 0 else steady
        if m < 1 or not 0.8 * steady <= bridge <= 1.25 * steady:
            bridge = steady                          # the first estimate was far off: just follow
        self.stretcher.ratio = bridge
        self.switch = (int(round(anchor + m * bar - self.start)), steady)

    def flush(self) -> np.ndarray:
        tail = self.resampler.process(self.stretcher.flush())
        return np.concatenate([tail, self.resampler.flush()], axis=1)


def stretch_ratio(timing: Timing, grid: Grid, bar: int) -> float:
    """Output over input duration that takes ``timing``'s tempo to the grid's tempo at ``bar``."""
    _, section = grid.section_at(bar)
    return float(timing.bpm / float(section.tempo.bpm))


class StreamConformer:
    """``blocks()``: the engine's stream at ``spec.sample_rate``, on ``spec.grid`` from
    ``spec.start_bar`` (first downbeat at sample 0), float32 ``(variations, channels, n)``.

    ``timings`` (one per variation) skips detection: the offline path passes what it found on the
    whole take. Otherwise each variation's timing is detected on its first ``first_bars`` bars, which
    bar 1 waits for, and refined on its first ``analysis_bars`` (``first_bars = analysis_bars``: once).
    """

    def __init__(self, stream: AudioStream, spec: GenerationSpec, *,
                 timings: Optional[Sequence[Timing]] = None, analysis_bars: int = ANALYSIS_BARS,
                 first_bars: int = FIRST_BARS):
        self.stream, self.spec = stream, spec
        self.timings: Optional[list[Timing]] = list(timings) if timings is not None else None
        self.analysis_bars, self.first_bars = analysis_bars, first_bars
        _, section = spec.grid.section_at(spec.start_bar)
        self.meter = section.meter
        self.expected_bpm = float(stream.tempo_hint or section.tempo.bpm)
        self.length = spec.grid.span_samples(spec.start_bar, spec.bars, spec.sample_rate)
        #: how each variation was conformed (canvas.Decision), once known
        self.decisions: list = []

    def _analysis_samples(self, bars: float, slack: float = 1.2, pad: float = 0.25) -> int:
        """``heard_seconds`` at the tempo expected, in the stream's samples."""
        seconds = heard_seconds(bars, float(self.meter.bar_quarters), self.expected_bpm, slack, pad)
        return int(seconds * self.stream.sample_rate)

    def _detect(self, audio: np.ndarray) -> list[Timing]:
        return [detect_timing(audio[v], self.stream.sample_rate, self.meter, self.expected_bpm)
                for v in range(audio.shape[0])]

    def blocks(self) -> Iterator[np.ndarray]:
        source = iter(self.stream.blocks)
        head, have = [], 0
        refine = self.timings is None and not self.spec.loop and self.first_bars < self.analysis_bars
        if self.timings is not None:
            need = 0
        else:
            need = (self._analysis_samples(self.first_bars, FIRST_SLACK, FIRST_PAD) if refine
                    else self._analysis_samples(self.analysis_bars))
        for block in source:
            head.append(np.asarray(block, dtype=np.float32))
            have += block.shape[2]
            if have >= need:
                break
        if not head:
            return
        head_audio = head[0] if len(head) == 1 else np.concatenate(head, axis=2)   # a canvas: one block, no copy
        variations, channels = head_audio.shape[:2]
        if not self.spec.loop and (self.timings is not None or self._is_canvas(have)):
            yield from self._canvas(head_audio, source)
            return
        if self.timings is None:
            self.timings = self._detect(head_audio)
        ratio_bar = self.spec.start_bar
        lanes = [_Lane(t, stretch_ratio(t, self.spec.grid, ratio_bar), self.stream.sample_rate,
                       self.spec.sample_rate, channels) for t in self.timings]
        self._decide(head_audio.shape[2])
        if not self.spec.loop:
            # bar 1 leaves once every lane has put it out: tell the engine how much audio that takes,
            # so its next block ends there (a downbeat read late, a take slower than aimed for)
            bar = float(self.spec.grid.bar_seconds(self.spec.start_bar))
            need = max(lane.input_for(bar) for lane in lanes)
            if need > have:
                self.stream.need(need)
        emit = _Aligner(variations, channels)
        pieces = _chain([head_audio], source)
        if self.spec.loop:
            yield from self._loop(lanes, pieces, emit)
            return
        heard = [head_audio] if refine else None
        refine_at = self._analysis_samples(self.analysis_bars)
        for block in pieces:
            if heard is not None and block is not head_audio:
                heard.append(block)
                have += block.shape[2]
                if have >= refine_at:
                    self._refine(lanes, np.concatenate(heard, axis=2))
                    heard = None
            out = emit.push([lane.process(block[v]) for v, lane in enumerate(lanes)])
            if out.shape[2]:
                yield out
        out = emit.push([lane.flush() for lane in lanes], final=True)
        if out.shape[2]:
            yield out

    def _is_canvas(self, have: int) -> bool:
        """The first block holds the whole take and a bar more at the tempo expected: a finished canvas
        (a diffusion model's), not the start of a stream."""
        return have >= self._analysis_samples(self.spec.bars + 1, slack=1.0, pad=0.0)

    def _canvas(self, head: np.ndarray, rest) -> Iterator[np.ndarray]:
        """A finished canvas (or a take whose timing is given): timing read once, then bar by bar
        (stemd.models.conform.canvas)."""
        from stemd.models.conform import canvas as cv

        sr, target = self.stream.sample_rate, self.spec.sample_rate
        canvas = cv.Canvas(head, rest)
        grid_bpm = float(self.spec.grid.section_at(self.spec.start_bar)[1].tempo.bpm)
        take_seconds = float(self.spec.seconds)
        unit_q = float(self.meter.unit_quarters)
        grid_beat = 60.0 * unit_q / grid_bpm
        if self.timings is None:
            analysis = self._analysis_samples(self.first_bars, FIRST_SLACK, FIRST_PAD) / sr
            more = self._analysis_samples(self.analysis_bars) / sr
            read = [cv.read_timing(head[v], sr, self.meter, self.expected_bpm, analysis, take_seconds, more)
                    for v in range(head.shape[0])]
            self.timings = [t for t, _ in read]
            told = self.expected_bpm
            self.decisions = [cv.decide(t, told, grid_bpm, take_seconds, sure) for t, sure in read]
        else:   # given (offline conform): taken as they are
            self.decisions = [cv.decide(t, t.bpm, grid_bpm, take_seconds, 1.0) for t in self.timings]
        lanes = []
        for v, timing in enumerate(self.timings):
            lane, self.decisions[v] = cv.lane_for(self.decisions[v], timing, canvas, v, grid_beat, sr, target)
            lanes.append(lane)
        emit = _Aligner(head.shape[0], head.shape[1])
        for bar in range(1, self.spec.bars + 1):
            upto = self.spec.grid.span_samples(self.spec.start_bar, bar, target)
            out = emit.push([lane.advance(upto) for lane in lanes])
            if out.shape[2]:
                yield out
        out = emit.push([lane.finish(self.length) for lane in lanes], final=True)
        if out.shape[2]:
            yield out

    def _refine(self, lanes: list, heard: np.ndarray) -> None:
        """The tempo estimated again on the first ``analysis_bars`` bars; later bars follow it."""
        bar_seconds = float(self.spec.grid.bar_seconds(self.spec.start_bar))
        self.timings = self._detect(heard)
        for lane, timing in zip(lanes, self.timings):
            if len(timing.beats) >= 3:
                lane.retime(timing, bar_seconds)
        self._decide(heard.shape[2])

    def _decide(self, heard: int) -> None:
        from stemd.models.conform.canvas import streamed

        self.decisions[:] = [streamed(t, stretch_ratio(t, self.spec.grid, self.spec.start_bar),
                                      heard / self.stream.sample_rate) for t in self.timings]

    def _loop(self, lanes, pieces, emit) -> Iterator[np.ndarray]:
        """Loop mode holds the take until it is whole (plus the crossfade), then loops it."""
        want = self.length + int(round(CROSSFADE_SECONDS * self.spec.sample_rate))
        got, have = [], 0
        for block in pieces:
            out = emit.push([lane.process(block[v]) for v, lane in enumerate(lanes)])
            got.append(out)
            have += out.shape[2]
            if have >= want:
                break
        else:
            got.append(emit.push([lane.flush() for lane in lanes], final=True))
        whole = np.concatenate(got, axis=2)
        yield make_loop(whole, self.spec.sample_rate, self.length)


def _chain(first: list, rest) -> Iterator[np.ndarray]:
    yield from first
    for block in rest:
        yield np.asarray(block, dtype=np.float32)


class _Aligner:
    """Variations are stretched by different ratios: emit only what every one of them has."""

    def __init__(self, variations: int, channels: int):
        self.held = [np.zeros((channels, 0), dtype=np.float32) for _ in range(variations)]

    def push(self, parts: list[np.ndarray], final: bool = False) -> np.ndarray:
        self.held = [np.concatenate([h, p], axis=1) for h, p in zip(self.held, parts)]
        n = max(h.shape[1] for h in self.held) if final else min(h.shape[1] for h in self.held)
        out = np.stack([fit_length(h, n) for h in self.held])
        self.held = [h[:, n:] for h in self.held]
        return out


def conform(audio: np.ndarray, sample_rate: int, grid: Grid, *, target_rate: int,
            start_bar: int = 0, bars: Optional[int] = None, expected_bpm: Optional[float] = None,
            timing: Optional[Timing] = None, loop: bool = False) -> np.ndarray:
    """``audio`` (mono or ``(channels, n)``) placed on ``grid`` at ``target_rate``: beats on the grid,
    first downbeat at sample 0, exactly ``bars`` bars long (default: as many bars as it holds).

    Tempo and downbeat are detected on the whole of ``audio`` (``expected_bpm`` bounds the search;
    default: the grid's tempo), unless ``timing`` gives them.
    """
    audio = np.asarray(audio, dtype=np.float32)
    mono = audio.ndim == 1
    audio = audio[None] if mono else audio
    _, section = grid.section_at(start_bar)
    expected = float(expected_bpm or section.tempo.bpm)
    if timing is None:
        timing = detect_timing(audio, sample_rate, section.meter, expected)
    held = held_bars(audio.shape[1], sample_rate, timing)
    if bars is None:
        bars = max(1, int(round(held)))
    whole = max(1, int(held + 0.1))      # a loop a hair short of its last bar line still holds that bar
    if loop and bars > whole:
        # the file's own bars made a seamless loop, then repeated on the grid to fill (bar-exact, no drift)
        base = conform(audio, sample_rate, grid, target_rate=target_rate, start_bar=start_bar, bars=whole,
                       timing=timing, loop=True)
        out = repeat_bars(base if not mono else base[None], grid, start_bar, whole, bars, target_rate)
        return out[0] if mono else out
    spec = GenerationSpec(grid=grid, bars=bars, start_bar=start_bar, sample_rate=target_rate,
                          channels=audio.shape[0], loop=loop)
    stream = AudioStream(sample_rate=sample_rate, channels=audio.shape[0], blocks=iter([audio[None]]),
                         tempo_hint=expected)
    conformer = StreamConformer(stream, spec, timings=[timing])
    out = np.concatenate(list(conformer.blocks()), axis=2)[0]
    out = fit_length(out, conformer.length)
    if not loop:
        out = edge_fades(out, target_rate)
    return out[0] if mono else out


def held_bars(frames: int, sample_rate: int, timing: Timing) -> float:
    """How many bars of its own tempo a file holds from its first downbeat on."""
    return (frames / sample_rate - timing.downbeat) / timing.bar_seconds


def repeat_bars(loop: np.ndarray, grid: Grid, start_bar: int, loop_bars: int, bars: int, rate: int) -> np.ndarray:
    """``loop`` (``(channels, n)``, ``loop_bars`` bars from ``start_bar`` that wrap seamlessly) repeated to
    ``bars`` bars: each repeat starts on its own bar line's exact sample, reading the loop round, so bar
    lengths that differ by a sample never add up."""
    origin = grid.bar_start_sample(start_bar, rate)
    total = grid.bar_start_sample(start_bar + bars, rate) - origin
    out = np.empty((loop.shape[0], total), dtype=np.float32)
    for first in range(0, bars, loop_bars):
        lo = grid.bar_start_sample(start_bar + first, rate) - origin
        hi = grid.bar_start_sample(start_bar + min(bars, first + loop_bars), rate) - origin
        out[:, lo:hi] = np.take(loop, np.arange(hi - lo) % loop.shape[1], axis=1)
    return out


EDGE_FADE_SECONDS = 0.002
SOUNDING = 1e-4     # -80 dBFS: a cut through a sound, not through silence


def edge_fades(audio: np.ndarray, rate: int, seconds: float = EDGE_FADE_SECONDS) -> np.ndarray:
    """A 2 ms raised-cosine fade where a take's first or last sample cuts through a sound (a file whose
    first downbeat falls a hair into a kick; a take that ends mid-note), so neither edge clicks."""
    n = min(int(round(seconds * rate)), audio.shape[-1] // 2)
    if n < 1:
        return audio
    ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
    if np.abs(audio[..., :1]).max() > SOUNDING:
        audio[..., :n] *= ramp
    if np.abs(audio[..., -1:]).max() > SOUNDING:
        audio[..., -n:] *= ramp[::-1]
    return audio
