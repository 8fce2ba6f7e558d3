"""Loudness normalisation to a target integrated loudness (ITU-R BS.1770, via pyloudnorm)."""

from __future__ import annotations

import numpy as np

#: PCM files clip above full scale; keep the true peak estimate below this
PCM_PEAK_CEILING_DBFS = -0.1


def integrated_lufs(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of ``audio`` float32 ``(channels, n)``; -inf for silence or takes under 0.4 s."""
    import pyloudnorm

    if audio.shape[-1] < int(0.4 * sample_rate):
        return float("-inf")
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(np.asarray(audio, np.float64).T))


def peak_dbfs(audio: np.ndarray) -> float:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return float(20 * np.log10(peak)) if peak > 0 else float("-inf")


def normalise(audio: np.ndarray, sample_rate: int, target_lufs: float, *, pcm: bool) -> tuple[np.ndarray, dict]:
    """``audio`` at ``target_lufs``; for PCM output the gain stops where the peak would reach -0.1 dBFS.

    Returns the audio and what was measured and done (for the sidecar). Silence and takes too short
    to measure are returned unchanged, and the report says so.
    """
    before = integrated_lufs(audio, sample_rate)
    report = {"target_lufs": target_lufs, "measured_lufs": _num(before)}
    if not np.isfinite(before):
        report.update(gain_db=0.0, note="too short or silent to measure: left as rendered")
        return audio, report
    gain_db = target_lufs - before
    if pcm:
        headroom = PCM_PEAK_CEILING_DBFS - peak_dbfs(audio)
        if gain_db > headroom:
            gain_db = headroom
            report["limited_by_peak"] = True
    out = (audio * np.float32(10 ** (gain_db / 20))).astype(np.float32)
    report.update(gain_db=round(gain_db, 3), lufs=_num(integrated_lufs(out, sample_rate)),
                  peak_dbfs=_num(peak_dbfs(out)))
    return out, report


def _num(x: float):
    return round(x, 3) if np.isfinite(x) else None
