"""How far each MusicGen decoding path's logits are from float32 eager, on the same tokens and text.

    .venv/bin/python bench/logit_error.py [--model DIR] [--positions 24]

Random weights (musicgen-small's architecture, bench/.cache/ as bench/decode.py writes it, unless
--model is given): the figures say how far each path's arithmetic moves the logits, not how a trained
model sounds. For each path: the largest absolute logit difference over ``--positions`` positions of
random codes (both guidance rows), that over the float32 logits' standard deviation, the mean absolute
difference, and how often the most likely code of a position differs; then greedy decoding of 50 steps
with guidance 3: the share of codes equal to float32 eager's.
"""

from __future__ import annotations

import argparse
import copy
import time

from decode import cache_for, ensure_model  # bench/decode.py, beside this file
from diffusion import device_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--positions", type=int, default=24)
    args = p.parse_args()
    import torch

    from stemd.models.musicgen.fast import int8
    from stemd.models.musicgen.fast.onnx_step import OnnxStep, cached_int8_step, cached_step
    from stemd.models.musicgen.generate import Generation, Sampling, all_frames
    from stemd.models.musicgen.loading import load_checkpoint

    torch.set_grad_enabled(False)
    model = args.model or str(ensure_model(cache_for("musicgen-small")))
    with torch.inference_mode(False):
        ck = load_checkpoint(model, torch.device("cpu"), torch.float32)
    lm = ck.lm
    print(f"bench/logit_error.py on cpu ({device_name('cpu')}), torch {torch.__version__}; {model} (random "
          f"weights); {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    text, mask = ck.encode_text("driving techno, 128 bpm", 1, guided=True)
    gen = torch.Generator().manual_seed(0)
    t = args.positions
    tokens = torch.randint(0, lm.args.vocab_size, (2, lm.args.num_codebooks, t), generator=gen)

    def torch_logits(m):
        m.setup_caches(2, 64 * (1 + t // 64), 64)
        m.set_conditioning(text, mask)
        return m(tokens, torch.arange(t)).float()

    def onnx_logits(path):
        step = OnnxStep(path)
        lm.setup_caches(2, 64 * (1 + t // 64), 64)
        lm.set_conditioning(text, mask)
        step.bind_model(lm)
        out = [torch.from_numpy(step.logits(tokens[:, :, i:i + 1].numpy().copy(), i)) for i in range(t)]
        return torch.stack(out, dim=2).float()

    with torch.inference_mode(False):
        fp32_path, _ = cached_step(lm)
        int8_path, _ = cached_int8_step(lm)
    ref = torch_logits(lm)
    bf16 = copy.deepcopy(lm).to(torch.bfloat16)
    q = int8.quantize(lm)
    paths = {"onnx float32": lambda: onnx_logits(fp32_path), "eager bfloat16": lambda: torch_logits(bf16),
             "int8 (eager, bfloat16 activations)": lambda: torch_logits(q),
             "onnx-int8": lambda: onnx_logits(int8_path)}
    spread = float(ref.std())
    print(f"float32 logits over {t} positions x 2 rows x {lm.args.num_codebooks} codebooks: std {spread:.4f}")
    for name, run in paths.items():
        got = run()
        diff = (got - ref).abs()
        print(f"  {name}: max |diff| {float(diff.max()):.5f} ({float(diff.max()) / spread:.1%} of the std), mean "
              f"{float(diff.mean()):.5f}, top code differs at {float((got.argmax(-1) != ref.argmax(-1)).float().mean()):.1%}"
              " of positions", flush=True)
    greedy = Sampling(guidance=3.0, temperature=0)

    def codes(m, step=None):
        m.setup_caches(2, 128, 64)
        m.set_conditioning(text, mask)
        return all_frames(Generation(m, 1, greedy, 128, seed=0, step=step), 50)

    base = codes(lm)
    for name, (m, step) in {"onnx float32": (lm, OnnxStep(fp32_path)), "eager bfloat16": (bf16, None),
                            "int8": (q, None), "onnx-int8": (lm, OnnxStep(int8_path))}.items():
        same = float((codes(m, step) == base).float().mean())
        print(f"  greedy 50 steps, {name}: {same:.1%} of codes equal to float32 eager's", flush=True)


if __name__ == "__main__":
    main()
