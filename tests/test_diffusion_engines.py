"""Stable Audio 3 and ACE-Step 1.5 engines on test pipelines built here (random weights: noise, not music).

The equivalence tests hold each engine's raw audio (before conform) to diffusers' own pipeline call with
the same arguments, loaded separately from the same folder; the render and daemon tests run the real
command lines and a real ``stemd serve`` process.
"""

import importlib.util
import json
import math
import subprocess

import numpy as np
import pytest

from daemon_fixtures import STEMD, TcpClient  # noqa: E402
from diffusion_fixtures import ACE, SA3, engines, pipelines, reference  # noqa: E402,F401 (fixtures)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None
                                or importlib.util.find_spec("torch") is None,
                                reason="diffusers or torch (the daemon extra) is not installed")

from stemd.timing import Grid  # noqa: E402
from stemd.protocol import Sampling  # noqa: E402


def generators(seed, n):
    import torch

    return [torch.Generator("cpu").manual_seed(seed + v) for v in range(n)]


def spec(**kw):
    from stemd.models.base import GenerationSpec

    base = dict(grid=Grid(97, "3/4"), bars=3, prompt="dusty funk drums", variations=2, seed=5,
                sample_rate=44100, extra={"key": "F# minor"})
    base.update(kw)
    return GenerationSpec(**base)


def noise_take(seconds, rate, seed=1):
    from stemd.models.base import Audio

    rng = np.random.default_rng(seed)
    return Audio((0.3 * rng.standard_normal((2, int(seconds * rate)))).astype(np.float32), rate)


# --- equivalence with diffusers' own calls ------------------------------------------------------------

def test_stable_audio_3_text_to_audio_is_the_pipelines_own_call(engines, pipelines):
    from stemd.models.stable_audio3.engine import describe

    engine, s = engines[SA3], spec()
    ours = engine.raw(s)
    canvas = canvas_frames(4096, 44100) * 4096 / 44100
    theirs = reference(pipelines[SA3])(prompt=describe(s), duration=canvas, num_waveforms_per_prompt=2,
                                       generator=generators(5, 2), num_inference_steps=8).audios.numpy()
    assert ours.shape == theirs.shape == (2, 2, ours.shape[2])
    assert ours.shape[2] >= int(float(s.seconds) * 44100)
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(ours[0] - ours[1]).max() > 1e-3        # variations are different takes
    assert describe(s) == "dusty funk drums, 97 BPM, 3/4 time, F# minor"


# A continuation keeps the selection's last whole latent frames, 10 s at most, before the canvas (the take x 1.1
# plus its first bar, in whole frames); the tail is trimmed from the output. The references below build that
# from these numbers alone: Stable Audio 3's test model has 4096-sample frames at 44.1 kHz, ACE-Step's 1920 at
# 48 kHz, and the take is spec()'s 3 bars of 97 BPM 3/4 (540/97 s, its first bar 180/97 s).
TAKE, BAR = 540 / 97, 180 / 97


def canvas_frames(frame, rate):
    return math.ceil((TAKE * 1.1 + BAR) * rate / frame)


def tail_then_silence(selection, keep, canvas):
    """The selection's last ``keep`` samples, then ``canvas`` samples of silence."""
    out = np.zeros((2, keep + canvas), dtype=np.float32)
    out[:, :keep] = selection[:, selection.shape[1] - keep:]
    return out


@pytest.mark.parametrize("samples,kept_frames", [
    (int(12.5 * 44100), 107),     # past the cap: 10 s are 107.7 frames, so the last 107
    (15 * 4096 + 1000, 15),       # 15 whole frames (15 x 4096 / 44100 s x 44100 / 4096 floors to 14 in floats)
    (2205, 0)])                   # not one whole frame: the prompt alone, the text-to-audio call
def test_stable_audio_3_continuation_keeps_the_selections_last_whole_frames_and_inpaints_after_them(
        engines, pipelines, samples, kept_frames, monkeypatch):
    import torch
    from diffusers import StableAudio3InpaintPipeline
    from stemd.models.stable_audio3.engine import describe

    masks, build = [], StableAudio3InpaintPipeline._build_local_add_cond

    def spy(self, latents, mask, length):        # the latent frames the call keeps (1) and makes anew (0)
        masks.append(mask.flatten().tolist())
        return build(self, latents, mask, length)

    monkeypatch.setattr(StableAudio3InpaintPipeline, "_build_local_add_cond", spy)
    engine, frame, rate = engines[SA3], 4096, 44100
    selection = noise_take(samples / rate, rate, seed=4)          # at the model's rate: nothing resampled
    s = spec(continuation=selection, variations=1)
    ours = engine.raw(s)
    # (the tiny model hears a frame's mask faintly: the mask itself is held here, the audio below)
    assert masks == ([[1.0] * kept_frames + [0.0] * (len(masks[0]) - kept_frames)] if kept_frames else [])
    ref = reference(pipelines[SA3])
    frames = canvas_frames(frame, rate)
    common = dict(prompt=describe(s), generator=generators(5, 1), num_inference_steps=8, num_waveforms_per_prompt=1)
    if kept_frames == 0:
        theirs = ref(duration=frames * frame / rate, **common).audios.numpy()
    else:
        keep = kept_frames * frame
        audio = torch.from_numpy(tail_then_silence(selection.samples, keep, frames * frame))[None]
        duration = keep / rate + frames * frame / rate
        mask = torch.ones(1, 1, math.ceil(duration * rate / frame))  # 1 keeps a latent frame, 0 makes it anew
        mask[:, :, kept_frames:] = 0
        inpaint = StableAudio3InpaintPipeline(**ref.components)
        theirs = inpaint(duration=duration, audio=audio, mask=mask, **common).audios.numpy()[:, :, keep:]
    assert ours.shape == theirs.shape and ours.shape[2] >= frames * frame - 1
    assert np.abs(ours - theirs).max() < 1e-5


def test_stable_audio_3_continuation_of_audio_at_another_rate_and_a_variation_of_it(engines, pipelines):
    import torch
    from diffusers import StableAudio3AudioToAudioPipeline, StableAudio3InpaintPipeline
    from stemd.models.stable_audio3.engine import describe

    engine, frame, rate = engines[SA3], 4096, 44100
    ref = reference(pipelines[SA3])
    given = noise_take(3.0, 48000)                       # the DAW's selection at the DAW's rate
    s = spec(continuation=given, variations=1)
    ours = engine.raw(s)
    source = engine.source_audio(given).numpy()          # 3 s at 44.1 kHz: 132,300 samples, 32 whole frames
    assert source.shape == (2, 132300)
    keep, frames = 32 * frame, canvas_frames(frame, rate)
    audio = torch.from_numpy(tail_then_silence(source, keep, frames * frame))[None]
    duration = keep / rate + frames * frame / rate
    mask = torch.ones(1, 1, math.ceil(duration * rate / frame))
    mask[:, :, 32:] = 0
    inpaint = StableAudio3InpaintPipeline(**ref.components)
    theirs = inpaint(prompt=describe(s), duration=duration, audio=audio, mask=mask, generator=generators(5, 1),
                     num_inference_steps=8, num_waveforms_per_prompt=1).audios.numpy()[:, :, keep:]
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5

    s = spec(continuation=given, variations=1, extra={"strength": 0.4})
    ours = engine.raw(s)
    canvas = frames * frame / rate                       # the whole selection, then silence to the canvas's end
    audio = torch.from_numpy(tail_then_silence(source, source.shape[1], frames * frame - source.shape[1]))[None]
    a2a = StableAudio3AudioToAudioPipeline(**ref.components)
    theirs = a2a(prompt=describe(s), duration=canvas, audio=audio,
                 init_noise_level=0.4, generator=generators(5, 1), num_inference_steps=8).audios.numpy()
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5


def ace_reference_args(s, **kw):
    args = dict(prompt=[s.prompt] * s.variations, lyrics=[""] * s.variations, bpm=97, timesignature="3",
                keyscale="F# minor", generator=generators(5, s.variations), num_inference_steps=8,
                guidance_scale=1.0, audio_duration=canvas_frames(1920, 48000) * 1920 / 48000)
    args.update(kw)
    return args


def test_ace_step_text_to_music_gets_the_grid_and_key_and_is_the_pipelines_own_call(engines, pipelines):
    engine, s = engines[ACE], spec()
    ours = engine.raw(s)
    theirs = reference(pipelines[ACE])(**ace_reference_args(s)).audios.numpy()
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5
    assert np.abs(ours[0] - ours[1]).max() > 1e-3


@pytest.mark.parametrize("extra,task", [({"track": "drums"}, dict(task_type="lego", track_name="drums")),
                                        ({"extract": "bass"}, dict(task_type="extract", track_name="bass")),
                                        ({"repaint": "2-3"}, dict(task_type="repaint"))])
def test_ace_step_lego_extract_and_repaint_are_the_pipelines_own_tasks(engines, pipelines, extra, task):
    import torch

    engine = engines[ACE]
    given = noise_take(4.0, 48000, seed=3)
    s = spec(continuation=given, variations=1, extra={"key": "F# minor", **extra})
    ours = engine.raw(s)
    # the given take as it is, then silence to the canvas's end (the pipeline works over the canvas)
    src = tail_then_silence(given.samples, given.samples.shape[1], canvas_frames(1920, 48000) * 1920 - 4 * 48000)
    kw = dict(task, src_audio=torch.from_numpy(src))
    if "repaint" in extra:     # bars 2-3 of a 97 BPM 3/4 take: from 180/97 s to the end of bar 3
        kw.update(repainting_start=180 / 97, repainting_end=3 * 180 / 97)
    pipe = reference(pipelines[ACE])          # (loading draws from torch's global generator)
    torch.manual_seed(5)                      # the autoencoder samples its latent from it
    theirs = pipe(**ace_reference_args(s, **kw)).audios.numpy()
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5


@pytest.mark.parametrize("samples,kept_frames", [
    (int(12.5 * 48000), 250),     # past the cap: the last 10 s, 250 frames
    (29 * 1920 + 500, 29),        # 29 whole frames (29 x 1920 / 48000 s x 25 floors to 28 in floats)
    (960, 0)])                    # not one whole frame: the prompt alone, text2music
def test_ace_step_plain_continuation_keeps_the_selections_last_whole_frames_and_repaints_after_them(
        engines, pipelines, samples, kept_frames):
    import torch

    engine, frame, rate = engines[ACE], 1920, 48000
    selection = noise_take(samples / rate, rate, seed=6)
    s = spec(continuation=selection, variations=1)
    ours = engine.raw(s)
    frames = canvas_frames(frame, rate)
    pipe = reference(pipelines[ACE])
    if kept_frames == 0:
        theirs = pipe(**ace_reference_args(s, audio_duration=frames * frame / rate)).audios.numpy()
    else:
        keep = kept_frames * frame
        src = torch.from_numpy(tail_then_silence(selection.samples, keep, frames * frame))
        # ACE-Step floors seconds x 25 to a latent frame: the middle of frame kept_frames names it exactly
        kw = dict(task_type="repaint", src_audio=src, repainting_start=(kept_frames + 0.5) / 25, repainting_end=-1,
                  audio_duration=keep / rate + frames * frame / rate)
        torch.manual_seed(5)
        theirs = pipe(**ace_reference_args(s, **kw)).audios.numpy()[:, :, keep:]
    assert ours.shape == theirs.shape and ours.shape[2] >= frames * frame - 1
    assert np.abs(ours - theirs).max() < 1e-5


# --- keys each family has, and refuses ------------------------------------------------------------------

def test_each_family_refuses_the_keys_it_lacks_with_a_typed_error(engines):
    from stemd.protocol import ProtocolError

    with pytest.raises(ProtocolError) as e:
        engines[SA3].stream(spec(extra={"track": "drums"}))
    assert e.value.code == "unsupported_key" and "track" in e.value.message
    with pytest.raises(ProtocolError) as e:
        engines[ACE].stream(spec(extra={"strength": 0.5}))
    assert e.value.code == "unsupported_key" and "strength" in e.value.message
    with pytest.raises(ProtocolError) as e:
        engines[ACE].stream(spec(sampling=Sampling(top_k=50)))
    assert e.value.code == "unsupported_key" and "top_k" in e.value.message
    with pytest.raises(ProtocolError) as e:         # a task over given audio needs the audio
        engines[ACE].raw(spec(extra={"extract": "drums"}))
    assert e.value.code == "bad_arguments"


def test_cancel_stops_a_diffusion_take_between_denoising_steps(engines):
    from stemd.models.base import Cancelled

    seen = []
    with pytest.raises(Cancelled):
        engines[SA3].raw(spec(), should_stop=lambda: len(seen) >= 2, on_progress=seen.append)
    assert seen == [1 / 8, 2 / 8]


def test_sidecar_info_says_family_licence_weights_and_test_model(engines):
    info = engines[SA3].info()
    assert info["family"] == "stable-audio-3" and info["license"]["commercial"] is True
    assert info["license"]["name"] == "Stability AI Community License" and info["test_model"] is True
    assert len(info["weights_sha256"]) == 64
    assert engines[ACE].info()["license"]["name"] == "MIT"


def test_a_missing_diffusion_model_says_where_stemd_looked_and_how_to_fetch_it(tmp_path, monkeypatch):
    from stemd.models.base import ModelNotFound
    from stemd.models.registry import load_engine

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFound) as e:
        load_engine("stabilityai/stable-audio-3-small-music", device="cpu")
    text = str(e.value)
    assert "empty-cache" in text and "stemd pull stabilityai/stable-audio-3-small-music" in text
    assert "convert_stable_audio_3_to_diffusers.py" in text


# --- the command lines ------------------------------------------------------------------------------

def render(folder, out, *extra):
    done = subprocess.run(STEMD + ["render", "--model", str(folder), "--bars", "3", "--bpm", "97", "--meter", "3/4",
                                   "--variations", "2", "--seed", "5", "--sample-rate", "44100", "--out", str(out),
                                   "--no-contact-sheet", *extra], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return sorted(out.glob("*.wav"))


@pytest.mark.parametrize("arch", [SA3, ACE])
def test_render_makes_exact_bars_reproducibly_with_the_licence_in_every_sidecar(pipelines, tmp_path, arch):
    import soundfile

    first = render(pipelines[arch], tmp_path / "a")
    again = render(pipelines[arch], tmp_path / "b")
    assert len(first) == 2
    length = Grid(97, "3/4").span_samples(0, 3, 44100)
    takes = []
    for wav in first:
        audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
        assert rate == 44100 and audio.shape == (length, 2)
        assert np.isfinite(audio).all() and np.sqrt(np.mean(audio ** 2)) > 1e-3
        meta = json.loads(wav.with_suffix(".json").read_text())
        assert meta["license"]["name"] and isinstance(meta["license"]["commercial"], bool)
        assert meta["commercial_use"] is True and len(meta["weights_sha256"]) == 64
        assert "noise, not music" in meta["note"]
        takes.append(audio)
    assert np.abs(takes[0] - takes[1]).max() > 1e-3                        # the variations differ
    for a, b in zip(first, again):                                           # the same seed, the same take
        assert soundfile.read(a)[0].tobytes() == soundfile.read(b)[0].tobytes()


def test_render_key_reaches_ace_steps_keyscale(pipelines, tmp_path, monkeypatch):
    from diffusers import AceStepPipeline

    from stemd.cli import main

    seen = []
    original = AceStepPipeline._build_metadata_string

    def spy(bpm=None, keyscale=None, timesignature=None, audio_duration=None):
        seen.append((bpm, keyscale, timesignature))
        return original(bpm=bpm, keyscale=keyscale, timesignature=timesignature, audio_duration=audio_duration)

    monkeypatch.setattr(AceStepPipeline, "_build_metadata_string", staticmethod(spy))
    assert main(["render", "--model", str(pipelines[ACE]), "--bars", "2", "--bpm", "97", "--meter", "3/4",
                 "--key", "F# minor", "--seed", "1", "--out", str(tmp_path / "k"), "--no-contact-sheet"]) == 0
    assert seen and set(seen) == {(97, "F# minor", "3")}


@pytest.mark.parametrize("arch", [SA3, ACE])
def test_the_daemon_serves_each_family_over_tcp_in_bar_exact_chunks(start_daemon, pipelines, arch):
    from stemd.protocol import Chunk

    daemon = start_daemon("--device", "cpu", model=str(pipelines[arch]))
    client = TcpClient(daemon.port)
    client.send("/stemd/generate", "d1", "bars", 3, "bpm", 97, "meter", "7/8", "seed", 2, "sample_rate", 48000,
                "variations", 2, "prompt", "test")
    messages = client.until("/stemd/done", "d1", timeout=240)
    chunks = [Chunk.from_args(m.args) for m in messages if m.address == "/stemd/chunk"]
    grid = Grid(97, "7/8")
    assert sorted((c.variation, c.bar_index) for c in chunks) == [(v, b) for v in (0, 1) for b in range(3)]
    for c in chunks:
        assert c.audio.shape == (2, grid.bar_length_samples(c.bar_index, 48000))
        assert c.start_sample == grid.bar_start_sample(c.bar_index, 48000)
        assert np.isfinite(c.audio).all()
    # a key the family lacks is a typed error, and the daemon keeps serving
    client.send("/stemd/generate", "d2", "bars", 1, "temperature", 0.5)
    error = client.until("/stemd/error", "d2", timeout=60)[-1]
    assert error.args[1] == "unsupported_key"
    client.send("/stemd/ping")
    pong = client.until("/stemd/pong")[-1]
    assert pong.address == "/stemd/pong"
    client.close()
