"""The ONNX Runtime decoding path, exported by stemd's own code from the tiny checkpoint: the step's logits
match torch's within 1e-4 (float32) step after step, across attention-span buckets; decoding through it
gives the eager loop's tokens for the same seed; EnCodec's decoder exported to ONNX matches torch within
1e-4; the engine's ``onnx`` backend streams the eager engine's audio; exports are kept on disk, once per
model, and a damaged entry is exported again; ``auto`` measures once and keeps its verdict."""

import logging

import numpy as np
import pytest
import torch

from stemd.models.base import EngineError, GenerationSpec
from stemd.models.musicgen.engine import MusicGenEngine
from stemd.models.musicgen.generate import Generation, Sampling, iter_frames
from stemd.models.musicgen.streaming import StreamingDecoder, decode_codes
from stemd.models.musicgen.testmodel import write_test_model
from stemd.timing import Grid

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the daemon extra has it)")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx.export needs it)")

from stemd.models.musicgen.fast.onnx_cache import cached_export, weights_digest  # noqa: E402
from stemd.models.musicgen.fast.onnx_codec import MIN_FRAMES, OnnxCodec, cached_codec, torch_decode  # noqa: E402
from stemd.models.musicgen.fast.onnx_step import cached_step  # noqa: E402
from stemd.models.musicgen import decoding  # noqa: E402

logging.getLogger("transformers").setLevel(logging.ERROR)
MAX_SEQ = 64


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Every export of this module goes to a fresh stemd cache (``$STEMD_CACHE``)."""
    folder = tmp_path_factory.mktemp("stemd-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEMD_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def onnx_engine(engine, cache_dir):
    return MusicGenEngine(engine.ck, decoding.make("onnx", engine.ck))


@pytest.fixture(scope="module")
def setup(engine, onnx_engine):
    lm = engine.ck.lm
    text, mask = engine.ck.encode_text("dusty lofi drums, 90 bpm", 1, guided=True)
    lm.setup_caches(2, MAX_SEQ, 64)
    lm.set_conditioning(text, mask)
    return lm, onnx_engine.decoding.step


def conditioned(engine, max_seq):
    lm = engine.ck.lm
    text, mask = engine.ck.encode_text("dusty lofi drums, 90 bpm", 1, guided=True)
    lm.setup_caches(2, max_seq, 64)
    lm.set_conditioning(text, mask)
    return lm


def test_onnx_logits_match_torch_within_1e4_reading_the_models_cache_in_place(engine, setup):
    _, step = setup
    lm = conditioned(engine, 192)          # past position 128: the old step re-copied a longer window there
    step.bind_model(lm)
    # the step reads the text K/V only as far as the prompt's tokens, not the cache's padding to 64
    used = int(lm.text_mask[0, 0, 0].nonzero().max()) + 1
    assert step.cross[0].shape[2] == step.text_mask.shape[-1] == used < 64
    # the session's cache is the model's own memory, not a copy
    cache = lm.layers[1].self_attn.kv_cache.v
    assert step.past[3].ctypes.data == cache.data_ptr() and step.past[3].shape == tuple(cache.shape)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        for pos in range(140):
            tokens = torch.randint(0, lm.args.vocab_size + 1, (2, lm.args.num_codebooks, 1), generator=gen)
            before = cache.clone()
            ours = step.logits(tokens.numpy(), pos)              # writes the cache row at pos, only that row
            changed = (before != cache).any(dim=3).any(dim=1).any(dim=0).nonzero().flatten().tolist()
            assert changed == [pos]
            ref = lm(tokens, torch.tensor([pos]))[:, :, -1].numpy()   # rewrites the same row in torch
            worst = max(worst, float(np.abs(ours - ref).max()))
    assert ours.shape == (2, lm.args.num_codebooks, lm.args.vocab_size)
    assert np.abs(ref).max() > 1e-3 and worst < 1e-4, worst


def test_the_onnx_step_will_not_run_on_caches_set_up_after_it_was_bound(engine, setup):
    _, step = setup
    lm = conditioned(engine, 128)
    step.bind_model(lm)
    tokens = np.zeros((2, lm.args.num_codebooks, 1), dtype=np.int64)
    step.logits(tokens, 0)
    conditioned(engine, 64)                # new cache tensors: the bound memory is no longer the model's
    with pytest.raises(RuntimeError, match="bind it again"):
        step.logits(tokens, 1)
    step.bind_model(lm)
    assert np.isfinite(step.logits(tokens, 0)).all()
    # the session writes the row at pos into memory it was lent: a position or batch off the cache is refused
    with pytest.raises(ValueError, match="do not fit"):
        step.logits(tokens, 128)
    with pytest.raises(ValueError, match="do not fit"):
        step.logits(tokens[:1], 1)


@pytest.mark.parametrize("params", [Sampling(guidance=3.0, temperature=1.0, top_k=20),
                                    Sampling(guidance=3.0, temperature=0)], ids=["top_k", "greedy"])
def test_onnx_decoding_gives_the_eager_tokens_across_window_slides(setup, params):
    lm, step = setup
    lm.setup_caches(2, MAX_SEQ, 64)

    def run(step):   # 100 frames through a 64-position window that keeps 20 frames per slide
        gen = Generation(lm, 1, params, MAX_SEQ, seed=9, keep_frames=20, step=step)
        return torch.cat(list(iter_frames(gen, 100, lambda: False, lambda ready: None)), dim=-1)

    with torch.no_grad():
        eager = run(None)
        onnx = run(step)
    assert onnx.shape == eager.shape == (1, lm.args.num_codebooks, 100)
    assert torch.equal(onnx, eager)


def test_onnx_step_refuses_a_model_it_cannot_share_memory_with(setup):
    lm, step = setup
    lm_bf16 = type(lm)(lm.args).to(torch.bfloat16)
    lm_bf16.setup_caches(2, MAX_SEQ, 64)
    with pytest.raises(ValueError, match="float32 on the CPU"):
        step.bind_model(lm_bf16)


@pytest.mark.parametrize("arch", ["tiny", "tiny-stereo"])
def test_onnx_encodec_decoder_matches_torch_within_1e4(arch, tiny, tmp_path, cache_dir):
    path = tiny if arch == "tiny" else write_test_model(tmp_path / arch, arch)
    eng = MusicGenEngine.load(str(path), device="cpu", dtype="float32")
    ck = eng.ck
    k = ck.lm.args.num_codebooks // ck.audio_channels
    onnx_path, _ = cached_codec(ck.codec, k)
    run = OnnxCodec(onnx_path, ck.codec)
    gen = torch.Generator().manual_seed(1)
    for rows, frames in [(1, 56), (3, 31), (2, 9), (1, MIN_FRAMES - 1)]:     # the last one goes to torch
        codes = torch.randint(0, ck.lm.args.vocab_size, (k, rows, frames), generator=gen)
        ours, ref = run(codes).numpy(), torch_decode(ck.codec, codes).numpy()
        assert ours.shape == ref.shape == (rows, 1, frames * eng.ck.hop)
        assert np.abs(ref).max() > 1e-2 and np.abs(ours - ref).max() < 1e-4
    # the streaming decoder's windows, context and crossfade are the same with either runner
    codes = torch.randint(0, ck.lm.args.vocab_size, (2, ck.lm.args.num_codebooks, 200), generator=gen)
    streams = [StreamingDecoder(ck.codec, ck.audio_channels, eng.ck.hop, run=r) for r in (None, run)]
    out = [np.concatenate([s.push(codes[..., i: i + 9]) for i in range(0, 200, 9)] + [s.flush()], axis=-1)
           for s in streams]
    whole = decode_codes(ck.codec, codes, ck.audio_channels).numpy()
    assert out[0].shape == out[1].shape == whole.shape == (2, ck.audio_channels, 200 * eng.ck.hop)
    assert np.abs(out[1] - out[0]).max() < 1e-4


def test_engine_onnx_backend_streams_the_eager_engines_tokens_and_audio(engine, onnx_engine):
    spec = GenerationSpec(grid=Grid(120), bars=1, prompt="dusty lofi drums", variations=2, seed=4)
    eager = np.concatenate(list(engine.stream(spec).blocks), axis=-1)
    audio = np.concatenate(list(onnx_engine.stream(spec).blocks), axis=-1)
    info = onnx_engine.info()
    assert info["decode_backend"] == "onnx" and info["dtype"] == "float32"
    assert info["codec_decode"] in ("onnx", "torch") and "ms" in info["codec_decode_reason"]
    assert audio.shape == eager.shape and np.abs(eager).max() > 1e-2
    assert np.abs(audio - eager).max() < 1e-4
    # with torch decoding the chunks, the audio is bit-identical: the ONNX step chose the eager tokens
    codec, onnx_engine.decoding.codec = onnx_engine.decoding.codec, None
    try:
        same = np.concatenate(list(onnx_engine.stream(spec).blocks), axis=-1)
    finally:
        onnx_engine.decoding.codec = codec
    assert np.array_equal(same, eager)


def test_exports_are_kept_on_disk_keyed_by_the_weights(engine, onnx_engine, cache_dir):
    lm = engine.ck.lm
    path, exported = cached_step(lm)
    assert not exported and path == onnx_engine.decoding.step.path and path.parent.parent == cache_dir / "onnx"
    other = type(lm)(lm.args)              # same architecture, other weights: another entry
    assert weights_digest(other, other.args) != weights_digest(lm, lm.args)


def test_a_damaged_cache_entry_is_exported_again(tmp_path):
    calls = []

    def export(path):
        calls.append(path)
        path.write_bytes(b"graph")
        (path.parent / (path.name + ".data")).write_bytes(b"weights" * 100)

    parts = {"weights": "abc", "format": 1}
    first, new = cached_export("thing", parts, export, root=tmp_path)
    again, new_again = cached_export("thing", parts, export, root=tmp_path)
    assert (new, new_again, again, len(calls)) == (True, False, first, 1)
    data = first.parent / "model.onnx.data"
    data.write_bytes(b"weights" * 99)                    # truncated
    _, new = cached_export("thing", parts, export, root=tmp_path)
    assert new and data.read_bytes() == b"weights" * 100
    data.write_bytes(b"X" + data.read_bytes()[1:])       # one byte changed, same size
    assert cached_export("thing", parts, export, root=tmp_path)[1]
    (first.parent / "manifest.json").unlink()            # an entry someone copied half of
    assert cached_export("thing", parts, export, root=tmp_path)[1]
    assert len(calls) == 4
    assert cached_export("thing", {**parts, "weights": "abd"}, export, root=tmp_path)[0] != first
    assert not [p for p in (tmp_path / "onnx").iterdir() if p.name.startswith(".tmp")]


def test_a_failed_export_leaves_no_entry(tmp_path):
    def export(path):
        path.write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):    # the exporter's own error, not another
        cached_export("thing", {"weights": "x"}, export, root=tmp_path)
    assert list((tmp_path / "onnx").iterdir()) == []


def test_auto_measures_once_on_cpu_and_keeps_its_verdict(tiny, cache_dir):
    from stemd.models.musicgen.fast import int8

    first = MusicGenEngine.load(str(tiny), device="cpu", backend="auto")
    info = first.info()
    assert info["decode_backend"] in ("onnx", "onnx-int8", "eager", "int8")
    assert info["decode_backend_reason"].startswith("auto: measured at start")
    rates = info["decode_steps_per_s"]
    names = {"onnx float32": "onnx", "onnx int8": "onnx-int8", f"eager {engine_dtype_name()}": "eager"}
    if int8.available():
        names["int8"] = "int8"
    assert set(rates) == set(names) and all(v > 0 for v in rates.values())
    winner = names[max(names, key=lambda n: rates[n])]
    assert info["decode_backend"] == winner
    assert int8.is_int8(first.ck.lm) == (winner == "int8")
    kept = MusicGenEngine.load(str(tiny), device="cpu", backend="auto")
    again = kept.info()
    assert again["decode_backend"] == winner and "kept on disk" in again["decode_backend_reason"]
    assert int8.is_int8(kept.ck.lm) == (winner == "int8")
    assert again["decode_steps_per_s"] == rates
    for i in (info, again):      # the chunks go where they decode faster, whichever step won
        assert "ms" in i["codec_decode_reason"] and i["codec_decode"] in i["codec_decode_reason"].split("-> ")[-1]
    spec = GenerationSpec(grid=Grid(120), bars=1, prompt="dusty lofi drums", variations=1, seed=1)
    assert sum(b.shape[-1] for b in first.stream(spec).blocks) >= 2 * 32000


def test_auto_is_the_default_and_the_environment_or_the_caller_overrides_it(tiny, cache_dir, monkeypatch):
    from stemd.models.registry import chosen_backend

    monkeypatch.delenv("STEMD_DECODE_BACKEND")          # conftest's eager for every other test
    assert chosen_backend(None) == ("auto", "the default")
    plain = MusicGenEngine.load(str(tiny), device="cpu")
    assert plain.info()["decode_backend_reason"].startswith("auto: measured")
    assert plain.backend == MusicGenEngine.load(str(tiny), device="cpu", backend="auto").backend
    monkeypatch.setenv("STEMD_DECODE_BACKEND", "eager")
    assert chosen_backend(None) == ("eager", "$STEMD_DECODE_BACKEND")
    assert MusicGenEngine.load(str(tiny), device="cpu").info()["decode_backend_reason"] == "$STEMD_DECODE_BACKEND"
    assert chosen_backend("onnx") == ("onnx", "asked for")


def engine_dtype_name() -> str:
    from stemd.models.musicgen.decoding import pick_dtype

    return str(pick_dtype(None, torch.device("cpu"))).replace("torch.", "")


def test_backend_choices_that_cannot_work_are_clear_errors(tiny, engine):
    with pytest.raises(EngineError, match="runs float32"):
        MusicGenEngine.load(str(tiny), device="cpu", dtype="bfloat16", backend="onnx")
    with pytest.raises(EngineError, match="backend must be one of auto, eager, compiled, cuda-graph, onnx, onnx-int8, int8"):
        MusicGenEngine.load(str(tiny), device="cpu", backend="tensorrt")
    bf16 = MusicGenEngine.load(str(tiny), device="cpu", dtype="bfloat16", backend="auto")
    assert bf16.info()["decode_backend"] == "eager" and "float32" in bf16.info()["decode_backend_reason"]


def test_a_kept_int8_verdict_loads_the_int8_weights(tiny, cache_dir, monkeypatch):
    from stemd.models.musicgen.fast import choose, int8

    if not int8.available():
        pytest.skip("this torch has no int8 CPU kernel")
    kept = {"backend": "int8", "rates": {"onnx float32": 10.0, "eager bfloat16": 9.0, "int8": 14.0},
            "measured": "2026-12-01 16:40"}
    monkeypatch.setattr(choose, "load_decision", lambda key: kept)
    engine = MusicGenEngine.load(str(tiny), device="cpu", backend="auto")
    info = engine.info()
    assert info["decode_backend"] == "int8" and int8.is_int8(engine.ck.lm)
    assert info["decode_backend_reason"] == ("auto: measured 2026-12-01 16:40 (kept on disk), steps/s: "
                                             "onnx float32 10.00, eager bfloat16 9.00, int8 14.00 -> int8")
    assert info["decode_steps_per_s"] == kept["rates"] and "ms" in info["codec_decode_reason"]


def test_the_onnx_int8_step_errs_from_float32_as_stated_and_makes_takes(engine, cache_dir):
    """ONNX Runtime's weight-only int8 step against the float32 torch model on the same tokens, then a
    whole take through an engine that decodes with it."""
    from stemd.models.base import GenerationSpec
    from stemd.models.musicgen.fast.onnx_step import OnnxStep, cached_int8_step

    lm = engine.ck.lm
    path, made = cached_int8_step(lm)
    assert path.parent.name.startswith("lm-step-int8-") and cached_int8_step(lm) == (path, False)
    step = OnnxStep(path)
    text, mask = engine.ck.encode_text("dusty lofi drums, 90 bpm", 1, guided=True)
    torch.manual_seed(0)
    errs, spread = [], []
    lm.setup_caches(2, 64, 64)
    lm.set_conditioning(text, mask)
    step.bind_model(lm)
    for pos in range(6):
        tokens = torch.randint(0, lm.args.vocab_size, (2, lm.args.num_codebooks, 1))
        ours = torch.from_numpy(step.logits(tokens.numpy().copy(), pos))
        with torch.no_grad():
            ref = lm(tokens, torch.tensor([pos]))[:, :, -1]     # rewrites the cache row as the step did
        errs.append(float((ours - ref).abs().max()))
        spread.append(float(ref.std()))
    assert 0 < max(errs) < 0.1 * min(spread), (errs, spread)
    fast = MusicGenEngine(engine.ck, decoding.make("onnx-int8", engine.ck))
    assert fast.info()["decode_backend"] == "onnx-int8"
    spec = GenerationSpec(grid=Grid(97, "7/8"), bars=1, prompt="dusty lofi drums", variations=1, seed=2)
    audio = np.concatenate(list(fast.stream(spec).blocks), axis=-1)
    assert np.isfinite(audio).all() and audio.shape[-1] >= 32000 * 60 / 97 * 3.5


def test_the_kept_verdict_is_keyed_by_the_cpu_so_another_kind_of_machine_measures_again(tiny, monkeypatch):
    from stemd.models.musicgen.fast import choose

    key = choose.decision_key(tiny, torch.bfloat16)
    assert choose.decision_key(tiny, torch.bfloat16) == key
    # another CPU's name, and another vector ISA, than this machine's (the test runs on AVX2 and AVX512 hosts)
    monkeypatch.setattr(choose, "cpu_name", lambda: "a CPU no machine is called")
    assert choose.decision_key(tiny, torch.bfloat16) != key
    monkeypatch.undo()
    other_isa = "AVX512" if torch.backends.cpu.get_cpu_capability() != "AVX512" else "AVX2"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other_isa)
    assert choose.decision_key(tiny, torch.bfloat16) != key


def test_the_onnx_step_keeps_torch_to_one_thread_while_it_runs_and_gives_the_threads_back(setup, monkeypatch):
    lm, step = setup
    seen = []
    real = step.forward
    monkeypatch.setattr(step, "forward", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    torch.set_num_threads(2)
    lm.setup_caches(2, MAX_SEQ, 64)
    with torch.no_grad():
        gen = Generation(lm, 1, Sampling(guidance=3.0, temperature=1.0, top_k=20), MAX_SEQ, seed=1, step=step)
        gen.decode_n_tokens(5)
    assert seen[-5:] == [1] * 5 and torch.get_num_threads() == 2
