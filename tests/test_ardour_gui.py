"""The real Ardour 7 GUI (under Xvfb, on JACK) imports a take through stemd's hook.

A 97 BPM 3/4 session is made by Ardour itself (ardour7-lua); the hook is installed with `stemd
install-host-scripts --daw ardour` into Ardour's own script folder and registered as an action hook the
way Ardour stores one (its ui_scripts file: the factory's bytecode, dumped by Ardour's own Lua). The bridge
asks a stemd protocol peer (the click engine) for a take at bar 3 and queues it in the session's inbox;
Ardour's GUI imports it; Ardour saves the session over its OSC surface, and the saved session must hold
the take on the track named `takes` at the first sample of bar 3.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import soundfile

from stemd.bridge.delivery.ardour import ArdourSession
from stemd.timing import Grid, Meter
from test_ardour import ARDOUR_OSC_PORT, ardour_answers, make_session, port_free, set_tempo_map, tell_ardour

ARDOUR_GUI = shutil.which("ardour")
pytestmark = [
    pytest.mark.skipif(not shutil.which("Xvfb"), reason="Xvfb (Debian xvfb) is not installed"),
    pytest.mark.skipif(not (ARDOUR_GUI and shutil.which("ardour7-lua")),
                       reason="Ardour 7 (Debian ardour: ardour, ardour7-lua) is not installed"),
]

HOOK_NAME = "stemd: import takes"
#: Ardour 7.3's LuaSignal order (gtk2_ardour/luasignal_syms.h): LuaTimerDS is signal 47 of 49
LUA_TIMER_DS, LUA_SIGNALS = 47, 49

#: Ardour's own Lua dumps the factory as its GUI does when a hook is added in the Script Manager
DUMP_HOOK = """
local scratch = setmetatable ({{ ardour = function (t) end }}, {{ __index = _G }})
local f = io.open ("{script}", "r")
local script = f:read ("*a")
f:close ()
load (script, "hook", "t", scratch) ()
local state = string.format ("s = {{}} s[%q] = %q s[%q] = %q s[%q] = %q s[%q] = {{}} ",
                             "n", "{name}", "s", script, "f", string.dump (scratch.factory, true), "a")
local out = io.open ("{out}", "wb")
out:write (state)
out:close ()
"""

ENGINE_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<Ardour>
  <Config>
    <Option name="try-autostart-engine" value="1"/>
  </Config>
  <Extra>
    <AudioMIDISetup>
      <EngineStates>
        <State backend="JACK" driver="" device="" input-device="" output-device="" sample-rate="48000"
               buffer-size="1024" n-periods="0" input-latency="0" output-latency="0" lm-input="" lm-output=""
               active="1" use-buffered-io="0" midi-option="" lru="1"><MIDIDevices/></State>
      </EngineStates>
    </AudioMIDISetup>
  </Extra>
</Ardour>
"""


def ardour_config(tmp_path: Path, env: dict) -> Path:
    """An Ardour user config folder: past the first-run wizard, on JACK without the engine dialog, the hook
    installed by stemd's installer and registered as an action hook."""
    config = tmp_path / "config"
    folder = config / "ardour7"
    folder.mkdir(parents=True)
    (folder / ".a7").touch()                        # been here before: no first-run wizard
    # no modal dialog about the locked-memory limit (what its "Do not show this window again" writes)
    (folder / "instant.xml").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<instant>\n  <no-memory-warning/>\n'
                                        '</instant>\n')
    (folder / "config").write_text(ENGINE_CONFIG)
    out = subprocess.run([sys.executable, "-m", "stemd", "install-host-scripts", "--daw", "ardour"],
                         capture_output=True, text=True, timeout=60, env=dict(env, XDG_CONFIG_HOME=str(config)))
    assert out.returncode == 0, out.stderr
    script = folder / "scripts" / "stemd_takes.lua"
    assert script.exists(), out.stdout
    dumped = tmp_path / "hook.state"
    lua = tmp_path / "dump_hook.lua"
    lua.write_text(DUMP_HOOK.format(script=script, name=HOOK_NAME, out=dumped))
    run = subprocess.run(["ardour7-lua", str(lua)], capture_output=True, text=True, timeout=60)
    assert dumped.exists(), run.stdout + run.stderr
    signals = "".join("1" if LUA_SIGNALS - 1 - i == LUA_TIMER_DS else "0" for i in range(LUA_SIGNALS))
    state = base64.b64encode(dumped.read_bytes()).decode()
    (folder / "ui_scripts").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<UIScripts>\n  <ActionHooks>\n'
        f'    <LuaCallback lua="Lua 5.3" id="4242" name="{HOOK_NAME}" signals="{signals}">{state}</LuaCallback>\n'
        '  </ActionHooks>\n</UIScripts>\n')
    return config


def start_xvfb(procs) -> str:
    """A virtual screen; Xvfb picks a free display number and says which (-displayfd)."""
    read, write = os.pipe()
    procs.start(["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    assert number, "Xvfb did not report a display"
    return f":{number}"


def playlist_regions(session: Path, track: str) -> list[ET.Element]:
    """The regions on ``track``'s playlist in a saved session."""
    root = ET.parse(session).getroot()
    route = next(r for r in root.iter("Route") if r.get("name") == track)
    playlists = root.find("Playlists")
    for p in playlists.iter("Playlist") if playlists is not None else ():
        if p.get("orig-track-id") == route.get("id"):
            return list(p.iter("Region"))
    return []


@pytest.mark.skipif(not port_free(ARDOUR_OSC_PORT), reason=f"UDP {ARDOUR_OSC_PORT} (Ardour's OSC port) is taken")
def test_the_ardour_gui_imports_a_take_for_bar_3_of_a_97_bpm_3_4_session_on_the_named_track(jack, peer, tmp_path):
    session = make_session(tmp_path, "song", ("takes", "other"))
    meter = Meter(3, 4)
    set_tempo_map(session, 97, meter)
    doc = ArdourSession(session)
    doc.enable_osc()
    doc.save()
    config = ardour_config(tmp_path, jack.env)
    display = start_xvfb(jack)
    log_path = tmp_path / "ardour.log"
    env = dict(jack.env, DISPLAY=display, XDG_CONFIG_HOME=str(config))
    with open(log_path, "w") as log:
        jack.start([ARDOUR_GUI, str(session.parent)], env=env, stdout=log, stderr=subprocess.STDOUT)
    assert ardour_answers(120), f"Ardour's GUI did not answer OSC: {log_path.read_text()[-2000:]}"
    # the bridge: a 1-bar take for bar 3 (start bar 2 counted from 0), queued in the session's inbox
    out = subprocess.run([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{peer.port}",
                          "--follow", "fixed:97:3/4", "--out", str(tmp_path / "stemd"), "--generate", "click",
                          "--bars", "1", "--start-bar", "2", "--insert", "ardour", "--session", str(session.parent),
                          "--track", "takes", "--once", "--no-stdin", "--command-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    wav = Path(out.stdout.splitlines()[-1])
    inbox, taken = session.parent / "stemd-inbox.jsonl", session.parent / "stemd-inbox.taken.jsonl"
    deadline = time.monotonic() + 30
    while (inbox.exists() or taken.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not inbox.exists() and not taken.exists(), f"the hook did not take the inbox: {log_path.read_text()[-2000:]}"
    before = session.stat().st_mtime_ns
    tell_ardour("/save_state")
    deadline = time.monotonic() + 30
    while session.stat().st_mtime_ns == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session.stat().st_mtime_ns != before, "Ardour did not save the session"
    time.sleep(1.0)
    superclock = doc.superclock
    at = Grid(97, meter).bar_start_sample(2, 48000)
    regions = playlist_regions(session, "takes")
    assert regions, f"no region on the track 'takes': {log_path.read_text()[-2000:]}"
    # Ardour 7.3 writes a region's place as its length "a<ticks>@a<position>" (superclock ticks)
    placed = [tuple(r.get("length").split("@")) for r in regions]
    frames = soundfile.info(str(wav)).frames                  # the whole take: one bar of 97 BPM 3/4
    assert frames == Grid(97, meter).bar_length_samples(2, 48000)
    assert placed == [(f"a{frames * superclock // 48000}", f"a{at * superclock // 48000}")], (placed, at)
    assert not playlist_regions(session, "other")
