"""stemd render throughput: takes per minute for K takes made one per batch against one batch of K variations.

    .venv/bin/python bench/render.py [--arch tiny] [--device cpu] [--variations 8] [--bars 2] [--bpm 120]
    .venv/bin/python bench/render.py --arch musicgen-small --device cuda --variations 8   # on a GPU

The model is a MusicGen test model with random weights (``stemd make-test-model``; written once into
bench/.cache/), so speed matches the real architecture of that size. Both modes run the real render
path in this process (engine -> conform -> bar-exact takes -> files, with a manifest) with the model
loaded once and one warm-up take first:

* batch 1: K batches of one take each (seeds 1..K), as a render of ``--seeds 1,...,K`` does;
* batched: one batch of K variations (``--variations K``), which runs them side by side on the device.

The render path is BatchRenderer.render + write_take_files, as ``stemd render`` runs it for each batch.

Prints takes/min for each (the median of ``--rounds`` alternating rounds) and the ratio (batched /
batch 1), with the device, the machine's load and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import shutil
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def ensure_model(arch: str) -> Path:
    path = CACHE / f"{arch}-random"
    if not (path / "model.safetensors").exists():
        from stemd.models.musicgen.testmodel import write_test_model

        write_test_model(path, arch)
    return path


def timed_render(renderer, job) -> tuple[int, float]:
    from stemd.daemon.render.files import write_take_files

    started = time.perf_counter()
    n = 0
    for batch in job.batches():
        for files in renderer.render(batch):
            write_take_files(Path(job.out), files)
            n += 1
    return n, time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tiny", help="test model architecture: tiny, musicgen-small")
    ap.add_argument("--model", default=None, help="a checkpoint folder instead of a test model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--variations", type=int, default=8)
    ap.add_argument("--bars", type=int, default=2)
    ap.add_argument("--bpm", default="120")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both modes; medians are reported")
    args = ap.parse_args()

    import torch

    from stemd.daemon.render.job import make_job
    from stemd.daemon.render.worker import BatchRenderer
    from stemd.models.registry import load_engine

    model = args.model or str(ensure_model(args.arch))
    engine = load_engine(model, device=args.device, dtype=args.dtype)
    k = args.variations
    base = {"models": [model], "prompts": ["lofi drums with dusty keys"], "bars": [args.bars], "bpm": args.bpm,
            "sample_rate": 48000, "device": args.device, "dtype": args.dtype, "contact_sheet": False}
    modes = {"batch 1": {"seeds": list(range(1, k + 1))}, f"batched ({k} variations)": {"seeds": [1], "variations": k}}
    results: dict[str, list[float]] = {mode: [] for mode in modes}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="stemd-bench-render-") as tmp:
        warm = make_job({**base, "seeds": [0], "out": f"{tmp}/warm"})
        renderer = BatchRenderer(warm, {model: engine})
        timed_render(renderer, warm)
        for round_ in range(args.rounds):  # the modes alternate, so a busy spell hits both
            for mode, extra in modes.items():
                job = make_job({**base, **extra, "out": f"{tmp}/{round_}-{len(results[mode])}-{mode[:5]}"})
                renderer.job = job
                n, seconds = timed_render(renderer, job)
                results[mode].append(60.0 * n / seconds)
                print(f"round {round_ + 1} {mode:>24}: {n} takes in {seconds:.2f} s = {results[mode][-1]:.1f} takes/min")
        shutil.rmtree(tmp, ignore_errors=True)
    info = engine.info()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.machine()}, " \
        f"{torch.get_num_threads()} threads)"
    medians = [statistics.median(v) for v in results.values()]
    print(f"model: {Path(model).name} ({info.get('dtype')}), {args.bars} bars at {args.bpm} BPM, 48 kHz, device: {device}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"load average (1 min) before {load_before:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"takes_per_min (median of {args.rounds}) batch1={medians[0]:.1f} batched={medians[1]:.1f} "
          f"ratio={medians[1] / medians[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
