"""The stemd plugin's VST3 in a real host: DawDreamer (a JUCE VST3 host with tempo and a playhead).

A real ``stemd serve --model click`` makes a 2-bar click take at 150 BPM asked for at the DAW's bar 3;
the plugin receives it over TCP, keeps it in memory and writes it to its takes folder; DawDreamer then
renders the timeline and the take's first click is on the exact first sample of bar 3, with nothing
audible before it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from stemd.timing import Grid

ROOT = Path(__file__).resolve().parents[1]
VST3 = ROOT / "build" / "plugin" / "stemd.vst3"
RATE = 48000
BLOCK = 512


@pytest.fixture(scope="module")
def vst3() -> Path:
    if not Path("/usr/share/dpf/Makefile.plugins.mk").is_file() and not os.environ.get("DPF_PATH"):
        pytest.skip("the plugin needs DPF (Debian: dpf-source)")
    proc = subprocess.run(["make", "-C", str(ROOT), "plugin"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return VST3


@pytest.fixture
def dawdreamer():
    return pytest.importorskip("dawdreamer", reason="DawDreamer (pip dawdreamer) hosts the VST3")


def parameter_index(plugin, name: str) -> int:
    for p in plugin.get_parameters_description():
        if p["name"] == name:
            return p["index"]
    raise AssertionError(f"the plugin has no parameter {name!r}")


def set_plain(plugin, name: str, value: float, lo: float, hi: float) -> None:
    """DawDreamer sets VST3 parameters normalised to 0..1."""
    plugin.set_parameter(parameter_index(plugin, name), (value - lo) / (hi - lo))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


def test_click_take_plays_from_the_exact_sample_of_bar_3(vst3, dawdreamer, start_daemon, tmp_path, monkeypatch):
    daemon = start_daemon()
    takes_dir = tmp_path / "plugin-takes"
    monkeypatch.setenv("STEMD_DAEMON", f"{daemon.host}:{daemon.port}")   # read by the plugin when it loads
    monkeypatch.setenv("STEMD_TAKES_DIR", str(takes_dir))

    engine = dawdreamer.RenderEngine(RATE, BLOCK)
    engine.set_bpm(150.0)
    plugin = engine.make_plugin_processor("stemd", str(vst3))
    engine.load_graph([(plugin, [])])
    set_plain(plugin, "Bars", 2, 1, 64)
    set_plain(plugin, "Start bar (0 = next bar line)", 3, 0, 9999)
    plugin.set_parameter(parameter_index(plugin, "Generate"), 1.0)

    # a first pass: the plugin sees the host's transport, and the request goes out
    engine.render(0.5)
    plugin.set_parameter(parameter_index(plugin, "Generate"), 0.0)
    wavs = wait_for(lambda: sorted(takes_dir.glob("*.wav")), 60, "the plugin wrote no take")
    assert [w.name for w in wavs] == ["take_bar003_take01.wav"]
    assert "done" in daemon.wait_log("-> done")

    # the render: the take plays from the plugin's memory on its bar
    grid = Grid("150", "4/4")
    bar3 = grid.bar_start_sample(2, RATE)          # the DAW's bar 3
    end = grid.bar_start_sample(4, RATE)
    assert bar3 == 153600
    engine.render(7.0)
    audio = engine.get_audio()
    assert audio.shape[0] == 2 and audio.shape[1] >= end
    audible = np.flatnonzero(np.abs(audio).max(axis=0) > 1e-4)
    assert audible.size, "the render is silent"
    assert audible[0] == bar3, f"first sound at sample {audible[0]}, bar 3 starts at {bar3}"
    assert np.abs(audio[:, bar3]).max() > 0.1                  # the click's attack is its first sample
    # every click of the take, one per beat, on its exact sample (4 beats x 2 bars)
    beat = grid.bar_length_samples(2, RATE) // 4
    for k in range(8):
        onset = bar3 + k * beat
        assert np.abs(audio[:, onset]).max() > 0.1, f"no click at beat {k} (sample {onset})"
        assert np.abs(audio[:, onset - 1]).max() < np.abs(audio[:, onset]).max() / 4
    assert np.abs(audio[:, end:]).max() < 1e-4                 # nothing after the take's 2 bars

    # the take on disk: the daemon's sidecar as it came, plus the plugin's delivery
    sidecar = json.loads(wavs[0].with_suffix(".json").read_text())
    assert sidecar["delivery"]["client"] == "stemd plugin"
    assert sidecar["delivery"]["start_sample"] == bar3
    assert sidecar["delivery"]["file"] == wavs[0].name
    assert sidecar["start_bar"] == 2 and sidecar["bars"] == 2 and sidecar["tempo_exact"] == "150/1"
