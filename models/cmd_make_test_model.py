"""``stemd make-test-model DIR --arch tiny|musicgen-small``: a random-weight MusicGen checkpoint.

The checkpoint is in the Hugging Face on-disk format (config, safetensors, a tokenizer trained
offline) and is marked ``"stemd_test_model": true``: it exercises the real architecture and makes
noise, not music. Tests and benchmarks use it, and so can anyone trying stemd offline.
"""

from __future__ import annotations

import argparse

ARCH_CHOICES = ("tiny", "tiny-stereo", "musicgen-small", "musicgen-stereo-small", "musicgen-medium", "musicgen-large")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="folder to write the checkpoint to (created if needed)")
    parser.add_argument("--arch", choices=ARCH_CHOICES, default="tiny",
                        help="tiny: seconds to build, for tests; musicgen-small/medium/large: the real sizes "
                             "(~1.8, ~6, ~13 GB in float32)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")


def run(args: argparse.Namespace) -> int:
    from stemd.models.musicgen.testmodel import write_test_model

    out = write_test_model(args.dir, args.arch, seed=args.seed)
    print(f"wrote a {args.arch} test model (random weights: it makes noise, not music) to {out}")
    print(f"try: stemd render --model {out} --prompt 'test' --bars 2 --bpm 120 --out takes/")
    return 0
