"""MusicGen decoding speed: stemd's loop against transformers' generate(), same weights, same device.

    .venv/bin/python bench/decode.py [--device cpu] [--dtype float32] [--steps 20] [--rounds 5] [--model DIR]
        [--backend auto|eager|compiled|cuda-graph|onnx|int8]

``--backend`` picks the engine's decoding backend (default: $STEMD_DECODE_BACKEND, else auto); every "ours"
figure below is the engine decoding through it (``onnx``: the step and, where it measured faster, EnCodec's
decoder in ONNX Runtime, float32; ``auto``: the engine's own choice, printed with its reasons).
The weights are random (the musicgen-small architecture, written once by `stemd make-test-model
--arch musicgen-small` into bench/.cache/ unless --model is given): speed does not depend on them.
Measured, all in one run on one device:

* steps/s at batch 1 with guidance 3 (a batch of 2 rows), sampling top-k 250: ours vs transformers
* steps/s with ``--variations`` (default 4; 2 rows each), ours vs transformers, and the aggregate x real time
* time to first bar (120 BPM 4/4: 2 s of audio), 3 rounds alternating with transformers: ours streams it
  (the engine's raw audio reaching 2 s, and the first bar-exact chunk out of conform and the chunker, what
  a client gets, with how much of the engine's audio conform took in first; conform's imports done first,
  as `stemd serve` does before it listens); transformers must generate
  the whole bar and decode it, so its time to first bar is that of a 1-bar request
* real-time factor (audio seconds per wall second) of a 2-bar take through the engine
* streamed EnCodec decode: per-chunk time over 32 bars (flat = constant cost per chunk)
* peak RSS of the engine on CPU (eager in bfloat16, other backends in their dtype; a fresh process, --rss-only)
* x real time = steps/s / 50 (one decoding step per frame; 50 frames per second of audio)

The last line is `steps_per_s ours=A transformers=B ratio=R (ours: BACKEND, DTYPE)` (batch 1, guidance 3).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stemd.models.registry import DECODE_BACKENDS, chosen_backend, env_backend
from diffusion import device_name  # bench/diffusion.py, beside this file: the CPU model and its ISA

CACHE = Path(__file__).resolve().parent / ".cache" / "musicgen-small-random"


def cache_for(arch: str) -> Path:
    return CACHE.parent / f"{arch}-random"


def ensure_model(path: Path, arch: str = "musicgen-small") -> Path:
    if not (path / "model.safetensors").exists() and not (path / "model.safetensors.index.json").exists():
        from stemd.models.musicgen.testmodel import write_test_model

        print(f"writing a random-weight {arch} checkpoint to {path} (once)", flush=True)
        write_test_model(path, arch)
    return path


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


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


def time_to_first_bar_piped(engine, seed: int = 0) -> tuple[float, float]:
    """The first bar-exact chunk out of the pipeline (engine, conform to 48 kHz, chunker): what a client
    gets; returns its time and the seconds of the engine's audio conform had taken in by then (one bar
    and a little when the downbeat is read near the start; random weights make noise, in which conform may
    read a downbeat later and wait for more)."""
    from stemd.models.base import GenerationSpec
    from stemd.models.pipeline import bar_chunks
    from stemd.timing import Grid

    heard = [0]
    stream = engine.stream

    def counted(spec, **kw):
        s = stream(spec, **kw)
        inner = s.blocks

        def blocks():
            try:
                for b in inner:
                    heard[0] += b.shape[-1]
                    yield b
            finally:
                inner.close()
        s.blocks = blocks()
        return s

    spec = GenerationSpec(grid=Grid(120), bars=8, prompt="driving techno", seed=seed, sample_rate=48000)
    engine.stream = counted
    try:
        t0 = time.perf_counter()
        chunks = bar_chunks(engine, spec)
        next(chunks)
        took = time.perf_counter() - t0
        chunks.close()
    finally:
        del engine.stream
    return took, heard[0] / engine.sample_rate


def rtf_ours(engine, variations: int, bars: int = 2) -> float:
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

    frames = int(bars * 2.0 * engine.ck.frame_rate)
    torch.manual_seed(0)
    codes = torch.randint(0, engine.ck.lm.args.vocab_size, (1, engine.ck.lm.args.num_codebooks, frames),
                          device=engine.device)
    dec = engine.streaming_decoder()
    times = []
    for i in range(0, frames, 25):
        t0 = time.perf_counter()
        out = dec.push(codes[..., i: i + 25])
        sync(engine.device.type)
        if out.shape[-1]:
            times.append(time.perf_counter() - t0)
    return times


def rss_only(model: str, backend: str | None) -> None:
    """Run in a fresh process: load on CPU (bfloat16 for eager, else the backend's dtype), generate 1 bar,
    print the peak RSS."""
    from stemd.models.base import GenerationSpec
    from stemd.models.musicgen.engine import MusicGenEngine
    from stemd.timing import Grid

    eager = chosen_backend(backend)[0] == "eager"
    engine = MusicGenEngine.load(model, device="cpu", dtype="bfloat16" if eager else None, backend=backend)
    spec = GenerationSpec(grid=Grid(120), bars=1, prompt="driving techno", variations=1, seed=0)
    for _ in engine.stream(spec).blocks:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024   # KiB -> GiB on Linux
    print(json.dumps({"peak_rss_gib": round(peak, 3), "backend": engine.backend, "dtype": engine.info()["dtype"]}))


def transformers_step_rate(ref, inputs: dict, device: str, steps: int) -> float:
    """Steps/s of one transformers ``generate()`` (guidance 3, top-k 250): timed between its first and last
    logits-processor call, once per step, so prefill is not counted."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            sync(device)
            self.times.append(time.perf_counter())
            return scores

    clock = StepClock()
    ref.generate(**inputs, do_sample=True, top_k=250, guidance_scale=3.0, max_new_tokens=steps + 1,
                 logits_processor=LogitsProcessorList([clock]))
    return (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])


def interleaved_rates(engine, ref, tok, variations: int, steps: int, rounds: int, device: str):
    """Steps/s of ours and of transformers, measured in alternating rounds so that both see the same
    machine load; returns the medians and the median of the per-round ratios."""
    import torch

    from stemd.models.musicgen.generate import Sampling

    lm = engine.ck.lm
    params = Sampling(guidance=3.0, temperature=1.0, top_k=250)
    text, mask = engine.ck.encode_text("driving techno, 128 bpm", variations, params.guided)
    lm.setup_caches(text.shape[0], 1536, 64)
    lm.set_conditioning(text, mask)
    inputs = {k: v.repeat(variations, 1).to(device) for k, v in tok.items()}

    def ref_rate(n):
        return transformers_step_rate(ref, inputs, device, n)

    ours, theirs = [], []
    with torch.no_grad():
        gen = engine.generation(variations, params, 1536, seed=0)
        gen.decode_n_tokens(3)
        ref_rate(3)
        for _ in range(rounds):
            sync(device)
            t0 = time.perf_counter()
            gen.decode_n_tokens(steps)
            sync(device)
            ours.append(steps / (time.perf_counter() - t0))
            theirs.append(ref_rate(steps))
            if gen.pos + steps + 2 >= 1536:
                gen = engine.generation(variations, params, 1536, seed=0)
    ratios = [a / b for a, b in zip(ours, theirs)]
    return float(np.median(ours)), float(np.median(theirs)), float(np.median(ratios))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="a MusicGen checkpoint folder (default: random weights of --arch)")
    p.add_argument("--arch", default="musicgen-small",
                   choices=["musicgen-small", "musicgen-medium", "musicgen-large", "musicgen-stereo-small"],
                   help="architecture of the random-weight checkpoint written once to bench/.cache/ARCH-random")
    p.add_argument("--variations", type=int, default=4, help="the batched measure: variations in one request")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="ours: auto (the engine's choice for the device) or a dtype")
    p.add_argument("--ref-dtype", default="float32", help="transformers' dtype (its default is float32)")
    p.add_argument("--steps", type=int, default=20, help="decoding steps per measured round")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds, ours then transformers")
    p.add_argument("--backend", default=env_backend(), choices=DECODE_BACKENDS,
                   help="ours: the engine's decoding backend (default: $STEMD_DECODE_BACKEND, else auto)")
    p.add_argument("--rss-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    model = args.model or str(ensure_model(cache_for(args.arch), args.arch))
    if args.rss_only:
        rss_only(model, args.backend)
        return
    rss_line = ""
    if args.device == "cpu":   # first, from a small parent: a forked child inherits the parent's peak RSS
        out = subprocess.run([sys.executable, __file__, "--model", model, "--rss-only"]
                             + (["--backend", args.backend] if args.backend else []), capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("{")]
        rss = json.loads(line[-1]) if line else {}
        rss_line = (f"peak RSS, {rss.get('backend', '?')} {rss.get('dtype', '?')} on CPU, fresh process, load + 1 bar: "
                    f"{rss.get('peak_rss_gib', '?')} GiB{'' if line else ' ' + out.stderr[-300:]}")

    import logging

    import torch

    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    from stemd.models.musicgen.engine import MusicGenEngine

    engine = MusicGenEngine.load(model, device=args.device, dtype=args.dtype, backend=args.backend)
    info = engine.info()
    ours_dtype = info["dtype"]
    print(f"device: {args.device} ({device_name(args.device)}), torch {torch.__version__}, model {model} "
          f"(random weights, test_model={engine.ck.test_model}); ours in {ours_dtype}, transformers in "
          f"{args.ref_dtype}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    print(f"ours: decoding backend {info['decode_backend']} ({info['decode_backend_reason']}); EnCodec chunks by "
          f"{info['codec_decode']}" + (f" ({info['codec_decode_reason']})" if "codec_decode_reason" in info else ""),
          flush=True)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.ref_dtype]
    ref = MusicgenForConditionalGeneration.from_pretrained(model, dtype=dt).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(model)(["driving techno, 128 bpm"], return_tensors="pt")

    v, fps = args.variations, engine.ck.frame_rate
    a4, b4, r4 = interleaved_rates(engine, ref, tok, v, max(5, args.steps // 2), max(2, args.rounds // 2),
                                   args.device)
    print(f"{v} variations, guidance 3 ({2 * v} rows): ours {a4:.2f} steps/s, transformers {b4:.2f} steps/s, "
          f"ratio {r4:.2f}; aggregate x real time (variations x steps/s / {fps} frames/s): ours {v * a4 / fps:.2f}, "
          f"transformers {v * b4 / fps:.2f}", flush=True)
    from stemd.models.pipeline import warm_conform

    warm_conform()           # as `stemd serve` does before it listens (scipy.signal alone: ~1 s to import)
    streamed, piped, heard, theirs = [], [], [], []
    for r in range(3):       # alternating, so that both see the same machine load; seeds 0, 1, 2
        streamed.append(time_to_first_bar_ours(engine, 1))
        took, had = time_to_first_bar_piped(engine, seed=r)
        piped.append(took)
        heard.append(had)
        theirs.append(time_to_first_bar_transformers(ref, tok, args.device, 1))
    ttfb4 = time_to_first_bar_ours(engine, v)
    med = lambda xs: float(np.median(xs))  # noqa: E731
    print(f"time to first bar (120 BPM 4/4 = 2 s of audio, batch 1, guidance 3; 3 alternating rounds, medians): "
          f"ours {med(streamed):.2f} s (streamed), {med(piped):.2f} s through conform and the chunker (the first "
          f"bar-exact chunk a client gets; seeds 0-2: {', '.join(f'{t:.2f}' for t in piped)} s, after "
          f"{', '.join(f'{h:.2f}' for h in heard)} s of the engine's audio), transformers {med(theirs):.2f} s "
          f"(a 1-bar generate + decode, no conform); ours with {v} variations {ttfb4:.2f} s (streamed); "
          f"ours/transformers: streamed {med(streamed) / med(theirs):.2f}, through the pipeline "
          f"{med(piped) / med(theirs):.2f}", flush=True)
    rtf = rtf_ours(engine, 1)
    print(f"ours: real-time factor, a 2-bar take through the engine (audio s / wall s) = {rtf:.3f}", flush=True)
    times = chunk_times(engine)
    q = len(times) // 4
    print(f"streamed EnCodec decode over 32 bars: {len(times)} chunks of 0.5 s, ms per chunk: "
          f"first quarter median {1000 * np.median(times[:q]):.1f}, last quarter median "
          f"{1000 * np.median(times[-q:]):.1f}, max {1000 * max(times):.1f}", flush=True)
    if rss_line:
        print(rss_line, flush=True)
    a1, b1, r1 = interleaved_rates(engine, ref, tok, 1, args.steps, args.rounds, args.device)
    print(f"batch 1, guidance 3 (2 rows), {args.rounds} alternating rounds of {args.steps} steps, medians; "
          f"x real time (steps/s / {fps} frames/s): ours {a1 / fps:.2f}, transformers {b1 / fps:.2f}")
    print(f"steps_per_s ours={a1:.2f} transformers={b1:.2f} ratio={r1:.2f} (ours: {info['decode_backend']}, "
          f"{ours_dtype})")


if __name__ == "__main__":
    main()
