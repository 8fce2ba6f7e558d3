"""The model pool: a request's first audio with its model cold (loaded from disk first) against warm.

    .venv/bin/python bench/models.py [--arch musicgen-small sa3-small acestep-tiny click] [--device cpu]
        [--bars 1] [--bpm 120] [--rounds 3]

What a producer waits for when a request names a model the daemon holds (warm) or has to load (cold: never
loaded, or evicted for another). Per architecture, in one process on one device, through the daemon's own
path (``ModelPool.acquire`` then ``models.pipeline.bar_chunks``, the worker's calls), timed to the first
bar-exact chunk of a ``--bars``-bar take at ``--bpm`` in 4/4, 48 kHz stereo, one variation:

* cold: the model is evicted, then the request runs: load (files read, modules built, weights copied to the
  device, its weights hash) + the take up to its first bar. The checkpoint's files are in the OS page cache
  after the first round (a daemon's second start, not its first after a reboot, which also reads the disk).
* warm: the same request again with the model loaded.
* held: the bytes the loaded model's tensors hold, against the pool's estimate from the files (what budgets
  and eviction decide with).

Rounds alternate cold and warm; medians are printed. Weights are random (``stemd make-test-model --arch
ARCH``, written once into bench/.cache/): load and step times do not depend on them, sound does, so nothing
here is about sound. The last line per architecture is ``first_bar ARCH cold=A warm=B ratio=R``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from diffusion import CACHE, device_name, ensure_pipeline  # bench/diffusion.py, beside this file

MUSICGEN = ("tiny", "tiny-stereo", "musicgen-small", "musicgen-medium", "musicgen-large", "musicgen-stereo-small")


def ensure_checkpoint(arch: str) -> str:
    if arch == "click":
        return "click"
    if arch not in MUSICGEN:
        return str(ensure_pipeline(arch))
    path = CACHE / f"{arch}-random"
    if not (path / "config.json").exists():
        from stemd.models.musicgen.testmodel import write_test_model

        print(f"writing a random-weight {arch} checkpoint to {path} (once)", flush=True)
        t0 = time.perf_counter()
        write_test_model(path, arch)
        print(f"  written in {time.perf_counter() - t0:.0f} s", flush=True)
    return str(path)


def first_bar(pool, name: str, device: str, spec) -> float:
    """Seconds from the request to its first bar-exact chunk, through the worker's calls."""
    import torch

    from stemd.models.pipeline import bar_chunks

    t0 = time.perf_counter()
    engine = pool.acquire(name, device, float(spec.seconds), spec.variations)
    chunks = bar_chunks(engine, spec)
    try:
        next(chunks)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0
    finally:
        chunks.close()


def bench_arch(arch: str, args) -> None:
    from stemd.models.base import GenerationSpec
    from stemd.models.memory import gib
    from stemd.models.budgets import UNLIMITED
    from stemd.models.entries import ModelEntry
    from stemd.models.pool import ModelPool
    from stemd.timing import Grid

    source = ensure_checkpoint(arch)
    pool = ModelPool([ModelEntry(arch, source, dtype=args.dtype)], [args.device], {args.device: UNLIMITED})
    slot = pool.slot(arch)
    grid = Grid(args.bpm)
    cold, warm = [], []
    for r in range(args.rounds):
        spec = GenerationSpec(grid=grid, bars=args.bars, prompt="bench", sample_rate=48000, channels=2, seed=r)
        if slot.loaded:
            pool.evict(slot, "bench: a cold request")
        cold.append(first_bar(pool, arch, args.device, spec))
        warm.append(first_bar(pool, arch, args.device, spec))
        print(f"  round {r + 1}: cold {cold[-1]:.3f} s, warm {warm[-1]:.3f} s", flush=True)
    c, w = statistics.median(cold), statistics.median(warm)
    estimate, held = slot.footprint.weights, slot.held
    what = "no weights" if slot.family == "click" else ("a test model: random weights" if slot.test_model else "")
    print(f"{arch} ({slot.family}{', ' + what if what else ''}): first bar of a {args.bars}-bar take at {args.bpm:g} BPM, median of {args.rounds}: cold {c:.3f} s, "
          f"warm {w:.3f} s; held {gib(held)}, estimated {gib(estimate)}"
          + (f" ({estimate / held:.3f} of held)" if held else ""))
    print(f"first_bar {arch} cold={c:.3f} warm={w:.3f} ratio={c / w:.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["musicgen-small", "sa3-small", "acestep-tiny", "click"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--bars", type=int, default=1)
    p.add_argument("--bpm", type=float, default=120.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import torch

    import stemd

    print(f"stemd bench/models.py on {args.device} ({device_name(args.device)}), torch {torch.__version__}, "
          f"dtype {args.dtype or 'the device default'}; stemd from {Path(stemd.__file__).parent}", flush=True)
    for arch in args.arch:
        bench_arch(arch, args)


if __name__ == "__main__":
    main()
