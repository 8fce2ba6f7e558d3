"""Loop mode: a take that loops seamlessly at its bar length.

The audio that runs past the loop's end is what naturally follows its last sample; crossfading it
into the loop's head makes the jump from the last sample back to the first the same as playing on.
"""

from __future__ import annotations

import numpy as np

CROSSFADE_SECONDS = 0.05
EDGE_FADE_SECONDS = 0.003


def make_loop(audio: np.ndarray, sample_rate: int, length: int,
              crossfade_seconds: float = CROSSFADE_SECONDS) -> np.ndarray:
    """``audio[..., :length]`` made to loop: its head crossfaded (equal power) with the tail after
    ``length``. With no audio past ``length``, the crossfade shrinks to what there is; with none at all,
    the loop gets a 3 ms fade at both ends so the seam does not click."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.shape[-1] < length:
        pad = np.zeros((*audio.shape[:-1], length - audio.shape[-1]), dtype=np.float32)
        audio = np.concatenate([audio, pad], axis=-1)
    out = audio[..., :length].copy()
    fade = min(int(round(crossfade_seconds * sample_rate)), audio.shape[-1] - length, length // 2)
    if fade > 0:
        theta = (np.arange(fade) + 0.5) / fade * (np.pi / 2)
        fade_in, fade_out = np.sin(theta).astype(np.float32), np.cos(theta).astype(np.float32)
        out[..., :fade] = out[..., :fade] * fade_in + audio[..., length:length + fade] * fade_out
        return out
    edge = min(int(round(EDGE_FADE_SECONDS * sample_rate)), length // 2)
    if edge > 0:
        ramp = np.linspace(0.0, 1.0, edge, endpoint=False, dtype=np.float32)
        out[..., :edge] *= ramp
        out[..., length - edge:] *= ramp[::-1]
    return out
