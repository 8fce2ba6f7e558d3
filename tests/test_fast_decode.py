"""Fast decoding backends on the tiny random-weight checkpoint: ``generate.step`` compiled or captured gives
the tokens of the same step run eagerly for the same seed (float32), through torch.compile with fullgraph=True (no graph
breaks) and, on a CUDA device, replayed as CUDA graphs."""

import logging

import numpy as np
import pytest
import torch

from stemd.models.musicgen.engine import MusicGenEngine
from stemd.models.musicgen.decoding import Decoding
from stemd.models.musicgen.fast.backends import CompiledStep, make_backend
from stemd.models.musicgen.generate import EagerStep, Generation, Sampling, generate_tokens, iter_frames

logging.getLogger("transformers").setLevel(logging.ERROR)

SAMPLINGS = [Sampling(guidance=3.0, temperature=1.0, top_k=20),
             Sampling(guidance=3.0, temperature=0.8, top_k=0, top_p=0.9),
             Sampling(guidance=3.0, temperature=0),
             Sampling(guidance=1.0, temperature=1.0, top_k=10)]


def conditioned(engine, variations, params, max_seq):
    lm = engine.ck.lm
    text, mask = engine.ck.encode_text("dusty lofi drums, 90 bpm", variations, params.guided)
    lm.setup_caches(text.shape[0], max_seq, 64)
    lm.set_conditioning(text, mask)
    return lm


@pytest.mark.parametrize("params", SAMPLINGS, ids=["top_k", "top_p", "greedy", "unguided"])
def test_compiled_fullgraph_step_gives_eager_tokens_for_the_same_seed(engine, params):
    # 150 frames in a 192-position window: the step runs at two attention spans (128 and 192)
    lm = conditioned(engine, 2, params, 192)
    eager = generate_tokens(lm, 150, 2, params, max_seq=192, seed=7)
    compiled = CompiledStep(backend="aot_eager")      # fullgraph=True: a graph break raises
    fast = generate_tokens(lm, 150, 2, params, max_seq=192, seed=7, step=compiled)
    assert fast.shape == eager.shape == (2, lm.args.num_codebooks, 150)
    assert torch.equal(fast, eager)


def test_a_compiled_generation_slides_its_window_like_the_eager_one(engine):
    params = SAMPLINGS[0]
    lm = conditioned(engine, 1, params, 64)
    prompt = torch.randint(0, lm.args.vocab_size, (lm.args.num_codebooks, 12),
                           generator=torch.Generator().manual_seed(1))

    def run(step):   # 130 frames through a 64-position window that keeps 20 frames on each slide
        with torch.no_grad():
            gen = Generation(lm, 1, params, 64, prompt=prompt, seed=3, keep_frames=20, step=step)
            return torch.cat(list(iter_frames(gen, 142, lambda: False, lambda ready: None)), dim=-1)

    eager = run(EagerStep())
    fast = run(CompiledStep(backend="aot_eager"))
    assert fast.shape == (1, lm.args.num_codebooks, 142)
    assert torch.equal(fast, eager)
    assert torch.equal(fast[:, :, :12], prompt[None])


def test_the_position_lives_on_the_device_and_advances_with_the_host_count(engine):
    params = SAMPLINGS[0]
    lm = conditioned(engine, 1, params, 128)
    gen = Generation(lm, 1, params, 128, seed=0)
    start = gen.pos
    gen.decode_n_tokens(5)
    assert gen.pos == start + 5
    assert gen.pos_t.device == gen.tokens.device and gen.pos_t.tolist() == [gen.pos]


def test_seeds_still_matter(engine):
    params = SAMPLINGS[0]
    lm = conditioned(engine, 1, params, 128)
    a = generate_tokens(lm, 30, 1, params, max_seq=128, seed=1)
    b = generate_tokens(lm, 30, 1, params, max_seq=128, seed=2)
    assert not torch.equal(a, b)


def test_unknown_backend_and_cuda_graph_on_cpu_are_clear_errors(engine):
    with pytest.raises(ValueError, match="backend must be one of"):
        make_backend("tensorrt", torch.device("cpu"))
    params = SAMPLINGS[0]
    lm = conditioned(engine, 1, params, 128)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        Generation(lm, 1, params, 128, seed=0, step=make_backend("cuda-graph", torch.device("cpu")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("params", SAMPLINGS, ids=["top_k", "top_p", "greedy", "unguided"])
def test_cuda_graph_replay_gives_eager_tokens_for_the_same_seed(tiny, params):
    from stemd.models.musicgen.fast.cuda_graph import CUDAGraphStep

    cuda = MusicGenEngine.load(str(tiny), device="cuda", dtype="float32")
    lm = conditioned(cuda, 2, params, 192)
    eager = generate_tokens(lm, 150, 2, params, max_seq=192, seed=7)
    runner = CUDAGraphStep()
    graphed = generate_tokens(lm, 150, 2, params, max_seq=192, seed=7, step=runner)
    assert torch.equal(graphed, eager)
    assert len(runner.graphs) == 2                    # one per attention-span bucket, captured once
    again = generate_tokens(lm, 150, 2, params, max_seq=192, seed=7, step=runner)
    assert torch.equal(again, eager) and len(runner.graphs) == 2


def test_engine_with_a_fast_backend_streams_the_eager_engines_audio(engine, monkeypatch):
    from stemd.models.base import EngineError, GenerationSpec
    from stemd.timing import Grid

    spec = GenerationSpec(grid=Grid(120), bars=1, prompt="dusty lofi drums", variations=2, seed=4)
    eager = np.concatenate(list(engine.stream(spec).blocks), axis=-1)
    # inductor's compile is slow on 2 cores: aot_eager traces the same graph
    fast = MusicGenEngine(engine.ck, Decoding("compiled", CompiledStep(backend="aot_eager")))
    audio = np.concatenate(list(fast.stream(spec).blocks), axis=-1)
    assert fast.info()["decode_backend"] == "compiled"
    assert audio.shape == eager.shape and np.array_equal(audio, eager)
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="needs a CUDA device"):
            MusicGenEngine.load("/nonexistent", device="cpu", backend="cuda-graph")
    with pytest.raises(EngineError, match="backend must be one of"):
        MusicGenEngine.load("/nonexistent", device="cpu", backend="tensorrt")


def test_int8_weights_hold_a_quarter_of_float32_and_their_logit_error_is_small(tiny):
    """The int8 backend's numerical check against float32 eager: not exact (weights rounded to 1/254 of
    each row's range), so the error is measured, on every linear layer at once, through the whole model."""
    from stemd.models.musicgen.fast import int8
    from stemd.models.musicgen.loading import load_checkpoint

    if not int8.available():
        pytest.skip("this torch has no int8 CPU kernel")
    ck = load_checkpoint(str(tiny), torch.device("cpu"), torch.float32)
    q = int8.quantize(ck.lm)
    linears = [m for m in ck.lm.modules() if isinstance(m, torch.nn.Linear)]
    quantized = [m for m in q.modules() if isinstance(m, int8.Int8Linear)]
    assert len(quantized) == len(linears) and not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    assert sum(m.weight.numel() for m in quantized) == sum(m.weight.numel() for m in linears)
    assert all(m.weight.dtype == torch.int8 for m in quantized)
    text, mask = ck.encode_text("dusty lofi drums, 90 bpm", 1, guided=True)
    torch.manual_seed(0)
    tokens = torch.randint(0, ck.lm.args.vocab_size + 1, (2, ck.lm.args.num_codebooks, 24))
    err = int8.logit_error(ck.lm, q, text, mask, tokens)
    assert 0 < err["max_abs"] and err["max_over_spread"] < 0.1 and err["argmax_differs"] < 0.1, err
    # a bfloat16 copy, the CPU default elsewhere, errs by the same order
    import copy
    bf16 = int8.logit_error(ck.lm, copy.deepcopy(ck.lm).to(torch.bfloat16), text, mask, tokens)
    assert err["max_abs"] < 5 * bf16["max_abs"], (err, bf16)


def test_the_int8_backend_makes_takes_and_refuses_what_it_cannot_run(tiny):
    from stemd.models.base import EngineError, GenerationSpec
    from stemd.models.musicgen.fast import int8
    from stemd.timing import Grid

    if not int8.available():
        pytest.skip("this torch has no int8 CPU kernel")
    engine = MusicGenEngine.load(str(tiny), device="cpu", backend="int8")
    info = engine.info()
    assert info["decode_backend"] == "int8" and info["dtype"] == "bfloat16" and int8.is_int8(engine.ck.lm)
    spec = GenerationSpec(grid=Grid(97, "3/4"), bars=1, prompt="dusty lofi drums", variations=2, seed=4)
    audio = np.concatenate(list(engine.stream(spec).blocks), axis=-1)
    assert audio.shape[:2] == (2, engine.channels) and audio.shape[-1] >= 32000 * 60 / 97 * 3
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    again = np.concatenate(list(engine.stream(spec).blocks), axis=-1)
    assert np.array_equal(audio, again)                    # same seed, same take
    with pytest.raises(EngineError, match="int8 weights and computes in bfloat16"):
        MusicGenEngine.load(str(tiny), device="cpu", dtype="float32", backend="int8")
