"""The bridge against a stemd protocol peer: one-shot takes, errors, history (re-roll, extend), commands.

The peer (tests/test_bridge_support.py) speaks stemd's protocol with the real click engine; it stands in
for the protocol, not for the daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from stemd.timing import Grid


def stemd_bridge(*args, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "stemd", "bridge", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_one_shot_take_lands_bar_by_bar_and_is_written_with_its_sidecar(peer, tmp_path):
    out = stemd_bridge("--daemon", f"127.0.0.1:{peer.port}", "--follow", "fixed:137.5:7/8", "--out", str(tmp_path),
                       "--generate", "Dusty lo-fi drums!", "--bars", "3", "--start-bar", "5", "--seed", "7",
                       "--rate", "44100", "--once")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [l for l in lines if "landed" in l] == ["t1: bar 1/3 landed", "t1: bar 2/3 landed", "t1: bar 3/3 landed"]
    wav = tmp_path / "dusty-lo-fi-drums_bar006_take01.wav"
    assert lines[-1] == str(wav)
    data, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    assert rate == 44100
    assert data.shape == (Grid("137.5", "7/8").span_samples(5, 3, 44100), 2)
    meta = json.loads(wav.with_suffix(".json").read_text())
    assert (meta["prompt"], meta["seed"], meta["model"], meta["tempo"], meta["meter"], meta["start_bar"]) == \
        ("Dusty lo-fi drums!", 7, "click", 137.5, "7/8", 5)
    assert meta["request"]["top_k"] == 250 and meta["request"]["bars"] == 3
    req = peer.requests[0]
    assert (req.bpm.bpm, str(req.meter), req.sample_rate, req.start_bar) == (275 / 2, "7/8", 44100, 5)


def test_unreachable_daemon_exits_2_with_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = stemd_bridge("--daemon", f"127.0.0.1:{port}", "--out", str(tmp_path), "--generate", "x", "--once")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "cannot reach the daemon" in out.stderr


def test_daemon_error_exits_2_with_the_daemons_reason(peer, tmp_path):
    out = stemd_bridge("--daemon", f"127.0.0.1:{peer.port}", "--out", str(tmp_path), "--generate", "fail please",
                       "--once")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["stemd bridge: take t1 failed: engine_error: the engine fell over"]
    assert not list(tmp_path.glob("*.wav"))


def make_bridge(peer, tmp_path, bpm=120):
    from stemd.bridge.app import Bridge
    from stemd.bridge.client import DaemonClient
    from stemd.bridge.transport import Transport

    client = DaemonClient("127.0.0.1", peer.port).connect()
    transport = Transport(bpm)
    transport.update(quarters=0, playing=False)
    return Bridge(client, transport, tmp_path), client


def test_reroll_keeps_every_parameter_but_the_seed_and_extend_continues_from_the_end(peer, tmp_path):
    bridge, client = make_bridge(peer, tmp_path)
    events = []
    bridge.subscribe(lambda e: events.append((e.take_id, e.state)))
    first = bridge.generate("warm rhodes chords", 2, start_bar=8, seed=11, temperature=0.7)
    assert bridge.wait(first, 30).state == "ready"
    again = bridge.reroll(first)
    longer = bridge.extend(first, bars=1)
    assert bridge.wait(again, 30).state == "ready" and bridge.wait(longer, 30).state == "ready"
    a, b, c = peer.requests
    assert (b.prompt, b.bars, b.start_bar, b.temperature) == (a.prompt, a.bars, a.start_bar, a.temperature)
    assert b.seed != a.seed
    assert (c.start_bar, c.bars, c.continuation_channels) == (10, 1, 2)
    written, _ = soundfile.read(bridge.take(first).files[0], dtype="float32")
    np.testing.assert_array_equal(c.continuation_audio().T, written)  # the whole first take, as sent
    bridge.accept(again)
    client.close()
    assert ("t1", "generating") in events and ("t1", "ready") in events and ("t2", "accepted") in events
    # the history survives the session: a new bridge on the same folder knows the takes
    from stemd.bridge.history import TakeHistory

    history = TakeHistory(tmp_path)
    assert history.get("t2").state == "accepted" and history.get("t2").parent == "t1"
    assert history.get("t3").kind == "extend" and history.get("t3").params["start_bar"] == 10


def test_extend_continues_the_chosen_variation_and_its_reroll_keeps_that_continuation(peer, tmp_path):
    # the bridge used to continue variation 1 whatever was chosen (docs/midi.md: the chosen one)
    bridge, client = make_bridge(peer, tmp_path)
    take = bridge.generate("glassy arps", 1, variations=2, bpm=97, meter="3/4")
    record = bridge.wait(take, 30)
    v2, rate = soundfile.read(record.files[1], dtype="float32")
    soundfile.write(record.files[1], v2 * 0.5, rate, subtype="FLOAT")    # tell the two variations apart
    assert bridge.select_variation(take, +1) == 1
    longer = bridge.extend(take)
    assert bridge.wait(longer, 30).state in ("ready", "playing")
    again = bridge.reroll(longer)
    assert bridge.wait(again, 30).state in ("ready", "playing")
    ext, rer = peer.requests[-2:]
    chosen, _ = soundfile.read(record.files[1], dtype="float32", always_2d=True)
    np.testing.assert_array_equal(ext.continuation_audio().T, chosen)
    assert not np.array_equal(chosen, soundfile.read(record.files[0], dtype="float32", always_2d=True)[0])
    assert (ext.start_bar, str(ext.meter), ext.bpm.bpm) == (1, "3/4", 97)
    # a re-rolled extension is the same extension with a new seed: it continues the same file
    assert rer.continuation == ext.continuation and rer.start_bar == ext.start_bar and rer.seed != ext.seed
    assert bridge.take(again).continued_from == bridge.take(longer).continued_from == record.files[1]
    client.close()


def test_next_and_previous_variation_choose_audition_and_accept_one_variation(peer, tmp_path):
    from stemd.bridge.delivery.live import LivePlayer
    from stemd.bridge.history import TakeHistory
    from stemd.errors import StemdError
    from stemd.takes import read_sidecar

    class Recorded(LivePlayer):
        """Records what it is asked to play instead of opening an audio device (playback itself:
        tests/test_bridge_live.py, through PortAudio on JACK)."""

        played: list = []

        def play(self, take, replace=False):
            self.played.append((take.take_id, take.variation, str(take.path), replace))

    bridge, client = make_bridge(peer, tmp_path)
    player = Recorded(bridge.transport)
    bridge.deliveries.append(player)
    events = []
    bridge.subscribe(lambda e: events.append((e.take_id, e.state, e.variation)))
    take = bridge.generate("glassy arps", 1, variations=3, stem="keys")
    record = bridge.wait(take, 30)
    assert record.state == "playing" and len(record.files) == 3 and record.file == record.files[0]
    assert all(os.path.basename(f).startswith("keys_glassy-arps_bar001_take01_v") for f in record.files)
    assert read_sidecar(record.files[0])["stem"] == "keys"
    player.played.clear()  # delivery played variation 1 (only the first variation plays on delivery)

    said = bridge.next_variation(take)
    assert said == f"{take}: variation 2 of 3 {record.files[1]}"
    assert player.played[-1] == (take, 1, record.files[1], True)  # replaces what was auditioned before
    bridge.previous_variation(take)
    said = bridge.previous_variation(take)  # wraps around to the last one
    assert said.startswith(f"{take}: variation 3 of 3") and player.played[-1][1:3] == (2, record.files[2])
    assert [e[2] for e in events if e[0] == take][-2:] == [0, 2]
    bridge.accept(take)
    chosen, other = read_sidecar(record.files[2]), read_sidecar(record.files[0])
    assert chosen["delivery"]["accepted"] is True and "accepted" not in chosen      # a delivery field
    assert "accepted" not in other["delivery"] and chosen["delivery"]["take_id"] == other["delivery"]["take_id"]
    with pytest.raises(StemdError, match="accepted as variation 3"):
        bridge.next_variation(take)
    client.close()
    assert TakeHistory(tmp_path).get(take).variation == 2  # the choice is kept across sessions


def test_take_ids_are_unknown_until_made_and_only_finished_takes_are_accepted(peer, tmp_path):
    from stemd.bridge.history import UnknownTake
    from stemd.errors import StemdError

    bridge, client = make_bridge(peer, tmp_path)
    with pytest.raises(UnknownTake, match="no take 't9'"):
        bridge.reroll("t9")
    take = bridge.generate("fail please", 1)
    assert bridge.wait(take, 10).state == "failed"
    with pytest.raises(StemdError, match="take t1 is failed: only a finished take can be accepted"):
        bridge.accept(take)
    with pytest.raises(StemdError, match="take t1 has no file to play"):
        bridge.audition(take)
    client.close()


def test_default_start_bar_is_the_next_bar_line_of_the_followed_transport(peer, tmp_path):
    bridge, client = make_bridge(peer, tmp_path, bpm=90)
    bridge.transport.update(quarters=4 * 6 + 1, playing=False)  # inside the DAW's bar 7
    take = bridge.generate("bass", 1)
    bridge.wait(take, 30)
    assert peer.requests[0].start_bar == 7 and peer.requests[0].bpm.bpm == 90
    client.close()


@pytest.mark.skipif(not shutil.which("oscsend"), reason="liblo-tools (oscsend) is not installed")
def test_osc_command_from_liblo_makes_a_take_and_rerolls_it(peer, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        cport = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{peer.port}",
                             "--follow", "fixed:120", "--out", str(tmp_path), "--command-port", str(cport),
                             "--no-stdin"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert "OSC commands on" in proc.stdout.readline()
        subprocess.run(["oscsend", "localhost", str(cport), "/stemd/bridge/generate", "sii", "organ stabs", "2", "3"],
                       check=True)
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("organ-stabs_bar004_take01.wav")) and time.monotonic() < deadline:
            time.sleep(0.1)
        subprocess.run(["oscsend", "localhost", str(cport), "/stemd/bridge/reroll", "s", "t1"], check=True)
        while not list(tmp_path.glob("organ-stabs_bar004_take02.wav")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [r.start_bar for r in peer.requests] == [3, 3]
        assert peer.requests[0].seed != peer.requests[1].seed
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)


def test_stdin_commands_drive_a_running_bridge(peer, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{peer.port}",
                             "--follow", "fixed:100:3/4", "--out", str(tmp_path), "--command-port", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        proc.stdin.write("generate 'bright pads' 2 6\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while not (tmp_path / "bright-pads_bar007_take01.wav").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.stdin.write("accept t1\nfrobnicate\ntakes\nquit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert "t1" in lines and "t1: accepted" in lines and "bye" in lines
    assert any(l.startswith("error: unknown command 'frobnicate'") for l in lines)
    assert any(l.startswith("t1 accepted generate ") and l.endswith("bright-pads_bar007_take01.wav") for l in lines)
    req = peer.requests[0]
    assert (req.prompt, req.bars, req.start_bar, str(req.meter), req.bpm.bpm) == ("bright pads", 2, 6, "3/4", 100)


def test_extend_on_the_command_line_takes_bars_or_keeps_the_takes_own_length(peer, tmp_path):
    base = ["--daemon", f"127.0.0.1:{peer.port}", "--follow", "fixed:97:3/4", "--out", str(tmp_path), "--once",
            "--no-stdin", "--command-port", "0"]
    assert stemd_bridge(*base, "--generate", "pads", "--bars", "8", "--start-bar", "0").returncode == 0
    out = stemd_bridge(*base, "--extend", "t1", "--bars", "4")
    assert out.returncode == 0, out.stderr
    assert stemd_bridge(*base, "--extend", "t1").returncode == 0
    assert [(r.bars, r.start_bar) for r in peer.requests] == [(8, 0), (4, 8), (8, 8)]


def test_each_variation_is_written_with_the_sidecar_the_daemon_sent_for_it(peer, tmp_path):
    """The bridge writes the daemon's /stemd/sidecar of each variation as it came, adding only its delivery;
    it builds no provenance of its own."""
    from stemd.takes import read_sidecar

    bridge, client = make_bridge(peer, tmp_path, bpm=97)
    take = bridge.generate("odd pads", 2, variations=3, meter="7/8", seed=4, stem="pads")
    record = bridge.wait(take, 30)
    assert record.state == "ready" and len(record.files) == 3
    for v, path in enumerate(record.files):
        meta = read_sidecar(path)
        assert (meta["variation"], meta["file"], meta["family"], meta["license"]["name"]) == \
            (v, f"peer-{take}-{v}.wav", "click", "MIT (stemd)")
        assert (meta["meter"], meta["tempo"], meta["stem"], meta["commercial_use"]) == ("7/8", 97.0, "pads", True)
        assert meta["delivery"]["file"] == os.path.basename(path) and meta["delivery"]["take_id"] == take
        assert meta["delivery"]["client"] == "stemd bridge" and "missing" not in meta["delivery"]
    client.close()


def test_a_take_whose_sidecar_never_arrived_says_so_and_guesses_nothing(peer, tmp_path):
    from stemd.takes import read_sidecar

    bridge, client = make_bridge(peer, tmp_path)
    record = bridge.wait(bridge.generate("no sidecar please", 1, seed=2), 30)
    assert record.state == "ready"
    meta = read_sidecar(record.file)
    assert list(meta) == ["delivery"]                  # no model, licence or prompt the daemon did not say
    assert "sent no sidecar" in meta["delivery"]["missing"] and meta["delivery"]["frames"] > 0
    client.close()
