"""Diffusion engines following a guide, on test pipelines (random weights: noise, not music). The engine's raw
audio (before conform) is held to diffusers' own pipeline call given the same rendered guide and seed: ACE-Step's
cover and lego over the guide, Stable Audio 3's audio-to-audio from it."""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from daemon_fixtures import STEMD  # noqa: E402
from diffusion_fixtures import ACE, SA3, engines, pipelines, reference  # noqa: E402,F401 (fixtures)

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers is not installed"),
              pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="the fluidsynth program is not installed"),
              pytest.mark.skipif(not Path("/usr/share/sounds/sf2/FluidR3_GM.sf2").exists(),
                                 reason="Debian's fluid-soundfont-gm is not installed")]

from stemd.timing import Grid  # noqa: E402

CHORDS, OTHER = "Am | F | C", "Dm7 . G | C/E | Bdim"


def spec(**extra):
    from stemd.models.base import GenerationSpec

    return GenerationSpec(grid=Grid(97, "3/4"), bars=3, prompt="warm keys", variations=1, seed=5,
                          sample_rate=48000, extra=extra)


def guide(engine, s):
    """The rendered guide, as diffusers is given it: the take's grid at the model's rate, to the canvas's end."""
    import torch

    from stemd.models.guide_audio import spec_guide_audio

    canvas = engine.canvas_seconds(s)
    return canvas, torch.from_numpy(spec_guide_audio(s, engine.sample_rate, canvas))


def ace_args(canvas):
    import torch

    return dict(prompt=["warm keys"], lyrics=[""], bpm=97, timesignature="3", keyscale=None,
                generator=[torch.Generator("cpu").manual_seed(5)], num_inference_steps=8, guidance_scale=1.0,
                audio_duration=canvas)


def test_ace_step_cover_of_a_guide_is_the_pipelines_own_cover_call(engines, pipelines):
    import torch

    engine = engines[ACE]
    s = spec(chords=CHORDS, guide_strength=0.6)
    ours = engine.raw(s)
    canvas, audio = guide(engine, s)
    pipe = reference(pipelines[ACE])          # (loading draws from torch's global generator)
    torch.manual_seed(5)                      # the autoencoder samples its latent from it
    theirs = pipe(task_type="cover", src_audio=audio, audio_cover_strength=0.6,
                                       **ace_args(canvas)).audios.numpy()
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5
    other = engine.raw(spec(chords=OTHER, guide_strength=0.6))
    assert np.abs(ours - other).max() > 1e-3          # another guide, the same seed: another take
    plain = engine.raw(spec())                           # no guide: text to music, as before
    theirs = pipe(**ace_args(canvas)).audios.numpy()
    assert np.abs(plain - theirs).max() < 1e-5 and np.abs(plain - ours).max() > 1e-3


def test_ace_step_track_with_a_guide_is_the_lego_task_over_it(engines, pipelines):
    import torch

    from stemd.guides.smf import write_smf
    from stemd.guides import Note

    engine = engines[ACE]
    smf = write_smf([Note(q, 1, 45 + (q % 5)) for q in range(9)])
    s = spec(guide=smf, track="bass")
    ours = engine.raw(s)
    canvas, audio = guide(engine, s)
    pipe = reference(pipelines[ACE])
    torch.manual_seed(5)
    theirs = pipe(task_type="lego", track_name="bass", src_audio=audio,
                                       **ace_args(canvas)).audios.numpy()
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5
    # the tiny model hears its lego context faintly: another guide moves the take by about 2e-4, two hundred
    # times the equality's tolerance
    assert np.abs(ours - engine.raw(spec(chords=OTHER, track="bass"))).max() > 1e-4


def test_stable_audio_3_with_a_guide_is_audio_to_audio_from_it(engines, pipelines):
    from diffusers import StableAudio3AudioToAudioPipeline

    import torch
    from stemd.models.stable_audio3.engine import describe

    engine = engines[SA3]
    s = spec(chords=CHORDS, strength=0.5)
    ours = engine.raw(s)
    canvas, audio = guide(engine, s)
    a2a = StableAudio3AudioToAudioPipeline(**reference(pipelines[SA3]).components)
    theirs = a2a(prompt=describe(s), duration=canvas, audio=audio[None], init_noise_level=0.5,
                 generator=[torch.Generator("cpu").manual_seed(5)], num_inference_steps=8,
                 num_waveforms_per_prompt=1).audios.numpy()
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5
    # the tiny model's 8 ping-pong steps hear the source only in their first step, faintly (another guide moves
    # its take by 1e-7 at strength 0.5, 1e-5 at 0.05): what is held here is that each guide is what it is given
    given, a2a_call = [], engine.call("a2a")
    engine._calls["a2a"] = lambda **kw: given.append(kw["audio"].clone()) or a2a_call(**kw)
    try:
        engine.raw(spec(chords=OTHER, strength=0.5))
        engine.raw(s)
    finally:
        engine._calls["a2a"] = a2a_call
    assert np.abs(given[1][0].numpy() - audio.numpy()).max() == 0
    assert np.abs(given[0][0].numpy() - audio.numpy()).max() > 0.01


def test_a_guide_with_given_audio_or_another_task_is_refused(engines):
    from stemd.models.base import Audio
    from stemd.protocol import ProtocolError

    given = Audio(np.zeros((2, 48000), np.float32), 48000)
    import dataclasses

    s = dataclasses.replace(spec(chords=CHORDS), continuation=given)
    with pytest.raises(ProtocolError, match="without continuation"):
        engines[SA3].raw(s)
    with pytest.raises(ProtocolError, match="extract works on given audio"):
        engines[ACE].raw(spec(chords=CHORDS, extract="drums"))


# --- stemd render with a guide ---------------------------------------------------------------------------

def render(folder, out, *extra):
    done = subprocess.run(STEMD + ["render", "--model", str(folder), "--bars", "4", "--bpm", "97", "--meter", "3/4",
                                   "--variations", "2", "--seed", "3", "--out", str(out), "--no-contact-sheet",
                                   *extra], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return sorted(out.glob("*.wav"))


@pytest.mark.timeout(1200)
def test_render_with_chords_makes_exact_bars_with_the_chords_in_each_sidecar_reproducibly(pipelines, tmp_path):
    import json

    import soundfile

    first = render(pipelines[ACE], tmp_path / "a", "--chords", "Am | F | C | G")
    again = render(pipelines[ACE], tmp_path / "b", "--chords", "Am | F | C | G")
    assert len(first) == 2
    for a, b in zip(first, again):
        audio, rate = soundfile.read(a, dtype="float32", always_2d=True)
        assert rate == 48000 and audio.shape == (Grid(97, "3/4").span_samples(0, 4, 48000), 2)   # exact 4 bars
        meta = json.loads(a.with_suffix(".json").read_text())
        assert meta["guide"] == {"chords": "Am | F | C | G"} and meta["request"]["chords"] == "Am | F | C | G"
        assert a.read_bytes() == b.read_bytes()                 # the same seed twice: the same files


@pytest.mark.timeout(1200)
def test_render_with_a_midi_guide_keeps_it_beside_each_take_and_refuses_a_bad_one(pipelines, tmp_path):
    import hashlib
    import json

    from stemd.guides import Note
    from stemd.guides.smf import write_smf

    smf = tmp_path / "part.mid"
    smf.write_bytes(write_smf([Note(q, 1, 40 + q) for q in range(12)]))
    takes = render(pipelines[ACE], tmp_path / "out", "--guide", str(smf), "--variations", "1")
    meta = json.loads(takes[0].with_suffix(".json").read_text())
    kept = takes[0].with_suffix(".mid")
    assert meta["guide"]["file"] == kept.name and kept.read_bytes() == smf.read_bytes()
    assert meta["guide"]["smf_sha256"] == hashlib.sha256(smf.read_bytes()).hexdigest()
    done = subprocess.run(STEMD + ["render", "--model", str(pipelines[ACE]), "--bars", "4", "--meter", "3/4",
                                   "--chords", "Am | Hm | C", "--out", str(tmp_path / "bad")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "unknown chord symbol 'Hm' in bar 2" in done.stderr
