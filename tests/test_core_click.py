import json
import subprocess
import sys

import numpy as np
import soundfile

from stemd.models.base import GenerationSpec
from stemd.models.click import ClickEngine
from stemd.models.pipeline import bar_chunks, render_take
from stemd.timing import Grid, samples_at


def onsets(mono: np.ndarray) -> list[int]:
    """First sample of each click: silence before, full level on its first sample."""
    loud = np.abs(mono) > 0.2
    starts = np.flatnonzero(loud[1:] & ~np.convolve(loud, np.ones(64), "full")[:len(loud) - 1].astype(bool)) + 1
    return ([0] if loud[0] else []) + [int(s) for s in starts]


def test_click_take_4_bars_137_5_bpm_7_8_at_44100_is_exact_to_the_sample():
    grid = Grid("137.5", "7/8")
    spec = GenerationSpec(grid=grid, bars=4, sample_rate=44100, channels=1)
    audio = render_take(ClickEngine(), spec)
    assert audio.shape == (1, 1, grid.span_samples(0, 4, 44100))
    assert audio.shape[2] == 269411  # 4 x 7 eighths at 137.5 BPM = 6.10909... s
    expected = [samples_at(t, 44100) for _b, _u, t in grid.unit_onsets_seconds(0, 4)]
    found = onsets(audio[0, 0])
    assert len(found) == 28  # one click per eighth note
    assert max(abs(a - b) for a, b in zip(found, expected)) <= 1
    # the downbeat is accented: louder than the other units
    peaks = [np.abs(audio[0, 0, s:s + 50]).max() for s in expected]
    assert all(peaks[i] > peaks[i + 1] for i in range(0, 28, 7))


def test_click_chunks_are_one_bar_each_and_start_on_the_grid():
    grid = Grid(120, "4/4")
    spec = GenerationSpec(grid=grid, bars=3, start_bar=5, sample_rate=48000, channels=2, variations=2)
    chunks = list(bar_chunks(ClickEngine(), spec))
    assert [c.bar for c in chunks] == [5, 6, 7]
    assert [c.start_sample for c in chunks] == [grid.bar_start_sample(b, 48000) for b in (5, 6, 7)]
    assert all(c.audio.shape == (2, 2, 96000) for c in chunks)


def test_stemd_render_click_writes_an_exact_take_and_sidecar(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stemd", "render", "--model", "click", "--bars", "4", "--bpm", "137.5",
                          "--meter", "7/8", "--sample-rate", "44100", "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    wav = out.stdout.strip().splitlines()[-1]
    data, rate = soundfile.read(wav, dtype="float32")
    assert rate == 44100 and data.shape == (269411, 2)
    meta = json.loads(open(wav[:-4] + ".json").read())
    for key in ("model", "prompt", "seed", "tempo", "meter", "bars", "start_bar", "sample_rate", "created"):
        assert key in meta
    assert (meta["model"], meta["tempo"], meta["meter"], meta["bars"]) == ("click", 137.5, "7/8", 4)


def test_render_refuses_absurd_values_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stemd", "render", "--model", "click", "--bars", "0",
                          "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "bars" in out.stderr
