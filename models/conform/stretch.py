"""Time-stretch without changing pitch: Rubber Band's R3 ("finer") engine, streaming.

Rubber Band (through pylibrb, its Python binding) in real-time mode takes audio in and gives
stretched audio out with a fixed start delay that we remove, and accepts a new ratio at any time.
We feed it in fixed internal blocks so that its output does not depend on how the caller cut the
stream. pedalboard's ``time_stretch`` is the same library, but one-shot only: it cannot stream.

``ratio`` is output duration over input duration: 0.9 makes audio 10 % shorter (faster).
"""

from __future__ import annotations

import numpy as np

#: samples fed to Rubber Band per call; output is identical for any caller block size
FEED = 1024


def _rubberband(sample_rate: int, channels: int, ratio: float):
    import pylibrb  # heavy: only the daemon side needs it

    opts = (pylibrb.Option.PROCESS_REALTIME | pylibrb.Option.ENGINE_FINER
            | pylibrb.Option.CHANNELS_TOGETHER | pylibrb.Option.THREADING_NEVER)
    rb = pylibrb.RubberBandStretcher(sample_rate, channels, opts, initial_time_ratio=float(ratio))
    rb.set_max_process_size(FEED)
    return rb


class Stretcher:
    """Streaming time-stretch of ``(channels, n)`` blocks; ``flush`` once at the end."""

    def __init__(self, sample_rate: int, channels: int, ratio: float):
        if not 0.25 <= ratio <= 4.0:
            raise ValueError(f"stretch ratio must be 0.25..4, got {ratio:g}")
        self.sample_rate, self.channels = sample_rate, channels
        self._rb = _rubberband(sample_rate, channels, ratio)
        self._rb.process(np.zeros((channels, self._rb.get_preferred_start_pad()), dtype=np.float32))
        self._drop = self.start_delay = self._rb.get_start_delay()   # output samples dropped at the start
        self._held = np.zeros((channels, 0), dtype=np.float32)

    @property
    def ratio(self) -> float:
        return self._rb.time_ratio

    @ratio.setter
    def ratio(self, value: float) -> None:
        self._rb.time_ratio = float(value)

    def _take(self) -> np.ndarray:
        out = self._rb.retrieve_available()
        if self._drop:
            cut = min(self._drop, out.shape[1])
            out, self._drop = out[:, cut:], self._drop - cut
        return out

    def process(self, audio: np.ndarray) -> np.ndarray:
        held = np.concatenate([self._held, np.asarray(audio, dtype=np.float32)], axis=1)
        outs = []
        whole = held.shape[1] - held.shape[1] % FEED
        for i in range(0, whole, FEED):
            self._rb.process(np.ascontiguousarray(held[:, i:i + FEED]))
            outs.append(self._take())
        self._held = held[:, whole:]
        return np.concatenate(outs, axis=1) if outs else np.zeros((self.channels, 0), np.float32)

    def flush(self) -> np.ndarray:
        self._rb.process(np.ascontiguousarray(self._held), final=True)
        self._held = self._held[:, :0]
        outs = [self._take()]
        while not self._rb.is_done():
            more = self._take()
            if more.shape[1] == 0 and self._rb.available() <= 0:
                break
            outs.append(more)
        return np.concatenate(outs, axis=1)


def time_stretch(audio: np.ndarray, sample_rate: int, ratio: float) -> np.ndarray:
    """``(channels, n)`` stretched to exactly ``round(n x ratio)`` samples, pitch unchanged."""
    audio = np.asarray(audio, dtype=np.float32)
    mono = audio.ndim == 1
    audio = audio[None] if mono else audio
    stretcher = Stretcher(sample_rate, audio.shape[0], ratio)
    out = np.concatenate([stretcher.process(audio), stretcher.flush()], axis=1)
    out = fit_length(out, int(round(audio.shape[1] * ratio)))
    return out[0] if mono else out


def fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Cut or pad (with silence) the last axis to exactly ``n`` samples."""
    have = audio.shape[-1]
    if have >= n:
        return audio[..., :n]
    pad = np.zeros((*audio.shape[:-1], n - have), dtype=audio.dtype)
    return np.concatenate([audio, pad], axis=-1)
