"""``stemd conform IN.wav --bpm X [--meter 4/4] [--bars N] --sample-rate R --out OUT.wav``

Detects the file's tempo and first downbeat, stretches it to ``--bpm`` (pitch unchanged), resamples
it to ``--sample-rate`` and writes exactly ``--bars`` bars (default: as many as the file holds) with
the first downbeat on the first sample. The way to check conform by ear: drop OUT.wav on bar 1 of a
session at that tempo.

The file's tempo is found from the audio alone (70-180 BPM; ``models.conform.tempo.file_timing``):
where its double or half time fits almost as well (a half-time groove, hats hit as hard as the
beats), one line says which was taken and the ``--source-bpm`` that takes the other.
"""

from __future__ import annotations

import argparse
import os
import sys

from stemd.errors import StemdError


class ConformError(StemdError):
    code = "bad_request"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.wav", help="audio file to conform (wav, flac, ogg, aiff)")
    parser.add_argument("--bpm", required=True, help="the DAW's tempo, quarter notes per minute (e.g. 120 or 137.5)")
    parser.add_argument("--meter", default="4/4", help="time signature, e.g. 4/4, 3/4, 7/8 (default 4/4)")
    parser.add_argument("--bars", type=int, default=None, help="bars to write (default: as many as the file holds)")
    parser.add_argument("--sample-rate", type=int, required=True, help="the DAW's rate: 44100, 48000, 88200, 96000 ...")
    parser.add_argument("--source-bpm", default=None,
                        help="roughly the file's own tempo (default: found from the audio alone, 70-180 BPM, "
                             "whatever --bpm is; where double or half time fits too, stemd says so)")
    parser.add_argument("--loop", action="store_true", help="make the result loop seamlessly at its bar length")
    parser.add_argument("--out", required=True, metavar="OUT.wav", help="file to write (wav, 32-bit float)")


def run(args: argparse.Namespace) -> int:
    from stemd.timing import Grid, Meter, Tempo, TimingError, check_sample_rate

    try:
        grid = Grid(Tempo(args.bpm), Meter.parse(args.meter))
        rate = check_sample_rate(args.sample_rate)
        source_bpm = float(Tempo(args.source_bpm).bpm) if args.source_bpm else None
    except TimingError as e:
        raise ConformError(str(e)) from None
    if args.bars is not None and not 1 <= args.bars <= 10_000:
        raise ConformError(f"--bars must be 1..10000, got {args.bars}")
    if not os.path.isfile(args.input):
        raise ConformError(f"no such file: {args.input}")

    import numpy as np
    import soundfile

    from stemd.models.conform import conform, detect_timing
    from stemd.models.conform.tempo import file_timing

    try:
        audio, in_rate = soundfile.read(args.input, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile's errors are plain RuntimeErrors with the reason in them
        raise ConformError(f"cannot read {args.input}: {e}") from None
    audio = np.ascontiguousarray(audio.T)
    if audio.shape[1] < in_rate // 2:
        raise ConformError(f"{args.input} is too short to find a tempo in (under half a second)")
    if source_bpm:
        timing = detect_timing(audio, in_rate, grid.meter, source_bpm)
    else:   # the file's own tempo: the session's says nothing about a file the producer brings
        timing = file_timing(audio, in_rate, grid.meter)
        session = float(grid.tempo.bpm)
        far = max(timing.bpm / session, session / timing.bpm) > 1.2
        other = ""
        if timing.other_bpm is not None:
            other = (f"{timing.other_bpm:.2f} fits too (" + (
                "double time: its off-beats are hit almost as hard as its beats" if timing.other_bpm > timing.bpm
                else "half time") + f"): give --source-bpm {timing.other_bpm:.2f} for it")
        if far:
            print(f"{args.input}: its own tempo is {timing.bpm:.2f} BPM (found 70-180), far from the session's "
                  f"{session:g}: stretched from {timing.bpm:.2f}; " + (other or "if the file is at half or double "
                  "that, give --source-bpm"), file=sys.stderr)
        elif other:
            print(f"{args.input}: its tempo reads as {timing.bpm:.2f} BPM, taken; {other}", file=sys.stderr)
    from stemd.models.conform.stream import held_bars

    whole = max(1, int(held_bars(audio.shape[1], in_rate, timing) + 0.1))
    filled = ""
    if args.bars is not None and args.bars > whole:
        if args.loop:
            filled = f" (its {whole} bar{'s' if whole != 1 else ''} looped to fill {args.bars})"
        else:
            print(f"{args.input} holds {whole} bar{'s' if whole != 1 else ''} at its tempo: the last "
                  f"{args.bars - whole} of the {args.bars} bars are silence (--loop repeats it to fill)",
                  file=sys.stderr)
    out = conform(audio, in_rate, grid, target_rate=rate, bars=args.bars, timing=timing, loop=args.loop)
    try:
        soundfile.write(args.out, out.T, rate, subtype="FLOAT")
    except Exception as e:
        raise ConformError(f"cannot write {args.out}: {e}") from None
    bars = args.bars or round(out.shape[1] / grid.bar_length_samples(0, rate))
    print(f"{args.input}: {timing.bpm:.2f} BPM, first downbeat at {timing.downbeat:.3f} s "
          f"-> {args.out}: {bars} bars of {grid.meter} at {grid.tempo} BPM, {rate} Hz, {out.shape[1]} samples{filled}")
    return 0
