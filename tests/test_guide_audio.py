"""A guide rendered to audio with FluidSynth and a General MIDI soundfont, on the take's grid: each bar sounds
its chord, and every note starts at its exact grid sample (checked on the audio, by an onset detector that
knows only the samples)."""

import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from stemd.guides import guide_notes
from stemd.protocol import GenerateRequest
from stemd.timing import Grid

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
pytestmark = [pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="the fluidsynth program is not installed"),
              pytest.mark.skipif(not SOUNDFONT.exists(), reason="Debian's fluid-soundfont-gm is not installed")]

CHORDS = {"Am": {9, 0, 4}, "F": {5, 9, 0}, "C": {0, 4, 7}, "G": {7, 11, 2}}
RATE = 48000


def chroma(audio, rate):
    """Energy per pitch class (0 = C) of mono ``audio``, from its spectrum between 60 Hz and 2 kHz."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    keep = (freqs > 60) & (freqs < 2000)
    classes = np.round(12 * np.log2(freqs[keep] / 440.0)).astype(int) % 12     # 0 = A
    out = np.zeros(12)
    np.add.at(out, (classes + 9) % 12, spectrum[keep])
    return out


def onset_near(mono, at, rate):
    """The first sample within 10 ms of ``at`` where the signal's sample-to-sample change jumps over 5 times the
    largest change of the 10 ms before that window (an attack over silence)."""
    w = int(0.010 * rate)
    d = np.abs(np.diff(mono, prepend=mono[0]))
    before = d[max(0, at - 2 * w):at - w].max() if at - w > 0 else 0.0
    window = d[max(0, at - w):at + w]
    hits = np.flatnonzero(window > max(5 * before, 1e-5))
    assert len(hits), f"no onset near sample {at}"
    return max(0, at - w) + int(hits[0])


@pytest.mark.parametrize("meter", ["3/4", "7/8"])
def test_chords_at_97_rendered_at_48k_sound_their_chord_in_each_bar_and_start_on_the_grid(meter):
    from stemd.models.guide_audio import render_guide, render_notes, set_soundfont

    set_soundfont(SOUNDFONT)
    request = GenerateRequest("g", chords="Am | F | C | G", bars=4, bpm=97, meter=meter, start_bar=3)
    grid = Grid(97, meter)
    notes = guide_notes(request)
    pieces = render_notes(notes, grid, 3, RATE)     # each distinct note rendered alone by fluidsynth
    audio = render_guide(notes, grid, 3, 4, RATE, rendered=pieces)
    assert audio.shape == (2, grid.span_samples(3, 4, RATE))
    mono = audio.mean(axis=0)
    origin = grid.bar_start_sample(3, RATE)
    assert onset_near(mono, 0, RATE) <= RATE // 1000            # the first chord, from silence, on the full mix
    for bar, name in enumerate(["Am", "F", "C", "G"]):
        lo, hi = (grid.bar_start_sample(3 + bar + k, RATE) - origin for k in (0, 1))
        strongest = set(np.argsort(chroma(mono[lo:hi], RATE))[-3:])
        assert strongest == CHORDS[name], (bar, name, strongest)
        # the bar's notes start on its line on the DAW's timeline (exact time, rounded once), counted from the take's
        assert {n.start_sample(grid, 3, RATE) for n in guide_notes(request) if n.start == bar
                * grid.meter.bar_quarters} == {lo}
        # the bar's chord, heard alone (the guide less the guide without that chord) starts where its notes do
        others = [n for n in notes if not lo <= n.start_sample(grid, 3, RATE) < hi]
        alone = mono - render_guide(others, grid, 3, 4, RATE, rendered=pieces).mean(axis=0)
        first = int(np.flatnonzero(np.abs(alone) > 1e-6)[0])
        assert abs(first - lo) <= RATE // 1000, (bar, first - lo)
        assert abs(onset_near(alone, lo, RATE) - lo) <= RATE // 1000


def test_notes_on_beats_inside_bars_start_on_their_samples_at_441k():
    from stemd.models.guide_audio import render_guide, render_notes

    grid = Grid(97, "7/8")
    request = GenerateRequest("g", chords="C . . G . Am . | F . Dm", bars=2, bpm=97, meter="7/8")
    notes = guide_notes(request)
    pieces = render_notes(notes, grid, 0, 44100)
    audio = render_guide(notes, grid, 0, 2, 44100, rendered=pieces).mean(axis=0)
    for start in sorted({n.start for n in notes}):
        at = int(start * Fraction(60, 97) * 44100 + Fraction(1, 2))
        others = [n for n in notes if n.start != start]
        alone = audio - render_guide(others, grid, 0, 2, 44100, rendered=pieces).mean(axis=0)
        assert abs(onset_near(alone, at, 44100) - at) <= 44, (start, onset_near(alone, at, 44100) - at)


def test_a_missing_or_wrong_soundfont_is_refused_when_set(tmp_path):
    from stemd.models.guide_audio import GuideAudioError, set_soundfont

    with pytest.raises(GuideAudioError, match="fluid-soundfont-gm"):
        set_soundfont(tmp_path / "none.sf2")
    (tmp_path / "x.sf2").write_bytes(b"RIFF\0\0\0\0WAVEfmt ")
    with pytest.raises(GuideAudioError, match="not a SoundFont 2"):
        set_soundfont(tmp_path / "x.sf2")


def test_serve_checks_its_soundfont_at_start(tmp_path):
    import subprocess

    from daemon_fixtures import STEMD

    (tmp_path / "bad.sf2").write_bytes(b"not a soundfont")
    done = subprocess.run(STEMD + ["serve", "--model", "click", "--port", "0", "--soundfont", str(tmp_path / "bad.sf2")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "not a SoundFont 2 file" in done.stderr
