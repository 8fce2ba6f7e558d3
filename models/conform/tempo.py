"""Tempo, beat and downbeat estimation of generated audio (numpy and scipy only).

1. An onset envelope: spectral flux of the log magnitude, 4 ms hop, broadband and below 200 Hz.
2. The beat period: autocorrelation of the envelope within a window around the tempo we expect
   (the tempo the engine aimed for, or the DAW's), then a comb fit of period and phase.
3. Exact beat times: each beat's attack located in the waveform (0.25 ms resolution) and a weighted
   straight-line fit ``t = first + k x period`` through them, so the tempo comes from the whole span;
   where held sounds blur the attacks, they are read again above 4 kHz (the drums' transients).
4. The downbeat: the beat of the bar (``meter.numerator`` beats) with the strongest accent, counting
   the low band (kick) and the broadband onset (click accent, crash), earliest on a near tie.
5. For a file's own tempo (:func:`file_timing`), the metrical level: a beat whose off-beats are
   nearly as strong as the beats is taken at twice that tempo (a 174 BPM groove is not 87), and a
   level twice or half the one taken that the audio marks almost as well is named in the result.

A "beat" here is one meter unit, as the DAW counts it: a quarter in 4/4, an eighth in 7/8.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional

import numpy as np

from stemd.timing import Meter

LOW_HZ = 200.0
#: below this, a kick drum (the usual mark of a downbeat) and little else
KICK_HZ = 120.0
#: how far from the expected tempo the estimate may land (ratio), both ways
SEARCH = 1.4
#: attacks this far off their line (RMS, ms) are blurred by held sounds: they are read again above BRIGHT_HZ
LOOSE_MS = 1.5
#: above this, drums' transients (hats, snare, the kick's click) and little of a held bass or pad. Measured on
#: fluidsynth band grooves (drums, a bass note a beat, a pad chord a bar) 2 % off at 97 BPM 3/4 and 120 BPM 4/4:
#: attacks 2.1-5.4 ms RMS off their line read broadband, 0.5-0.6 ms read above 4 kHz (drums alone: 0.5-0.6);
#: tempo 0.01-0.09 % off against 0.001 %
BRIGHT_HZ = 4000.0


@dataclass(frozen=True)
class Timing:
    """Where the beats of a piece of audio are: beat k of the fit is at ``first_beat + k x beat_seconds``."""

    beat_seconds: float     # one meter unit
    first_beat: float       # seconds: the first beat of the fit (may be slightly < 0)
    downbeat: float         # seconds: the first downbeat (a bar line) at or after the start
    beats_per_bar: int
    unit_quarters: float    # quarters per meter unit (1 in 4/4, 0.5 in 7/8)
    beats: np.ndarray       # the attack times that the fit used
    residual_ms: float      # RMS distance of those attacks from the fitted line
    other_bpm: Optional[float] = None   # a tempo twice or half this one that the audio marks almost as well

    @property
    def bpm(self) -> float:
        """Tempo in quarter notes per minute, as DAWs count it."""
        return 60.0 * self.unit_quarters / self.beat_seconds

    @property
    def bar_seconds(self) -> float:
        return self.beat_seconds * self.beats_per_bar


def to_mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return audio
    rows = audio.reshape(-1, audio.shape[-1])
    return rows.sum(axis=0) / np.float32(rows.shape[0])     # a third of mean()'s time, the same samples


def onset_envelope(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(broadband flux, low-band flux, frames per second); frame i describes time ``i / fps``."""
    x = to_mono(audio).astype(np.float32)     # float32 throughout: half the time of float64, same envelope
    n_fft = 1 << int(round(np.log2(0.032 * sample_rate)))
    hop = max(1, int(round(0.004 * sample_rate)))
    x = np.concatenate([np.zeros(n_fft // 2, np.float32), x, np.zeros(n_fft, np.float32)])
    frames = 1 + (len(x) - n_fft) // hop
    view = np.lib.stride_tricks.as_strided(x, (frames, n_fft), (x.strides[0] * hop, x.strides[0]))
    # scipy's FFT keeps float32 (numpy's took 6x as long here), and log(1 + y) is SIMD where log1p is
    # not (8x): 12-17 ms of bar 1's conform before, 3-4 ms now (a bar at 120 BPM, 44.1 kHz)
    from scipy.fft import rfft

    mag = np.abs(rfft(view * np.hanning(n_fft).astype(np.float32), axis=1))
    logmag = np.log(np.float32(1.0) + np.float32(1000.0) * mag).astype(np.float64)
    flux = np.maximum(0.0, np.diff(logmag, axis=0, prepend=np.zeros_like(logmag[:1])))
    low_bins = max(2, int(LOW_HZ * n_fft / sample_rate))
    # frame i is centred on sample i*hop; its flux rises when an attack enters the window's middle
    return flux.sum(axis=1), flux[:, 1:low_bins].sum(axis=1), sample_rate / hop


def _period_from_autocorrelation(env: np.ndarray, fps: float, lo: float, hi: float) -> float:
    e = env - env.mean()
    spec = np.fft.rfft(e, 2 * len(e))
    ac = np.fft.irfft(spec * np.conj(spec))[: len(e)]
    lags = np.arange(int(lo * fps), min(int(hi * fps) + 2, len(e) // 2))
    if len(lags) < 2:
        return (lo + hi) / 2
    # a true beat period also correlates at twice its lag: favour it over a sub-beat
    score = ac[lags] + 0.5 * ac[np.minimum(2 * lags, len(ac) - 1)]
    best = lags[int(np.argmax(score))]
    if 1 <= best < len(ac) - 1:  # parabolic peak
        a, b, c = ac[best - 1], ac[best], ac[best + 1]
        shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c != 0 else 0.0
        return (best + float(np.clip(shift, -0.5, 0.5))) / fps
    return best / fps


def _comb_fit(env: np.ndarray, fps: float, period: float) -> tuple[float, float]:
    """(period, phase) maximising the envelope summed along ``phase + k x period``: 61 periods within 3 %,
    every phase a frame apart, scored at once (a Python loop over the periods cost 3 ms of bar 1)."""
    duration = len(env) / fps
    periods = period * np.linspace(0.97, 1.03, 61)
    step = 1.0 / fps
    n_phases = np.ceil(periods / step).astype(int)            # np.arange(0, p, step)'s lengths
    n_beats = (duration / periods).astype(int) + 1
    phases = np.arange(n_phases.max()) * step
    k = np.arange(n_beats.max())
    best = (-1.0, period, 0.0)
    rows = max(1, int(2e6 // (len(phases) * len(k))))          # bounds the arrays on a long file
    for lo in range(0, len(periods), rows):
        p = periods[lo:lo + rows, None, None]
        idx = np.rint((phases[None, :, None] + k[None, None, :] * p) * fps).astype(int)
        ok = (idx < len(env)) & (k[None, None, :] < n_beats[lo:lo + rows, None, None])
        hits = np.where(ok, env[np.minimum(idx, len(env) - 1)], 0.0)
        counts = ok.sum(axis=2)
        real = phases[None, :] < n_phases[lo:lo + rows, None] * step - step / 2
        score = hits.sum(axis=2) / np.maximum(1, np.where(real, counts, 0).max(axis=1))[:, None]
        score = np.where(real, score, -np.inf)
        i = int(np.argmax(score))
        if score.flat[i] > best[0]:
            row, col = divmod(i, score.shape[1])
            best = (float(score.flat[i]), float(periods[lo + row]), float(phases[col]))
    return best[1], best[2]


def _attack_time(x: np.ndarray, sample_rate: int, around: float, reach: float) -> tuple[float, float]:
    """(time, strength) of the attack nearest ``around``: where the 0.25 ms energy first climbs a quarter
    of the way (in dB) from the quiet before it to its peak. Strength is that climb in dB."""
    lo = max(0, int((around - reach) * sample_rate))
    hi = min(len(x), int((around + reach) * sample_rate))
    if hi - lo < 8:
        return around, 0.0
    win = max(1, int(0.00025 * sample_rate))
    # energy over the ``win`` samples that start at each sample: it rises when an attack enters
    seg = x[lo:hi + win].astype(np.float64) ** 2
    energy = np.convolve(seg, np.ones(win) / win, mode="full")[win - 1: win - 1 + (hi - lo)] + 1e-10
    # in dB, but compared as energies (a quarter of the climb in dB is the fourth root of the ratio):
    # the logarithm of every sample was half this function's time
    peak = int(np.argmax(energy))
    floor = float(energy[: peak + 1].min())
    ratio = float(energy[peak]) / floor
    climb = 10 * float(np.log10(ratio))
    # walk back from the peak to where the level was last below a quarter of the climb: a sound
    # still decaying at the window's start does not count as this attack
    below = np.flatnonzero(energy[: peak + 1] < floor * ratio ** 0.25)
    at = int(below[-1]) + 1 if len(below) else 0
    # the window reaches an attack half a window before its centre does
    return (lo + at + win / 2) / sample_rate, climb


def _fit_beats(x: np.ndarray, sample_rate: int, period: float, phase: float,
               duration: float, rounds: int = 3, reach: float = 0.04) -> tuple[float, float, np.ndarray, float,
                                                                                np.ndarray]:
    """Least-squares line through the attacks near each beat of ``phase + k x period`` (``rounds``
    times, each from the line before), each looked for within ``reach`` seconds of its beat."""
    reach = min(reach, period / 4)
    for _ in range(rounds):
        ks, times, weights = [], [], []
        k_first = int(np.ceil((-reach - phase) / period))
        for k in range(k_first, int((duration - phase) / period) + 1):
            t, climb = _attack_time(x, sample_rate, phase + k * period, reach)
            if climb > 6.0:  # a real attack, not noise
                ks.append(k), times.append(t), weights.append(climb)
        if len(ks) < 3:
            return period, phase, np.asarray(times), float("nan"), np.asarray(ks)
        ks_a, t_a, w_a = np.asarray(ks, float), np.asarray(times), np.asarray(weights)
        for drop in range(3):  # refit without attacks far off the line (fills, flams), at most twice
            A = np.stack([np.ones_like(ks_a), ks_a], axis=1) * np.sqrt(w_a)[:, None]
            (phase_fit, period_fit), *_ = np.linalg.lstsq(A, t_a * np.sqrt(w_a), rcond=None)
            resid = t_a - (phase_fit + period_fit * ks_a)
            keep = np.abs(resid) < max(0.012, 3 * np.sqrt(np.average(resid ** 2, weights=w_a)))
            if drop == 2 or keep.all() or keep.sum() < 3:
                break
            ks_a, t_a, w_a = ks_a[keep], t_a[keep], w_a[keep]
        period, phase = float(period_fit), float(phase_fit)
    rms = float(np.sqrt(np.average(resid ** 2, weights=w_a))) * 1000
    return period, phase, t_a, rms, ks_a.astype(int)


def _fit_attacks(x: np.ndarray, sample_rate: int, period: float, phase: float, duration: float,
                 **kwargs) -> tuple[float, float, np.ndarray, float, np.ndarray]:
    """:func:`_fit_beats` on ``x``; where its attacks sit loosely (:data:`LOOSE_MS`: a bass note or a pad
    held over the drums blurs the climb), again on ``x`` above :data:`BRIGHT_HZ`, and the fit whose period
    is surer (:func:`_period_error`) is taken."""
    fit = _fit_beats(x, sample_rate, period, phase, duration, **kwargs)
    if len(fit[2]) >= 3 and fit[3] <= LOOSE_MS or sample_rate <= 2.5 * BRIGHT_HZ:
        return fit
    _, sosfilt = load_filters()
    bright = sosfilt(bright_filter(sample_rate), x)
    again = _fit_beats(bright, sample_rate, period, phase, duration, **kwargs)
    if len(again[2]) >= 3 and (len(fit[2]) < 3 or _period_error(again[3], again[4]) < _period_error(fit[3], fit[4])):
        return again
    return fit


def _period_error(rms_ms: float, ks: np.ndarray) -> float:
    """Standard error (seconds) of a fitted period: ``rms_ms`` off the line over beats ``ks``."""
    spread = float(np.sum((ks - ks.mean()) ** 2)) if len(ks) else 0.0
    return rms_ms / 1000 / np.sqrt(spread) if spread > 0 and np.isfinite(rms_ms) else float("inf")


def detect_timing(audio: np.ndarray, sample_rate: int, meter: Meter | str = "4/4",
                  expected_bpm: Optional[float] = None, search: float = SEARCH) -> Timing:
    """Tempo, beats and first downbeat of ``audio`` (mono or ``(channels, n)``) at ``sample_rate``.

    ``expected_bpm`` (quarters per minute: the tempo asked of the engine, or the DAW's) bounds the
    search to within a factor of ``search`` (1.4) either way; without it, 70 to 180 BPM. For a file
    whose tempo nothing says, :func:`file_timing`.
    """
    meter = Meter.parse(meter)
    unit_q = float(meter.unit_quarters)
    x = to_mono(audio)
    duration = len(x) / sample_rate
    broad, low, fps = onset_envelope(x, sample_rate)
    if expected_bpm:
        center = 60.0 * unit_q / float(expected_bpm)
        lo, hi = center / search, center * search
    else:
        lo, hi = 60.0 * unit_q / 180.0, 60.0 * unit_q / 70.0
    period = _period_from_autocorrelation(broad, fps, lo, hi)
    period, phase = _comb_fit(broad, fps, period)
    period, phase, beats, rms, ks = _fit_attacks(x, sample_rate, period, phase, duration)
    if len(beats) < 3:
        # no beat to hear (silence, a pad, noise): trust the tempo asked for, downbeat at the start
        period = 60.0 * unit_q / float(expected_bpm) if expected_bpm else period
        return Timing(beat_seconds=period, first_beat=0.0, downbeat=0.0, beats_per_bar=meter.numerator,
                      unit_quarters=unit_q, beats=beats, residual_ms=float("nan"))
    # move the phase to the first beat at or just before the start
    k0 = int(np.floor((phase + min(0.01, period / 4)) / period))
    first = phase - k0 * period
    n = meter.numerator
    downbeat_index = _downbeat_index(x, sample_rate, first, period, n, duration)
    return Timing(beat_seconds=period, first_beat=first, downbeat=first + downbeat_index * period,
                  beats_per_bar=n, unit_quarters=unit_q, beats=beats, residual_ms=rms)


#: a file's own tempo is searched in this range when nothing says where it is (quarters per minute)
FILE_BPM = (70.0, 180.0)
#: of two levels a factor 2 apart: the onsets halfway between the slower level's beats, relative to
#: those on its beats. From FASTER_LEVEL up the faster level is the beat; within CLOSE both are heard.
#: Measured on fluidsynth rock beats (kick 1 and 3, snare 2 and 4, eighth hats), 4-8 bars: 0.48-0.76
#: at their own tempo (the slower the tempo, the higher), 0.81-1.10 when a 140-180 BPM beat is read
#: at half its tempo; quarter clicks at 174 read at 87: 1.04. The two overlap near 0.8: a slow groove
#: whose hats are hit hard is named with its double time, not doubled.
FASTER_LEVEL, CLOSE = 0.8, (0.75, 0.95)


def off_beat_ratio(envelope: np.ndarray, fps: float, timing: Timing) -> float:
    """Mean onset strength halfway between ``timing``'s beats over that on them (``envelope``: the
    broadband onset envelope at ``fps`` frames per second; its peak within 8 ms of each point): near 0
    for a click on the beat, near 1 when the off-beats are hit as hard."""
    k = np.arange(int((len(envelope) / fps - timing.first_beat) / timing.beat_seconds) + 1)

    def strength(times: np.ndarray) -> float:
        idx = np.rint(times * fps).astype(int)
        idx = idx[(idx >= 0) & (idx < len(envelope))]
        return float(np.mean([envelope[max(0, i - 2): i + 3].max() for i in idx])) if len(idx) else 0.0

    on = strength(timing.first_beat + k * timing.beat_seconds)
    return strength(timing.first_beat + (k + 0.5) * timing.beat_seconds) / on if on > 0 else 0.0


def file_timing(audio: np.ndarray, sample_rate: int, meter: Meter | str = "4/4") -> Timing:
    """A file's own tempo and downbeat, found from the audio alone in 70-180 BPM: a session's tempo says
    nothing about a file a producer brings (a 131 BPM groove is not 87.33 because the session is at 90).

    The level: the periodicity search finds a tempo; where its off-beats are hit nearly as hard as its
    beats (:func:`off_beat_ratio` from :data:`FASTER_LEVEL`), twice that tempo is the beat when it is
    in range. ``other_bpm`` is set when the level not taken comes close (a half-time groove, eighths
    played as hard as quarters): the caller says so, and ``--source-bpm`` chooses. A file outside
    70-180 BPM is found at half or double its tempo."""
    lo, hi = FILE_BPM
    timing = detect_timing(audio, sample_rate, meter, (lo * hi) ** 0.5, search=(hi / lo) ** 0.5)
    if len(timing.beats) < 3:
        return timing
    broad, _, fps = onset_envelope(audio, sample_rate)
    ratio = off_beat_ratio(broad, fps, timing)
    other = None
    if ratio >= FASTER_LEVEL and 2 * timing.bpm <= hi * 1.02:
        faster = detect_timing(audio, sample_rate, meter, 2 * timing.bpm, search=1.1)
        if len(faster.beats) >= 3 and abs(faster.bpm / (2 * timing.bpm) - 1) < 0.03:
            timing, other = faster, (timing.bpm if ratio <= CLOSE[1] else None)
    elif ratio >= CLOSE[0]:
        other = 2 * timing.bpm
    elif timing.bpm / 2 >= lo:
        # half this tempo is close when every other beat is as weak as an off-beat would be there
        r = off_beat_ratio(broad, fps, replace(timing, beat_seconds=2 * timing.beat_seconds))
        if r > 0 and min(r, 1 / r) < FASTER_LEVEL:
            other = timing.bpm / 2
    return replace(timing, other_bpm=other)


def load_filters():
    """scipy's filter design and filtering (imported on first use: scipy.signal takes about a second)."""
    from scipy.signal import sosfilt

    return kick_filter, sosfilt


@lru_cache(maxsize=8)
def bright_filter(sample_rate: int) -> np.ndarray:
    """The attacks' high-pass above :data:`BRIGHT_HZ` (second-order sections), designed once per rate."""
    from scipy.signal import butter

    return butter(4, BRIGHT_HZ, "highpass", fs=sample_rate, output="sos")


@lru_cache(maxsize=8)
def kick_filter(sample_rate: int) -> np.ndarray:
    """The downbeat's low-pass below :data:`KICK_HZ` (second-order sections), designed once per rate."""
    from scipy.signal import butter

    return butter(4, KICK_HZ, "lowpass", fs=sample_rate, output="sos")


def _downbeat_index(x: np.ndarray, sample_rate: int, first: float, period: float, n: int,
                    duration: float) -> int:
    """Which of the first ``n`` beats is a bar line: the beat of the bar with the strongest accent
    (peak level just after the beat, broadband plus below 120 Hz, each relative to its loudest)."""
    if n == 1:
        return 0
    kick, sosfilt = load_filters()

    lowpassed = sosfilt(kick(sample_rate), x)
    count = int((duration - first) / period) + 1
    reach = int(min(0.06, period / 2) * sample_rate)
    before = int(0.005 * sample_rate)

    def accents(signal: np.ndarray) -> np.ndarray:
        out = np.zeros(count)
        for k in range(count):
            i = int(round((first + k * period) * sample_rate))
            window = signal[max(0, i - before): max(0, i + reach)]
            out[k] = np.abs(window).max() if len(window) else 0.0
        return out

    b, l = accents(x), accents(lowpassed)
    sounding = b > 0.1 * b.max()  # beats in silence (before the music, after it) say nothing
    score = np.zeros(n)
    for p in range(n):
        sel = np.zeros(count, dtype=bool)
        sel[p::n] = True
        sel &= sounding
        if sel.any():
            score[p] = b[sel].mean() / (b.max() + 1e-9) + l[sel].mean() / (l.max() + 1e-9)
    near_best = np.flatnonzero(score >= 0.95 * score.max())
    return int(near_best[0])


def period_error(timing: Timing) -> float:
    """Standard error (seconds) of ``timing``'s beat period, from how far its attacks sit off the line."""
    if len(timing.beats) < 3 or not np.isfinite(timing.residual_ms):
        return float("inf")
    return _period_error(timing.residual_ms, np.round((timing.beats - timing.first_beat) / timing.beat_seconds))


#: how far from the first bars' line the longer fit looks for each attack: that line is off by well under
#: 0.1 % (under 10 ms by the end of a 16 s take)
REFIT_REACH = 0.015


def refit_tempo(audio: np.ndarray, sample_rate: int, timing: Timing, seconds: float) -> Timing:
    """``timing`` (read on the first bars) with its tempo fitted again through the attacks of the first
    ``seconds`` of ``audio``: a tempo read from two bars can be off by 0.05 %, 6 ms over an 8-bar take;
    from all its beats it is not. Costs one attack search per beat (milliseconds); the downbeat stays the
    one found (the same beat of the fit). Where the longer fit finds fewer attacks, or its period is
    less certain (:func:`period_error`: attacks much further from its line), ``timing`` as is."""
    if len(timing.beats) < 3:
        return timing
    x = to_mono(np.asarray(audio)[..., : int(seconds * sample_rate)])
    period, phase, beats, rms, _ = _fit_attacks(x, sample_rate, timing.beat_seconds, timing.first_beat,
                                              len(x) / sample_rate, rounds=1, reach=REFIT_REACH)
    refit = Timing(period, phase, phase, timing.beats_per_bar, timing.unit_quarters, beats, rms)
    if (len(beats) < len(timing.beats) or not abs(period / timing.beat_seconds - 1) < 0.01
            or not period_error(refit) <= period_error(timing)):
        return timing       # the longer span's attacks sit too far off a line (a held sound over them)
    k0 = int(np.floor((phase + min(0.01, period / 4)) / period))
    first = phase - k0 * period
    index = int(round((timing.downbeat - timing.first_beat) / timing.beat_seconds))
    return replace(timing, beat_seconds=period, first_beat=first, downbeat=first + index * period, beats=beats,
                   residual_ms=rms)
