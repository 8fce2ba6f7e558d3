"""MusicGen decoding speed: stemd's loop against transformers' generate(), same weights, same device.

    .venv/bin/python bench/decode.py [--device cpu] [--dtype float32] [--steps 100] [--model DIR]

The weights are random (the musicgen-small architecture, written once by `stemd make-test-model
--arch musicgen-small` into bench/.cache/ unless --model is given): speed does not depend on them.
Measured, all in one run on one device:

* steps/s at batch 1 with guidance 3 (a batch of 2 rows), sampling top-k 250: ours vs transformers
* steps/s with 4 variations (8 rows), ours vs transformers
* time to first bar (120 BPM 4/4: 2 s of audio): ours streams it; transformers must generate the
  whole bar and decode it, so its time to first bar is that of a 1-bar request
* real-time factor (audio seconds per wall second) of an 8-bar take through the engine
* streamed EnCodec decode: per-chunk time over 32 bars (flat = constant cost per chunk)
* peak RSS of the engine in bfloat16 on CPU (a fresh process, --rss-only)

The last line is `steps_per_s ours=A transformers=B ratio=R` (batch 1, guidance 3).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache" / "musicgen-small-random"


def ensure_model(path: Path) -> Path:
    if not (path / "model.safetensors").exists():
        from stemd.models.musicgen.testmodel import write_test_model

        print(f"writing a random-weight musicgen-small checkpoint to {path} (once)", flush=True)
        write_test_model(path, "musicgen-small")
    return path


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours_steps_per_s(engine, variations: int, steps: int, guidance: float = 3.0) -> float:
    import torch

    from stemd.models.musicgen.generate import Generation, Sampling

    lm = engine.ck.lm
    params = Sampling(guidance=guidance, temperature=1.0, top_k=250)
    text, mask = engine.encode_text("driving techno, 128 bpm", variations, params.guided)
    lm.setup_caches(text.shape[0], 1536, 64)
    lm.set_conditioning(text, mask)
    with torch.no_grad():
        gen = Generation(lm, variations, params, 1536, seed=0)
        gen.decode_n_tokens(5)                       # warm-up
        sync(engine.device.type)
        t0 = time.perf_counter()
        gen.decode_n_tokens(steps)
        sync(engine.device.type)
    return steps / (time.perf_counter() - t0)


def transformers_steps_per_s(ref, tok, variations: int, steps: int, device: str, guidance: float = 3.0) -> float:
    """generate() timed for `steps` and for 10 new tokens; the difference is the per-step rate."""
    import torch

    inputs = {k: v.repeat(variations, 1).to(device) for k, v in tok.items()}

    def run(n):
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            ref.generate(**inputs, do_sample=True, top_k=250, guidance_scale=guidance, max_new_tokens=n)
        sync(device)
        return time.perf_counter() - t0

    run(5)
    short, long = run(10), run(10 + steps)
    return steps / (long - short)


def time_to_first_bar_ours(engine, variations: int) -> float:
    from stemd.models.base import GenerationSpec
    from stemd.timing import Grid

    spec = GenerationSpec(grid=Grid(120), bars=8, prompt="driving techno", variations=variations, seed=0)
    bar = 2.0 * engine.sample_rate
    t0 = time.perf_counter()
    stream = engine.stream(spec)
    have = 0
    for block in stream.blocks:
        have += block.shape[-1]
        if have >= bar:
            break
    stream.close()
    return time.perf_counter() - t0


def rtf_ours(engine, variations: int, bars: int = 8) -> float:
    from stemd.models.base import GenerationSpec
    from stemd.timing import Grid

    spec = GenerationSpec(grid=Grid(120), bars=bars, prompt="driving techno", variations=variations, seed=0)
    t0 = time.perf_counter()
    n = sum(b.shape[-1] for b in engine.stream(spec).blocks)
    return n / engine.sample_rate / (time.perf_counter() - t0)


def time_to_first_bar_transformers(ref, tok, device: str, variations: int) -> float:
    import torch

    inputs = {k: v.repeat(variations, 1).to(device) for k, v in tok.items()}
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():   # 2 s of audio = 100 frames (+3 for the codebook delay)
        ref.generate(**inputs, do_sample=True, top_k=250, guidance_scale=3.0, max_new_tokens=103)
    sync(device)
    return time.perf_counter() - t0


def chunk_times(engine, bars: int = 32) -> list[float]:
    import torch

    from stemd.models.musicgen.streaming import StreamingDecoder

    frames = int(bars * 2.0 * engine.ck.frame_rate)
    torch.manual_seed(0)
    codes = torch.randint(0, engine.ck.lm.args.vocab_size, (1, engine.ck.lm.args.num_codebooks, frames),
                          device=engine.device)
    dec = StreamingDecoder(engine.ck.codec, engine.channels, engine.hop)
    times = []
    for i in range(0, frames, 25):
        t0 = time.perf_counter()
        out = dec.push(codes[..., i: i + 25])
        sync(engine.device.type)
        if out.shape[-1]:
            times.append(time.perf_counter() - t0)
    return times


def rss_only(model: str) -> None:
    """Run in a fresh process: load in bfloat16 on CPU, generate 1 bar, print the peak RSS."""
    from stemd.models.base import GenerationSpec
    from stemd.models.musicgen.engine import MusicGenEngine
    from stemd.timing import Grid

    engine = MusicGenEngine.load(model, device="cpu", dtype="bfloat16")
    spec = GenerationSpec(grid=Grid(120), bars=1, prompt="driving techno", variations=1, seed=0)
    for _ in engine.stream(spec).blocks:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024   # KiB -> GiB on Linux
    print(json.dumps({"peak_rss_gib": round(peak, 3)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a MusicGen checkpoint folder (default: random musicgen-small)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--rss-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    model = args.model or str(ensure_model(CACHE))
    if args.rss_only:
        rss_only(model)
        return

    import logging

    import torch

    logging.getLogger("transformers").setLevel(logging.ERROR)
    from stemd.models.musicgen.engine import MusicGenEngine

    engine = MusicGenEngine.load(model, device=args.device, dtype=args.dtype)
    print(f"device: {args.device} ({device_name(args.device)}), dtype {args.dtype}, torch {torch.__version__}, "
          f"model {model} (test_model={engine.ck.test_model})", flush=True)
    ours1 = ours_steps_per_s(engine, 1, args.steps)
    ours4 = ours_steps_per_s(engine, 4, max(10, args.steps // 2))
    print(f"ours: steps/s batch 1 guidance 3 = {ours1:.2f}; 4 variations = {ours4:.2f}", flush=True)
    ttfb = time_to_first_bar_ours(engine, 1)
    ttfb4 = time_to_first_bar_ours(engine, 4)
    print(f"ours: time to first bar (120 BPM, 2 s) = {ttfb:.2f} s; 4 variations = {ttfb4:.2f} s", flush=True)
    rtf = rtf_ours(engine, 1)
    print(f"ours: real-time factor, 8 bars through the engine (audio s / wall s) = {rtf:.3f}", flush=True)
    times = chunk_times(engine)
    q = len(times) // 4
    print(f"streamed EnCodec decode over 32 bars: {len(times)} chunks of 0.5 s, ms per chunk "
          f"first quarter {1000 * np.median(times[:q]):.1f}, last quarter {1000 * np.median(times[-q:]):.1f}, "
          f"max {1000 * max(times):.1f}", flush=True)
    if args.device == "cpu":
        out = subprocess.run([sys.executable, __file__, "--model", model, "--rss-only"], capture_output=True,
                             text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        line = [l for l in out.stdout.splitlines() if l.startswith("{")]
        print(f"peak RSS, bfloat16 on CPU, load + 1 bar: {json.loads(line[-1])['peak_rss_gib'] if line else '?'} GiB"
              f" {'' if line else out.stderr[-500:]}", flush=True)
    del engine
    if args.skip_transformers:
        print(f"steps_per_s ours={ours1:.2f} transformers=skipped ratio=nan")
        return
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    ref = MusicgenForConditionalGeneration.from_pretrained(model, dtype=dt).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(model)(["driving techno, 128 bpm"], return_tensors="pt")
    ref1 = transformers_steps_per_s(ref, tok, 1, args.steps, args.device)
    ref4 = transformers_steps_per_s(ref, tok, 4, max(10, args.steps // 2), args.device)
    print(f"transformers generate(): steps/s batch 1 guidance 3 = {ref1:.2f}; 4 variations = {ref4:.2f}")
    rttfb = time_to_first_bar_transformers(ref, tok, args.device, 1)
    print(f"transformers: time to first bar (a 1-bar generate + decode) = {rttfb:.2f} s")
    print(f"4 variations: ours {ours4:.2f} steps/s, transformers {ref4:.2f} steps/s, ratio {ours4 / ref4:.2f}")
    print(f"steps_per_s ours={ours1:.2f} transformers={ref1:.2f} ratio={ours1 / ref1:.2f}")


if __name__ == "__main__":
    main()
