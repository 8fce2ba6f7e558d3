"""The stemd VST3 in Ardour 7.3, headless, asking a real ``stemd serve --model click`` for a take.

Each test makes a session with ardour7-lua (its tempo and meter in the session's tempo map), puts the
plugin on a track, sets bars=2, start_bar=3 and fires generate while the transport rolls (the Dummy
backend of ardour7-lua runs the session in real time); the plugin finds the daemon through
$STEMD_DAEMON and keeps its takes under $STEMD_TAKES_DIR. The session is saved with the plugin's state,
and ardour7-export renders it: the take's first click is on the first sample of bar 3, nothing is
audible before it, and the render is the daemon's own take sample for sample. Then the daemon is
stopped, the session reopened and saved by Ardour, and exported again: the same samples.
"""

from __future__ import annotations

import json

import numpy as np
import soundfile

from plugin_hosts import Ardour, first_audible, needs_ardour, plugin_build  # noqa: F401 (fixture)
from stemd.timing import Grid, Meter


def daemon_take(daemon) -> tuple[np.ndarray, dict]:
    """The one take the daemon wrote (its WAV and sidecar)."""
    wavs = sorted(daemon.out.rglob("*.wav"))
    assert len(wavs) == 1, f"the daemon wrote {[w.name for w in wavs]}:\n{daemon.log[-2000:]}"
    audio, _ = soundfile.read(wavs[0], dtype="float32", always_2d=True)
    sidecars = sorted(daemon.out.rglob("*.json"))
    return audio, (json.loads(sidecars[0].read_text()) if sidecars else {})


def assert_take_at(rendered: np.ndarray, take: np.ndarray, at: int) -> None:
    """``rendered`` is silent before ``at`` and is ``take`` from ``at`` on, sample for sample."""
    first = first_audible(rendered)
    assert first == at, f"first audible sample {first}, bar 3 starts at {at}"
    assert np.abs(rendered[:at]).max() <= 1e-6
    assert len(rendered) >= at + len(take), f"render of {len(rendered)} frames ends inside the take"
    diff = np.flatnonzero(np.abs(rendered[at:at + len(take)] - take).max(axis=1) > 1e-6)
    assert not diff.size, f"{diff.size} samples of the render differ from the daemon's take, first at {diff[0]}"


def run_round_trip(tmp_path, start_daemon, build, bpm: int, meter: Meter, rate: int) -> None:
    grid = Grid(bpm, str(meter))
    bar3 = grid.bar_start_sample(2, rate)
    daemon = start_daemon()
    ardour = Ardour(tmp_path / "home", build, env={"STEMD_DAEMON": f"127.0.0.1:{daemon.port}",
                                                   "STEMD_TAKES_DIR": str(tmp_path / "plugin-takes")})
    session = ardour.make_session(tmp_path, bpm, meter, rate, end_sample=grid.bar_start_sample(5, rate))
    log, received = ardour.add_stemd_and_generate(session, {"bars": 2, "start_bar": 3}, wait_bars=2)
    assert received == 2, f"the plugin received {received} of 2 bars while Ardour ran:\n{log[-3000:]}"
    # the daemon was asked for what the session says, at the session's rate, for bar 3 (0-based 2)
    take, sidecar = daemon_take(daemon)
    assert len(take) == grid.span_samples(2, 2, rate)
    if sidecar:
        assert (sidecar.get("meter"), sidecar.get("sample_rate")) == (str(meter), rate), sidecar
    rendered, out_rate = ardour.export(session, tmp_path / "export.wav")
    assert out_rate == rate
    assert_take_at(rendered, take, bar3)

    # round trip: no daemon, the session reopened and saved by Ardour, exported again
    daemon.stop()
    ardour.reopen(session)
    again, _ = ardour.export(session, tmp_path / "export-again.wav")
    assert_take_at(again, take, bar3)


@needs_ardour
def test_vst3_in_ardour_at_97_bpm_3_4_48k_plays_its_take_from_bar_3_to_the_sample(tmp_path, start_daemon,
                                                                                    plugin_build):
    assert Grid(97, "3/4").bar_start_sample(2, 48000) == 178144
    run_round_trip(tmp_path, start_daemon, plugin_build, 97, Meter(3, 4), 48000)


@needs_ardour
def test_vst3_in_ardour_at_137_bpm_7_8_44k1_plays_its_take_from_bar_3_to_the_sample(tmp_path, start_daemon,
                                                                                     plugin_build):
    assert Grid(137, "7/8").bar_start_sample(2, 44100) == 135197
    run_round_trip(tmp_path, start_daemon, plugin_build, 137, Meter(7, 8), 44100)
