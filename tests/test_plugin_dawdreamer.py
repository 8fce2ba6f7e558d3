"""The stemd VST3 in DawDreamer (a JUCE VST3 host with a tempo and a playhead, headless), at 150 BPM.

DawDreamer renders offline from the playhead at 0 in 4/4 (it has no meter setter). The plugin asks a real
``stemd serve --model click`` (through $STEMD_DAEMON) for a 2-bar take at bar 3; the test renders short
stretches until the plugin's ``bars_received`` output says the take is in, then renders the whole
stretch: the take's first click is on the first sample of bar 3 and the render is the daemon's take.
The host runs in a subprocess of its own: whatever the plugin does, the test process stays up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from plugin_hosts import first_audible, plugin_build  # noqa: F401 (fixture)
from stemd.timing import Grid

pytestmark = pytest.mark.skipif(importlib.util.find_spec("dawdreamer") is None,
                                reason="DawDreamer (PyPI dawdreamer, the test extra) is not installed")

HOST = r"""
import json, sys, time
import dawdreamer
import numpy as np
import soundfile

vst3, out, bpm, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
engine = dawdreamer.RenderEngine(rate, 512)
engine.set_bpm(bpm)
plugin = engine.make_plugin_processor("stemd", vst3)
params = {d["name"].lower().split(" (")[0].replace(" ", "_"): d for d in plugin.get_parameters_description()}

def set_value(name, value):  # DawDreamer takes normalised values
    d = params[name]
    lo, hi = float(d["min"]), float(d["max"])
    plugin.set_parameter(d["index"], (value - lo) / (hi - lo))

def get_value(name):
    d = params[name]
    lo, hi = float(d["min"]), float(d["max"])
    return round(lo + plugin.get_parameter(d["index"]) * (hi - lo))

engine.load_graph([(plugin, [])])
set_value("bars", 2)
set_value("start_bar", 3)
set_value("generate", 1)
engine.render(0.25)                  # the plugin reads the playhead and sends its request
set_value("generate", 0)
received, deadline = 0, time.monotonic() + 30
while received < 2 and time.monotonic() < deadline:
    time.sleep(0.2)
    engine.render(0.05)
    received = get_value("bars_received")
print(json.dumps({"bars_received": received, "connected": get_value("connected")}), flush=True)
engine.render(float(sys.argv[5]))
soundfile.write(out, engine.get_audio().T, rate, subtype="FLOAT")
"""


def test_vst3_in_dawdreamer_at_150_bpm_plays_its_click_take_from_the_first_sample_of_bar_3(
        tmp_path, start_daemon, plugin_build):
    daemon = start_daemon()
    grid, rate = Grid(150, "4/4"), 48000
    bar3 = grid.bar_start_sample(2, rate)
    assert bar3 == 153600
    script, wav = tmp_path / "host.py", tmp_path / "render.wav"
    script.write_text(HOST)
    seconds = grid.bar_start_sample(5, rate) / rate
    out = subprocess.run([sys.executable, str(script), str(plugin_build / "stemd.vst3"), str(wav), "150", str(rate),
                          str(seconds)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "STEMD_DAEMON": f"127.0.0.1:{daemon.port}",
                              "STEMD_TAKES_DIR": str(tmp_path / "plugin-takes")})
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    state = json.loads(out.stdout.strip().splitlines()[0])
    assert state["bars_received"] == 2, (state, out.stderr[-2000:])
    rendered, _ = soundfile.read(wav, dtype="float32", always_2d=True)
    take, _ = soundfile.read(sorted(daemon.out.rglob("*.wav"))[0], dtype="float32", always_2d=True)
    assert first_audible(rendered) == bar3, f"first audible sample {first_audible(rendered)}, bar 3 is {bar3}"
    assert np.abs(rendered[bar3:bar3 + len(take)] - take).max() <= 1e-6
