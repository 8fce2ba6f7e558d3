"""Where a MusicGen take's time goes on this machine: the decoding step by operator, EnCodec per chunk,
conform per bar, and what the first bar waits for.

    .venv/bin/python bench/profile_step.py [--dtype bfloat16 float32] [--steps 40] [--model DIR]

Weights are random (musicgen-small's architecture, written once into bench/.cache/ by bench/decode.py's
helper): time does not depend on them. Measured in one process on the CPU (or --device):

* one decoding step at batch 1 with guidance (2 rows), top-k 250, after 10 warm-up steps: wall time per
  step, and torch.profiler's self CPU time per operator group (matrix products, attention, sampling,
  the rest), the remainder of the wall time being Python and dispatch
* EnCodec's streamed decode: milliseconds per 25-frame chunk (0.5 s of audio), median of 32 bars' worth
* conform of 32 kHz mono to 48 kHz stereo on the grid (the engine aiming at the session tempo): time per
  bar, and how many seconds of the engine's audio it took in before bar 1 left
* the first bar through the pipeline (engine + conform + chunker) against the engine's raw audio
  reaching one bar's length: what conform's wait adds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from decode import cache_for, ensure_model  # bench/decode.py, beside this file
from diffusion import device_name  # the CPU model by name

GROUPS = (("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul",
                               "mkldnn", "aten::_mkldnn", "onednn")),
          ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "aten::softmax")),
          ("sampling", ("aten::topk", "aten::sort", "aten::multinomial", "aten::argmax", "aten::exponential",
                        "aten::div_", "aten::cumsum", "aten::gather", "aten::scatter")),)


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "the rest (copies, norms, adds, indexing)"


def profile_steps(engine, steps: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from stemd.models.musicgen.engine import GUIDANCE
    from stemd.protocol import Sampling

    ck, lm = engine.ck, engine.ck.lm
    params = Sampling(top_k=250).with_guidance(GUIDANCE)
    text, mask = ck.encode_text("driving techno", 1, params.guided, grid="4/4 time. bpm: 120.0")
    max_seq = 64 * (1 + (10 + steps + 8) // 64)
    lm.setup_caches(text.shape[0], max_seq, 64)
    lm.set_conditioning(text, mask)
    gen = engine.generation(1, params, max_seq, seed=0)
    with torch.no_grad():
        gen.decode_n_tokens(10)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            gen.decode_n_tokens(steps)
        wall = (time.perf_counter() - t0) / steps
    totals: dict = defaultdict(float)
    for event in prof.key_averages():
        totals[group_of(event.key)] += event.self_cpu_time_total / 1e6 / steps
    ops = sum(totals.values())
    print(f"  step: {wall * 1000:.1f} ms wall ({1 / wall:.2f} steps/s); torch operators {ops * 1000:.1f} ms, "
          f"Python and dispatch the other {max(0.0, wall - ops) * 1000:.1f} ms (the profiler adds some)")
    for group, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"    {group:<42} {seconds * 1000:7.2f} ms  {100 * seconds / wall:5.1f}% of the step")
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:6]
    print("    top operators: " + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e3 / steps:.2f} ms" for e in top))


def encodec_chunks(engine) -> None:
    from decode import chunk_times

    times = chunk_times(engine, bars=32)
    print(f"  EnCodec: {statistics.median(times) * 1000:.1f} ms per 25-frame chunk (0.5 s of audio), median of "
          f"{len(times)}; {0.5 / statistics.median(times):.1f}x real time")


def conform_bars() -> None:
    import numpy as np

    from stemd.models.base import AudioStream, GenerationSpec
    from stemd.models.conform import StreamConformer
    from stemd.timing import Grid

    rate, bars = 32000, 8
    grid = Grid(120)
    rng = np.random.default_rng(0)
    seconds = bars * 2.0 * 1.1
    audio = (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
    for beat in np.arange(0, seconds, 0.5):       # clicks on the beat at 120 BPM: what the engine aimed for
        i = int(beat * rate)
        audio[i:i + 200] += np.hanning(400)[200:].astype(np.float32)
    fed = [0]

    def blocks():
        for i in range(0, len(audio), 16000):     # the engine's blocks: 0.5 s each
            fed[0] = (i + 16000) / rate
            yield audio[None, None, i:i + 16000]

    spec = GenerationSpec(grid=grid, bars=bars, sample_rate=48000, channels=2)
    conformer = StreamConformer(AudioStream(rate, 1, blocks(), tempo_hint=120.0), spec)
    t0, first_at, taken = time.perf_counter(), None, None
    count = 0
    for block in conformer.blocks():
        count += block.shape[-1]
        if first_at is None and count >= grid.bar_length_samples(0, 48000):
            first_at, taken = time.perf_counter() - t0, fed[0]
    total = time.perf_counter() - t0
    print(f"  conform 32 kHz mono -> 48 kHz stereo: {total / bars * 1000:.0f} ms per bar; bar 1 left after "
          f"{taken:.1f} s of the engine's audio had come in ({first_at * 1000:.0f} ms of conform work)")


def first_bar(engine) -> None:
    from stemd.models.base import GenerationSpec
    from stemd.models.pipeline import bar_chunks
    from stemd.timing import Grid

    spec = GenerationSpec(grid=Grid(120), bars=4, prompt="driving techno", seed=0, sample_rate=48000)
    t0 = time.perf_counter()
    stream = engine.stream(spec)
    have = 0
    for block in stream.blocks:
        have += block.shape[-1]
        if have >= 2.0 * engine.sample_rate:
            break
    stream.close()
    raw = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunks = bar_chunks(engine, spec)
    next(chunks)
    chunks.close()
    piped = time.perf_counter() - t0
    print(f"  first bar (120 BPM 4/4, 2 s): the engine's raw audio reaches it in {raw:.2f} s; through conform "
          f"and the chunker it leaves at {piped:.2f} s (+{piped - raw:.2f} s waiting for conform)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None)
    args = p.parse_args()
    import torch

    from stemd.models.musicgen.engine import MusicGenEngine

    model = args.model or str(ensure_model(cache_for("musicgen-small")))
    print(f"bench/profile_step.py on {args.device} ({device_name(args.device)}), torch {torch.__version__}; "
          f"{model} (random weights)", flush=True)
    for dtype in args.dtype:
        engine = MusicGenEngine.load(model, device=args.device, dtype=dtype, backend="eager")
        print(f"{dtype}:", flush=True)
        profile_steps(engine, args.steps)
        encodec_chunks(engine)
        first_bar(engine)
        del engine
    conform_bars()


if __name__ == "__main__":
    main()
