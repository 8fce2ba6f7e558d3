"""The ONNX Runtime decoding step, exported by stemd's own code from the tiny checkpoint: its logits match
torch's within 1e-4 (float32) step after step over the shared cache, and decoding through it gives the
eager loop's tokens for the same seed."""

import logging

import numpy as np
import pytest
import torch

from stemd.models.musicgen.engine import MusicGenEngine
from stemd.models.musicgen.generate import Generation, Sampling, iter_frames
from stemd.models.musicgen.testmodel import write_test_model

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the daemon extra has it)")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx.export needs it)")

from stemd.models.musicgen.fast.onnx_step import OnnxGeneration, OnnxStep, export  # noqa: E402

logging.getLogger("transformers").setLevel(logging.ERROR)
MAX_SEQ = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = write_test_model(tmp_path_factory.mktemp("tiny"), "tiny")
    engine = MusicGenEngine.load(str(path), device="cpu", dtype="float32")
    lm = engine.ck.lm
    text, mask = engine.encode_text("dusty lofi drums, 90 bpm", 1, guided=True)
    lm.setup_caches(2, MAX_SEQ, 64)
    lm.set_conditioning(text, mask)
    onnx_path = export(lm, 2, MAX_SEQ, 64, tmp_path_factory.mktemp("onnx") / "step.onnx")
    return lm, OnnxStep(onnx_path)


def test_onnx_logits_match_torch_within_1e4_over_the_shared_cache(setup):
    lm, step = setup
    step.bind(lm)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        for pos in range(12):
            tokens = torch.randint(0, lm.args.vocab_size + 1, (2, lm.args.num_codebooks, 1), generator=gen)
            before = lm.layers[0].self_attn.kv_cache.k.clone()
            ours = step.logits(tokens.numpy(), pos)              # writes the cache row at pos
            assert not torch.equal(before, lm.layers[0].self_attn.kv_cache.k)
            ref = lm(tokens, torch.tensor([pos]))[:, :, -1].numpy()   # rewrites the same row in torch
            worst = max(worst, float(np.abs(ours - ref).max()))
    assert ours.shape == (2, lm.args.num_codebooks, lm.args.vocab_size)
    assert worst < 1e-4, worst


@pytest.mark.parametrize("params", [Sampling(guidance=3.0, temperature=1.0, top_k=20),
                                    Sampling(guidance=3.0, temperature=0)], ids=["top_k", "greedy"])
def test_onnx_decoding_gives_the_eager_tokens_across_window_slides(setup, params):
    lm, step = setup

    def run(cls, **kw):   # 100 frames through a 64-position window that keeps 20 frames per slide
        gen = cls(lm, 1, params, MAX_SEQ, seed=9, keep_frames=20, **kw)
        return torch.cat(list(iter_frames(gen, 100, lambda: False, lambda ready: None)), dim=-1)

    with torch.no_grad():
        eager = run(Generation)
        onnx = run(OnnxGeneration, step=step)
    assert onnx.shape == eager.shape == (1, lm.args.num_codebooks, 100)
    assert torch.equal(onnx, eager)


def test_onnx_step_refuses_a_model_it_cannot_share_memory_with(setup):
    lm, step = setup
    lm_bf16 = type(lm)(lm.args).to(torch.bfloat16)
    lm_bf16.setup_caches(2, MAX_SEQ, 64)
    with pytest.raises(ValueError, match="float32 on the CPU"):
        step.bind(lm_bf16)
