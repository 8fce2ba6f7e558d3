"""``stemd render``: a matrix of takes rendered offline (prompts x seeds x lengths x models), resumable,
with sidecars, a manifest and a contact sheet; optionally loudness-normalised, split into stems, or
spread over a Ray cluster. docs/render.md tells how.

Each take's path is printed on stdout as it is written; the progress bar (on a terminal) and the
summary go to stderr. ``--accept picks.json`` renders nothing: it copies the takes picked on the
contact sheet into the folder's ``accepted/`` (``stemd.daemon.render.picks``).
"""

from __future__ import annotations

import argparse
import sys

from stemd.models.registry import DECODE_BACKENDS, env_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", nargs="?", help="a job file (TOML); flags given here override its values")
    p.add_argument("--model", action="append", default=None,
                   help="'click', a hub id (facebook/musicgen-small, stabilityai/stable-audio-3-small-music, "
                        "ACE-Step/...) or a local checkpoint folder (MusicGen, or a diffusers pipeline); repeat for "
                        "several models")
    p.add_argument("--prompt", action="append", default=None, help="what to make, in words; repeat for several")
    p.add_argument("--bars", default=None, help="take length in bars, or several: 2,4,8")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 1,2,3 (default 0)")
    p.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds N)")
    p.add_argument("--variations", type=int, default=None,
                   help="takes per prompt, seed and length, made as one batch on the device")
    p.add_argument("--bpm", default=None, help="DAW tempo in quarter notes per minute (137.5 or 275/2)")
    p.add_argument("--meter", default=None)
    p.add_argument("--start-bar", type=int, default=None, help="the DAW bar the take starts on (0 = bar 1)")
    p.add_argument("--sample-rate", type=int, default=None)
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance (default: the model's own: 3 for MusicGen, off for distilled "
                        "Stable Audio 3 and ACE-Step turbo); <= 1 turns it off")
    p.add_argument("--steps", type=int, default=None, help="denoising steps of a diffusion model (default: its own, 8)")
    p.add_argument("--key", default=None, help="musical key for the prompt, e.g. 'A minor'")
    p.add_argument("--chords", default=None, help='a guide: chord symbols per bar, "Am7 | F | C/E . G | G7sus4" '
                   "(docs/guides.md)")
    p.add_argument("--guide", default=None, metavar="MID", help="a guide: a Standard MIDI File, read in beats from the "
                   "take's first bar line; kept beside each take")
    p.add_argument("--guide-strength", type=float, default=None,
                   help="ACE-Step: how closely a cover follows its guide, 0..1 (default 1)")
    p.add_argument("--loop", action="store_true", default=None, help="make the take loop seamlessly")
    p.add_argument("--format", default=None,
                   help="float32, pcm24, pcm16, flac or flac16: WAV float32 (default), 24- or 16-bit WAV, FLAC 24-bit (flac) or 16-bit")
    p.add_argument("--lufs", type=float, default=None, help="normalise each take to this integrated loudness, e.g. -14")
    p.add_argument("--stems", default=None, help="separate each take into stems: drums,bass,other,vocals")
    p.add_argument("--stems-model", default=None, help="an htdemucs checkpoint (.th) or a folder of Demucs models")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: by device)")
    p.add_argument("--backend", default=env_backend(), choices=DECODE_BACKENDS,
                   help="MusicGen decoding backend (default: $STEMD_DECODE_BACKEND, else auto); a job key too")
    p.add_argument("--out", default=None, help="output folder (default: takes)")
    p.add_argument("--no-contact-sheet", action="store_true", help="skip the contact sheet (HTML and PNG)")
    p.add_argument("--accept", default=None, metavar="PICKS",
                   help="no rendering: copy the takes picked on the contact sheet (its exported picks.json) into "
                        "the render folder's accepted/ (the folder: --out, else the one the picks name)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (host:port of its head, or 'auto'): one worker per GPU")
    p.add_argument("--ray-workers", type=int, default=None,
                   help="workers on a cluster without GPUs (default: one per CPU)")


def job_from_args(args: argparse.Namespace):
    from pathlib import Path

    from stemd.daemon.render.job import int_list, load_job_file, make_job

    values, base = {}, None
    if args.job:
        values, base = load_job_file(Path(args.job)), Path(args.job).resolve().parent
    flags = {"models": args.model, "prompts": args.prompt, "variations": args.variations, "bpm": args.bpm,
             "meter": args.meter, "start_bar": args.start_bar, "sample_rate": args.sample_rate,
             "channels": args.channels, "temperature": args.temperature, "top_k": args.top_k,
             "top_p": args.top_p, "guidance": args.guidance, "steps": args.steps, "key": args.key, "loop": args.loop,
             "chords": args.chords, "guide": args.guide, "guide_strength": args.guide_strength,
             "format": args.format, "lufs": args.lufs, "stems_model": args.stems_model, "device": args.device,
             "dtype": args.dtype, "backend": args.backend, "out": args.out}
    if args.bars is not None:
        flags["bars"] = int_list(args.bars)
    if args.seeds is not None or args.seed is not None:
        flags["seeds"] = int_list(args.seeds) if args.seeds is not None else [args.seed]
    if args.stems is not None:
        flags["stems"] = [s.strip() for s in args.stems.split(",") if s.strip()]
    if args.no_contact_sheet:
        flags["contact_sheet"] = False
    values.update({k: v for k, v in flags.items() if v is not None})
    if not args.job:
        base = None
    if base is not None and args.out is not None:
        values["out"] = str(Path(args.out).resolve())  # a flag's --out is relative to where it was typed
    return make_job(values, base)


def run(args: argparse.Namespace) -> int:
    if args.accept:
        return accept(args)
    from stemd.daemon.render.runner import run_job

    job = job_from_args(args)
    result = run_job(job, ray_address=args.ray, ray_workers=args.ray_workers,
                     on_take=lambda path: print(path, flush=True))
    print(f"stemd render: {len(result.written)} takes written, {result.skipped} already finished, "
          f"{result.planned} in the job ({result.takes_per_minute:.1f} takes/min); manifest {result.manifest}"
          + (f"; contact sheet {result.contact_sheet}" if result.contact_sheet else ""), file=sys.stderr)
    return 0


def accept(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stemd.daemon.render.picks import accept_picks

    result = accept_picks(Path(args.accept), Path(args.out) if args.out else None)
    for path in result.files:
        print(path, flush=True)
    print(f"stemd render: {len(result.files)} takes accepted into {result.folder / 'accepted'}"
          + (f" ({result.removed} files of earlier picks removed)" if result.removed else ""), file=sys.stderr)
    return 0
