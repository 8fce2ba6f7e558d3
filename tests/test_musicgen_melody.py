"""MusicGen melody checkpoints on a tiny random-weight test model (`stemd make-test-model --arch
musicgen-melody-tiny`: transformers' MusicgenMelodyForConditionalGeneration, saved; noise, not music).

stemd's own decoder, conditioned on a guide's chroma prepended to the text, is held to transformers'
MusicgenMelody on the same files in float32: logits, greedy codes with classifier-free guidance, audio."""

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stemd.models.base import GenerationSpec
from stemd.protocol import Sampling
from stemd.timing import Grid

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None or not SOUNDFONT.exists(),
                                reason="the fluidsynth program or Debian's fluid-soundfont-gm is not installed")
logging.getLogger("transformers").setLevel(logging.ERROR)

PROMPT = "warm rhodes over a slow groove"


@pytest.fixture(scope="module")
def melody(tmp_path_factory):
    """A musicgen-melody-tiny test model (random weights) loaded on the CPU in float32."""
    from stemd.models.musicgen.engine import MusicGenEngine
    from stemd.models.musicgen.testmodel import write_test_model

    folder = write_test_model(tmp_path_factory.mktemp("melody-tiny"), "musicgen-melody-tiny")
    return MusicGenEngine.load(str(folder), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def melody_tiny(melody):
    return Path(melody.ck.name)


@pytest.fixture(scope="module")
def ref(melody_tiny):
    from transformers import MusicgenMelodyForConditionalGeneration

    return MusicgenMelodyForConditionalGeneration.from_pretrained(str(melody_tiny)).eval()


def tone(seconds, *hz, rate=32000):
    t = np.arange(int(seconds * rate)) / rate
    return sum(np.sin(2 * np.pi * f * t) for f in hz).astype(np.float32)


def guide_spec(chords="Am | F", meter="3/4", bpm=97, temperature=0.0):
    """A take of a bar per chord (one bar without chords) at the model's rate; temperature 0 is greedy."""
    return GenerationSpec(grid=Grid(bpm, meter), bars=len(chords.split("|")) if chords else 1, prompt=PROMPT,
                          seed=3, sample_rate=32000, channels=1,
                          sampling=Sampling(temperature=temperature, guidance=3.0),
                          extra={"chords": chords} if chords else {})


def reference_codes(ref, tok, frames, guidance, features=None):
    """The codes transformers' generate() hands to EnCodec (greedy), given the chroma ``features`` or none."""
    from test_musicgen_engine import reference_greedy_codes

    return reference_greedy_codes(ref, dict(tok, **({} if features is None else {"input_features": features[None]})),
                                  frames, guidance)


def reference_audio(ref, ids, frames, features=None):
    """transformers' generate() audio for the T5 token ``ids`` (greedy, guidance 3), given the chroma or none."""
    tok = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    extra = {} if features is None else {"input_features": features[None]}
    with torch.no_grad():
        audio = ref.generate(**tok, **extra, do_sample=False, guidance_scale=3.0,
                             max_new_tokens=frames + ref.decoder.num_codebooks - 1)
    return audio[0].numpy()


def ours_greedy(melody, words, chroma, frames, guidance=3.0):
    from stemd.models.musicgen.generate import generate_tokens
    from stemd.models.musicgen.melody import melody_prefix

    lm, guided = melody.ck.lm, guidance > 1
    hidden, mask = melody.ck.encode_text(words, 1, guided=guided)
    prefix = melody_prefix(lm, hidden, mask, chroma, 1, guided=guided)
    lm.setup_caches(prefix.shape[0], 128, 64 * -(-prefix.shape[1] // 64))
    lm.set_conditioning(prefix)
    return generate_tokens(lm, frames, 1, Sampling(guidance=guidance, temperature=0), max_seq=128)


# -- the chroma ---------------------------------------------------------------------------------------

def torchaudio_spectrogram(wav, n_fft, hop):
    """torchaudio's Spectrogram(n_fft, hop_length=hop, power=2, center=True, normalized=True), written out in numpy
    from its documentation (reflect padding by n_fft // 2, periodic Hann window, |STFT|^2 / sum(window^2))."""
    x = np.pad(wav.numpy().astype(np.float64), ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = 1 + (x.shape[-1] - n_fft) // hop
    idx = np.arange(n_fft)[None] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[:, idx] * window, axis=-1)) ** 2 / (window ** 2).sum()
    return torch.from_numpy(spec.transpose(0, 2, 1).astype(np.float32))


def reference_chroma(samples):
    """transformers' MusicgenMelodyFeatureExtractor: the class itself when torchaudio is installed; else its own
    feature code (`_torch_extract_fbank_features`: filter bank, normalisation, one-hot) over the spectrogram above
    (torchaudio has no build for this torch)."""
    from transformers.models.musicgen_melody.feature_extraction_musicgen_melody import MusicgenMelodyFeatureExtractor

    if importlib.util.find_spec("torchaudio") is not None:
        return MusicgenMelodyFeatureExtractor()(samples, sampling_rate=32000, return_tensors="pt").input_features[0]
    from transformers.audio_utils import chroma_filter_bank

    fe = object.__new__(MusicgenMelodyFeatureExtractor)
    fe.n_fft, fe.hop_length = 16384, 4096
    fe.chroma_filters = torch.from_numpy(chroma_filter_bank(sampling_rate=32000, num_frequency_bins=16384, tuning=0,
                                                            num_chroma=12)).float()
    fe.spectrogram = lambda wav: torchaudio_spectrogram(wav, 16384, 4096)
    return fe._torch_extract_fbank_features(torch.from_numpy(samples[: 30 * 32000])[None])[0]


@pytest.mark.parametrize("seconds, frames", [(0.3, 5), (4.0, 32), (33.0, 235)])   # under one FFT; bars; over 30 s
def test_the_chroma_is_the_feature_extractors(seconds, frames):
    from stemd.models.musicgen.melody import chroma

    rng = np.random.default_rng(7)
    samples = (tone(seconds, 220.0, 329.6) + 0.3 * rng.standard_normal(int(seconds * 32000))).astype(np.float32)
    samples[: int(0.5 * 32000)] *= np.linspace(0, 1, min(len(samples), int(0.5 * 32000)), dtype=np.float32)
    ours, theirs = chroma(samples), reference_chroma(samples)
    assert ours.shape == theirs.shape == (frames, 12)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours.sum(-1), torch.ones(ours.shape[0]))      # one-hot


@pytest.mark.parametrize("pitch, name", [(440.0, 9), (261.63, 0), (392.0, 7)])   # A, C, G
def test_a_held_note_is_its_pitch_class(pitch, name):
    from stemd.models.musicgen.melody import chroma

    assert chroma(tone(2.0, pitch)).argmax(-1).tolist() == [name] * 16


# -- the model against transformers ------------------------------------------------------------------

def test_logits_match_transformers_within_1e5_with_the_guide_and_the_null_condition(melody, ref):
    from stemd.models.musicgen.melody import chroma, melody_prefix

    ck, lm = melody.ck, melody.ck.lm
    features = chroma(np.concatenate([tone(1.5, 440.0), tone(1.5, 261.63)]))
    assert len(set(features.argmax(-1).tolist())) > 1        # two pitch classes: the order of frames matters
    null = torch.zeros_like(features)
    null[:, 0] = 1
    tok = ck.tokenizer([PROMPT], return_tensors="pt")
    args = lm.args
    torch.manual_seed(0)
    codes = torch.randint(0, args.vocab_size + 1, (2, args.num_codebooks, 16))   # pad id included
    with torch.no_grad():
        # the reference: the conditional row, and the null row as its generate() builds it (text masked, null chroma)
        cond = ref(**tok, input_features=features[None], decoder_input_ids=codes[:1].reshape(-1, 16)).logits[:, -16:]
        uncond = ref(input_ids=tok.input_ids, attention_mask=torch.zeros_like(tok.attention_mask),
                     input_features=null[None], decoder_input_ids=codes[1:].reshape(-1, 16)).logits[:, -16:]
        hidden, mask = ck.encode_text(PROMPT, 1, guided=True)
        lm.setup_caches(2, 64, 320)
        lm.set_conditioning(melody_prefix(lm, hidden, mask, features, 1, guided=True))
        ours = lm(codes, torch.arange(16))
    assert (ours[0] - cond).abs().max() < 1e-5
    assert (ours[1] - uncond).abs().max() < 1e-5
    assert cond.abs().max() > 1e-3 and (cond - uncond).abs().max() > 1e-3    # not zeros, and the halves differ


@pytest.mark.parametrize("guided", [True, False])
def test_greedy_codes_with_a_guide_are_transformers_own(melody, ref, guided):
    from stemd.models.musicgen.melody import chroma

    features = chroma(np.concatenate([tone(1.0, 440.0), tone(1.0, 349.23), tone(1.0, 261.63)]))
    tok = melody.ck.tokenizer([PROMPT], return_tensors="pt")
    guidance = 3.0 if guided else 1.0
    expected = reference_codes(ref, tok, 40, guidance, features)
    ours = ours_greedy(melody, PROMPT, features, 40, guidance)
    assert ours.shape == expected.shape == (1, melody.ck.lm.args.num_codebooks, 40)
    assert torch.equal(ours, expected)


def test_a_stereo_melody_model_gives_transformers_codes(tmp_path):
    """musicgen-stereo-melody's layout: 8 codebooks, left and right interleaved, the same prefix."""
    from transformers import MusicgenMelodyForConditionalGeneration

    from stemd.models.musicgen.engine import MusicGenEngine
    from stemd.models.musicgen.melody import chroma
    from stemd.models.musicgen.testmodel import write_test_model

    folder = write_test_model(tmp_path, "musicgen-melody-tiny-stereo")
    stereo = MusicGenEngine.load(str(folder), device="cpu", dtype="float32")
    features = chroma(np.concatenate([tone(1.0, 440.0), tone(1.0, 349.23)]))
    tok = stereo.ck.tokenizer([PROMPT], return_tensors="pt")
    expected = reference_codes(MusicgenMelodyForConditionalGeneration.from_pretrained(str(folder)).eval(), tok, 30,
                               3.0, features)
    ours = ours_greedy(stereo, PROMPT, features, 30)
    assert ours.shape == expected.shape == (1, 8, 30) and stereo.channels == 2
    assert torch.equal(ours, expected)


def test_a_guide_changes_the_codes_and_text_only_is_transformers_without_input_features(melody, ref):
    from stemd.models.musicgen.melody import chroma

    tok = melody.ck.tokenizer([PROMPT], return_tensors="pt")
    expected = reference_codes(ref, tok, 40, 3.0)                    # no input_features: the null chroma
    text_only = ours_greedy(melody, PROMPT, None, 40)
    assert torch.equal(text_only, expected)
    with_guide = ours_greedy(melody, PROMPT, chroma(tone(3.0, 392.0)), 40)
    assert not torch.equal(with_guide, text_only)


# -- the engine: a guide rendered on the take's grid -----------------------------------------------------

def engine_audio(melody, spec):
    blocks = list(melody.stream(spec).blocks)
    return np.concatenate(blocks, axis=-1)


@fluidsynth
@pytest.mark.parametrize("meter, bpm", [("3/4", 97), ("7/8", 141)])
def test_the_engine_follows_a_chords_guide_as_transformers_does(melody, ref, meter, bpm, monkeypatch):
    """The take's chords rendered at 32 kHz on its grid, their chroma and the prompt with the grid: the engine's
    raw audio is transformers' generate() given that chroma and text (greedy, guidance 3)."""
    from stemd.models.guide_audio import spec_guide_audio
    from stemd.models.musicgen.engine import MARGIN, describe
    from stemd.models.musicgen.melody import chroma, melody_prefix

    spec = guide_spec(meter=meter, bpm=bpm)
    lm, prefixes = melody.ck.lm, []
    condition = lm.set_conditioning
    monkeypatch.setattr(lm, "set_conditioning", lambda prefix: (prefixes.append(prefix), condition(prefix)))
    ours = engine_audio(melody, spec)
    features = chroma(spec_guide_audio(spec, 32000, float(spec.seconds)))
    assert features.shape[0] == int(float(spec.seconds) * 32000) // 4096 + 1
    words, grid = describe(spec)
    hidden, mask = melody.ck.encode_text(words, 1, True, grid=grid)
    expected = melody_prefix(lm, hidden, mask, features, 1, guided=True)
    assert (prefixes[0] - expected).abs().max() < 1e-6, (prefixes[0] - expected).abs().max(-1).values   # its chroma
    frames = melody.frames_for(float(spec.seconds) * MARGIN) + 1
    theirs = reference_audio(ref, melody.ck.text_ids(words, grid), frames, features)
    assert ours.shape[-1] >= float(spec.seconds) * 32000
    n = min(ours.shape[-1], theirs.shape[-1])
    assert n >= float(spec.seconds) * 32000
    assert np.abs(ours[0, :, :n] - theirs[:, :n]).max() < 1e-5
    assert np.abs(theirs).max() > 1e-3


@fluidsynth
def test_two_guides_make_two_takes(melody):
    """Greedy: the tiny random model's logits move only a little with the chroma, too little to change draws
    dominated by the sampling noise, but enough to change the argmax."""
    a = engine_audio(melody, guide_spec("Am . F"))
    c = engine_audio(melody, guide_spec("E . C#m"))
    assert a.shape == c.shape and np.abs(a - c).max() > 1e-3


@fluidsynth
def test_the_same_guide_and_seed_make_the_same_take(melody):
    a = engine_audio(melody, guide_spec("Am . F", temperature=1.0))
    b = engine_audio(melody, guide_spec("Am . F", temperature=1.0))
    assert np.array_equal(a, b) and np.abs(a).max() > 1e-3


@fluidsynth
def test_a_long_take_slides_on_with_the_part_of_the_guide_under_each_window(melody, monkeypatch):
    import stemd.models.musicgen.engine as eng
    from stemd.models.guide_audio import spec_guide_audio
    from stemd.models.musicgen.melody import chroma, melody_prefix

    monkeypatch.setattr(eng, "WINDOW_SECONDS", 2.0)
    monkeypatch.setattr(eng, "KEEP_SECONDS", 0.6)
    spec = guide_spec("Am | F | C | G", meter="7/8", bpm=97)        # 4 bars of 7/8: 8.7 s, windows of 2 s
    lm, prefixes, starts = melody.ck.lm, [], []
    condition, follow = lm.set_conditioning, melody.follow_window
    monkeypatch.setattr(lm, "set_conditioning", lambda prefix: (prefixes.append(prefix), condition(prefix)))
    monkeypatch.setattr(melody, "follow_window", lambda frame: (starts.append(frame), follow(frame)))
    audio = engine_audio(melody, spec)
    assert audio.shape[-1] >= float(spec.seconds) * 32000
    assert len(starts) >= 4 and len(prefixes) == len(starts) + 1
    guide = spec_guide_audio(spec, 32000, float(spec.seconds))
    words, grid = eng.describe(spec)
    hidden, mask = melody.ck.encode_text(words, 1, True, grid=grid)
    for frame, prefix in zip(starts, prefixes[1:]):
        expected = melody_prefix(lm, hidden, mask, chroma(guide[:, frame * melody.ck.hop:]), 1, guided=True)
        assert (prefix - expected).abs().max() < 1e-6, frame
    assert (prefixes[1] - prefixes[0]).abs().max() > 0.1        # a later part of the guide, not its start again


def test_without_a_guide_the_engine_is_text_only(melody, ref):
    from stemd.models.musicgen.engine import MARGIN, describe

    spec = guide_spec(chords="", meter="7/8", bpm=97)
    ours = engine_audio(melody, spec)
    frames = melody.frames_for(float(spec.seconds) * MARGIN) + 1
    theirs = reference_audio(ref, melody.ck.text_ids(*describe(spec)), frames)
    n = min(ours.shape[-1], theirs.shape[-1])
    assert n >= float(spec.seconds) * 32000
    assert np.abs(ours[0, :, :n] - theirs[:, :n]).max() < 1e-5


# -- which model takes a guide ---------------------------------------------------------------------------

def test_the_melody_model_is_its_own_family_and_a_plain_musicgen_refuses_a_guide(melody, melody_tiny, tiny):
    from stemd.families import check_keys
    from stemd.models.pool import locate
    from stemd.protocol import GenerateRequest, ProtocolError

    assert locate(str(melody_tiny))[0] == melody.info()["family"] == "musicgen-melody"
    assert locate(str(tiny))[0] == "musicgen"
    request = GenerateRequest(request_id="g", bars=4, chords="Am | F | C | G")
    check_keys(request, "musicgen-melody", "melody")          # taken
    with pytest.raises(ProtocolError) as refused:
        check_keys(request, "musicgen", "small")
    assert refused.value.code == "unsupported_key" and "chords" in str(refused.value)
    with pytest.raises(ProtocolError) as refused:
        check_keys(GenerateRequest(request_id="s", bars=4, steps=8), "musicgen-melody", "melody")
    assert refused.value.code == "unsupported_key" and "steps" in str(refused.value)


def test_a_melody_checkpoint_asked_for_a_fast_backend_says_it_decodes_eagerly(melody_tiny):
    from stemd.models.base import EngineError
    from stemd.models.musicgen.engine import MusicGenEngine

    with pytest.raises(EngineError, match="eager backend, not onnx"):
        MusicGenEngine.load(str(melody_tiny), device="cpu", dtype="float32", backend="onnx")


# -- through the daemon ----------------------------------------------------------------------------------

@fluidsynth
def test_the_daemon_serves_a_chords_take_from_a_melody_model_and_plain_musicgen_refuses_chords(
        start_daemon, melody_tiny, tiny):
    import json

    from daemon_fixtures import TcpClient
    from stemd.protocol import Chunk

    daemon = start_daemon("--device", "cpu", "--model", f"plain={tiny}", model=f"melody={melody_tiny}")
    client = TcpClient(daemon.port)
    client.send("/stemd/ping")
    pong = client.recv()
    assert pong.address == "/stemd/pong" and pong.args[3] == "musicgen-melody"
    client.send("/stemd/generate", "p", "model", "plain", "bars", 1, "chords", "Am")
    got = client.until("/stemd/error", "p", timeout=60)
    assert got[-1].args[1] == "unsupported_key" and "chords" in got[-1].args[2]
    assert "/stemd/accepted" not in [m.address for m in got]                # refused before any work
    client.send("/stemd/generate", "s", "bars", 1, "chords", "Am", "guide_strength", 0.5)   # ACE-Step's key
    error = client.until("/stemd/error", "s", timeout=60)[-1]
    assert error.args[1] == "unsupported_key" and "guide_strength" in error.args[2]
    client.send("/stemd/generate", "m", "bars", 2, "bpm", 97, "meter", "3/4", "chords", "Am | F", "seed", 1,
                "sample_rate", 48000)
    messages = client.until("/stemd/done", "m", timeout=240)
    chunks = [Chunk.from_args(m.args) for m in messages if m.address == "/stemd/chunk"]
    grid = Grid(97, "3/4")
    assert [c.bar_index for c in chunks] == [0, 1]
    for c in chunks:
        assert c.audio.shape == (2, grid.bar_length_samples(c.bar_index, 48000))
        assert c.start_sample == grid.bar_start_sample(c.bar_index, 48000)
        assert np.abs(c.audio).max() > 1e-4
    sidecars = [json.loads(p.read_text()) for p in daemon.out.rglob("*.json")]
    assert any("Am | F" in json.dumps(s) and "musicgen-melody" in json.dumps(s) for s in sidecars), sidecars
