"""MusicGen decoding steps/s per backend on the device this runs on, transformers' generate() alongside.

    .venv/bin/python bench/fast_decode.py [--device cpu|cuda] [--dtype float32] [--steps 20] [--rounds 3]
        [--backends eager,compiled,cuda-graph,onnx] [--variations 1] [--model DIR]

Random-weight musicgen-small (written once into bench/.cache/, as bench/decode.py does). Per backend: one
warm-up round (torch.compile compiles, CUDA graphs are captured: the time is printed as setup), then
``--rounds`` rounds of ``--steps`` steps from a fresh request, the median steps/s. Every round starts at
position 1 so the attention span stays in its first bucket (one compiled graph per backend). Guidance 3,
top-k 250 sampling. Backends (step objects handed to generate.Generation, the one loop): ``eager`` is
generate.step run as plain torch ops, ``compiled`` that step under torch.compile (inductor, fullgraph), ``cuda-graph`` it captured
by hand and replayed (CUDA only), ``onnx`` the forward pass exported to ONNX (once, kept in the
stemd cache: ``fast/onnx_cache.py``) and run in ONNX Runtime
(CPU, float32; sampling stays in torch). Before timing, each fast backend's tokens are compared with eager's for the
same seed (printed as same_tokens; exact equality is expected in float32, not promised in bf16 or with
inductor's fused kernels). Last line: ``steps_per_s <backend>=<rate> ... transformers=<rate>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import CACHE, device_name, ensure_model, sync, transformers_step_rate  # noqa: E402


def make_gen(name, lm, variations, params, max_seq, step, seed=0):
    from stemd.models.musicgen.generate import Generation

    return Generation(lm, variations, params, max_seq, seed=seed, step=step)


def backend_for(name, device, lm, rows, max_seq):
    from stemd.models.musicgen.fast.backends import CompiledStep, make_backend

    if name == "onnx":   # exported by stemd's code from the weights just loaded, kept in the disk cache
        from stemd.models.musicgen.fast.onnx_step import OnnxStep, cached_step

        t0 = time.perf_counter()
        path, exported = cached_step(lm)
        print(f"onnx: {'exported' if exported else 'loaded from the cache'} in {time.perf_counter() - t0:.1f} s "
              f"({path.parent})", flush=True)
        return OnnxStep(path)

    if name == "compiled":
        return CompiledStep()
    if name == "cuda-graph":
        return make_backend("cuda-graph", device)
    return None


def rate(name, lm, variations, params, max_seq, backend, steps, rounds, device) -> tuple[float, float, bool]:
    """(setup seconds, median steps/s, same tokens as eager for the same seed)."""
    import torch

    with torch.no_grad():
        ref = make_gen("eager", lm, variations, params, max_seq, None, seed=5)
        ref.decode_n_tokens(steps)
        t0 = time.perf_counter()
        gen = make_gen(name, lm, variations, params, max_seq, backend, seed=5)
        gen.decode_n_tokens(steps)
        sync(device)
        setup = time.perf_counter() - t0
        same = torch.equal(gen.tokens[..., : gen.pos + 1], ref.tokens[..., : ref.pos + 1])
        rates = []
        for r in range(rounds):
            gen = make_gen(name, lm, variations, params, max_seq, backend, seed=r)
            sync(device)
            t0 = time.perf_counter()
            gen.decode_n_tokens(steps)
            sync(device)
            rates.append(steps / (time.perf_counter() - t0))
    return setup, float(np.median(rates)), same


def transformers_rate(model, device, dtype, variations, steps, rounds) -> float:
    import logging

    import torch
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    logging.getLogger("transformers").setLevel(logging.ERROR)
    ref = MusicgenForConditionalGeneration.from_pretrained(model, dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(model)(["driving techno, 128 bpm"], return_tensors="pt")
    inputs = {k: v.repeat(variations, 1).to(device) for k, v in tok.items()}

    rates = []
    with torch.no_grad():
        for _ in range(rounds + 1):
            rates.append(transformers_step_rate(ref, inputs, device, steps))
    return float(np.median(rates[1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variations", type=int, default=1)
    p.add_argument("--backends", default=None,
                   help="default: eager,compiled (+cuda-graph on CUDA, +onnx on CPU in float32)")
    p.add_argument("--no-transformers", action="store_true")
    args = p.parse_args()
    model = args.model or str(ensure_model(CACHE))

    import torch

    from stemd.models.musicgen.engine import MusicGenEngine
    from stemd.models.musicgen.generate import Sampling

    extra = ",cuda-graph" if args.device.startswith("cuda") else ",onnx" if args.dtype == "float32" else ""
    names = (args.backends or "eager,compiled" + extra).split(",")
    engine = MusicGenEngine.load(model, device=args.device, dtype=args.dtype, backend="eager")
    device = engine.device
    print(f"device: {args.device} ({device_name(args.device)}), torch {torch.__version__}, dtype "
          f"{engine.info()['dtype']}, model {model} (random weights), {args.variations} variation(s), guidance 3 "
          f"({2 * args.variations} rows), top-k 250; {args.rounds} rounds of {args.steps} steps; "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    lm = engine.ck.lm
    params = Sampling(guidance=3.0, temperature=1.0, top_k=250)
    text, mask = engine.ck.encode_text("driving techno, 128 bpm", args.variations, params.guided)
    max_seq = 256
    lm.setup_caches(text.shape[0], max_seq, 64)
    lm.set_conditioning(text, mask)
    results = {}
    for name in names:
        backend = backend_for(name, device, lm, text.shape[0], max_seq)
        setup, r, same = rate(name, lm, args.variations, params, max_seq, backend, args.steps, args.rounds,
                              args.device)
        results[name] = r
        print(f"{name}: {r:.2f} steps/s (setup round {setup:.1f} s, same_tokens={same})", flush=True)
    if not args.no_transformers:
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
        results["transformers"] = transformers_rate(model, args.device, dt, args.variations, args.steps,
                                                    args.rounds)
        print(f"transformers generate(): {results['transformers']:.2f} steps/s", flush=True)
    print("steps_per_s " + " ".join(f"{k}={v:.2f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
