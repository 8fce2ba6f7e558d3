"""The MusicGen engine on a tiny random-weight checkpoint written by `stemd make-test-model`.

Reference equivalence is checked against transformers' MusicgenForConditionalGeneration on the same
files; the full-size architecture is in test_musicgen_small.py (slow).
"""

import json
import logging

import numpy as np
import pytest
import soundfile
import torch

from stemd.models.base import Audio, Cancelled, GenerationSpec, ModelNotFound
from stemd.models.conform.stream import first_heard_seconds
from stemd.models.musicgen.engine import MusicGenEngine
from stemd.models.musicgen.generate import Generation, Sampling, codebook_delays, generate_tokens, iter_frames
from stemd.models.musicgen.streaming import StreamingDecoder, decode_codes
from stemd.timing import Grid

logging.getLogger("transformers").setLevel(logging.ERROR)


def reference(path):
    from transformers import MusicgenForConditionalGeneration

    return MusicgenForConditionalGeneration.from_pretrained(str(path)).eval()


def guided_text(engine, prompt, variations=1):
    return engine.ck.encode_text(prompt, variations, guided=True)


def reference_greedy_codes(ref, tok, frames, guidance):
    """Codes transformers' generate() hands to EnCodec, captured at its decode call."""
    captured = []
    decode = ref.audio_encoder.decode

    def spy(codes, *args, **kwargs):
        captured.append(codes.clone())
        return decode(codes, *args, **kwargs)

    ref.audio_encoder.decode = spy
    k = ref.decoder.num_codebooks // ref.config.decoder.audio_channels
    with torch.no_grad():
        ref.generate(**tok, do_sample=False, guidance_scale=guidance, max_new_tokens=frames + k - 1)
    ref.audio_encoder.decode = decode
    if len(captured) == 2:  # stereo: left codebooks then right, interleave them back
        left, right = captured[0][0], captured[1][0]
        return torch.stack([left, right], dim=2).reshape(left.shape[0], -1, left.shape[-1])
    return captured[0][0]


def test_logits_match_transformers_within_1e4_fp32_with_and_without_text(tiny, engine):
    ref = reference(tiny)
    tok = engine.ck.tokenizer(["dusty lofi drums, 90 bpm"], return_tensors="pt")
    args = engine.ck.lm.args
    torch.manual_seed(0)
    codes = torch.randint(0, args.vocab_size + 1, (2, args.num_codebooks, 16))   # pad id included
    with torch.no_grad():
        text = engine.ck.text_encoder(**tok).last_hidden_state
        # reference: conditional row, and the unconditional row as its generate() builds it
        ref_cond = ref(**tok, decoder_input_ids=codes[:1].reshape(-1, 16)).logits
        ref_uncond = ref(encoder_outputs=(torch.zeros_like(text),), attention_mask=torch.zeros_like(tok.attention_mask),
                         decoder_input_ids=codes[1:].reshape(-1, 16)).logits
        hidden = torch.cat([text, torch.zeros_like(text)])
        mask = torch.cat([tok.attention_mask, torch.zeros_like(tok.attention_mask)])
        engine.ck.lm.setup_caches(2, 64, 64)
        engine.ck.lm.set_conditioning(hidden, mask)
        ours = engine.ck.lm(codes, torch.arange(16))
    assert (ours[0] - ref_cond).abs().max() < 1e-4
    assert (ours[1] - ref_uncond).abs().max() < 1e-4
    assert ref_cond.abs().max() > 1e-3   # not a comparison of zeros


@pytest.mark.parametrize("which", ["tiny", "tiny_stereo"])
def test_greedy_decoding_with_guidance_gives_transformers_tokens(which, request):
    path = request.getfixturevalue(which)
    engine = MusicGenEngine.load(str(path), device="cpu", dtype="float32")
    ref = reference(path)
    tok = engine.ck.tokenizer(["driving techno bassline, 128 bpm"], return_tensors="pt")
    expected = reference_greedy_codes(ref, tok, frames=40, guidance=3.0)
    hidden, mask = guided_text(engine, "driving techno bassline, 128 bpm")
    lm = engine.ck.lm
    lm.setup_caches(2, 128, 64)
    lm.set_conditioning(hidden, mask)
    ours = generate_tokens(lm, 40, 1, Sampling(guidance=3.0, temperature=0), max_seq=128)
    assert ours.shape == expected.shape == (1, lm.args.num_codebooks, 40)
    assert torch.equal(ours, expected)     # the last frames too: pads are forced after codebook 0 ends


@pytest.mark.parametrize("which", ["tiny", "tiny_stereo"])
def test_the_last_frames_follow_the_reference_pads_not_codes_sampled_past_the_end(which, request):
    """After codebook 0's last frame the reference feeds pads while the delayed codebooks finish; a
    step that fed codes sampled past the end changes those codebooks' last frames. Many prompts and
    lengths: with this tiny model a single one can agree by chance."""
    path = request.getfixturevalue(which)
    engine = MusicGenEngine.load(str(path), device="cpu", dtype="float32")
    ref = reference(path)
    lm = engine.ck.lm
    for prompt, frames in [("a", 7), ("warm analog bass", 11), ("glitchy breakbeat at 174", 16),
                           ("dusty boom bap drums", 23), ("shimmering pads", 30)]:
        tok = engine.ck.tokenizer([prompt], return_tensors="pt")
        expected = reference_greedy_codes(ref, tok, frames=frames, guidance=3.0)
        hidden, mask = guided_text(engine, prompt)
        lm.setup_caches(2, 64, 64)
        lm.set_conditioning(hidden, mask)
        gen = Generation(lm, 1, Sampling(guidance=3.0, temperature=0), 64)
        ours = torch.cat(list(iter_frames(gen, frames, lambda: False, lambda ready: None)), dim=-1)
        assert torch.equal(ours, expected), f"{which} {prompt!r} {frames} frames: {(ours != expected).nonzero()}"
        delays = codebook_delays(lm.args.num_codebooks, lm.args.audio_channels)
        for i, d in enumerate(delays):   # what the model was fed after each codebook's end: pads
            assert torch.all(gen.tokens[:, i, frames + d + 1: gen.pos + 1] == lm.args.pad_token)


def test_same_seed_same_tokens_and_variations_differ(engine):
    lm = engine.ck.lm
    hidden, mask = guided_text(engine, "jazz piano trio", variations=3)
    lm.setup_caches(6, 128, 64)
    lm.set_conditioning(hidden, mask)
    params = Sampling(guidance=3.0, temperature=1.0, top_k=32, top_p=0.9)
    a = generate_tokens(lm, 30, 3, params, max_seq=128, seed=11)
    b = generate_tokens(lm, 30, 3, params, max_seq=128, seed=11)
    c = generate_tokens(lm, 30, 3, params, max_seq=128, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])
    assert int(a.max()) < lm.args.vocab_size     # never the pad id in the output


def test_top_k_1_is_greedy(engine):
    lm = engine.ck.lm
    hidden, mask = guided_text(engine, "ambient pad")
    lm.setup_caches(2, 128, 64)
    lm.set_conditioning(hidden, mask)
    greedy = generate_tokens(lm, 20, 1, Sampling(guidance=3.0, temperature=0), max_seq=128)
    top1 = generate_tokens(lm, 20, 1, Sampling(guidance=3.0, temperature=1.0, top_k=1), max_seq=128, seed=3)
    assert torch.equal(greedy, top1)


def test_with_top_p_set_top_k_is_not_used_as_audiocraft_samples(engine):
    lm = engine.ck.lm
    hidden, mask = guided_text(engine, "ambient pad")
    lm.setup_caches(2, 128, 64)
    lm.set_conditioning(hidden, mask)
    both = generate_tokens(lm, 20, 1, Sampling(guidance=3.0, temperature=1.0, top_k=1, top_p=0.95), max_seq=128,
                           seed=3)
    top_p = generate_tokens(lm, 20, 1, Sampling(guidance=3.0, temperature=1.0, top_k=0, top_p=0.95), max_seq=128,
                            seed=3)
    greedy = generate_tokens(lm, 20, 1, Sampling(guidance=3.0, temperature=0), max_seq=128)
    assert torch.equal(both, top_p) and not torch.equal(both, greedy)   # top_k=1 alone would be greedy


@pytest.mark.parametrize("first, ask", [(0, 0), (110, 0), (110, 131)],
                         ids=["chunks", "first-piece-sized", "then-asked"])
def test_streamed_audio_equals_one_shot_decode_within_1e5(engine, first, ask):
    torch.manual_seed(0)
    codes = torch.randint(0, engine.ck.lm.args.vocab_size, (2, 4, 300))
    whole = decode_codes(engine.ck.codec, codes, 1).numpy()
    stream = StreamingDecoder(engine.ck.codec, 1, engine.ck.hop, first=first)
    pieces = []
    for i in range(0, 300, 7):
        pieces.append(stream.push(codes[..., i: i + 7]))
        if ask and pieces[-1].shape[-1]:
            stream.ask(ask)          # after the first piece, as conform asks once it has read bar 1's end
    pieces.append(stream.flush())
    if ask:
        sizes = [p.shape[-1] // engine.ck.hop for p in pieces if p.shape[-1]]
        assert sizes[:2] == [110, ask - 110]
    streamed = np.concatenate(pieces, axis=-1)
    assert streamed.shape == whole.shape == (2, 1, 300 * engine.ck.hop)
    assert np.abs(whole).max() > 0.01
    assert np.abs(streamed - whole).max() < 1e-5


def test_streaming_decodes_a_bounded_window_per_chunk(engine):
    decoded = []
    codec = engine.ck.codec

    class Spy:
        quantizer = codec.quantizer

        def decoder(self, x):
            decoded.append(x.shape[-1])
            return codec.decoder(x)

    stream = StreamingDecoder(Spy(), 1, engine.ck.hop, chunk=25, left=25, right=6)
    for _ in range(40):
        stream.push(torch.randint(0, 64, (1, 4, 25)))
    assert max(decoded) == 25 + 25 + 6          # however long the take, never the history
    decoded.clear()
    stream = StreamingDecoder(Spy(), 1, engine.ck.hop, chunk=25, left=25, right=6, first=110)
    sizes = [stream.push(torch.randint(0, 64, (1, 4, 1))).shape[-1] for _ in range(200)]
    # nothing until the first piece and its right context exist, then that piece in one window
    assert sizes.index(110 * engine.ck.hop) == 110 + 6 - 1 and sum(sizes[:110 + 6 - 1]) == 0
    assert decoded[0] == 110 + 6 and max(decoded[1:]) == 25 + 25 + 6
    # asked for frames 110 chunks away: one piece of at most the first's length at a time
    decoded.clear()
    stream = StreamingDecoder(Spy(), 1, engine.ck.hop, chunk=25, left=25, right=6, first=110)
    stream.ask(400)
    sizes = [stream.push(torch.randint(0, 64, (1, 4, 1))).shape[-1] // engine.ck.hop for _ in range(500)]
    assert [n for n in sizes if n][:5] == [110, 110, 110, 70, 25]


def spec(bars=2, variations=2, seed=7, **kw):
    return GenerationSpec(grid=Grid(120, "4/4"), bars=bars, prompt="lofi drums", variations=variations, seed=seed,
                          sample_rate=32000, channels=1, **kw)


def test_stream_is_lazy_incremental_and_long_enough(engine):
    s = spec(bars=2)
    stream = engine.stream(s)
    assert stream.sample_rate == 32000 and stream.tempo_hint == 120.0 and not stream.on_grid
    blocks = list(stream.blocks)
    assert len(blocks) > 3 and all(b.dtype == np.float32 and b.shape[:2] == (2, 1) for b in blocks)
    total = sum(b.shape[-1] for b in blocks)
    assert float(s.seconds) * 32000 * 1.05 < total < float(s.seconds) * 32000 * 1.2


def test_should_stop_cancels_between_steps_and_close_stops_decoding(engine):
    steps = []
    stream = engine.stream(spec(bars=8), should_stop=lambda: len(steps) >= 5, on_progress=steps.append)
    with pytest.raises(Cancelled):
        list(stream.blocks)
    assert len(steps) == 5
    progress = []
    stream = engine.stream(spec(bars=8), on_progress=progress.append)
    next(stream.blocks)
    stream.close()
    seen = len(progress)
    assert 0 < progress[-1] < 0.5 and len(progress) == seen   # nothing decoded after close


def test_continuation_is_trimmed_from_the_output(engine):
    rng = np.random.default_rng(0)
    selection = Audio(rng.standard_normal((2, 44100)).astype(np.float32) * 0.1, 44100)   # 1 s stereo, 44.1 kHz
    s = spec(bars=1, variations=1, continuation=selection)
    total = sum(b.shape[-1] for b in engine.stream(s).blocks)
    plain = sum(b.shape[-1] for b in engine.stream(spec(bars=1, variations=1)).blocks)
    assert total == plain   # the selection is context, not output


def test_long_take_slides_the_window(engine, monkeypatch):
    import stemd.models.musicgen.engine as eng

    monkeypatch.setattr(eng, "WINDOW_SECONDS", 2.0)
    monkeypatch.setattr(eng, "KEEP_SECONDS", 0.6)
    s = spec(bars=3, variations=1)      # 6 s at 120 BPM: three windows of 2 s
    audio = np.concatenate(list(engine.stream(s).blocks), axis=-1)
    assert audio.shape[-1] >= float(s.seconds) * 32000
    assert np.abs(audio[..., -32000:]).max() > 0.01    # the end is audio too, not silence


def test_info_marks_a_test_model(engine):
    info = engine.info()
    assert info["test_model"] is True and "noise" in info["note"]
    assert info["sample_rate"] == 32000 and info["device"] == "cpu" and info["dtype"] == "float32"


def test_missing_model_is_one_line_with_where_and_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as e:
        MusicGenEngine.load("facebook/musicgen-medium", device="cpu")
    text = str(e.value)
    assert "\n" not in text
    assert "facebook/musicgen-medium" in text and "stemd pull facebook/musicgen-medium" in text
    assert "cache" in text


def test_render_writes_k_takes_of_exactly_n_bars_reproducibly(tiny, tmp_path):
    from stemd.cli import main

    def render(out):
        rc = main(["render", "--model", str(tiny), "--prompt", "lofi drums", "--bars", "2", "--bpm", "137.5",
                   "--variations", "2", "--seed", "5", "--sample-rate", "44100", "--out", str(out)])
        assert rc == 0
        return sorted(out.glob("*.wav"))

    first, second = render(tmp_path / "a"), render(tmp_path / "b")
    assert len(first) == len(second) == 2
    expected = Grid("137.5").span_samples(0, 2, 44100)
    takes = []
    for a, b in zip(first, second):
        x, rate = soundfile.read(a, always_2d=True)
        y, _ = soundfile.read(b, always_2d=True)
        assert rate == 44100 and x.shape[0] == expected
        assert np.array_equal(x, y)                       # same seed, same audio on CPU
        takes.append(x)
        sidecar = json.loads(a.with_suffix(".json").read_text())
        assert sidecar["seed"] == 5 or sidecar.get("request", {}).get("seed") == 5
    assert not np.allclose(takes[0], takes[1])             # variations differ


def write_audiocraft_copy(hf_folder, out):
    """The tiny test model as audiocraft's export_lm would ship it (LM), with T5 and EnCodec beside it."""
    import yaml

    ref = reference(hf_folder)
    out.mkdir()
    ref.text_encoder.save_pretrained(out / "t5")
    MusicGenEngine.load(str(hf_folder), device="cpu").ck.tokenizer.save_pretrained(out / "t5")
    ref.audio_encoder.save_pretrained(out / "encodec")
    names = {"fc1": "linear1", "fc2": "linear2", "self_attn_layer_norm": "norm1",
             "encoder_attn_layer_norm": "norm_cross", "final_layer_norm": "norm2"}
    state = {}
    for key, value in ref.state_dict().items():
        if key.startswith("decoder.lm_heads."):
            state[key.replace("decoder.lm_heads.", "linears.")] = value
        elif key.startswith("enc_to_dec_proj."):
            state[key.replace("enc_to_dec_proj.", "condition_provider.conditioners.description.output_proj.")] = value
        elif key.startswith("decoder.model.decoder."):
            key = key[len("decoder.model.decoder."):]
            key = key.replace("embed_tokens.", "emb.").replace("layer_norm.", "out_norm.") \
                if not key.startswith("layers.") else "transformer." + key
            for ours, theirs in names.items():
                key = key.replace(f".{ours}.", f".{theirs}.")
            key = key.replace(".encoder_attn.", ".cross_attention.")
            state[key] = value
    for key in [k for k in state if k.endswith("q_proj.weight")]:
        base = key[: -len("q_proj.weight")]
        state[base + "in_proj_weight"] = torch.cat([state.pop(base + p + "_proj.weight") for p in "qkv"])
    d = ref.config.decoder
    cfg = {"transformer_lm": {"dim": d.hidden_size, "num_heads": d.num_attention_heads, "num_layers": d.num_hidden_layers,
                              "hidden_scale": d.ffn_dim // d.hidden_size, "card": d.vocab_size, "n_q": d.num_codebooks},
           "conditioners": {"description": {"model": "t5", "t5": {"name": str(out / "t5")}}}}
    torch.save({"best_state": state, "xp.cfg": yaml.safe_dump(cfg), "exported": True}, out / "state_dict.bin")
    torch.save({"pretrained": str(out / "encodec"), "exported": True}, out / "compression_state_dict.bin")
    return out


def test_audiocraft_format_loads_to_the_same_model(tiny, engine, tmp_path):
    folder = write_audiocraft_copy(tiny, tmp_path / "finetune")
    other = MusicGenEngine.load(str(folder), device="cpu", dtype="float32")
    s = spec(bars=1, variations=2, seed=3)
    a = np.concatenate(list(engine.stream(s).blocks), axis=-1)
    b = np.concatenate(list(other.stream(s).blocks), axis=-1)
    assert a.shape == b.shape and np.abs(a - b).max() < 1e-5


def test_a_chunk_runner_gets_the_torch_decoders_windows_and_changes_nothing_else(engine):
    codec = engine.ck.codec
    torch.manual_seed(1)
    codes = torch.randint(0, engine.ck.lm.args.vocab_size, (2, 4, 120))
    seen = []

    def run(kbn):                      # what fast.onnx_codec.OnnxCodec stands in for: (K, B, n) -> (B, 1, n * hop)
        seen.append(tuple(kbn.shape))
        return codec.decoder(codec.quantizer.decode(kbn))

    plain, swapped = StreamingDecoder(codec, 1, engine.ck.hop), StreamingDecoder(codec, 1, engine.ck.hop, run=run)
    out = [np.concatenate([d.push(codes[..., i: i + 10]) for i in range(0, 120, 10)] + [d.flush()], axis=-1)
           for d in (plain, swapped)]
    assert seen and all(s[:2] == (4, 2) for s in seen) and max(s[2] for s in seen) == 25 + 25 + 6
    assert np.array_equal(out[0], out[1])


def test_the_grid_reaches_the_model_however_long_the_prompt(engine):
    from stemd.models.base import GenerationSpec
    from stemd.models.musicgen.engine import describe
    from stemd.models.musicgen.loading import MAX_TEXT_TOKENS
    from stemd.timing import Grid, Meter

    spec = GenerationSpec(grid=Grid(97, Meter(7, 8)), bars=1, prompt="dusty drums. ", extra={"key": "F# minor"})
    assert describe(spec) == ("dusty drums", "7/8 time. bpm: 97.0. key: F# minor")   # audiocraft's training form
    tok = engine.ck.tokenizer
    long = GenerationSpec(grid=Grid(97, Meter(7, 8)), bars=1, prompt=("warm rhodes chords " * 120)[:2000],
                          extra={"key": "F# minor"})
    ids = engine.ck.text_ids(*describe(long))
    assert len(ids) == MAX_TEXT_TOKENS and ids[-1] == tok.eos_token_id
    tail = tok(". 7/8 time. bpm: 97.0. key: F# minor", add_special_tokens=False)["input_ids"]
    assert ids[-1 - len(tail):-1] == tail                            # the words were cut, not the grid
    short = engine.ck.text_ids(*describe(spec))
    assert short == tok("dusty drums. 7/8 time. bpm: 97.0. key: F# minor")["input_ids"]   # as T5 reads it whole


@pytest.mark.parametrize("change, says", [
    (lambda cfg, state: cfg["conditioners"].update(self_wav={"model": "chroma_stem"}), "chroma conditioning"),
    (lambda cfg, state: cfg.update(codebooks_pattern={"modeling": "unroll"}), "'unroll' codebook pattern"),
    (lambda cfg, state: state.update({"transformer.layers.0.linear1.bias": torch.zeros(1)}), "feed-forward or attention"),
    (lambda cfg, state: cfg["transformer_lm"].update(layer_scale=0.1), "layer scale"),
])
def test_an_audiocraft_checkpoint_stemd_cannot_run_is_refused_in_one_line(tiny, tmp_path, change, says):
    import yaml

    folder = write_audiocraft_copy(tiny, tmp_path / "odd")
    pkg = torch.load(folder / "state_dict.bin", weights_only=True)
    cfg = yaml.safe_load(pkg["xp.cfg"])
    change(cfg, pkg["best_state"])
    pkg["xp.cfg"] = yaml.safe_dump(cfg)
    torch.save(pkg, folder / "state_dict.bin")
    with pytest.raises(ModelNotFound, match=says) as e:
        MusicGenEngine.load(str(folder), device="cpu", dtype="float32")
    assert "\n" not in str(e.value) and "not supported" in str(e.value)


def test_the_first_block_is_what_conform_waits_for_and_needs_no_step_more(engine):
    # 97 BPM 3/4: conform's first estimate takes one bar (1.86 s) with a little slack before bar 1 leaves
    s = GenerationSpec(grid=Grid(97, "3/4"), bars=4, prompt="lofi drums", variations=1, seed=7,
                       sample_rate=32000, channels=1)
    need = engine.frames_for(first_heard_seconds(s))
    assert 1.86 * 1.05 < need / engine.ck.frame_rate < 1.86 * 1.05 + 0.15
    steps = []
    stream = engine.stream(s, on_progress=steps.append)
    first = next(stream.blocks)
    stream.close()
    right, delay = 6, engine.ck.lm.args.num_codebooks - 1
    assert first.shape[-1] == need * engine.ck.hop
    # the steps that make those frames, their right context and the codebook delay; none past them
    # (in 25-frame chunks the block that covers the need came up to 24 steps later)
    assert len(steps) == need + right + delay - 1
    # conform, having read a late downbeat, asks for more (AudioStream.need): the next block ends there
    steps.clear()
    stream = engine.stream(s, on_progress=steps.append)
    first = next(stream.blocks)
    asked = first.shape[-1] + 13 * engine.ck.hop - 100      # not on a frame: rounded up to one
    stream.need(asked)
    second = next(stream.blocks)
    stream.close()
    assert second.shape[-1] == 13 * engine.ck.hop and len(steps) == need + 13 + right + delay - 1
