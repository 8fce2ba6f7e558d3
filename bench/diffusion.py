"""Diffusion engines at their released sizes: stemd's engine against diffusers' own pipeline call.

    .venv/bin/python bench/diffusion.py [--arch sa3-small acestep-turbo] [--device cpu] [--dtype float32]
        [--rounds 1] [--bars 4] [--bpm 120]

The weights are random (written once by `stemd make-test-model --arch ARCH` into bench/.cache/): speed and
memory do not depend on them, sound does, so nothing here is about sound. Measured per architecture, in one
run on one device, for one take of ``--bars`` bars of 4/4 at ``--bpm`` (one variation, 8 steps, the models'
default sampler):

* ours: the engine's ``raw()`` (prompt encoding, the denoising loop, the autoencoder's decode) for the
  take's canvas (the take x 1.1 + one bar, in whole latent frames, as every take is made)
* theirs: diffusers' pipeline called directly with the same duration, seed and steps, loaded separately
  from the same folder; ``ratio`` = theirs / ours (>= 1.0: the engine adds nothing)
* the pipeline call for exactly the take's length (no canvas margin), for scale
* conform + bar chunking of the canvas to the DAW's grid at 48 kHz (what the engine path adds after)
* peak RSS of this process after everything (both pipelines loaded)

After one short warm-up call of each, rounds alternate ours and theirs; medians are printed. The last line per architecture is
`seconds_per_take ARCH ours=A theirs=B ratio=R`.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def ensure_pipeline(arch: str) -> Path:
    path = CACHE / f"{arch}-random"
    if not (path / "model_index.json").exists():
        from stemd.models.diffusion.testmodels import write_test_pipeline

        print(f"writing a random-weight {arch} pipeline to {path} (once)", flush=True)
        t0 = time.perf_counter()
        write_test_pipeline(path, arch)
        print(f"  written in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    from stemd.models.devices import cpu_name

    isa = [torch.backends.cpu.get_cpu_capability()]
    cpu = getattr(torch, "cpu", None)
    for flag, check in (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported")):
        if getattr(cpu, check, lambda: False)():
            isa.append(flag)
    return f"{cpu_name()}, {'/'.join(isa)}, {torch.get_num_threads()} threads"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def their_call(pipe, family: str, engine, spec, seconds: float):
    """diffusers' pipeline, called as its documentation shows, for ``seconds`` of audio."""
    import torch

    generator = [torch.Generator(engine.device).manual_seed(spec.seed)]
    if family == "stable-audio-3":
        from stemd.models.stable_audio3.engine import describe

        return pipe(prompt=describe(spec), duration=seconds, generator=generator, num_inference_steps=8).audios
    return pipe(prompt=[spec.prompt], lyrics=[""], audio_duration=seconds, generator=generator, num_inference_steps=8,
                bpm=int(float(spec.grid.tempo.bpm)), timesignature=str(spec.grid.meter.numerator),
                guidance_scale=1.0).audios


def bench_arch(arch: str, args) -> None:
    import numpy as np
    from diffusers import DiffusionPipeline

    from stemd.models.base import AudioStream, GenerationSpec
    from stemd.models.chunker import chunk_blocks
    from stemd.models.pipeline import conformed_blocks
    from stemd.models.registry import load_engine
    from stemd.timing import Grid

    folder = ensure_pipeline(arch)
    t0 = time.perf_counter()
    engine = load_engine(str(folder), device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=engine.dtype).to(engine.device)
    pipe.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in engine.pipe.transformer.parameters()) / 1e6
    spec = GenerationSpec(grid=Grid(args.bpm, "4/4"), bars=args.bars, prompt="driving techno", seed=0,
                          sample_rate=48000)
    canvas = engine.canvas_seconds(spec)
    print(f"{arch}: DiT {params:.0f}M parameters (random weights), {engine.info()['dtype']} on "
          f"{device_name(str(engine.device))}; engine load {load_s:.1f} s; take {float(spec.seconds):.2f} s, "
          f"canvas {canvas:.2f} s", flush=True)
    warm = GenerationSpec(grid=spec.grid, bars=1, prompt=spec.prompt, seed=0, sample_rate=48000)
    engine.raw(warm)                                   # first calls pay one-time costs: not what we compare
    their_call(pipe, engine.family, engine, warm, engine.canvas_seconds(warm))
    ours, theirs, exact, conform = [], [], [], []
    raw = None
    for _ in range(args.rounds):
        sync(engine.device)
        t0 = time.perf_counter()
        raw = engine.raw(spec)
        sync(engine.device)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        their_call(pipe, engine.family, engine, spec, canvas)
        sync(engine.device)
        theirs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        their_call(pipe, engine.family, engine, spec, float(spec.seconds))
        sync(engine.device)
        exact.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        stream = AudioStream(sample_rate=engine.sample_rate, channels=2, blocks=iter([raw]),
                             tempo_hint=float(args.bpm))
        chunks = list(chunk_blocks(conformed_blocks(stream, spec), spec.grid, 48000, 0, spec.bars))
        conform.append(time.perf_counter() - t0)
        assert len(chunks) == spec.bars and np.isfinite(chunks[0].audio).all()
    a, b = statistics.median(ours), statistics.median(theirs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"  ours (engine.raw, canvas {canvas:.2f} s): {a:.2f} s; theirs (pipeline call, same canvas): {b:.2f} s; "
          f"pipeline call for the take's {float(spec.seconds):.2f} s alone: {statistics.median(exact):.2f} s; "
          f"conform + chunking to 48 kHz: {statistics.median(conform):.2f} s; peak RSS {rss:.1f} GiB "
          f"(this process, both pipelines loaded); {args.rounds} round(s), medians", flush=True)
    print(f"seconds_per_take {arch} ours={a:.2f} theirs={b:.2f} ratio={b / a:.3f}", flush=True)
    del engine, pipe
    import gc

    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["sa3-small", "acestep-turbo"],
                        choices=["sa3-tiny", "acestep-tiny", "sa3-small", "sa3-medium", "acestep-turbo"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: the engine's choice (float32 on a CPU)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--bars", type=int, default=4)
    parser.add_argument("--bpm", type=float, default=120.0)
    args = parser.parse_args()
    print(f"bench/diffusion.py on {time.strftime('%Y-%m-%d')}: {', '.join(args.arch)}, {args.bars} bars of 4/4 at "
          f"{args.bpm:g} BPM, 1 variation, 8 steps", flush=True)
    for arch in args.arch:
        bench_arch(arch, args)


if __name__ == "__main__":
    main()
