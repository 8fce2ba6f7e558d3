"""``stemd render``: takes rendered offline, each exactly N bars at the requested rate, with sidecars."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="facebook/musicgen-small",
                   help="'click', a MusicGen hub id (facebook/musicgen-small) or a local checkpoint folder")
    p.add_argument("--prompt", default="", help="what to make, in words")
    p.add_argument("--bars", type=int, default=4)
    p.add_argument("--bpm", default="120", help="DAW tempo in quarter notes per minute (137.5 or 275/2)")
    p.add_argument("--meter", default="4/4")
    p.add_argument("--start-bar", type=int, default=0, help="the DAW bar the take starts on (0 = bar 1)")
    p.add_argument("--variations", type=int, default=1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--sample-rate", type=int, default=48000)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--key", default="", help="musical key for the prompt, e.g. 'A minor'")
    p.add_argument("--loop", action="store_true", help="make the take loop seamlessly")
    p.add_argument("--format", default="float32", choices=["float32", "pcm24", "pcm16"])
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: by device)")
    p.add_argument("--out", default="takes", help="output folder")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stemd.daemon.jobs import spec_from_request, write_takes
    from stemd.models.pipeline import render_take
    from stemd.models.registry import load_engine
    from stemd.protocol import GenerateRequest, parse_tempo
    from stemd.takes import next_take_number, slug
    from stemd.timing import Meter, TimingError

    try:
        meter = Meter.parse(args.meter)
    except TimingError as e:
        from stemd.cli import CommandError

        raise CommandError(str(e)) from None
    request = GenerateRequest(
        "render", prompt=args.prompt, bars=args.bars, bpm=parse_tempo(args.bpm), meter=meter,
        start_bar=args.start_bar, sample_rate=args.sample_rate, channels=args.channels,
        variations=args.variations, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, guidance=args.guidance, key=args.key, loop=args.loop, priority="offline")
    engine = load_engine(args.model, device=args.device, dtype=args.dtype)
    spec = spec_from_request(request, engine)
    audio = render_take(engine, spec)
    out = Path(args.out)
    take = next_take_number(out, f"{slug(request.prompt or engine.name)}_bar{request.start_bar + 1:03d}")
    for path in write_takes(out, request, engine, audio, take, args.format):
        print(path)
    return 0
