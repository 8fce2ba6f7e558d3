"""``stemd make-test-model DIR --arch tiny|musicgen-small|sa3-tiny|acestep-tiny|...``: a random-weight checkpoint.

MusicGen architectures are written in the Hugging Face on-disk format (config, safetensors, a tokenizer
trained offline); Stable Audio 3 (``sa3-*``) and ACE-Step 1.5 (``acestep-*``) as diffusers pipelines
(``model_index.json`` and a folder per component, a tokenizer built offline). Each is marked
``"stemd_test_model": true``: it exercises the real architecture and makes noise, not music. Tests and
benchmarks use them, and so can anyone trying stemd offline.
"""

from __future__ import annotations

import argparse

ARCH_CHOICES = ("tiny", "tiny-stereo", "musicgen-small", "musicgen-stereo-small", "musicgen-medium", "musicgen-large",
                "musicgen-melody-tiny", "musicgen-melody-tiny-stereo", "musicgen-melody",
                "sa3-tiny", "sa3-small", "sa3-medium", "acestep-tiny", "acestep-turbo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="folder to write the checkpoint to (created if needed)")
    parser.add_argument("--arch", choices=ARCH_CHOICES, default="tiny",
                        help="tiny, sa3-tiny, acestep-tiny: seconds to build, for tests; musicgen-small/medium/large "
                             "(~1.8, ~6, ~13 GB in float32), sa3-small, sa3-medium, acestep-turbo: the released "
                             "sizes, for benchmarks")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")


def run(args: argparse.Namespace) -> int:
    if args.arch.startswith(("sa3-", "acestep-")):
        from stemd.models.diffusion.testmodels import write_test_pipeline as write
    else:
        from stemd.models.musicgen.testmodel import write_test_model as write

    out = write(args.dir, args.arch, seed=args.seed)
    print(f"wrote a {args.arch} test model (random weights: it makes noise, not music) to {out}")
    print(f"try: stemd render --model {out} --prompt 'test' --bars 2 --bpm 120 --out takes/")
    return 0
