"""The walking skeleton, end to end: the daemon and the bridge as real processes over OSC/TCP."""

import json
import subprocess
import sys

import soundfile

from stemd.timing import Grid


def test_offline_demo_writes_a_take_through_daemon_and_bridge(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stemd.demo", "--model", "click", "--bars", "4", "--bpm", "137.5",
                          "--meter", "7/8", "--prompt", "sync check", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    takes = sorted(p for p in tmp_path.glob("*.wav"))
    assert len(takes) == 1, out.stdout
    data, rate = soundfile.read(takes[0], dtype="float32", always_2d=True)
    # the bridge asked for 4 bars at the DAW's rate: exactly that many samples arrived, bar by bar
    meta = json.loads(takes[0].with_suffix(".json").read_text())
    assert data.shape[0] == Grid("137.5", "7/8").span_samples(0, 4, rate)
    assert (meta["bars"], meta["meter"], meta["prompt"]) == (4, "7/8", "sync check")
    assert abs(data).max() > 0.1  # clicks, not silence


def test_demo_on_a_fresh_machine_without_the_model_says_so_and_makes_a_click_take(tmp_path):
    import os

    for offline in ("1", ""):   # HF_HUB_OFFLINE set, and a machine whose network cannot reach the hub
        env = dict(os.environ, HF_HUB_OFFLINE=offline, HF_HOME=str(tmp_path / f"empty-cache{offline}"))
        env.pop("HF_HUB_CACHE", None)
        out_dir = tmp_path / f"takes{offline}"
        out = subprocess.run([sys.executable, "-m", "stemd.demo", "--out", str(out_dir)], capture_output=True,
                             text=True, timeout=180, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Traceback" not in out.stdout + out.stderr
        said = [line for line in out.stdout.splitlines() if "click engine" in line and "instead" in line]
        assert len(said) == 1 and "facebook/musicgen-small" in said[0], out.stdout
        assert "done with the click engine" in out.stdout
        assert len(list(out_dir.glob("*.wav"))) == 1
