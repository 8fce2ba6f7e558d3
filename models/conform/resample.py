"""Sample-rate conversion with soxr: offline (``resample``) and streaming (``Resampler``).

soxr's stream object keeps its filter state between calls, so a stream cut into blocks of any size
gives the same samples as the whole signal at once: chunk boundaries leave no trace.
"""

from __future__ import annotations

import numpy as np

#: soxr quality: "VHQ" is a 175 dB stop band, linear phase, passband to 0.91 of Nyquist
QUALITY = "VHQ"


def resample(audio: np.ndarray, sample_rate: int, target_rate: int, quality: str = QUALITY) -> np.ndarray:
    """``audio`` (..., n) at ``sample_rate`` resampled to ``target_rate`` (float32, same leading axes)."""
    audio = np.asarray(audio, dtype=np.float32)
    if sample_rate == target_rate:
        return audio.copy()
    resampler = Resampler(sample_rate, target_rate, audio.shape[:-1], quality)
    return np.concatenate([resampler.process(audio), resampler.flush()], axis=-1)


class Resampler:
    """Streaming resampler: ``process`` blocks ``(*shape, n)``, then ``flush`` once at the end.

    Output length over a whole stream is ``round(n x target / source)``; there is no delay to remove
    (soxr compensates its filter delay itself).
    """

    def __init__(self, sample_rate: int, target_rate: int, shape: tuple = (1,), quality: str = QUALITY):
        import soxr  # heavy: only the daemon side needs it

        self.sample_rate, self.target_rate, self.shape = sample_rate, target_rate, tuple(shape)
        self.channels = int(np.prod(self.shape)) if self.shape else 1
        self._same = sample_rate == target_rate
        self._stream = None if self._same else soxr.ResampleStream(
            sample_rate, target_rate, self.channels, dtype="float32", quality=quality)

    def _run(self, audio: np.ndarray, last: bool) -> np.ndarray:
        frames = np.ascontiguousarray(audio.reshape(self.channels, -1).T, dtype=np.float32)
        out = self._stream.resample_chunk(frames, last=last)
        return np.ascontiguousarray(out.T).reshape(*self.shape, -1)

    def process(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.shape[:-1] != self.shape:
            raise ValueError(f"resampler expects blocks of shape {self.shape + ('n',)}, got {audio.shape}")
        if self._same:
            return audio.copy()
        return self._run(audio, last=False)

    def flush(self) -> np.ndarray:
        """The last samples held in the filter (call once, after the last ``process``)."""
        if self._same:
            return np.zeros((*self.shape, 0), dtype=np.float32)
        return self._run(np.zeros((*self.shape, 0), dtype=np.float32), last=True)
