"""MusicGen's decoding loop now against the loop of another git revision, in one process, alternating rounds.

    .venv/bin/python bench/decode_ab.py --against REV [--dtype bfloat16] [--rounds 6] [--steps 20] [--model DIR]

For refactors of models/musicgen/generate.py: REV's generate.py is loaded beside today's (the model,
its caches and the conditioning are today's, shared), and both loops decode from a fresh request in
alternating rounds (ABBA order), batch 1 and 4 variations with guidance 3 and top-k 250, on this
machine's CPU. Prints the median steps/s of each, their ratio, and whether both drew the same tokens
for the same seed. Model: the random-weight musicgen-small of bench/decode.py (bench/.cache/).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import CACHE, device_name, ensure_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load_revision(rev: str):
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:models/musicgen/generate.py"], check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="stemd-ab-")) / "generate_then.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("generate_then", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_then"] = module       # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", required=True, help="a git revision whose models/musicgen/generate.py to time")
    p.add_argument("--model", default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    import torch

    from stemd.models.musicgen import generate as now
    from stemd.models.musicgen.engine import MusicGenEngine
    from stemd.protocol import Sampling

    then = load_revision(args.against)
    model = args.model or str(ensure_model(CACHE))
    engine = MusicGenEngine.load(model, device="cpu", dtype=args.dtype, backend="eager")
    lm = engine.ck.lm
    print(f"device: cpu ({device_name('cpu')}), torch {torch.__version__}, {args.dtype}, model {model} (random "
          f"weights); loop of {args.against} against the working tree; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    settings = dict(guidance=3.0, temperature=1.0, top_k=250)

    def make(which, variations, seed):
        if which == "then":
            return then.Generation(lm, variations, getattr(then, "Sampling", Sampling)(**settings), 1536, seed=seed)
        return now.Generation(lm, variations, Sampling(**settings), 1536, seed=seed)

    for variations in (1, 4):
        text, mask = engine.ck.encode_text("driving techno, 128 bpm", variations, True)
        lm.setup_caches(text.shape[0], 1536, 64)
        lm.set_conditioning(text, mask)
        rates = {"then": [], "now": []}
        with torch.no_grad():
            for r in range(args.rounds):
                for which in ("then", "now") if r % 2 == 0 else ("now", "then"):
                    gen = make(which, variations, 0)
                    gen.decode_n_tokens(2)
                    t0 = time.perf_counter()
                    gen.decode_n_tokens(args.steps)
                    rates[which].append(args.steps / (time.perf_counter() - t0))
            a, b = make("then", variations, 3), make("now", variations, 3)
            a.decode_n_tokens(30)
            b.decode_n_tokens(30)
        same = torch.equal(a.tokens[..., : a.pos + 1], b.tokens[..., : b.pos + 1])
        t, n = statistics.median(rates["then"]), statistics.median(rates["now"])
        print(f"{variations} variation(s), guidance 3: {args.against} {t:.2f} steps/s, now {n:.2f} steps/s, "
              f"now/then {n / t:.3f}, same tokens for the same seed: {same}", flush=True)


if __name__ == "__main__":
    main()
