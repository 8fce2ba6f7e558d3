"""The in-DAW scripts. REAPER and Live cannot run here: their scripts run against recorded stand-ins of
the API calls they make (what is asserted is the calls and their arguments). Ardour's Lua script runs in
Ardour's own Lua (ardour7-lua) with the GUI-only Editor stood in. The installer and the OSC trigger to
REAPER run for real (liblo's oscdump is the peer)."""

from __future__ import annotations

import json
import threading
import runpy
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stemd import osc

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_HOST = ROOT / "plugin_host"


# --- REAPER ------------------------------------------------------------------------------------
class FakeReaper:
    """The RPR_ functions stemd_insert.py calls, recording each call; a 4/4 tempo map at ``bpm``."""

    def __init__(self, bpm=100.0, tracks=1, names=()):
        self.calls, self.bpm, self.tracks, self.cursor, self.selected = [], bpm, tracks, 7.5, None
        self.touched = "the track last clicked"
        self.names = {f"track{i + 1}": name for i, name in enumerate(names)}

    def namespace(self) -> dict:
        ns = {}
        for name in dir(self):
            if name.startswith("api_"):
                ns["RPR_" + name[4:]] = getattr(self, name)
        return ns

    def _log(self, *call):
        self.calls.append(call)

    def api_TimeMap2_beatsToTime(self, proj, tpos, measures):
        self._log("TimeMap2_beatsToTime", proj, tpos, measures)
        return (measures * 4 * 60.0 / self.bpm + tpos * 60.0 / self.bpm, proj, tpos, measures)

    def api_CountTracks(self, proj):
        return self.tracks

    def api_CountSelectedTracks(self, proj):
        return 0

    def api_InsertTrackAtIndex(self, index, defaults):
        self._log("InsertTrackAtIndex", index)
        self.tracks += 1

    def api_GetTrack(self, proj, index):
        return f"track{index + 1}"

    def api_GetSetMediaTrackInfo_String(self, track, parm, value, set_new):
        assert parm == "P_NAME" and not set_new
        return (True, track, parm, self.names.get(track, ""), set_new)

    def api_GetSelectedTrack(self, proj, index):
        return "selected"

    def api_SetOnlyTrackSelected(self, track):
        self._log("SetOnlyTrackSelected", track)
        self.selected = track

    def api_Main_OnCommand(self, command, flag):
        self._log("Main_OnCommand", command)
        if command == 40914:          # Track: Set first selected track as last touched track
            self.touched = self.selected

    def api_GetCursorPosition(self):
        return self.cursor

    def api_SetEditCurPos(self, t, move_view, seek_play):
        self._log("SetEditCurPos", t)
        self.cursor = t

    def api_InsertMedia(self, path, mode):
        self._log("InsertMedia", path, mode, self.cursor)
        self.inserted_on = getattr(self, "inserted_on", []) + [self.touched if mode == 0 else None]

    def api_Undo_BeginBlock(self):
        self._log("Undo_BeginBlock")

    def api_Undo_EndBlock(self, text, flags):
        self._log("Undo_EndBlock", text)

    def api_UpdateArrange(self):
        pass

    def api_ShowConsoleMsg(self, text):
        self._log("ShowConsoleMsg", text)


def reaper_script():
    return runpy.run_path(str(PLUGIN_HOST / "reaper" / "stemd_insert.py"))  # outside REAPER: defines only


def test_reaper_script_inserts_each_take_at_its_bar_on_its_track_in_one_undo_step(tmp_path):
    script = reaper_script()
    takes = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for t in takes:
        t.write_bytes(b"RIFF")
    inbox = tmp_path / "reaper.jsonl"
    inbox.write_text(json.dumps({"file": str(takes[0]), "bar_index": 2, "track": 3}) + "\n"
                     + json.dumps({"file": str(takes[1]), "bar_index": 8, "track": 0}) + "\nnot json\n")
    reaper = FakeReaper(bpm=100.0, tracks=1)
    assert script["run"](script["Reaper"](reaper.namespace()), str(inbox)) == 2
    inserts = [c for c in reaper.calls if c[0] == "InsertMedia"]
    assert inserts == [("InsertMedia", str(takes[0]), 0, pytest.approx(2 * 2.4)),
                       ("InsertMedia", str(takes[1]), 0, pytest.approx(8 * 2.4))]  # 4/4 at 100 BPM: 2.4 s a bar
    assert ("TimeMap2_beatsToTime", 0, 0.0, 2) in reaper.calls  # REAPER's tempo map places the bar
    assert [c for c in reaper.calls if c[0] == "InsertTrackAtIndex"] == [("InsertTrackAtIndex", 1),
                                                                       ("InsertTrackAtIndex", 2)]
    assert ("SetOnlyTrackSelected", "track3") in reaper.calls
    assert reaper.inserted_on == ["track3", "track1"]   # InsertMedia's own track: the last touched one
    assert reaper.calls[0] == ("Undo_BeginBlock",) and reaper.calls[-1][0] == "Undo_EndBlock"
    assert reaper.cursor == 7.5  # the edit cursor goes back where the producer left it
    assert not inbox.exists() and not list(tmp_path.glob("reaper.jsonl.taking*"))   # the batch was taken over


def test_reaper_script_puts_a_take_on_the_track_named_after_its_stem(tmp_path):
    script = reaper_script()
    wav = tmp_path / "drums.wav"
    wav.write_bytes(b"RIFF")
    inbox = tmp_path / "reaper.jsonl"
    lines = [{"file": str(wav), "bar_index": 1, "track": 0, "stem": "Drums"},  # by name, case aside
             {"file": str(wav), "bar_index": 1, "track": 1, "stem": "drums"},  # a track number wins
             {"file": str(wav), "bar_index": 1, "track": 0, "stem": "horns"}]  # no such track: the first
    inbox.write_text("".join(json.dumps(line) + "\n" for line in lines))
    reaper = FakeReaper(tracks=3, names=("keys", "bass", "drums"))
    assert script["run"](script["Reaper"](reaper.namespace()), str(inbox)) == 3
    chosen = [c[1] for c in reaper.calls if c[0] == "SetOnlyTrackSelected"]
    assert chosen == ["track3", "track1", "track1"]


def test_reaper_script_puts_a_take_on_the_track_given_by_name(tmp_path):
    script = reaper_script()
    wav = tmp_path / "drums.wav"
    wav.write_bytes(b"RIFF")
    inbox = tmp_path / "reaper.jsonl"
    inbox.write_text(json.dumps({"file": str(wav), "bar_index": 0, "track": 0, "track_name": "Bass",
                                 "stem": "drums"}) + "\n")
    reaper = FakeReaper(tracks=3, names=("keys", "bass", "drums"))
    assert script["run"](script["Reaper"](reaper.namespace()), str(inbox)) == 1
    assert [c[1] for c in reaper.calls if c[0] == "SetOnlyTrackSelected"] == ["track2"]


def test_track_is_a_name_or_a_number_on_the_command_line():
    import argparse

    from stemd.bridge.cmd_bridge import add_arguments
    from stemd.bridge.delivery.daws import BitwigInserter, InsertError

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(["--track", "takes"]).track == "takes" and p.parse_args(["--track", "3"]).track == 3
    with pytest.raises(InsertError, match="needs --track as a number"):
        BitwigInserter("127.0.0.1", 9, track="takes")


def test_reaper_script_reports_a_missing_file_and_inserts_nothing(tmp_path):
    script = reaper_script()
    inbox = tmp_path / "reaper.jsonl"
    inbox.write_text(json.dumps({"file": str(tmp_path / "gone.wav"), "bar_index": 0}) + "\n")
    reaper = FakeReaper()
    script["run"](script["Reaper"](reaper.namespace()), str(inbox))
    assert not [c for c in reaper.calls if c[0] == "InsertMedia"]
    assert any(c[0] == "ShowConsoleMsg" and "gone.wav" in c[1] for c in reaper.calls)


@pytest.mark.skipif(not shutil.which("oscdump"), reason="liblo-tools (oscdump) is not installed")
def test_bridge_queues_the_take_and_triggers_the_reaper_action_over_osc(tmp_path, monkeypatch):
    from stemd.bridge.delivery import DeliveredTake
    from stemd.bridge.delivery.daws import ReaperInserter
    from stemd.protocol import GenerateRequest

    monkeypatch.setenv("STEMD_HOME", str(tmp_path / "home"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dump = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(0.5)
        request = GenerateRequest("t4", prompt="keys", bars=2, start_bar=6, meter=__import__("stemd").timing.Meter(3, 4))
        take = DeliveredTake("t4", request, 0, tmp_path / "keys.wav", np.zeros((2, 10), np.float32), 48000, 123)
        ReaperInserter("127.0.0.1", port, "_RS7d3c_stemd_insert", track=2).deliver(take)
        time.sleep(0.5)
    finally:
        dump.terminate()
        out = dump.communicate(timeout=5)[0]
    assert '/action/str s "_RS7d3c_stemd_insert"' in out
    line = json.loads((tmp_path / "home" / "inbox" / "reaper.jsonl").read_text())
    assert (line["bar_index"], line["bar"], line["quarters"], line["track"]) == (6, 7, 18.0, 2)


# --- Ableton Live ------------------------------------------------------------------------------
class FakeTrack:
    def __init__(self, name, audio=True):
        self.name, self.has_audio_input, self.clips = name, audio, []

    def create_audio_clip(self, path, position):
        self.clips.append((path, position))


class FakeSong:
    def __init__(self):
        self.tempo, self.is_playing, self.current_song_time = 124.0, False, 0.0
        self.signature_numerator, self.signature_denominator = 7, 8
        self.tracks = [FakeTrack("Drums"), FakeTrack("Keys", audio=False), FakeTrack("Takes")]
        self.view = type("View", (), {"selected_track": self.tracks[2]})()


class FakeCInstance:
    def __init__(self):
        self._song, self.messages = FakeSong(), []

    def song(self):
        return self._song

    def show_message(self, text):
        self.messages.append(text)


@pytest.fixture
def live():
    sys.path.insert(0, str(PLUGIN_HOST / "ableton"))
    try:
        import stemd_live

        c = FakeCInstance()
        script = stemd_live.create_instance.__globals__["StemdLive"](c, port=0)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.settimeout(1.0)
        yield script, c, client
        client.close()
        script.disconnect()
    finally:
        sys.path.remove(str(PLUGIN_HOST / "ableton"))
        sys.modules.pop("stemd_live", None)
        sys.modules.pop("stemd_live.osc_min", None)


def test_inside_live_the_script_is_a_control_surface_and_leaves_lives_song_property_alone(monkeypatch):
    # a stand-in for Live's ableton.v2.control_surface.ControlSurface (its documented shape: built with
    # c_instance, `song` a property, update_display and disconnect called by Live)
    import types

    calls = []

    class ControlSurface:
        def __init__(self, c_instance):
            calls.append("init")
            self._c = c_instance

        @property
        def song(self):
            return self._c.song()

        def update_display(self):
            calls.append("update_display")

        def disconnect(self):
            calls.append("disconnect")

    module = types.ModuleType("ableton.v2.control_surface")
    module.ControlSurface = ControlSurface
    for name, mod in (("ableton", types.ModuleType("ableton")), ("ableton.v2", types.ModuleType("ableton.v2")),
                      ("ableton.v2.control_surface", module)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.syspath_prepend(str(PLUGIN_HOST / "ableton"))
    for name in ("stemd_live", "stemd_live.osc_min"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import stemd_live

    try:
        c = FakeCInstance()
        script = stemd_live.StemdLive(c, port=0)
        assert isinstance(script, ControlSurface) and calls == ["init"]
        assert script.song is c.song()                       # Live's property, not shadowed by ours
        script.update_display()
        script.disconnect()
        assert calls == ["init", "update_display", "disconnect"]
    finally:
        for name in ("stemd_live", "stemd_live.osc_min"):
            sys.modules.pop(name, None)


def ask(script, client, address, *args):
    client.sendto(osc.encode_message(address, *args), ("127.0.0.1", script.port))
    time.sleep(0.05)
    script.update_display()  # what Live calls every 100 ms
    replies = []
    client.settimeout(0.2)
    try:
        while True:
            replies.append(osc.decode(client.recvfrom(65536)[0]))
    except socket.timeout:
        pass
    return replies


def test_live_script_answers_gets_and_streams_what_it_listens_to(live):
    script, c, client = live
    (reply,) = ask(script, client, "/live/song/get/tempo")
    assert (reply.address, reply.args) == ("/live/song/get/tempo", (124.0,))
    replies = ask(script, client, "/live/song/start_listen/current_song_time")
    assert [r.args for r in replies if r.address.endswith("current_song_time")][-1] == (0.0,)
    c.song().current_song_time, c.song().is_playing = 17.5, True
    script.update_display()
    assert osc.decode(client.recvfrom(65536)[0]).args == (17.5,)
    (sig,) = ask(script, client, "/live/song/get/signature_numerator")
    assert sig.args == (7,)


def test_live_script_creates_the_clip_on_the_arrangement_at_the_beat(live):
    script, c, client = live
    (ok,) = ask(script, client, "/stemd/live/insert_clip", 1, "/takes/a.wav", 28.0)
    assert ok.address == "/stemd/live/inserted"
    assert c.song().tracks[0].clips == [("/takes/a.wav", 28.0)]
    ask(script, client, "/stemd/live/insert_clip", 0, "/takes/b.wav", 4.0)  # 0: the selected track
    assert c.song().tracks[2].clips == [("/takes/b.wav", 4.0)]
    (err,) = ask(script, client, "/stemd/live/insert_clip", 2, "/takes/c.wav", 0.0)
    assert err.address == "/stemd/live/error" and "not an audio track" in err.args[0]
    (err,) = ask(script, client, "/stemd/live/insert_clip", 9, "/takes/c.wav", 0.0)
    assert "there is no track 9" in err.args[0]
    (ok,) = ask(script, client, "/stemd/live/insert_clip", "takes", "/takes/d.wav", 8.0)   # --track takes
    assert ok.address == "/stemd/live/inserted" and c.song().tracks[2].clips[-1] == ("/takes/d.wav", 8.0)
    (err,) = ask(script, client, "/stemd/live/insert_clip", "horns", "/takes/e.wav", 0.0)
    assert "there is no track named 'horns'" in err.args[0]


def test_the_ableton_inserter_reads_the_scripts_answer_and_fails_with_its_text(live, tmp_path):
    # a unit test of the inserter and the script against stand-in Live objects (FakeSong), over real UDP
    from stemd.bridge.delivery import DeliveredTake
    from stemd.bridge.delivery.daws import AbletonInserter, InsertError
    from stemd.protocol import GenerateRequest

    script, c, _client = live
    ticking = threading.Event()

    def live_ticks():            # what Live does: update_display every 100 ms (faster here)
        while not ticking.is_set():
            script.update_display()
            time.sleep(0.02)

    ticker = threading.Thread(target=live_ticks, daemon=True)
    ticker.start()
    try:
        take = DeliveredTake("t1", GenerateRequest("t1", start_bar=2, bpm=97, meter="3/4"), 0, tmp_path / "a.wav",
                             np.zeros((2, 4), np.float32), 48000, 0)
        with pytest.raises(InsertError, match="Live: ValueError: track 'Keys' is not an audio track"):
            AbletonInserter("127.0.0.1", script.port, track=2).deliver(take)
        assert any("not an audio track" in m for m in c.messages)           # and in Live's status bar
        AbletonInserter("127.0.0.1", script.port, track="takes").deliver(take)
        assert c.song().tracks[2].clips[-1] == (str((tmp_path / "a.wav").resolve()), 6.0)   # bar 3 of 3/4
        c.song().view.selected_track = c.song().tracks[1]                  # a MIDI track is selected
        AbletonInserter("127.0.0.1", script.port).deliver(take)
        assert c.song().tracks[0].clips[-1][1] == 6.0                       # the first audio track instead
        script.disconnect()
        with pytest.raises(InsertError, match="did not answer"):
            AbletonInserter("127.0.0.1", script.port).deliver(take)
    finally:
        ticking.set()
        ticker.join(2)


def test_bridge_follows_the_live_script_over_real_udp(live):
    from stemd.bridge.transport import Transport
    from stemd.bridge.transport.daw_osc import AbletonFollower

    script, c, _client = live
    c.song().tempo, c.song().is_playing, c.song().current_song_time = 98.0, True, 35.0
    transport = Transport()
    follower = AbletonFollower(transport, daw_port=script.port, listen_port=0)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not (transport.known and transport.last().quarters >= 35
                                                   and str(transport.last().meter) == "7/8"):
            script.update_display()
            time.sleep(0.05)
        state = transport.now()
        assert float(state.bpm) == 98.0 and state.playing and str(state.meter) == "7/8"
        assert state.bar_index == 10  # 35 quarters in 7/8 (3.5 quarters a bar): bar 11 starts at 35
    finally:
        follower.stop()


# --- Ardour ------------------------------------------------------------------------------------
LUA_HARNESS = """
-- as Ardour does: the script runs in an environment of its own, and only its factory's bytecode is kept
local scratch = setmetatable ({{ ardour = function (t) end }}, {{ __index = _G }})
loadfile ("{script}", "t", scratch) ()
local dumped = string.dump (scratch.factory, true)
Editing = Editing or {{ ImportSerializeFiles = "serialize", ImportDistinctFiles = "distinct",
                        ImportToTrack = "to_track", ImportAsTrack = "as_track" }}
local takes_track = {{ name = function () return "takes" end }}
local route = {{ name = function () return "takes" end, to_track = function () return takes_track end }}
Session = {{
  path = function () return "{folder}/" end,
  get_tracks = function () return {{ iter = function ()
    local done = false
    return function () if done then return nil end done = true return route end end }} end,
}}
Editor = {{ do_import = function (self, files, disposition, mode, quality, a, b, pos, info, track, flag)
  print (string.format ("IMPORT|%s|%s|%s|%d|%s", files:at (0), disposition, mode, pos:samples (),
                        tostring (track == takes_track)))
end }}
local hook = load (dumped, nil, "b", _ENV) ({{}})
for i = 1, 10 do hook () end           -- the inbox is taken over
print ("TAKEN|" .. tostring (ARDOUR.LuaAPI.file_test ("{folder}/stemd-inbox.taken.jsonl", ARDOUR.LuaAPI.FileTest.Exists)))
local late = io.open ("{folder}/stemd-inbox.jsonl", "a")  -- the bridge queues one more meanwhile
late:write ('{{"file": "{folder}/late.wav", "sample": 7, "track": "nope"}}\\n')
late:close ()
for i = 1, 40 do hook () end
print ("LEFT|" .. tostring (ARDOUR.LuaAPI.file_test ("{folder}/stemd-inbox.jsonl", ARDOUR.LuaAPI.FileTest.Exists)) .. "|"
       .. tostring (ARDOUR.LuaAPI.file_test ("{folder}/stemd-inbox.taken.jsonl", ARDOUR.LuaAPI.FileTest.Exists)))
"""


@pytest.mark.skipif(not shutil.which("ardour7-lua"), reason="Ardour 7's Lua (ardour7-lua) is not installed")
def test_ardour_lua_hook_imports_each_queued_take_at_its_sample_and_loses_none(tmp_path):
    # Ardour's own Lua (ardour7-lua) runs the hook from its factory's bytecode alone, against stand-ins
    # for the GUI's Editor and Session; the real GUI is tests/test_ardour_gui.py
    from stemd.bridge.delivery import DeliveredTake
    from stemd.bridge.delivery.ardour import ArdourInbox
    from stemd.protocol import GenerateRequest

    inbox = ArdourInbox(tmp_path, "takes")
    for i, name in enumerate(["drums \"x\".wav", "bass é.wav"]):
        request = GenerateRequest(f"t{i}", start_bar=2 + i)
        inbox.deliver(DeliveredTake(f"t{i}", request, 0, tmp_path / name, np.zeros((2, 4), np.float32), 48000,
                                    192000 + 96000 * i))
    harness = tmp_path / "harness.lua"
    harness.write_text(LUA_HARNESS.format(script=PLUGIN_HOST / "ardour" / "stemd_takes.lua", folder=tmp_path))
    out = subprocess.run(["ardour7-lua", str(harness)], capture_output=True, text=True, timeout=60)
    lines = [l.split("|") for l in out.stdout.splitlines() if l.startswith(("IMPORT|", "TAKEN|", "LEFT|"))]
    assert lines == [["TAKEN", "true"],
                     ["IMPORT", str(tmp_path / "drums \"x\".wav"), "serialize", "to_track", "192000", "true"],
                     ["IMPORT", str(tmp_path / "bass é.wav"), "serialize", "to_track", "288000", "true"],
                     ["IMPORT", str(tmp_path / "late.wav"), "serialize", "as_track", "7", "false"],
                     ["LEFT", "false", "false"]], out.stdout + out.stderr


# --- installer -----------------------------------------------------------------------------------
@pytest.mark.parametrize("daw, files, says", [
    ("reaper", ["stemd_insert.py"], "Load ReaScript"),
    ("ableton", ["stemd_live/__init__.py", "stemd_live/osc_min.py"], "Control Surface"),
    ("ardour", ["stemd_takes.lua"], "Action Hooks"),
])
def test_install_host_scripts_copies_the_scripts_and_says_what_to_click(tmp_path, daw, files, says):
    out = subprocess.run([sys.executable, "-m", "stemd", "install-host-scripts", "--daw", daw, "--dest", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for f in files:
        assert (tmp_path / f).read_bytes() == (PLUGIN_HOST / daw / f).read_bytes()
    assert says in out.stdout


def test_default_script_folders_are_where_each_daw_looks(tmp_path, monkeypatch):
    from stemd.plugin_host.cmd_install import default_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert default_folder("reaper", "linux").parts[-4:] == (".config", "REAPER", "Scripts", "stemd")
    assert default_folder("reaper", "darwin").parts[-4:] == ("Application Support", "REAPER", "Scripts", "stemd")
    assert default_folder("ableton", "darwin").parts[-4:] == ("Music", "Ableton", "User Library", "Remote Scripts")
    assert default_folder("ardour", "linux").parts[-3:] == (".config", "ardour7", "scripts")
    (tmp_path / ".config" / "ardour8").mkdir(parents=True)                 # Ardour 8 has run here: its folder
    assert default_folder("ardour", "linux").parts[-3:] == (".config", "ardour8", "scripts")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_folder("reaper", "linux") == tmp_path / "xdg" / "REAPER" / "Scripts" / "stemd"
    assert default_folder("ardour", "linux") == tmp_path / "xdg" / "ardour7" / "scripts"


def test_a_built_wheel_carries_every_host_script(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {out.stderr.strip().splitlines()[-1:]}")
    import zipfile

    (wheel,) = tmp_path.glob("stemd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for script in ["reaper/stemd_insert.py", "ableton/stemd_live/__init__.py", "ableton/stemd_live/osc_min.py",
                   "ardour/stemd_takes.lua"]:
        assert f"stemd/plugin_host/{script}" in names


# --- the stemd plugin's installer ----------------------------------------------------------------------
def fake_plugin_build(folder: Path, version: str) -> Path:
    """The layout `make plugin` leaves in build/plugin (Linux), with contents that say which build it is."""
    for rel in ["stemd.vst3/Contents/x86_64-linux/stemd.so", "stemd.lv2/stemd.so", "stemd.lv2/manifest.ttl",
                "stemd.lv2/stemd.ttl", "stemd.clap"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(f"{rel} {version}")
    return folder


def install_plugin_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("XDG_CONFIG_HOME",)}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "stemd", "install-host-scripts", "--plugin", *args],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.skipif(sys.platform != "linux", reason="the Linux plugin folders")
def test_install_plugin_copies_the_bundles_into_the_users_plugin_folders(tmp_path):
    home = tmp_path / "home"
    old = fake_plugin_build(tmp_path / "old", "1")
    assert install_plugin_cli(home, "--from", str(old)).returncode == 0
    (home / ".lv2" / "stemd.lv2" / "stale.ttl").write_text("from an older build")
    new = fake_plugin_build(tmp_path / "new", "2")

    out = install_plugin_cli(home, "--from", str(new))
    assert out.returncode == 0, out.stderr
    assert (home / ".vst3/stemd.vst3/Contents/x86_64-linux/stemd.so").read_text().endswith(" 2")
    assert (home / ".clap/stemd.clap").read_text() == "stemd.clap 2"
    assert sorted(p.name for p in (home / ".lv2/stemd.lv2").iterdir()) == ["manifest.ttl", "stemd.so", "stemd.ttl"]
    assert f"installed {home / '.vst3' / 'stemd.vst3'}" in out.stdout and "Rescan plugins" in out.stdout


def test_install_plugin_without_a_build_says_how_to_make_one(tmp_path):
    out = install_plugin_cli(tmp_path / "home", "--from", str(tmp_path / "nothing"))
    assert out.returncode != 0
    assert "make plugin" in out.stderr and "stemd.vst3" in out.stderr
    assert not (tmp_path / "home").exists()


def test_plugin_folders_per_platform(tmp_path, monkeypatch):
    from stemd.plugin_host.cmd_install import plugin_folders

    monkeypatch.setenv("HOME", str(tmp_path))
    assert plugin_folders("linux") == {"vst3": tmp_path / ".vst3", "clap": tmp_path / ".clap", "lv2": tmp_path / ".lv2"}
    mac = plugin_folders("darwin")
    assert mac["vst3"] == tmp_path / "Library" / "Audio" / "Plug-Ins" / "VST3"
    assert mac["clap"].parts[-2:] == ("Plug-Ins", "CLAP") and mac["lv2"].parts[-2:] == ("Plug-Ins", "LV2")
    monkeypatch.setenv("COMMONPROGRAMFILES", str(tmp_path / "Common Files"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    win = plugin_folders("win32")
    assert win == {"vst3": tmp_path / "Common Files" / "VST3", "clap": tmp_path / "Common Files" / "CLAP",
                   "lv2": tmp_path / "Roaming" / "LV2"}


def test_install_plugin_from_this_checkouts_build(tmp_path):
    from stemd.plugin_host.cmd_install import PLUGIN_BUILD     # build/plugin beside the stemd that runs

    if not (PLUGIN_BUILD / "stemd.vst3").is_dir():
        pytest.skip("the plugin is not built (make plugin)")
    out = install_plugin_cli(tmp_path)
    assert out.returncode == 0, out.stderr
    so = "stemd.vst3/Contents/x86_64-linux/stemd.so"
    if sys.platform == "linux":
        assert (tmp_path / ".vst3" / so).read_bytes() == (PLUGIN_BUILD / so).read_bytes()
        assert (tmp_path / ".lv2" / "stemd.lv2" / "manifest.ttl").is_file()
