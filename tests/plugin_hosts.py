"""Shared parts for the stemd plugin's tests in real hosts (no tests here).

- ``plugin_build``: build/plugin/ (VST3, CLAP, LV2, JACK app), made by ``make plugin`` when it is absent.
- ``compile_c``: the tests' own C helpers (tests/rt_probe.c, tests/jack_timebase.c) built with ``cc``.
- Ardour 7.3 hosting the VST3 headless, in the one order that works (DESIGN.md): a fresh HOME, one
  ardour7-lua run (it records the bundle under ~/.config/ardour7/plugin_metadata), Ardour's VST3
  scanner on the bundle (it caches it under ~/.cache/ardour7/vst), then the run that puts the plugin
  on a track. Sessions are made by ardour7-lua; ardour7-export renders them.
- jalv hosting the LV2 on JACK, its control outputs read with jalv's ``monitors`` command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import soundfile

from stemd.timing import Meter

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
#: the build under test: build/plugin, or $STEMD_PLUGIN_BUILD (another build of the same source, e.g. with
#: PLUGIN_OUT or another DPF_PATH)
PLUGIN_DIR = Path(os.environ.get("STEMD_PLUGIN_BUILD") or ROOT / "build" / "plugin")
PLUGIN_URI = "urn:stemd:plugin"

ARDOUR_ENV = {"LD_LIBRARY_PATH": "/usr/lib/ardour7", "ARDOUR_DATA_PATH": "/usr/share/ardour7",
              "ARDOUR_CONFIG_PATH": "/etc/ardour7", "ARDOUR_DLL_PATH": "/usr/lib/ardour7"}
VST3_SCANNER = "/usr/lib/ardour7/ardour-vst3-scanner"

needs_ardour = pytest.mark.skipif(
    not (shutil.which("ardour7-lua") and shutil.which("ardour7-export") and os.path.exists(VST3_SCANNER)),
    reason="Ardour 7 (Debian ardour: ardour7-lua, ardour7-export, ardour-vst3-scanner) is not installed")
needs_jalv = pytest.mark.skipif(not (shutil.which("jalv") and shutil.which("jack_rec")),
                                reason="jalv (Debian jalv) or jack_rec (Debian jackd2) is not installed")
needs_jack_rec = pytest.mark.skipif(not (shutil.which("jack_rec") and shutil.which("jack_connect")),
                                    reason="jack_rec, jack_connect (Debian jackd2) are not installed")
needs_cc = pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler (cc) for the tests' C helpers")

_build_lock = threading.Lock()


def _build_files(folder: Path) -> list[Path]:
    """What a complete build holds: each format's library (a bundle without one is a build in progress)."""
    return [folder / "stemd.vst3" / "Contents" / "x86_64-linux" / "stemd.so", folder / "stemd.lv2" / "stemd.so",
            folder / "stemd.lv2" / "manifest.ttl", folder / "stemd.lv2" / "stemd.ttl", folder / "stemd"]


@pytest.fixture(scope="session")
def plugin_build(tmp_path_factory) -> Path:
    """A snapshot of build/plugin/ (all four formats) taken once per test session, so that a rebuild while
    the tests run does not change the plugin under a host. ``make plugin`` builds it first when it is
    absent or incomplete (a clean clone)."""
    with _build_lock:
        if not all(p.exists() for p in _build_files(PLUGIN_DIR)):
            dpf = Path(os.environ.get("DPF_PATH", "/usr/share/dpf"))
            if not (dpf / "Makefile.plugins.mk").exists():
                pytest.skip(f"DPF is not at {dpf} (Debian dpf-source, or set DPF_PATH): the plugin cannot be built")
            if not (shutil.which("make") and shutil.which("c++")):
                pytest.skip("no make or C++ compiler: the plugin cannot be built")
            out = subprocess.run(["make", "plugin"], cwd=ROOT, capture_output=True, text=True, timeout=900)
            assert out.returncode == 0, f"make plugin failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        missing = [str(p.relative_to(PLUGIN_DIR)) for p in _build_files(PLUGIN_DIR) if not p.exists()]
        assert not missing, f"make plugin did not build {missing} in {PLUGIN_DIR}"
        snapshot = tmp_path_factory.mktemp("plugin-build")
        for name in ("stemd.vst3", "stemd.lv2", "stemd.clap", "stemd"):
            source = PLUGIN_DIR / name
            if source.is_dir():
                shutil.copytree(source, snapshot / name, symlinks=True)
            elif source.exists():
                shutil.copy2(source, snapshot / name)
        missing = [str(p.relative_to(snapshot)) for p in _build_files(snapshot) if not p.exists()]
        assert not missing, f"build/plugin changed while it was copied: {missing} missing"
    return snapshot


def compile_c(source: Path, out: Path, *flags: str) -> Path:
    """``cc`` a test helper; fails the test with the compiler's message if it does not build."""
    result = subprocess.run(["cc", "-O1", "-Wall", "-Wextra", "-o", str(out), str(source), *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"cc {source.name} failed:\n{result.stderr}"
    return out


def build_rt_probe(folder: Path) -> Path:
    return compile_c(TESTS / "rt_probe.c", folder / "rt_probe.so", "-shared", "-fPIC", "-ldl", "-lpthread")


def read_rt_probe(path: Path) -> list[dict]:
    """The probe's lines (one per process that exited with it preloaded)."""
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_jack_timebase(folder: Path) -> Path:
    if not Path("/usr/include/jack/jack.h").exists():
        pytest.skip("JACK's headers (Debian libjack-jackd2-dev) are not installed: no timebase master to build")
    return compile_c(TESTS / "jack_timebase.c", folder / "jack_timebase", "-ljack", "-lm")


def wait_for(condition, timeout: float, what: str, every: float = 0.1):
    """``condition()``'s first true value, asked every ``every`` s; AssertionError "``what`` within
    ``timeout`` s" when none comes in time (``what`` says what did not happen: "the plugin wrote no take")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} within {timeout} s")


def daemon_status(daemon, request_id: str = None) -> tuple:
    """``/stemd/status``: without an id ("*", state, queued, running id, clients, model); with one
    (id, state, bars_done, bars, position)."""
    from daemon_fixtures import TcpClient

    client = TcpClient(daemon.port)
    try:
        client.send("/stemd/status", *([request_id] if request_id else []))
        return client.until("/stemd/status/reply", timeout=10)[-1].args
    finally:
        client.close()


def first_audible(audio: np.ndarray, threshold: float = 1e-6) -> int:
    """Index of the first frame above ``threshold`` (-120 dBFS) on any channel, or -1."""
    hits = np.flatnonzero(np.abs(audio).max(axis=1) > threshold)
    return int(hits[0]) if hits.size else -1


# ---------------------------------------------------------------------------------------------------
# Ardour

MAKE_SESSION = """
local s = create_session("{folder}", "{name}", {rate})
assert(s, "create_session failed")
local track = s:new_audio_track(2, 2, nil, 1, "{track}", ARDOUR.PresentationInfo.max_order,
                                ARDOUR.TrackMode.Normal, true):front()
-- connected to the master bus now: a session saved before Ardour's own auto-connect renders nothing
track:output():disconnect_all(nil)
for i = 0, 1 do
  track:output():audio(i):connect(s:master_out():input():audio(i):name())
end
s:save_state("", false, false, false, false, false)
close_session()
"""

#: Loads the session and puts stemd (VST3) first on the track (``p``: its insert).
ADD_STEMD = """
local s = load_session("{folder}", "{name}")
assert(s, "load_session failed")
local route = s:route_by_name("{track}")
assert(not route:isnil(), "no track {track}")
local p = ARDOUR.LuaAPI.new_plugin(s, "stemd", ARDOUR.PluginType.VST3, "")
assert(not p:isnil(), "Ardour found no VST3 named stemd")
assert(route:add_processor_by_index(p, 0, nil, true) == 0, "the plugin did not go on the track")
"""

#: ADD_STEMD, then sets its parameters by name (the plugin's parameters come after DPF's hidden MIDI CC
#: ones), rolls the transport from bar 1 while it waits for the plugin's ``bars_received`` output to reach
#: {wait_bars}, then saves the session with the plugin.
ADD_AND_GENERATE = ADD_STEMD + """local plug = p:to_insert():plugin(0)
local index = {{}}
for j = 0, plug:parameter_count() - 1 do
  local name = plug:parameter_label(j):lower():gsub(" %(.*", ""):gsub(" ", "_")
  index[name] = j
end
local function set(name, value)
  assert(index[name], "the plugin has no parameter " .. name)
  assert(ARDOUR.LuaAPI.set_processor_param(p, index[name], value), "cannot set " .. name)
end
local function get(name)
  assert(index[name], "the plugin has no parameter " .. name)
  return ARDOUR.LuaAPI.get_processor_param(p, index[name])
end
{settings}
ARDOUR.LuaAPI.usleep(300000)
set("generate", 1)
s:request_roll(ARDOUR.TransportRequestSource.TRS_UI)
local received = 0
for i = 1, {wait_steps} do
  ARDOUR.LuaAPI.usleep(250000)
  received = get("bars_received")
  print(string.format("STEMD t=%.2f bars_received=%d connected=%d rolling=%s sample=%d", i * 0.25, received,
                      get("connected"), tostring(s:transport_rolling()), s:transport_sample()))
  if received >= {wait_bars} then break end
  if i * 0.25 >= 20 and get("connected") < 0.5 then break end  -- no daemon: do not wait for nothing
end
s:request_stop(false, false, ARDOUR.TransportRequestSource.TRS_UI)
ARDOUR.LuaAPI.usleep(500000)
print(string.format("STEMD done bars_received=%d", received))
s:save_state("", false, false, false, false, false)
close_session()
"""

#: Opens a session and saves it again (the plugin's state goes through a restore and a save).
REOPEN = """
local s = load_session("{folder}", "{name}")
assert(s, "load_session failed")
ARDOUR.LuaAPI.usleep({wait_us})
s:save_state("", false, false, false, false, false)
close_session()
"""


class Ardour:
    """Ardour 7.3 hosting build/plugin/stemd.vst3, under a HOME of its own (``home``)."""

    def __init__(self, home: Path, plugin_dir: Path, env: Optional[dict] = None):
        self.home = home
        self.vst3 = home / ".vst3" / "stemd.vst3"
        # a copy, not a link: Ardour drops a cached VST3 whose library is newer than its cache entry, so a
        # rebuild of build/plugin during the test would leave the session with an "unknown" plugin
        if not self.vst3.exists():
            shutil.copytree(plugin_dir / "stemd.vst3", self.vst3, symlinks=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
        self.env = {**base, **ARDOUR_ENV, "HOME": str(home), **(env or {})}
        self.scanned = False

    def lua(self, script: str, path: Path, timeout: float = 180) -> subprocess.CompletedProcess:
        path.write_text(script)
        return subprocess.run(["ardour7-lua", str(path)], capture_output=True, text=True, timeout=timeout,
                              env=self.env)

    def make_session(self, folder: Path, bpm: int, meter: Meter, rate: int, end_sample: int, name: str = "song",
                     track: str = "stemd") -> Path:
        """A session made by Ardour at ``rate`` with one stereo track, its tempo map set to ``bpm``
        (quarter notes) and ``meter``, its range 0 to ``end_sample``; the first such run in a fresh HOME
        records the VST3 bundle, and the scanner then caches it."""
        script = MAKE_SESSION.format(folder=folder / name, name=name, rate=rate, track=track)
        out = self.lua(script, folder / "make_session.lua")
        session = folder / name / f"{name}.ardour"
        assert session.exists(), out.stdout + out.stderr
        set_tempo_map(session, bpm, meter)
        set_session_range(session, end_sample, rate)
        if not self.scanned:
            self.scan()
        return session

    def scan(self) -> None:
        out = subprocess.run([VST3_SCANNER, str(self.vst3)], capture_output=True, text=True, timeout=120,
                             env=self.env)
        cache = list((self.home / ".cache" / "ardour7" / "vst").glob("*.v3i"))
        assert cache, f"Ardour's VST3 scanner cached nothing for {self.vst3}:\n{out.stdout}{out.stderr}"
        self.scanned = True

    def add_stemd_and_generate(self, session: Path, settings: dict, wait_bars: int, wait_s: float = 60,
                               track: str = "stemd") -> tuple[str, int]:
        """Put stemd on ``track``, set ``settings`` (parameter name -> value), fire ``generate`` and roll
        until ``bars_received`` reaches ``wait_bars`` (or ``wait_s``), then save. Returns (log, received)."""
        lines = "\n".join(f'set("{k}", {v})' for k, v in settings.items())
        script = ADD_AND_GENERATE.format(folder=session.parent, name=session.stem, track=track, settings=lines,
                                         wait_steps=int(wait_s / 0.25), wait_bars=wait_bars)
        out = self.lua(script, session.parent.parent / "add_stemd.lua", timeout=wait_s + 120)
        log = out.stdout + out.stderr
        m = re.search(r"STEMD done bars_received=(\d+)", out.stdout)
        assert m, f"the Ardour run with stemd did not finish:\n{log[-4000:]}"
        return log, int(m.group(1))

    def reopen(self, session: Path, wait_s: float = 2.0) -> str:
        out = self.lua(REOPEN.format(folder=session.parent, name=session.stem, wait_us=int(wait_s * 1e6)),
                       session.parent.parent / "reopen.lua")
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout + out.stderr

    def export(self, session: Path, wav: Path) -> tuple[np.ndarray, int]:
        """ardour7-export's render of the session (float WAV). It may print "double free or corruption"
        as it exits, after writing its file (DESIGN.md): the file is what counts."""
        if wav.exists():
            wav.unlink()
        out = subprocess.run(["ardour7-export", "-b", "float", "-o", str(wav), str(session.parent), session.stem],
                             capture_output=True, text=True, timeout=300, env=self.env)
        assert wav.exists(), out.stdout + out.stderr
        assert "that is unknown" not in out.stdout + out.stderr, f"Ardour did not find stemd:\n{out.stderr[-2000:]}"
        data, rate = soundfile.read(wav, dtype="float32", always_2d=True)
        return data, rate


def set_session_range(session: Path, end_sample: int, rate: int) -> None:
    """The session's range (what ardour7-export renders) from 0 to ``end_sample``: a session with no
    regions has none, and its export is empty."""
    import xml.etree.ElementTree as ET

    tree = ET.parse(session)
    root = tree.getroot()
    tempo_map = root.find("TempoMap")
    per_second = int(tempo_map.get("superclocks-per-second", 282240000)) if tempo_map is not None else 282240000
    assert end_sample * per_second % rate == 0, (end_sample, rate)
    end = f"a{end_sample * per_second // rate}"
    locations = root.find("Locations")
    if locations is None:
        locations = ET.SubElement(root, "Locations")
    for location in list(locations):
        if "IsSessionRange" in location.get("flags", ""):
            locations.remove(location)
    ids = [int(e.get("id")) for e in root.iter() if (e.get("id") or "").isdigit()]
    locations.append(ET.Element("Location", {"id": str(max(ids, default=0) + 1000), "name": "session", "start": "a0",
                                             "end": end, "flags": "IsSessionRange", "locked": "0", "timestamp": "0",
                                             "cue": "0"}))
    tree.write(session, encoding="UTF-8", xml_declaration=True)


def set_tempo_map(session: Path, bpm: int, meter: Meter) -> None:
    """The session's first tempo (quarter notes per minute) and meter, as Ardour writes them."""
    import xml.etree.ElementTree as ET

    tree = ET.parse(session)
    tempo = tree.find("TempoMap/Tempos/Tempo")
    tempo.set("npm", str(bpm))
    tempo.set("enpm", str(bpm))
    tempo.set("note-type", "4")
    m = tree.find("TempoMap/Meters/Meter")
    m.set("divisions-per-bar", str(meter.numerator))
    m.set("note-value", str(meter.denominator))
    tree.write(session, encoding="UTF-8", xml_declaration=True)


# ---------------------------------------------------------------------------------------------------
# jalv on JACK

class Jalv:
    """The LV2 in jalv on a JACK server (``jack``: the tests' Processes on that server's env).

    Controls are set by writing "SYMBOL = VALUE" lines to jalv's console; control outputs (connected,
    bars_received) are read with its "monitors" command, which prints the plugin's output ports as the
    plugin last wrote them ("bars_received = 2.000000"). (``jalv -p`` prints output changes only to a
    plugin window, and this plugin has none.)"""

    def __init__(self, jack, plugin_dir: Path, name: str, log: Path, env: Optional[dict] = None,
                 controls: Optional[dict] = None):
        lv2_path = log.parent / "lv2"
        lv2_path.mkdir(exist_ok=True)
        if not (lv2_path / "stemd.lv2").exists():  # a copy: a rebuild during the test does not reach it
            shutil.copytree(plugin_dir / "stemd.lv2", lv2_path / "stemd.lv2", symlinks=True)
        self.name = name
        self.log = log
        self.env = jack.env
        self.lines: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        args = ["stdbuf", "-oL", "jalv", "-x", "-n", name]  # line-buffered: lines arrive as printed
        for k, v in (controls or {}).items():
            args += ["-c", f"{k}={v}"]
        self.proc = jack.start([*args, PLUGIN_URI], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1,
                               env={**jack.env, "LV2_PATH": str(lv2_path), **(env or {})})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log, "w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                m = re.match(r"(?:> )*(\w+) = (-?[\d.]+)", line.strip())
                if m:
                    with self._lock:
                        self.lines.append((m.group(1), float(m.group(2))))

    def _tell(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def set(self, symbol: str, value: float) -> None:
        self._tell(f"{symbol} = {value}")

    def value(self, symbol: str, timeout: float = 5.0) -> Optional[float]:
        """The plugin's output ``symbol`` now (jalv's "monitors"), or None if jalv does not answer."""
        with self._lock:
            seen = len(self.lines)
        self._tell("monitors")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for name, v in self.lines[seen:]:
                    if name == symbol:
                        return v
            if self.proc.poll() is not None:
                return None
            time.sleep(0.02)
        return None

    def wait_ports(self, timeout: float = 20) -> list[str]:
        return wait_audio_outs(self.env, f"{self.name}:", self.proc, self.log, "jalv", timeout)

    def wait_value(self, symbol: str, at_least: float, timeout: float) -> Optional[float]:
        """Polls ``symbol`` until it is at least ``at_least`` (returns it) or ``timeout`` passes (returns
        the last value read)."""
        deadline = time.monotonic() + timeout
        v = None
        while time.monotonic() < deadline:
            v = self.value(symbol)
            if v is not None and v >= at_least:
                return v
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        return v


def jack_ports(env: dict, prefix: str = "") -> list[str]:
    out = subprocess.run(["jack_lsp"], capture_output=True, text=True, env=env, timeout=20).stdout
    return [p for p in out.splitlines() if p.startswith(prefix)]


def wait_audio_outs(env: dict, prefix: str, proc: subprocess.Popen, log: Path, host: str,
                    timeout: float = 20) -> list[str]:
    """The audio outputs (two or more) whose JACK names start with ``prefix``, sorted, once JACK lists them;
    AssertionError with the end of ``host``'s ``log`` when ``proc`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outs = [p for p in jack_ports(env, prefix) if "audio_out" in p]
        if len(outs) >= 2:
            return sorted(outs)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{host}'s stemd ports did not appear:\n{log.read_text()[-3000:]}")


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of a process's stdout (text mode), or "" after ``timeout``."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if sel.select(timeout=timeout):
        return proc.stdout.readline()
    return ""


class Timebase:
    """tests/jack_timebase.c on the test's JACK server: the timebase master at ``bpm`` (quarter notes) and
    ``meter``, with a port ``stemd-timebase:frame`` that carries each sample's transport frame
    (:func:`transport_frames` reads it back from a recording)."""

    PORT = "stemd-timebase:frame"

    def __init__(self, jack, exe: Path, bpm: int, meter: Meter, convention: str = "beats"):
        # convention: what its beats_per_minute counts, "beats" of beat_type (JACK's example) or "quarters" (Ardour 7)
        self.proc = jack.start([str(exe), str(bpm), str(meter.numerator), str(meter.denominator), convention],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
        line = read_line(self.proc, 15)
        assert line.strip() == "ready", f"the JACK timebase master did not start: {line!r}"

    def tell(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = read_line(self.proc, 10)
        assert line.strip() == f"ok {command}", f"the timebase master answered {line!r} to {command!r}"

    def where(self) -> tuple[str, int]:
        """JACK's transport now: ("rolling" | "stopped" | "starting", frame)."""
        self.proc.stdin.write("where\n")
        self.proc.stdin.flush()
        line = read_line(self.proc, 10).split()
        assert line[:2] == ["ok", "where"], f"the timebase master answered {line!r} to where"
        return line[2], int(line[3])

    def roll_to(self, frame: int, timeout: float = 20) -> None:
        """Until the transport rolls past ``frame``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state, now = self.where()
            if state == "rolling" and now >= frame:
                return
            time.sleep(0.02)
        raise AssertionError(f"JACK's transport did not roll to frame {frame}: {self.where()}")


def wait_connected(env: dict, port: str, timeout: float = 15) -> None:
    """Until ``jack_lsp -c`` lists a connection of ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["jack_lsp", "-c", port], capture_output=True, text=True, env=env, timeout=10).stdout
        if len(out.splitlines()) >= 2:
            return
        time.sleep(0.1)
    raise AssertionError(f"{port} was never connected")


def record(jack, ports: list[str], seconds: int, wav: Path, before_play=None) -> subprocess.Popen:
    """jack_rec recording ``ports`` (32-bit) for ``seconds``; returns once it is connected to all of them.

    Its ring buffer holds 2^20 frames (22 s at 48 kHz): with jack_rec's default (16,384 frames, a third of
    a second) its disk thread, starved on a loaded machine, lost cycles of a recording here."""
    rec = jack.start(["jack_rec", "-f", str(wav), "-b", "32", "-B", str(1 << 20), "-d", str(seconds), *ports],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for port in ports:
        wait_connected(jack.env, port)
    return rec


def recorded_in_time(jack, rec: subprocess.Popen, timeout: float) -> bool:
    """Whether jack_rec (:func:`record`) finished within ``timeout`` s. Else it is stopped, False, with a
    warning: twice in one CI run on the 2-core VM (and once in about 25 runs of the JACK app's test alone)
    jack_rec's file stopped growing about 2 s into its recording, with every client still in JACK, and it
    never finished; why was not found (jack_rec exits when JACK shuts it out, so it was not that)."""
    try:
        rec.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        pass
    ports = subprocess.run(["jack_lsp"], env=jack.env, capture_output=True, text=True, timeout=20).stdout.split()
    warnings.warn(f"jack_rec did not finish in {timeout:.0f} s; JACK's ports then: {' '.join(ports)}")
    jack.stop(rec)
    jack.procs.remove(rec)
    return False


def transport_frames(reference: np.ndarray) -> np.ndarray:
    """The transport frame of each recorded sample, from a recording of the timebase master's ``frame``
    port (read as float64); -1 where the transport was stopped."""
    return np.rint(reference.astype(np.float64) * (1 << 24)).astype(np.int64) - 1


def read_recording(wav: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(the plugin's two channels, the transport frame of each sample, rate) of a jack_rec recording of
    the plugin's outputs and the timebase master's ``frame`` port, in that order."""
    audio, rate = soundfile.read(wav, dtype="float64", always_2d=True)
    return audio[:, :2].astype(np.float32), transport_frames(audio[:, 2]), rate


# ---------------------------------------------------------------------------------------------------
# the JACK standalone (build/plugin/stemd) and MIDI notes to it

#: A JACK MIDI client "NAME:out" (python-rtmidi) that sends a note-on/off for each note number read on stdin.
NOTE_SENDER = r"""
import sys, time
import rtmidi
out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name=sys.argv[1])
out.open_virtual_port("out")
print("ready", flush=True)
for line in sys.stdin:
    note = int(line)
    out.send_message([0x90, note, 100])
    time.sleep(0.05)
    out.send_message([0x80, note, 0])
    print("sent", note, flush=True)
"""

#: the plugin's reserved MIDI note that asks for a take with its current parameters (docs/plugin.md)
NOTE_GENERATE = 6
#: the reserved note that arms the guide recorder (guide_bars bars from the next bar line; docs/plugin.md)
NOTE_RECORD_GUIDE = 7


class JackApp:
    """build/plugin/stemd (DPF's JACK standalone: it reads JACK's transport itself) on the test's server,
    with a MIDI note sender connected to its input (``sender=False``: none; the test connects its own to
    ``MIDI_IN``). The binary is copied first (a rebuild during the test does not reach it)."""

    MIDI_IN = "stemd:events-in"

    def __init__(self, jack, plugin_dir: Path, folder: Path, env: Optional[dict] = None, sender: bool = True):
        import sys

        exe = folder / "stemd-jack"
        shutil.copy2(plugin_dir / "stemd", exe)
        self.env = jack.env
        self.log = folder / "stemd-jack.log"
        self.proc = jack.start([str(exe)], stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                               env={**jack.env, **(env or {})})
        self.outs = self._wait_ports()
        if not sender:
            return
        self.sender = jack.start([sys.executable, "-c", NOTE_SENDER, "stemd-notes"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert read_line(self.sender, 15).strip() == "ready", "the MIDI note sender did not start"
        out = subprocess.run(["jack_connect", "stemd-notes:out", self.MIDI_IN], capture_output=True, text=True,
                             env=jack.env, timeout=20)
        assert out.returncode == 0, out.stderr

    def _wait_ports(self, timeout: float = 20) -> list[str]:
        return wait_audio_outs(self.env, "stemd:", self.proc, self.log, "the JACK app", timeout)

    def note(self, number: int) -> None:
        self.sender.stdin.write(f"{number}\n")
        self.sender.stdin.flush()
        assert read_line(self.sender, 10).strip() == f"sent {number}"
