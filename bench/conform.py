"""Conform of a realistic diffusion canvas: time to bar 1 and to the whole take, and where the beats land.

    .venv/bin/python bench/conform.py [--runs 5] [--bars 8] [--rate 44100] [--off 0.98 1.02] [--band]

The canvas is what a diffusion model told the DAW's tempo makes: a drum groove (General MIDI kick, snare,
eighth hats, a crash on the first downbeat; with ``--band`` also a bass note on every beat and a pad chord
held through each bar; tests/signals.py ``groove_track``, written with mido and rendered by the
``fluidsynth`` program with FluidR3_GM) 1-3 % off the asked tempo (each ``--off`` a take of one
variation), stereo at ``--rate`` (Stable Audio's 44.1 kHz), first downbeat 0.17 s in, as long as the
engines make it (the take x 1.1 + one bar). Measured at 97 BPM 3/4 and 120 BPM 4/4, ``--bars`` bars, to
48 kHz. The beat errors are read on the drums' attacks: with ``--band`` the held bass and pad would hide
them from this measure (it finds the first sample at 30 % of the window's peak), so they are read on the
same drums rendered alone (fluidsynth renders each note alike), conformed with the timing read on the band.

Each run is the daemon's path from a finished canvas: ``models.pipeline.conformed_blocks`` (the canvas as
the engine's one block, its tempo hint the asked tempo) into ``models.chunker.chunk_blocks``; timed from
the call to bar 1 out of the chunker (``bar 1``), to every bar out (``take``), wall clock and this
process's CPU time (what the work costs, whatever else runs on the machine). Medians of ``--runs``
runs after one warm-up run (imports, soxr and Rubber Band set up: the daemon warms them before it
listens). Beat errors: each grid beat of the conformed take against the attack nearest it (first sample
within +-40 ms at 30 % of the window's peak, the tests' measure), median and max in ms, per variation.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from signals import attack_errors_ms, fluidsynth_missing, groove_track  # noqa: E402  (test signals: tests/signals.py)

from stemd.models.base import AudioStream, GenerationSpec  # noqa: E402
from stemd.models.chunker import chunk_blocks  # noqa: E402
from stemd.models.pipeline import conformed_blocks, warm_conform  # noqa: E402
from stemd.timing import Grid, Meter  # noqa: E402

TARGET_RATE = 48000
CASES = (("3/4", 97.0), ("4/4", 120.0))


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def canvas_for(meter: str, bpm: float, bars: int, off: float, rate: int, band: bool) -> np.ndarray:
    """``(1, 2, n)``: a groove at ``off`` x ``bpm``, the engines' canvas length."""
    m = Meter.parse(meter)
    grid = Grid(bpm, meter)
    seconds = float(grid.bar_start_seconds(bars)) * 1.1 + float(grid.bar_seconds(0))
    n = int(seconds * rate)
    audio, _, _ = groove_track(bpm * off, rate, int(bars * 1.1 / off) + 3, m.numerator, start=0.17, band=band)
    return np.pad(audio, ((0, 0), (0, max(0, n - audio.shape[1]))))[None, :, :n]


def one_run(canvas: np.ndarray, spec: GenerationSpec, rate: int, bpm: float):
    """((wall, CPU) seconds to bar 1, the same to the whole take, the take, the decisions)."""
    decisions: list = []
    t0, c0 = time.perf_counter(), time.process_time()
    stream = AudioStream(sample_rate=rate, channels=canvas.shape[1], blocks=iter([canvas]), tempo_hint=bpm)
    first, bars = None, []
    for chunk in chunk_blocks(conformed_blocks(stream, spec, decisions), spec.grid, spec.sample_rate,
                              spec.start_bar, spec.bars):
        if first is None:
            first = (time.perf_counter() - t0, time.process_time() - c0)
        bars.append(chunk.audio)
    whole = (time.perf_counter() - t0, time.process_time() - c0)
    return first, whole, np.concatenate(bars, axis=2), decisions


def drums_as_conformed(canvas: np.ndarray, meter: str, bpm: float, args, spec: GenerationSpec,
                       off: float) -> np.ndarray:
    """The drums of a band canvas rendered alone, conformed with the timing read on the band canvas."""
    from stemd.models.conform import StreamConformer

    def conformer(audio, timings=None):
        stream = AudioStream(sample_rate=args.rate, channels=audio.shape[1], blocks=iter([audio]), tempo_hint=bpm)
        return StreamConformer(stream, spec, timings=timings)

    band = conformer(canvas)
    list(band.blocks())
    drums = conformer(canvas_for(meter, bpm, args.bars, off, args.rate, band=False), band.timings)
    return np.concatenate(list(drums.blocks()), axis=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bars", type=int, default=8)
    ap.add_argument("--rate", type=int, default=44100, help="the canvas's rate (Stable Audio: 44100)")
    ap.add_argument("--off", type=float, nargs="+", default=[0.98, 1.02],
                    help="the canvas's tempo over the asked one, one take each")
    ap.add_argument("--band", action="store_true", help="bass and pad beside the drums")
    args = ap.parse_args()
    why = fluidsynth_missing()
    if why:
        raise SystemExit(f"bench/conform.py needs fluidsynth: {why}")
    load = os.getloadavg()
    print(f"bench/conform.py on {time.strftime('%Y-%m-%d %H:%M %Z')}: CPU {cpu_name()}, {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start (a shared machine)", flush=True)
    print(f"canvas: fluidsynth {'band' if args.band else 'drum'} groove, stereo {args.rate} Hz, at "
          f"{', '.join(f'{o:g}' for o in args.off)} x the asked tempo, one variation; take of {args.bars} bars to "
          f"{TARGET_RATE} Hz; conformed_blocks -> chunk_blocks from the finished canvas; medians of {args.runs} "
          "runs after one warm-up", flush=True)
    warm_conform()
    for meter, bpm in CASES:
        grid = Grid(bpm, meter)
        beats = [float(t) for _b, _u, t in grid.unit_onsets_seconds(0, args.bars)]
        for off in args.off:
            canvas = canvas_for(meter, bpm, args.bars, off, args.rate, args.band)
            spec = GenerationSpec(grid=grid, bars=args.bars, sample_rate=TARGET_RATE, channels=2)
            one_run(canvas, spec, args.rate, bpm)                 # warm-up
            runs = [one_run(canvas, spec, args.rate, bpm) for _ in range(args.runs)]
            firsts, wholes = [r[0][0] for r in runs], [r[1][0] for r in runs]
            cpu_first, cpu_whole = statistics.median(r[0][1] for r in runs), statistics.median(r[1][1] for r in runs)
            take, decisions = runs[-1][2], runs[-1][3]
            d = decisions[0]
            if args.band:
                take = drums_as_conformed(canvas, meter, bpm, args, spec, off)
            errs = attack_errors_ms(take[0], TARGET_RATE, beats)
            print(f"{meter} at {bpm:g} BPM, canvas at {bpm * off:.2f} ({off:g} x), {canvas.shape[2] / args.rate:.2f} s; "
                  f"take {float(spec.seconds):.2f} s: bar 1 {statistics.median(firsts) * 1000:.1f} ms (min "
                  f"{min(firsts) * 1000:.1f}, max {max(firsts) * 1000:.1f}; CPU {cpu_first * 1000:.1f}); whole take "
                  f"{statistics.median(wholes) * 1000:.1f} ms (min {min(wholes) * 1000:.1f}, max "
                  f"{max(wholes) * 1000:.1f}; CPU {cpu_whole * 1000:.1f}); "
                  f"{statistics.median(wholes) / args.bars * 1000:.1f} ms a bar", flush=True)
            print(f"  conform: detected {d.detected_bpm} BPM, confidence {d.confidence:.2f}, tempo taken "
                  f"{d.tempo_bpm:.3f} ({d.tempo_from}), stretch {d.stretch}, ratio {d.ratio}, downbeat "
                  f"{d.downbeat_seconds * 1000:.1f} ms; beat errors{' (its drums alone, with its timing)' if args.band else ''} median {np.median(errs):.2f} ms, max "
                  f"{errs.max():.2f} ms over {len(beats)} beats", flush=True)


if __name__ == "__main__":
    main()
