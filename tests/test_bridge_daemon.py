"""The bridge against the real daemon: ``stemd serve --model click`` and ``stemd bridge`` as processes,
over OSC/TCP, with a token, and without torch on the bridge's side."""

from __future__ import annotations

import json
from pathlib import Path
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import soundfile

from stemd import osc
from stemd.protocol import PING, PONG
from stemd.timing import Grid

TOKEN = "s3cret-token-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        try:
            s.sendto(osc.encode_message(PING, "token", TOKEN), ("127.0.0.1", port))
            return osc.decode(s.recvfrom(65536)[0]).address == PONG
        except (OSError, osc.OSCDecodeError):
            return False


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    port = free_port()
    out = tmp_path_factory.mktemp("daemon-takes")
    proc = subprocess.Popen([sys.executable, "-m", "stemd", "serve", "--model", "click", "--port", str(port),
                             "--token", TOKEN, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not answers(port):
            if proc.poll() is not None:
                pytest.fail(f"stemd serve exited: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("stemd serve did not answer a ping within 60 s")
            time.sleep(0.2)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def torchless_env(tmp_path):
    blocker = tmp_path / "blocker"
    for name in ("torch", "transformers"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('no {name} on this laptop (test)')\n")
    return dict(os.environ, PYTHONPATH=str(blocker) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_one_shot_take_from_stemd_serve_without_torch_on_the_bridge(daemon, tmp_path, torchless_env):
    out = subprocess.run([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{daemon}", "--token", TOKEN,
                          "--follow", "fixed:137.5:7/8", "--out", str(tmp_path), "--generate", "sync check",
                          "--bars", "3", "--start-bar", "4", "--seed", "5", "--rate", "44100", "--once"],
                         capture_output=True, text=True, timeout=120, env=torchless_env)
    assert out.returncode == 0, out.stderr
    assert [l for l in out.stdout.splitlines() if "landed" in l] == [f"t1: bar {i}/3 landed" for i in (1, 2, 3)]
    wav = tmp_path / "sync-check_bar005_take01.wav"
    assert out.stdout.splitlines()[-1] == str(wav)
    data, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    assert rate == 44100 and data.shape[0] == Grid("137.5", "7/8").span_samples(4, 3, 44100)
    meta = json.loads(wav.with_suffix(".json").read_text())
    assert (meta["model"], meta["seed"], meta["tempo"], meta["meter"], meta["start_bar"]) == ("click", 5, 137.5, "7/8", 4)


def test_wrong_token_is_one_line_and_exit_2(daemon, tmp_path):
    out = subprocess.run([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{daemon}", "--token", "nope",
                          "--out", str(tmp_path), "--generate", "x", "--once"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unauthorized" in lines[0], out.stderr


def test_bad_request_is_refused_in_one_line_before_it_is_sent(daemon, tmp_path):
    out = subprocess.run([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{daemon}", "--token", TOKEN,
                          "--out", str(tmp_path), "--generate", "x", "--bars", "300", "--once"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["stemd bridge: out_of_range: bars must be 1..256, got 300"]


def test_reroll_and_extend_through_the_daemon(daemon, tmp_path):
    args = [sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{daemon}", "--token", TOKEN,
            "--follow", "fixed:120", "--out", str(tmp_path), "--once"]
    first = subprocess.run(args + ["--generate", "loop", "--bars", "2", "--start-bar", "0"], capture_output=True,
                           text=True, timeout=60)
    again = subprocess.run(args + ["--reroll", "t1"], capture_output=True, text=True, timeout=60)
    more = subprocess.run(args + ["--extend", "t1"], capture_output=True, text=True, timeout=60)
    assert first.returncode == again.returncode == more.returncode == 0, first.stderr + again.stderr + more.stderr
    assert more.stdout.splitlines()[-1].endswith("loop_bar003_take01.wav")  # starts where t1 ends
    history = json.loads((tmp_path / ".stemd-history.json").read_text())["takes"]
    assert [(t["id"], t["kind"], t["parent"], t["state"]) for t in history] == [
        ("t1", "generate", None, "ready"), ("t2", "reroll", "t1", "ready"), ("t3", "extend", "t1", "ready")]
    assert history[1]["params"]["seed"] != history[0]["params"]["seed"]
    accept = subprocess.run([sys.executable, "-m", "stemd", "bridge", "--out", str(tmp_path), "--accept", "t2", "--once"],
                            capture_output=True, text=True, timeout=60)  # no daemon needed
    assert accept.returncode == 0 and accept.stdout.strip() == "t2: accepted", accept.stderr
    sidecar = json.loads(Path(history[1]["files"][0]).with_suffix(".json").read_text())
    assert sidecar["delivery"]["accepted"] is True and sidecar["delivery"]["take_id"] == "t2"
    assert "accepted" not in sidecar                  # a delivery field, never at the daemon's top level
    missing = subprocess.run([sys.executable, "-m", "stemd", "bridge", "--out", str(tmp_path), "--accept", "t9",
                              "--once"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no take 't9'" in missing.stderr


def test_the_bridges_sidecar_is_the_daemons_file_plus_only_its_delivery(start_daemon, tmp_path):
    """One source of provenance: each variation's sidecar, as ``stemd serve`` wrote it beside its own take,
    is what the bridge writes beside its copy, with the bridge's fields under ``delivery`` only."""
    from stemd.bridge.app import Bridge
    from stemd.bridge.client import DaemonClient
    from stemd.bridge.transport import Transport

    daemon = start_daemon()
    client = DaemonClient("127.0.0.1", daemon.port).connect()
    transport = Transport(97)
    transport.update(quarters=0, playing=False)
    bridge = Bridge(client, transport, tmp_path / "project", subtype="pcm24")
    take = bridge.generate("café drums ☕", 2, meter="3/4", start_bar=3, seed=8, variations=2, stem="drums")
    record = bridge.wait(take, 60)
    client.close()
    assert record.state == "ready" and len(record.files) == 2
    for v, path in enumerate(record.files):
        ours = json.loads(Path(path).with_suffix(".json").read_text())
        daemons = json.loads((daemon.out / ours["file"]).with_suffix(".json").read_text())
        assert {k: x for k, x in ours.items() if k != "delivery"} == daemons
        assert daemons["variation"] == v and daemons["prompt"] == "café drums ☕" and daemons["license"]["link"]
        delivery = ours["delivery"]
        assert (delivery["file"], delivery["format"], delivery["take_id"], delivery["daw_bar"]) == \
            (Path(path).name, "pcm24", take, 4)
        assert delivery["frames"] == daemons["frames"] == Grid(97, "3/4").span_samples(3, 2, 48000)
