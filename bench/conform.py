"""Conform cost per second of audio (x real time), streaming and offline, on this machine's CPU.

    .venv/bin/python bench/conform.py [--seconds 30] [--repeat 3]

Source: a stereo take at MusicGen's 32 kHz (drums rendered by fluidsynth when it is installed,
otherwise a click track plus a sine sweep), 9 % slower than the DAW's 120 BPM. Offline: detection
on the whole take, then stretch + resample. Streaming: StreamConformer fed 0.64 s blocks (a
MusicGen decode step of 32 frames), detection on the first two bars. Each figure is the best of
``--repeat`` runs: seconds of audio conformed per second of wall clock.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from stemd.models.base import AudioStream, GenerationSpec
from stemd.models.conform import StreamConformer, conform, detect_timing
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from signals import click_track, drum_track, fluidsynth_missing  # noqa: E402  (test signals: tests/signals.py)
from stemd.timing import Grid

MODEL_RATE = 32000


def source(seconds: float) -> tuple[np.ndarray, str]:
    bpm = 120 * 0.91
    bars = int(seconds / (4 * 60 / bpm)) + 1
    if not fluidsynth_missing():
        audio, _, _ = drum_track(bpm, MODEL_RATE, bars)
        what = "fluidsynth drums"
    else:
        clicks, _, _ = click_track(bpm, MODEL_RATE, bars)
        t = np.arange(len(clicks)) / MODEL_RATE
        audio = np.stack([clicks, 0.3 * np.sin(2 * np.pi * 110 * t * (1 + t / seconds)).astype(np.float32)])
        what = "click track + sweep"
    return np.ascontiguousarray(audio[:, : int(seconds * MODEL_RATE)]), what


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    audio, what = source(args.seconds)
    seconds = audio.shape[1] / MODEL_RATE
    grid = Grid(120)
    bars = int(seconds * 0.91 / 2)
    print(f"device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
          f"source: {seconds:.1f} s stereo {what} at {MODEL_RATE} Hz, 109.2 BPM -> 120 BPM, {bars} bars")
    t_detect = best_of(lambda: detect_timing(audio, MODEL_RATE, "4/4", 120), args.repeat)
    print(f"  detect tempo/downbeat (whole take)      {seconds / t_detect:8.1f} x real time")
    block = int(0.64 * MODEL_RATE)
    for rate in (44100, 48000, 96000):
        t_off = best_of(lambda: conform(audio, MODEL_RATE, grid, target_rate=rate, bars=bars), args.repeat)

        def streamed():
            blocks = (audio[None, :, i:i + block] for i in range(0, audio.shape[1], block))
            stream = AudioStream(sample_rate=MODEL_RATE, channels=2, blocks=blocks, tempo_hint=120)
            spec = GenerationSpec(grid=grid, bars=bars, sample_rate=rate, channels=2)
            for _ in StreamConformer(stream, spec).blocks():
                pass

        t_str = best_of(streamed, args.repeat)
        print(f"  {rate:>5} Hz  offline {seconds / t_off:7.1f} x real time   streaming {seconds / t_str:7.1f} x real time")


if __name__ == "__main__":
    main()
