"""Diffusion engines at their released sizes: stemd's engine against diffusers' own pipeline call.

    .venv/bin/python bench/diffusion.py [--arch sa3-small acestep-turbo] [--device cpu] [--dtype float32]
        [--rounds 1] [--bars 4] [--bpm 120] [--variations 1] [--backend eager|compiled] [--memory]
        [--backends-only]

The weights are random (written once by `stemd make-test-model --arch ARCH` into bench/.cache/): speed and
memory do not depend on them, sound does, so nothing here is about sound. Measured per architecture, in one
run on one device, for one take of ``--bars`` bars of 4/4 at ``--bpm`` (``--variations`` in one batch, 8
steps, the models' default sampler):

* ours: the engine's ``raw()`` (prompt encoding, the denoising loop, the autoencoder's decode) for the
  take's canvas (the take x 1.1 + one bar, in whole latent frames, as every take is made)
* theirs: diffusers' pipeline called directly with the same duration, seed and steps, loaded separately
  from the same folder; ``ratio`` = theirs / ours (>= 1.0: the engine adds nothing)
* the pipeline call for exactly the take's length (no canvas margin), for scale
* peak RSS of this process after everything (both pipelines loaded)
* request to bar 1 at the engine's client side: ``engine.stream`` through conform and the bar chunker (the
  daemon's ``bar_chunks``), timed to the first bar out; split into the canvas (the pipeline's call) and
  conform of bar 1 (after the canvas exists), conform's share on its own line
* ``--backend compiled``: the DiT forward compiled (models/diffusion/compiled.py), timed in rounds
  alternating with eager on the same engine; `compiled_over_eager ARCH ratio=R` (> 1: compiled is faster)
* ``--backends-only`` (with ``--backend compiled``): only that comparison, without diffusers' pipeline
  (not loaded) and the rounds above: what a 2-core CPU has time for at the released sizes
* ``--memory`` (CUDA): the pool's per-request estimate against ``torch.cuda.max_memory_allocated`` around
  one request, beyond the weights

After one short warm-up call of each, rounds alternate ours and theirs; medians are printed, and one line per
figure for grep: `seconds_per_take ARCH ours=A theirs=B ratio=R`, `conform_share`, `compiled_over_eager`,
`request_memory`.
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

    generator = [torch.Generator(engine.device).manual_seed(spec.seed + v) for v in range(spec.variations)]
    if family == "stable-audio-3":
        from stemd.models.stable_audio3.engine import describe

        return pipe(prompt=[describe(spec)] * spec.variations, duration=seconds, generator=generator,
                    num_inference_steps=8).audios
    return pipe(prompt=[spec.prompt] * spec.variations, lyrics=[""] * spec.variations, audio_duration=seconds,
                generator=generator, num_inference_steps=8,
                bpm=int(float(spec.grid.tempo.bpm)), timesignature=str(spec.grid.meter.numerator),
                guidance_scale=1.0).audios


def first_bar(engine, spec):
    """(request -> bar 1, canvas, conform of bar 1) in seconds, at the engine's client side: the daemon's
    bar_chunks (engine.stream, conform, the bar chunker), the canvas's moment read as it leaves the engine."""
    from stemd.models.chunker import chunk_blocks
    from stemd.models.pipeline import conformed_blocks

    sync(engine.device)
    t0 = time.perf_counter()
    stream = engine.stream(spec)
    made = {}

    def timed(blocks):
        for block in blocks:
            made.setdefault("canvas", time.perf_counter())
            yield block

    stream.blocks = timed(stream.blocks)
    chunks = chunk_blocks(conformed_blocks(stream, spec), spec.grid, spec.sample_rate, spec.start_bar, spec.bars)
    try:
        next(chunks)
        bar1 = time.perf_counter()
    finally:
        chunks.close()
        stream.close()
    return bar1 - t0, made["canvas"] - t0, bar1 - made["canvas"]


def peak_beside_weights(engine, spec) -> tuple[int, int]:
    """(allocator's peak over one request beyond what was allocated before, the pool's estimate for it)."""
    import torch

    from stemd.models.memory import footprint

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    engine.raw(spec)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    estimate = footprint(engine.family, engine.folder, str(engine.dtype).replace("torch.", "")).request(
        float(spec.seconds), spec.variations)
    return peak, estimate


def against_theirs(arch: str, engine, pipe, spec, canvas: float, args) -> None:
    """Our engine against diffusers' own call, rounds alternating, and request -> bar 1."""
    from stemd.models.base import GenerationSpec

    warm = GenerationSpec(grid=spec.grid, bars=1, prompt=spec.prompt, seed=0, sample_rate=48000,
                          variations=args.variations)
    engine.raw(warm)                                   # first calls pay one-time costs: not what we compare
    their_call(pipe, engine.family, engine, warm, engine.canvas_seconds(warm))
    ours, theirs, exact, bar1, made, conform = [], [], [], [], [], []
    for _ in range(args.rounds):
        sync(engine.device)
        t0 = time.perf_counter()
        engine.raw(spec)
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
        total, canvas_s, conform_s = first_bar(engine, spec)
        bar1.append(total), made.append(canvas_s), conform.append(conform_s)
    med = statistics.median
    a, b = med(ours), med(theirs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"  ours (engine.raw, canvas {canvas:.2f} s): {a:.3f} s; theirs (pipeline call, same canvas): {b:.3f} s; "
          f"pipeline call for the take's {float(spec.seconds):.2f} s alone: {med(exact):.3f} s; peak RSS {rss:.1f} GiB "
          f"(this process, both pipelines loaded); {args.rounds} round(s), medians", flush=True)
    print(f"  request -> bar 1 at the engine's client side: {med(bar1) * 1000:.1f} ms (canvas {med(made) * 1000:.1f} "
          f"ms + conform of bar 1 {med(conform) * 1000:.1f} ms)", flush=True)
    print(f"conform_share {arch} bar1_ms={med(conform) * 1000:.1f} share={med(conform) / med(bar1):.3f}", flush=True)
    print(f"seconds_per_take {arch} ours={a:.3f} theirs={b:.3f} ratio={b / a:.3f}", flush=True)


def bench_arch(arch: str, args) -> None:
    from diffusers import DiffusionPipeline

    from stemd.models.base import GenerationSpec
    from stemd.models.diffusion.compiled import backend_of, use_backend
    from stemd.models.registry import load_engine
    from stemd.timing import Grid

    folder = ensure_pipeline(arch)
    t0 = time.perf_counter()
    engine = load_engine(str(folder), device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    pipe = None if args.backends_only else DiffusionPipeline.from_pretrained(str(folder), dtype=engine.dtype)
    params = sum(p.numel() for p in engine.pipe.transformer.parameters()) / 1e6
    spec = GenerationSpec(grid=Grid(args.bpm, "4/4"), bars=args.bars, prompt="driving techno", seed=0,
                          sample_rate=48000, variations=args.variations)
    canvas = engine.canvas_seconds(spec)
    print(f"{arch}: DiT {params:.0f}M parameters (random weights), {engine.info()['dtype']} on "
          f"{device_name(str(engine.device))}; engine load {load_s:.1f} s; take {float(spec.seconds):.2f} s, "
          f"canvas {canvas:.2f} s, {spec.variations} variation(s)", flush=True)
    if pipe is not None:
        pipe = pipe.to(engine.device)
        pipe.set_progress_bar_config(disable=True)
        against_theirs(arch, engine, pipe, spec, canvas, args)
    else:
        engine.raw(spec)                               # eager's one-time costs, before the rounds
    med = statistics.median
    if args.backend == "compiled":
        t0 = time.perf_counter()
        use_backend(engine, "compiled")
        engine.raw(spec)                               # compiles this canvas length
        sync(engine.device)
        compile_s = time.perf_counter() - t0
        eager, compiled = [], []
        for _ in range(args.rounds):
            for backend, times in (("eager", eager), ("compiled", compiled)):
                use_backend(engine, backend)
                sync(engine.device)
                t0 = time.perf_counter()
                engine.raw(spec)
                sync(engine.device)
                times.append(time.perf_counter() - t0)
        use_backend(engine, "compiled")
        running = backend_of(engine)
        if running == "compiled":
            running = f"compiled: {engine.pipe.transformer._stemd_compiled.scope}"
        total, canvas_s, conform_s = first_bar(engine, spec)
        print(f"  compiled DiT forward ({running}; first take with compiling {compile_s:.1f} s): "
              f"{med(compiled):.3f} s a take against eager {med(eager):.3f} s; request -> bar 1 {total * 1000:.1f} ms "
              f"(canvas {canvas_s * 1000:.1f} + conform {conform_s * 1000:.1f})", flush=True)
        print(f"compiled_over_eager {arch} eager={med(eager):.3f} compiled={med(compiled):.3f} "
              f"ratio={med(eager) / med(compiled):.3f}", flush=True)
    if args.memory and engine.device.type == "cuda":
        peak, estimate = peak_beside_weights(engine, spec)
        print(f"request_memory {arch} variations={spec.variations} seconds={float(spec.seconds):.2f} "
              f"peak_mib={peak / 2 ** 20:.1f} estimate_mib={estimate / 2 ** 20:.1f} "
              f"estimate_over_peak={estimate / max(peak, 1):.2f}", flush=True)
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
    parser.add_argument("--variations", type=int, default=1)
    parser.add_argument("--backend", choices=["eager", "compiled"], default="eager",
                        help="compiled: also time the compiled DiT forward against eager, alternating")
    parser.add_argument("--backends-only", action="store_true",
                        help="with --backend compiled: only compiled against eager, without diffusers' pipeline")
    parser.add_argument("--memory", action="store_true",
                        help="CUDA: the pool's per-request estimate against the allocator's peak")
    args = parser.parse_args()
    if args.variations < 1 or args.bars < 1 or args.rounds < 1:
        parser.error("--variations, --bars and --rounds must be at least 1")
    if args.backends_only and args.backend != "compiled":
        parser.error("--backends-only compares the backends: it needs --backend compiled")
    print(f"bench/diffusion.py on {time.strftime('%Y-%m-%d %H:%M %Z')}: {', '.join(args.arch)}, {args.bars} bars of "
          f"4/4 at {args.bpm:g} BPM, {args.variations} variation(s), 8 steps, backend {args.backend}", flush=True)
    for arch in args.arch:
        bench_arch(arch, args)


if __name__ == "__main__":
    main()
