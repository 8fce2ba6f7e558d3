"""A real DAW: headless Ardour 7 on JACK. The bridge follows its transport over Ardour's OSC surface,
and a take written for bar 3 and added to the session renders (ardour7-export) starting at bar 3 to
the sample.

The session is made by Ardour itself (ardour7-lua: create_session, one stereo track); the OSC surface is
switched on in its session file; hardour (headless Ardour) runs it on a JACK dummy server. Takes come
from the bridge's one-shot against a stemd protocol peer that uses the click engine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import soundfile

from stemd import osc
from stemd.bridge.delivery.ardour import ArdourSession
from stemd.timing import Grid, Meter
from plugin_hosts import set_tempo_map  # noqa: F401 (test_ardour_gui.py takes it from here too)
from test_bridge_support import json_lines

HARDOUR = "/usr/lib/ardour7/hardour-7.3.0~ds0"
ARDOUR_ENV = {"LD_LIBRARY_PATH": "/usr/lib/ardour7", "ARDOUR_DATA_PATH": "/usr/share/ardour7",
              "ARDOUR_CONFIG_PATH": "/etc/ardour7", "ARDOUR_DLL_PATH": "/usr/lib/ardour7"}
ARDOUR_OSC_PORT = 3819

EXPORT_TIMEOUT = 45  # seconds: an export of these sessions takes 5 to 10 on a loaded 2-core machine


def ardour_env(tmp_path: Path, base: Optional[dict] = None) -> dict:
    """The environment (``base``, default ours) with a HOME of the test's own, empty until the first
    Ardour program of the test writes its ~/.config/ardour7 there: every run is Ardour's first run on a
    machine, as on a fresh CI machine, whatever earlier runs or other tests' Ardour left in the user's."""
    home = tmp_path / "ardour-home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ if base is None else base)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"))
    return env


needs_ardour = pytest.mark.skipif(not (shutil.which("ardour7-lua") and shutil.which("ardour7-export")),
                                  reason="Ardour 7 (Debian ardour: ardour7-lua, ardour7-export) is not installed")

MAKE_SESSION = """
local s = create_session("{folder}", "{name}", 48000)
assert(s, "create_session failed")
for _, name in ipairs({{{tracks}}}) do
  local track = s:new_audio_track(2, 2, nil, 1, name, ARDOUR.PresentationInfo.max_order,
                                  ARDOUR.TrackMode.Normal, true):front()
  -- connect the track to the master bus now: Ardour's auto-connect runs later, on its own thread, and a
  -- session saved before it has a track that renders nothing
  track:output():disconnect_all(nil)
  for i = 0, 1 do
    track:output():audio(i):connect(s:master_out():input():audio(i):name())
  end
end
s:save_state("", false, false, false, false, false)
close_session()
"""


def make_session(tmp_path: Path, name: str = "song", tracks: tuple = ("takes",)) -> Path:
    folder = tmp_path / name
    script = tmp_path / "make_session.lua"
    script.write_text(MAKE_SESSION.format(folder=folder, name=name, tracks=", ".join(f'"{t}"' for t in tracks)))
    out = subprocess.run(["ardour7-lua", str(script)], capture_output=True, text=True, timeout=120,
                         env=ardour_env(tmp_path))
    session = folder / f"{name}.ardour"
    assert session.exists(), out.stdout + out.stderr
    return session


def export(session: Path, tmp_path: Path, name: str = "export.wav") -> Optional[tuple[np.ndarray, int]]:
    """The session rendered by ``ardour7-export`` (32-bit float), or None when it did not finish in
    ``EXPORT_TIMEOUT`` seconds with a whole file. Seen here on a loaded machine: an export that wrote a
    header and hung, and one that wrote its whole file and then did not exit (that file is used)."""
    wav = tmp_path / name
    try:
        out = subprocess.run(["ardour7-export", "-b", "float", "-o", str(wav), str(session.parent), session.stem],
                             capture_output=True, text=True, timeout=EXPORT_TIMEOUT, env=ardour_env(tmp_path))
    except subprocess.TimeoutExpired:
        if not wav.exists() or soundfile.info(wav).frames == 0:
            return None
    else:
        assert wav.exists(), out.stdout + out.stderr
    data, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    return data, rate


def audible_samples(rendered: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.abs(rendered).max(axis=1) > 1e-6)  # -120 dBFS, on either channel


def ardour_machine() -> str:
    """What of this machine picks Ardour's code paths, for a failure message: the CPU count (Ardour 7.3 runs
    CPUs - 1 DSP threads, 2 on one CPU; with one thread, that is on 2 CPUs, it processes the routes on the
    engine's own thread, otherwise on its graph threads) and the x86 features that choose its mixing
    routines (AVX-512F before FMA, AVX and SSE; 7.3's AVX-512F routines can write up to 7 samples past the
    end of a buffer that is not 64-byte aligned, fixed in Ardour 8.5)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    except OSError:
        flags = []
    simd = next((f for f in ("avx512f", "fma", "avx", "sse") if f in flags), "none read")
    return f"{os.cpu_count()} CPUs, {simd} the widest of avx512f/fma/avx/sse"


def capture_inputs(session: Path) -> str:
    """The session's ports on Ardour's capture ports, for a failure message. ardour7-lua auto-connects a new
    track's inputs on a thread of its own, so a session it saves may have them or not (here 3 of 6 runs of
    the headless Ardour test's session had the track on system:capture_1 and _2)."""
    ports = [p.get("name") for p in ET.parse(session).getroot().iter("Port")
             if any(c.get("other", "").startswith("system:capture") for c in p.iter("Connection"))]
    return f"ports on system:capture in the session: {', '.join(ports) or 'none'}"


def describe_audible(rendered: np.ndarray, before: int, take: Optional[np.ndarray] = None) -> str:
    """Where a render is audible before sample ``before``, for a failure message: how many samples, the
    first ones with their levels, how many lie on multiples of 1024 (Ardour's export cycle), what the
    multiples of 2048 hold (the first-run failure's pattern), whether the render is ``take`` from
    ``before`` on once they are left out, and the machine."""
    early = audible_samples(rendered[:before])
    if not early.size:
        return f"nothing audible before the bar; {ardour_machine()}"
    levels = ", ".join(f"{i}: {rendered[i].max():+.3g}" for i in early[:12])
    grid = np.arange(2048, len(rendered), 2048)        # the first-run failure's pattern, over the whole export
    on_grid = grid[np.abs(rendered[grid]).max(axis=1) > 1e-6]
    held = "; ".join(f"{i}: {' '.join(float(v).hex() for v in rendered[i])}" for i in on_grid[:4])
    described = (f"{early.size} audible samples before the bar ({np.count_nonzero(early % 1024 == 0)} on multiples "
                 f"of 1024, {np.count_nonzero(early % 2048 == 0)} of 2048), the first at {levels}; in the whole export "
                 f"{on_grid.size} of the {grid.size} multiples of 2048 are audible ({held}; "
                 f"{len(np.unique(rendered[on_grid], axis=0))} distinct; audible on the left "
                 f"{np.count_nonzero(np.abs(rendered[grid, 0]) > 1e-6)}, on the right "
                 f"{np.count_nonzero(np.abs(rendered[grid, 1]) > 1e-6)})")
    if take is not None:
        off_grid = np.ones(len(rendered), bool)
        off_grid[grid] = False
        placed = np.zeros_like(rendered)
        placed[before:before + len(take)] = take[:len(rendered) - before]
        same = not np.flatnonzero((np.abs(rendered - placed).max(axis=1) > 1e-6) & off_grid).size
        described += f"; off the 2048 grid the render {'is' if same else 'is not'} the take at the bar"
    return f"{described}; {ardour_machine()}"


def assert_renders_at(session: Path, tmp_path: Path, take: np.ndarray, at: int, exports: int = 3) -> None:
    """The session renders ``take`` from sample ``at`` on, sample for sample, and nothing before it.

    ardour7-export is not stemd: an export that hangs, or that is audible where the session holds no
    audio, is tried again (up to ``exports`` in all) and each such export is reported as a warning with
    what it held; the same misplaced take fails every time. Seen here: an export that differed inside
    the take while its start was right (with another full test run on the same 2 cores), sub -120 dBFS
    residue before the bar, an export that hung (a loaded machine); on a fresh CI machine's first run,
    an export audible on 8,767 samples, the first at 2048, 4096, 6144: exactly what the right take (8,600
    audible samples here) gives with one more audible sample on every multiple of 2048 through the whole
    export (173, 6 of them inside the take's clicks). In this test's export those are the samples 768
    into every other 1024-sample cycle (not the first): the master bus plays to system:playback, on which
    Ardour's Dummy engine reports 256 samples of latency, so ardour7-export splits its first exported
    cycle 768 + 256. They are also exactly where one channel's export delay line wraps (traced here with
    an LD_PRELOAD probe of Ardour's mix_buffers_no_gain): in the 768 ExportGraphBuilder::process reads
    the first channel of its map only (it returns inside its loop), so the other channel's 2048-sample
    ring buffer (PortExportChannel) runs 768 behind and its read splits 768 + 256 every other cycle, at
    export samples 2048, 4096, ..., 173 times, while the first channel's never splits. A fault at the
    wrap would mark that channel alone; the warning counts each channel. What made those samples audible
    on that machine was not found: not reproduced in 30+ first-run exports, each with a HOME of its own,
    nor in 92 more (86 of saved sessions of this test, 6 whole runs of it) with Ardour told of 1 to 16
    CPUs (ARDOUR_CONCURRENCY), pinned to one CPU, beside busy loops, with the track's inputs on
    system:capture or not, and with the memory writes of Ardour 7.3's AVX-512F routines emulated on an
    AVX2 CPU."""
    problems = []
    for attempt in range(exports):
        result = export(session, tmp_path, f"export{attempt or ''}.wav")
        if result is None:
            problems.append(f"export {attempt + 1} did not finish in {EXPORT_TIMEOUT} s")
            continue
        rendered, rate = result
        assert rate == 48000
        audible = audible_samples(rendered)
        assert audible.size, f"export {attempt + 1} is silent: the take is not in the session"
        before = np.abs(rendered[:at]).max() if at else 0.0
        if audible[0] < at or before > 1e-6:
            problems.append(f"export {attempt + 1}: first audible sample {audible[0]}, bar starts at {at}; "
                            f"level {before:.2e} before the bar: {describe_audible(rendered, at, take)}")
            continue
        assert audible[0] == at, f"first audible sample {audible[0]}, bar starts at {at}"
        diff = np.flatnonzero(np.abs(rendered[at:at + len(take)] - take).max(axis=1) > 1e-6)
        if diff.size:
            problems.append(f"export {attempt + 1}: {diff.size} samples of the render differ from the take, first "
                            f"at take sample {diff[0]}; {describe_audible(rendered, at, take)}")
            continue
        for problem in problems:
            warnings.warn(f"ardour7-export, tried again: {problem}; {capture_inputs(session)}")
        return
    raise AssertionError(f"{'; '.join(problems)}; {capture_inputs(session)}")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def ardour_answers(timeout: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.sendto(osc.encode_message("/set_surface/feedback", 16), ("127.0.0.1", ARDOUR_OSC_PORT))
            try:
                s.recvfrom(65536)
                return True
            except socket.timeout:
                continue
    return False


def tell_ardour(address: str, *args) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(osc.encode_message(address, *args), ("127.0.0.1", ARDOUR_OSC_PORT))


def start_hardour(jack, session: Path, log_path: Path, attempts: int = 3) -> subprocess.Popen:
    """Headless Ardour on the test's JACK server, answering on its OSC port.

    About one start in four here, jackd logs "Unknown request 0" at Ardour's connection and drops it
    ("JACK HALTED" in Ardour's log): its transport then never moves. That start is retried."""
    env = dict(ardour_env(log_path.parent, jack.env), **ARDOUR_ENV)
    for _ in range(attempts):
        log = open(log_path, "w")
        proc = jack.start([HARDOUR, str(session.parent), session.stem], env=env, stdout=log,
                          stderr=subprocess.STDOUT)
        answered = ardour_answers(60)
        time.sleep(2.0)
        if answered and "JACK HALTED" not in log_path.read_text():
            return proc
        jack.stop(proc)
    pytest.fail(f"headless Ardour did not run on JACK in {attempts} starts: {log_path.read_text()[-1500:]}")


@needs_ardour
@pytest.mark.skipif(not os.path.exists(HARDOUR), reason=f"headless Ardour ({HARDOUR}) is not installed")
def test_bridge_follows_headless_ardour_in_97_bpm_3_4_and_a_take_lands_on_the_bar_ardour_is_at(jack, peer, tmp_path):
    if not port_free(ARDOUR_OSC_PORT):
        pytest.skip(f"UDP {ARDOUR_OSC_PORT} is taken: another Ardour is running here")
    session = make_session(tmp_path)
    meter, grid = Meter(3, 4), Grid(97, "3/4")
    set_tempo_map(session, 97, meter)
    s = ArdourSession(session)
    s.enable_osc()
    s.save()
    ardour = start_hardour(jack, session, tmp_path / "hardour.log")
    tell_ardour("/transport_stop")              # (headless Ardour starts rolling)
    time.sleep(1.0)
    # stopped, without the session file: Ardour says no tempo or meter, so the bridge places nothing
    out = subprocess.run([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{peer.port}",
                          "--follow", "ardour", "--out", str(tmp_path / "takes"), "--generate", "guess", "--bars", "1",
                          "--command-port", "0", "--once"], capture_output=True, text=True, timeout=60, env=jack.env)
    assert out.returncode == 2 and "has not told its tempo and meter" in out.stderr and "--session" in out.stderr, \
        out.stderr
    assert not peer.requests
    bridge = jack.start([sys.executable, "-m", "stemd", "bridge", "--daemon", "none", "--follow", "ardour",
                         "--session", str(session.parent), "--print-transport", "--no-stdin"],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json_lines(bridge, 10.0, first_only=True), "the bridge heard nothing from Ardour"
    tell_ardour("/locate", grid.bar_start_sample(8, 48000), 1)  # to bar 9, and roll
    rolling = json_lines(bridge, 4.5)
    tell_ardour("/transport_stop")
    stopped = json_lines(bridge, 1.5)
    positions = [(l["bar"], l["beat"]) for l in rolling if l["playing"]]
    assert (9, 1) in positions, (rolling, (tmp_path / "hardour.log").read_text()[-2000:])
    after = positions[positions.index((9, 1)):]
    assert after[:5] == [(9, 1), (9, 2), (9, 3), (10, 1), (10, 2)], after
    assert all(b >= a for a, b in zip(after, after[1:])), after  # never backwards
    assert all(l["bpm"] == 97 and l["meter"] == "3/4" for l in rolling), rolling[-1]   # the session's tempo map
    assert stopped and not stopped[-1]["playing"]
    bridge.terminate()

    # a take asked for while following Ardour, stopped at bar 3, goes into the session at bar 3
    time.sleep(1.0)  # a locate right after a stop would still roll
    tell_ardour("/locate", grid.bar_start_sample(2, 48000), 0)
    time.sleep(1.0)
    out = subprocess.run([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{peer.port}",
                          "--follow", "ardour", "--out", str(tmp_path / "takes"), "--generate", "ardour sync",
                          "--bars", "2", "--rate", "48000", "--insert", "ardour-session", "--session", str(session),
                          "--command-port", "0", "--once"], capture_output=True, text=True, timeout=60, env=jack.env)
    assert out.returncode == 0, out.stderr
    take_path = Path(out.stdout.splitlines()[-1])
    assert take_path.name == "ardour-sync_bar003_take01.wav"
    jack.stop(ardour)  # headless Ardour exits without saving over the session file
    take, _ = soundfile.read(take_path, dtype="float32", always_2d=True)
    assert len(take) == grid.span_samples(2, 2, 48000)
    assert_renders_at(session, tmp_path, take, grid.bar_start_sample(2, 48000))


@needs_ardour
def test_take_for_bar_3_added_to_a_closed_session_renders_from_bar_3_to_the_sample(peer, tmp_path):
    session = make_session(tmp_path)
    out = subprocess.run([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{peer.port}",
                          "--follow", "fixed:120:4/4", "--out", str(tmp_path / "takes"), "--generate", "ardour sync",
                          "--bars", "2", "--start-bar", "2", "--rate", "48000", "--insert", "ardour-session",
                          "--session", str(session), "--once"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    take, rate = soundfile.read(out.stdout.splitlines()[-1], dtype="float32", always_2d=True)
    bar3 = Grid(120, "4/4").bar_start_sample(2, 48000)
    assert (rate, bar3) == (48000, 192000)
    assert_renders_at(session, tmp_path, take, bar3)  # the first click of the take on the first sample of bar 3


@needs_ardour
def test_session_writer_puts_a_take_on_the_track_named_after_its_stem(tmp_path):
    from stemd.bridge.delivery import DeliveredTake
    from stemd.bridge.delivery.ardour import ArdourSessionWriter
    from stemd.protocol import GenerateRequest
    from stemd.takes import write_take

    session = make_session(tmp_path, tracks=("takes", "drums"))
    wav = write_take(tmp_path, "d", np.full((2, 4800), 0.25, np.float32), 48000, {})
    for stem in ("drums", "horns"):  # horns: no such track, so the first one
        request = GenerateRequest("t1", stem=stem, sample_rate=48000)
        ArdourSessionWriter(session).deliver(DeliveredTake("t1", request, 0, wav, None, 48000, 96000))
    s = ArdourSession(session)
    playlists = {p.get("id"): p for p in s.root.iter("Playlist")}
    regions = {name: len(playlists[pid].findall("Region")) for name, pid in s.tracks()}
    assert regions == {"takes": 1, "drums": 1}


@needs_ardour
def test_session_writer_refuses_a_take_at_another_rate(tmp_path):
    from stemd.bridge.delivery.ardour import ArdourSessionError
    from stemd.takes import write_take

    session = ArdourSession(make_session(tmp_path))
    wav = write_take(tmp_path, "x", np.zeros((2, 100), np.float32), 44100, {})
    with pytest.raises(ArdourSessionError, match="44100 Hz but the session runs at 48000 Hz"):
        session.add_region(wav, 0)


def test_a_retried_export_is_described_by_its_2048_grid_and_whether_the_take_sits_on_its_bar():
    """The first-run failure's pattern, made by hand at 97 BPM 3/4: the take on bar 3 plus one sample on
    every multiple of 2048 on one channel. The warning names the grid, what each channel holds there, and
    whether the take is in place."""
    grid, at = Grid(97, "3/4"), Grid(97, "3/4").bar_start_sample(2, 48000)
    take = np.zeros((grid.span_samples(2, 2, 48000), 2), np.float32)
    take[::14845] = 0.9                                        # a click on every beat
    rendered = np.zeros((at + len(take), 2), np.float32)
    rendered[at:] = take
    rendered[2048::2048, 1] += np.float32(3.0517578e-05)       # 2 ** -15 on every multiple of 2048, right only
    described = describe_audible(rendered, at, take)
    assert "86 audible samples before the bar (86 on multiples of 1024, 86 of 2048)" in described, described
    assert "in the whole export 173 of the 173 multiples of 2048 are audible" in described, described
    assert "audible on the left 0, on the right 173" in described, described
    assert "2048: 0x0.0p+0 0x1.0000000000000p-15" in described, described
    assert "off the 2048 grid the render is the take at the bar" in described, described
    assert ardour_machine() in described
    late = np.roll(rendered, 1, axis=0)                        # the same take one sample late
    assert "the render is not the take at the bar" in describe_audible(late, at, take)
    assert describe_audible(np.zeros_like(rendered), at, take).startswith("nothing audible before the bar; ")


def test_a_failure_message_names_the_session_ports_on_ardours_capture_ports(tmp_path):
    session = tmp_path / "song.ardour"
    session.write_text('<Session><Routes><Route><IO><Port type="audio" name="takes/audio_in 1">'
                       '<Connection other="system:capture_1"/></Port><Port type="audio" name="takes/audio_in 2"/>'
                       '</IO><IO><Port type="audio" name="takes/audio_out 1">'
                       '<Connection other="system:playback_1"/></Port></IO></Route></Routes></Session>')
    assert capture_inputs(session) == "ports on system:capture in the session: takes/audio_in 1"
    session.write_text(session.read_text().replace("system:capture_1", "Master/audio_in 1"))
    assert capture_inputs(session) == "ports on system:capture in the session: none"
