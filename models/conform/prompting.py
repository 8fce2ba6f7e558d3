"""Helping the model hold the DAW's tempo: words for the text conditioning, and a bar of audio to
continue from (a click bar, or a bar of the producer's loop conformed to the grid)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from stemd.timing import Grid, samples_at


def describe_grid(grid: Grid, key: Optional[str] = None, bar: int = 0) -> str:
    """Tempo, meter and key as MusicGen reads them: ``"120 bpm, 4/4, in A minor"``.

    ``bar`` picks the section of a grid that changes; ``key`` is free text ("A minor", "F# major").
    """
    _, section = grid.section_at(bar)
    bpm = float(section.tempo.bpm)
    words = [f"{bpm:.3f}".rstrip("0").rstrip(".") + " bpm", str(section.meter)]
    if key and key.strip():
        words.append(f"in {key.strip()}")
    return ", ".join(words)


def with_grid(prompt: str, grid: Grid, key: Optional[str] = None, bar: int = 0) -> str:
    """The producer's prompt with the grid's description appended (``"dark techno, 128 bpm, 4/4"``)."""
    described = describe_grid(grid, key, bar)
    prompt = prompt.strip().rstrip(",")
    return f"{prompt}, {described}" if prompt else described


def click_bar(grid: Grid, sample_rate: int, bar: int = 0, bars: int = 1) -> np.ndarray:
    """``bars`` bars of metronome at ``sample_rate`` (mono float32), exactly as long as the grid says:
    an audio prompt that shows the model the tempo and where the downbeat is."""
    from stemd.models.click import click_sound

    origin = grid.bar_start_sample(bar, sample_rate)
    n = grid.span_samples(bar, bars, sample_rate)
    out = np.zeros(n, dtype=np.float32)
    for _bar, unit, t in grid.unit_onsets_seconds(bar, bars):
        at = samples_at(t, sample_rate) - origin
        sound = click_sound(sample_rate, unit == 0)[: n - at]
        out[at: at + len(sound)] += sound
    return out


def loop_bar(audio: np.ndarray, sample_rate: int, grid: Grid, model_rate: int, bar: int = 0,
             bars: int = 1) -> np.ndarray:
    """``bars`` bars of the producer's loop at ``model_rate``, conformed to ``grid``: an audio prompt."""
    from stemd.models.conform.stream import conform

    placed = conform(audio, sample_rate, grid, target_rate=model_rate, start_bar=bar, bars=bars)
    return placed


def trim_prompt(audio: np.ndarray, prompt_samples: int) -> np.ndarray:
    """The generated continuation without the prompt the model was given (last axis)."""
    return audio[..., prompt_samples:]
