"""The MIDI mapping over real JACK MIDI ports: jackd on the dummy backend, started here; notes from
jack_midiseq and from another process; feedback read back by jack_midi_dump."""

import json
import socket
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import mido
import pytest

from stemd import osc
from stemd.midi.curves import knob_value
from stemd.midi.mapfile import load
from stemd.midi.ports import Port, PortMissing, api_id
from stemd.midi.session import LEARN_ADDRESS, MidiSession

pytestmark = pytest.mark.skipif(shutil.which("jackd") is None or shutil.which("jack_wait") is None,
                                reason="jackd (Debian jackd2) is not installed: no JACK MIDI ports to test on")

# Another JACK MIDI client, in its own process: opens CLIENT:out, prints "ready", then sends each stdin
# line: a JSON list of events (byte lists) or {"sleep": seconds}.
SENDER = r"""
import json
import socket
import sys
import time

import rtmidi

out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name=sys.argv[1])
out.open_virtual_port("out")
print("ready", flush=True)
for line in sys.stdin:
    item = json.loads(line)
    if isinstance(item, dict):
        time.sleep(item["sleep"])
        continue
    for event in item:
        out.send_message(event)
        if len(item) > 64:
            time.sleep(0.0002)  # a flood: let JACK's ring buffer drain now and then
    print("sent", flush=True)
"""
MAP = """\
[slots.drums]
prompt = "funk drums"
bars = 4

[[bind]]
note = 36
action = "generate"
slot = "drums"

[[bind]]
note = 40
action = "reroll"

[[bind]]
cc = 70
action = "param"
param = "temperature"
min = 0.5
max = 1.5
curve = "exp"

[feedback]
queued = 5
generating = 6
ready = 1
playing = 2
"""


def _start(cmd, **kw):
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _jack_server(tmp_path_factory, taken=()):
    """A JACK server of our own. Names come from a small pool: jackd keeps at most 8 servers in its
    machine-wide registry and reclaims a dead server's slot only for a server of the same name."""
    mp = pytest.MonkeyPatch()
    for name in (f"stemd-midi-test-{i}" for i in range(4)):
        if name in taken:
            continue
        mp.setenv("JACK_DEFAULT_SERVER", name)
        if subprocess.run(["jack_wait", "-c"], capture_output=True, text=True).stdout.startswith("running"):
            continue  # another test run has this one
        log = tmp_path_factory.mktemp("jackd") / "jackd.log"
        with open(log, "w") as f:  # a file, not a pipe: jackd writes as it stops
            server = _start(["jackd", "--no-realtime", "-n", name, "-d", "dummy", "-r", "48000", "-p", "256"],
                            stdout=f, stderr=subprocess.STDOUT,
                            restore_signals=False)  # SIGPIPE ignored: else jackd dies of it while stopping
                                                    # and leaves its slot in JACK's server registry
        if subprocess.run(["jack_wait", "-w", "-t", "10"], capture_output=True).returncode == 0:
            break
        _stop(server)
    else:
        mp.undo()
        pytest.skip(f"jackd did not start on the dummy backend: {log.read_text().strip()[-200:]}")
    try:
        yield name
    finally:
        _stop(server)
        mp.undo()


@pytest.fixture
def jack(tmp_path_factory):
    """A JACK server for each test: clients an earlier test killed stall a shared server's graph (MIDI
    events then never arrive), so no test inherits another's."""
    yield from _jack_server(tmp_path_factory)


def port_names(kind):
    """The JACK MIDI ports another client could connect to (outputs for kind=input)."""
    probe = Port(kind, api_id("jack"), "x", client_name="lsp")
    try:
        return probe.names()
    finally:
        probe.shutdown()


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        _stop(p)


def wait_connected(port: str, timeout: float) -> None:
    """Until JACK says ``port`` is connected to something (``jack_lsp -c``), or fail saying what it lists."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["jack_lsp", "-c"], capture_output=True, text=True, timeout=10).stdout
        lines = out.splitlines()
        for i, line in enumerate(lines):
            if line.strip() == port and i + 1 < len(lines) and lines[i + 1].startswith((" ", "\t")):
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{port} never got connected; jack_lsp -c:\n{out}")
        time.sleep(0.1)


def sender(procs, client):
    """Another process with a JACK MIDI output CLIENT:out."""
    p = _start([sys.executable, "-c", SENDER, client], stdin=subprocess.PIPE,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return p


def send(p, *messages, raw=None):
    events = raw if raw is not None else [m.bytes() for m in messages]
    p.stdin.write(json.dumps(events) + "\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "sent"


class Recorder:
    """Stands in for the bridge: records the actions the controller asked for."""

    def __init__(self):
        self.calls = []
        self.changed = threading.Condition()

    def _record(self, *call):
        with self.changed:
            self.calls.append(call)
            self.changed.notify_all()
        return f"take{len(self.calls)}"

    def generate(self, slot, params):
        return self._record("generate", slot, dict(params))

    def reroll(self, take_id):
        return self._record("reroll", take_id)

    def __getattr__(self, name):  # accept, extend, cancel, variations, audition
        return lambda take_id: self._record(name, take_id) and None

    def wait_for(self, n, timeout=5.0):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.calls) >= n, timeout), f"only {self.calls}"
        return self.calls


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def session(tmp_path, target, **kw):
    path = tmp_path / "map.toml"
    if not path.exists():
        path.write_text(MAP)
    kw.setdefault("client_name", f"stemd{uuid.uuid4().hex[:6]}")
    return MidiSession(load(path), target, api_id("jack"), watch_seconds=0.1, **kw).start()


def controller(procs, tmp_path, prefix, **kw):
    """Another process with a MIDI output, a recording target, and a session reading that output."""
    client = f"{prefix}{uuid.uuid4().hex[:6]}"
    p = sender(procs, client)
    rec = Recorder()
    return p, rec, session(tmp_path, rec, input_port=client, **kw)


def monitor(procs):
    """jack_midi_dump under a fresh name: (its name, the lines it has printed so far)."""
    name = f"mon{uuid.uuid4().hex[:6]}"
    dump = _start(["stdbuf", "-oL", "jack_midi_dump", name], stdout=subprocess.PIPE,
                  stderr=subprocess.DEVNULL, text=True)
    procs.append(dump)
    lines = []
    threading.Thread(target=lambda: [lines.append(x) for x in dump.stdout], daemon=True).start()
    assert wait_until(lambda: f"{name}:input" in port_names("output"))
    return name, lines


def note(n, vel=100, ch=0):
    return mido.Message("note_on", channel=ch, note=n, velocity=vel)


def cc(n, value, ch=0):
    return mido.Message("control_change", channel=ch, control=n, value=value)


# --- tests ---------------------------------------------------------------------------------------
def test_a_note_from_jack_midiseq_triggers_generate(jack, procs, tmp_path):
    seq_name = f"seq{uuid.uuid4().hex[:6]}"
    # jack_midiseq loops note 36 (velocity 64, channel 1) every half second
    procs.append(_start(["jack_midiseq", seq_name, "24000", "0", "36", "8000"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    assert wait_until(lambda: f"{seq_name}:out" in port_names("input"))
    rec = Recorder()
    s = session(tmp_path, rec, input_port=seq_name)  # chosen by part of its name
    try:
        calls = rec.wait_for(1)
        assert calls[0] == ("generate", "drums", {"prompt": "funk drums", "bars": 4})
        assert s.input.connected_to == f"{seq_name}:out"
    finally:
        s.close()


def test_a_cc_sweep_moves_temperature_along_its_exp_curve(jack, procs, tmp_path):
    p, rec, s = controller(procs, tmp_path, "knob")
    try:
        checkpoints = [0, 32, 64, 96, 127]
        for v in range(128):      # a sweep at a hand's pace (about 1 ms a step), not 133 events in one cycle
            send(p, cc(70, v))
            time.sleep(0.001)
            if v in checkpoints:
                send(p, note(36))  # generate now: the request carries the knob's value
                time.sleep(0.02)
        calls = rec.wait_for(len(checkpoints))
        temps = [c[2]["temperature"] for c in calls]
        assert temps == [knob_value(v, 0.5, 1.5, "exp") for v in checkpoints]
        assert temps[0] == 0.5 and temps[-1] == 1.5 and temps[2] == pytest.approx(0.5 * 3 ** (64 / 127), 1e-5)
    finally:
        s.close()


def test_learn_binds_the_next_control_that_moves_and_writes_the_map(jack, procs, tmp_path):
    p, rec, s = controller(procs, tmp_path, "learn")
    try:
        s.learn("generate:drums")
        send(p, cc(20, 127, ch=3))           # the control that moves: a button CC on channel 4
        assert wait_until(lambda: not s.mapper.learning)
        text = (tmp_path / "map.toml").read_text()
        assert "cc = 20\nchannel = 4" in text and text.startswith("[slots.drums]")
        assert load(tmp_path / "map.toml").bindings[0].control.number == 20
        send(p, cc(20, 0, ch=3), cc(20, 127, ch=3))  # release, press: now it generates
        assert rec.wait_for(1)[0][:2] == ("generate", "drums")
        send(p, note(36))                  # the pad it had before is free again
        time.sleep(0.3)
        assert len(rec.calls) == 1
    finally:
        s.close()


def test_learn_started_by_osc_from_oscsend(jack, procs, tmp_path):
    if shutil.which("oscsend") is None:
        pytest.skip("oscsend (Debian liblo-tools) is not installed")
    p, _rec, s = controller(procs, tmp_path, "osclearn")
    try:
        port = s.listen_osc(0)
        subprocess.run(["oscsend", "127.0.0.1", str(port), LEARN_ADDRESS, "s", "param:guidance"], check=True)
        assert wait_until(lambda: s.mapper.learning)
        send(p, note(50))                  # a pad is not a knob: param learn waits for a CC
        send(p, cc(22, 64))
        assert wait_until(lambda: not s.mapper.learning)
        b = load(tmp_path / "map.toml").bindings[-1]
        assert (b.action, b.param, b.control.kind, b.control.number) == ("param", "guidance", "cc", 22)
        # a sender that stays gets told what was bound
        import socket

        from stemd import osc

        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.settimeout(5)
        peer.sendto(osc.encode_message(LEARN_ADDRESS, "reroll"), ("127.0.0.1", port))
        assert wait_until(lambda: s.mapper.learning)
        send(p, cc(23, 127))
        reply = osc.decode(peer.recv(65536))
        peer.close()
        assert (reply.address, reply.args) == ("/stemd/midi/learned", ("cc 23", "reroll", ""))
    finally:
        s.close()


def test_feedback_lights_come_out_and_another_client_reads_them(jack, procs, tmp_path):
    monitor_name, lines = monitor(procs)
    p, rec, s = controller(procs, tmp_path, "pads", output_port=monitor_name)
    try:
        assert wait_until(lambda: any("90 24 00" in x for x in lines))  # at start: the pad is dark
        send(p, note(36))
        take = rec.wait_for(1) and "take1"
        for state in ("queued", "generating", "ready", "playing"):
            s.take_state(take, state)
        want = ["90 24 05", "90 24 06", "90 24 01", "90 24 02"]
        assert wait_until(lambda: sum(w in "".join(lines) for w in want) == 4), lines
        seen = [w for x in lines for w in want if w in x]
        assert seen == want  # in order
    finally:
        s.close()


def test_bad_midi_never_stops_the_mapping(jack, procs, tmp_path):
    p, rec, s = controller(procs, tmp_path, "junk")
    try:
        send(p, raw=[[0x90, 36, 100], [40, 100]])          # running status: the second is a note 40
        time.sleep(0.2)
        send(p, raw=[[0xF0] + [0x11] * 1000 + [0xF7]] * 300)  # a sysex flood
        time.sleep(0.3)
        send(p, raw=[[0xF4], [0xFD], [0x55, 0x66]])          # undefined status bytes, stray data
        # an unterminated sysex: rtmidi's JACK input holds what follows until an F7 arrives, then
        # hands it over in one piece; the decoder finds the note inside
        send(p, raw=[[0xF0, 1, 2], [0x90, 36, 100], [0xF0, 5, 0xF7]])
        calls = rec.wait_for(3)
        assert [c[0] for c in calls] == ["generate", "reroll", "generate"]
        assert s.decoder.stats.running_status >= 1 and s.decoder.stats.sysex >= 1
        assert all(t.is_alive() for t in s._threads)
    finally:
        s.close()


def test_a_port_that_disappears_is_reopened_when_it_comes_back(jack, procs, tmp_path):
    client = f"flaky{uuid.uuid4().hex[:6]}"
    first = sender(procs, client)
    rec = Recorder()
    s = session(tmp_path, rec, input_port=client)
    try:
        _stop(first)
        assert wait_until(lambda: not s.input.is_open), "the vanished port was not noticed"
        second = sender(procs, client)
        assert wait_until(lambda: s.input.is_open and s.input.reopened == 1)
        send(second, note(36))
        assert rec.wait_for(1)[0][0] == "generate"
    finally:
        s.close()


def test_a_missing_port_is_one_line_that_lists_the_ports(jack, procs):
    client = f"there{uuid.uuid4().hex[:6]}"
    sender(procs, client)
    port = Port("input", api_id("jack"), pattern="no such controller", client_name="probe")
    with pytest.raises(PortMissing) as e:
        port.open()
    port.shutdown()
    msg = str(e.value)
    assert "\n" not in msg and "no MIDI input port matches 'no such controller'" in msg and f"{client}:out" in msg


class BridgeDouble:
    """The shape of stemd.bridge.app.Bridge that attach() uses: generate(**params), subscribe(listener)."""

    def __init__(self):
        self.requests, self.listeners = [], []

    def generate(self, prompt=None, bars=None, **params):
        self.requests.append(dict(prompt=prompt, bars=bars, **params))
        return f"t{len(self.requests)}"

    def subscribe(self, listener):
        self.listeners.append(listener)


def test_attach_drives_a_bridge_and_lights_pads_from_its_take_events(jack, procs, tmp_path):
    import argparse

    from stemd.bridge import midi
    from stemd.bridge.app import TakeEvent

    monitor_name, lines = monitor(procs)
    client = f"ctl{uuid.uuid4().hex[:6]}"
    p = sender(procs, client)
    (tmp_path / "map.toml").write_text(MAP.replace('bars = 4', 'bars = 4\nstem = "drums"'))
    parser = argparse.ArgumentParser()
    parser.add_argument("--map")
    midi.add_arguments(parser)
    args = parser.parse_args(["--map", str(tmp_path / "map.toml"), "--controller", client,
                              "--controller-out", monitor_name, "--midi-api", "jack"])
    bridge = BridgeDouble()
    s = midi.attach(bridge, args)
    try:
        send(p, note(36))
        assert wait_until(lambda: bridge.requests)
        assert bridge.requests[0] == {"prompt": "funk drums", "bars": 4, "stem": "drums"}
        for listener in bridge.listeners:
            listener(TakeEvent("t1", "generating"))
        assert wait_until(lambda: any("90 24 06" in x for x in lines)), lines
    finally:
        s.close()


# --- the daemon's own controller (stemd serve --map) ---------------------------------------------
DAEMON_MAP = """\
[defaults]
bpm = 90
meter = "3/4"
sample_rate = 24000

""" + MAP.replace('bars = 4', 'bars = 1\nstem = "drums"\nvariations = 2').replace(   # click takes no temperature
    'param = "temperature"\nmin = 0.5\nmax = 1.5\ncurve = "exp"', 'param = "bars"\nmin = 1\nmax = 2') + "".join(
    f'\n[[bind]]\nnote = {n}\naction = "{action}"\n' for n, action in ((41, "extend"), (42, "next_variation"),
                                                                      (43, "accept")))


def takes_in(folder):
    return sorted(p.name for p in folder.glob("*.wav")) if folder.exists() else []


def test_stemd_serve_map_a_pad_makes_a_take_in_the_daemon_and_its_pad_lights(jack, procs, tmp_path):
    from daemon_fixtures import Daemon
    from stemd.takes import read_sidecar

    monitor_name, lines = monitor(procs)
    client = f"dct{uuid.uuid4().hex[:6]}"
    p = sender(procs, client)
    (tmp_path / "map.toml").write_text(DAEMON_MAP)
    d = Daemon(tmp_path, "--map", str(tmp_path / "map.toml"), "--controller", client, "--controller-out",
               monitor_name, "--midi-api", "jack", "--audition-device", "no-such-output", "--pace", "0.3")
    procs.append(d.proc)
    try:
        assert wait_until(lambda: any("90 24 00" in x for x in lines)), (lines, d.log)  # pads start dark
        send(p, cc(70, 127), note(36))  # bars to 2 (the slot says 1), then generate drums
        assert wait_until(lambda: any("90 24 05" in x for x in lines), 10), (lines, d.log)      # queued
        assert wait_until(lambda: any("90 24 06" in x for x in lines), 10), (lines, d.log)      # generating
        assert wait_until(lambda: any("90 24 01" in x for x in lines), 20), (lines, d.log)      # ready
        first = takes_in(d.out)
        assert first == ["drums_funk-drums_bar001_take01_v1.wav", "drums_funk-drums_bar001_take01_v2.wav"], d.log
        meta = read_sidecar(d.out / first[0])
        assert (meta["tempo"], meta["meter"], meta["bars"], meta["stem"]) == (90.0, "3/4", 2, "drums")
        assert meta["request"]["sample_rate"] == 24000

        send(p, note(42))  # next variation: chosen, and its audition fails on an output that is not there
        d.wait_log("take midi-1: variation 2 of 2")
        d.wait_log("no-such-output")
        send(p, note(43))  # accept: the chosen variation's sidecar says so
        d.wait_log("take midi-1 accepted")
        assert read_sidecar(d.out / first[1])["delivery"] == {"accepted": True}   # the daemon's file: only that
        assert "delivery" not in read_sidecar(d.out / first[0])

        send(p, note(41))  # extend: a new take from bar 3, continuing the chosen file
        d.wait_log("take midi-2 ready", timeout=20)
        send(p, note(40))  # re-roll the extension: same bar, new seed
        d.wait_log("take midi-3 ready", timeout=20)
        names = takes_in(d.out)
        assert "drums_funk-drums_bar003_take01_v1.wav" in names and "drums_funk-drums_bar003_take02_v1.wav" in names
        ext, again = (read_sidecar(d.out / n) for n in ("drums_funk-drums_bar003_take01_v1.wav",
                                                        "drums_funk-drums_bar003_take02_v1.wav"))
        assert ext["request"]["continuation_path"].endswith(first[1])
        assert ext["start_bar"] == again["start_bar"] == 2 and ext["seed"] != again["seed"]
        # a re-rolled extension is the same extension with a new seed: it continues the same file (docs/midi.md;
        # this controller used to drop the continuation, unlike the bridge's)
        assert again["request"]["continuation_path"] == ext["request"]["continuation_path"]
        assert d.proc.poll() is None
    finally:
        d.stop()


def test_stemd_serve_map_learn_over_the_daemons_own_osc_port(jack, procs, tmp_path):
    from daemon_fixtures import Daemon

    client = f"dlc{uuid.uuid4().hex[:6]}"
    p = sender(procs, client)
    (tmp_path / "map.toml").write_text(DAEMON_MAP)
    d = Daemon(tmp_path, "--map", str(tmp_path / "map.toml"), "--controller", client, "--midi-api", "jack")
    procs.append(d.proc)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.sendto(osc.encode_message(LEARN_ADDRESS, "cancel"), ("127.0.0.1", d.port))
            assert osc.decode(s.recvfrom(65536)[0]).args == ("cancel",)  # /stemd/midi/learning
            send(p, note(50))
            learned = osc.decode(s.recvfrom(65536)[0])
            assert (learned.address, learned.args[:2]) == ("/stemd/midi/learned", ("note 50", "cancel"))
            s.sendto(osc.encode_message(LEARN_ADDRESS, "dance"), ("127.0.0.1", d.port))
            error = osc.decode(s.recvfrom(65536)[0])
            assert error.address == "/stemd/error" and error.args[1] == "bad_arguments" and "dance" in error.args[2]
        assert "note = 50" in (tmp_path / "map.toml").read_text()
    finally:
        d.stop()



def test_bridge_command_port_starts_learn_and_answers_what_was_bound(jack, procs, peer, tmp_path):
    client = f"blc{uuid.uuid4().hex[:6]}"
    p = sender(procs, client)
    (tmp_path / "map.toml").write_text(MAP)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        cport = s.getsockname()[1]
    bridge = _start([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{peer.port}", "--follow",
                     "fixed:120", "--out", str(tmp_path), "--no-stdin", "--command-port", str(cport), "--map",
                     str(tmp_path / "map.toml"), "--controller", client, "--midi-api", "jack"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(bridge)
    try:
        assert "OSC commands on" in bridge.stdout.readline()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            # asked again each second until answered: the command port may come up before the controller's
            # session is ready, and UDP may drop a datagram
            s.settimeout(1)
            for _ in range(15):
                s.sendto(osc.encode_message(LEARN_ADDRESS, "accept"), ("127.0.0.1", cport))
                try:
                    learning = osc.decode(s.recvfrom(65536)[0])
                    break
                except socket.timeout:
                    continue
            assert (learning.address, learning.args) == ("/stemd/midi/learning", ("accept",))
            wait_connected(f"{client}:out", 15)   # the bridge's controller input is connected to the knob
            for _ in range(15):     # the knob moved again each second until learned: the controller's
                send(p, cc(21, 127))  # JACK connection may come a moment after the session answers
                try:
                    learned = osc.decode(s.recvfrom(65536)[0])
                    break
                except socket.timeout:
                    continue
            assert (learned.address, learned.args) == ("/stemd/midi/learned", ("cc 21", "accept", ""))
        assert "cc = 21" in (tmp_path / "map.toml").read_text()
    finally:
        _stop(bridge)
