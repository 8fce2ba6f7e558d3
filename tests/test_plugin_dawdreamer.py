"""The stemd plugin's VST3 in a real host: DawDreamer (a JUCE VST3 host with tempo and a playhead).

A real ``stemd serve --model click`` makes a 2-bar click take at 150 BPM asked for at the DAW's bar 3;
the plugin receives it over TCP, keeps it in memory and writes it to its takes folder; DawDreamer then
renders the timeline and the take's first click is on the exact first sample of bar 3, with nothing
audible before it. The plugin's state (what the host saves in a project) is read and written through
DawDreamer's save_state/load_state: JUCE's VST3 state holds DPF's key/value stream in JUCE's base64.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from plugin_hosts import PLUGIN_DIR, daemon_status, wait_for
from stemd.timing import Grid

ROOT = Path(__file__).resolve().parents[1]
VST3 = PLUGIN_DIR / "stemd.vst3"     # build/plugin, or $STEMD_PLUGIN_BUILD
RATE = 48000
BLOCK = 512


@pytest.fixture(scope="module")
def vst3() -> Path:
    if not Path("/usr/share/dpf/Makefile.plugins.mk").is_file() and not os.environ.get("DPF_PATH"):
        pytest.skip("the plugin needs DPF (Debian: dpf-source)")
    if not os.environ.get("STEMD_PLUGIN_BUILD"):
        proc = subprocess.run(["make", "-C", str(ROOT), "plugin"], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return VST3


@pytest.fixture
def dawdreamer():
    return pytest.importorskip("dawdreamer", reason="DawDreamer (pip dawdreamer) hosts the VST3")


def parameter_index(plugin, name: str) -> int:
    for p in plugin.get_parameters_description():
        if p["name"] == name:
            return p["index"]
    raise AssertionError(f"the plugin has no parameter {name!r}")


def set_plain(plugin, name: str, value: float, lo: float, hi: float) -> None:
    """DawDreamer sets VST3 parameters normalised to 0..1."""
    plugin.set_parameter(parameter_index(plugin, name), (value - lo) / (hi - lo))


JUCE_BASE64 = ".ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+"


def juce_b64decode(text: str) -> bytes:
    size, _, chars = text.partition(".")
    value = sum(JUCE_BASE64.index(c) << (6 * i) for i, c in enumerate(chars))
    return value.to_bytes((6 * len(chars) + 7) // 8, "little")[:int(size)]


def juce_b64encode(data: bytes) -> str:
    value = int.from_bytes(data, "little")
    return f"{len(data)}." + "".join(JUCE_BASE64[(value >> (6 * i)) & 63] for i in range((8 * len(data) + 5) // 6))


def read_states(plugin, path: Path) -> tuple[dict, bytes]:
    """The plugin's DPF states (key -> value) as the host would save them, and the whole saved blob."""
    plugin.save_state(str(path))
    blob = path.read_bytes()
    component = re.search(rb"<IComponent>(.*?)</IComponent>", blob).group(1).decode()
    stream = juce_b64decode(component)
    body = stream.split(b"__dpf_state_begin__\0", 1)[1].split(b"__dpf_state_end__", 1)[0]
    fields = body.split(b"\0")[:-1]
    return {k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2])}, blob


def write_states(plugin, path: Path, **changes: str) -> None:
    """Loads the plugin's saved state with some states changed, as a host reopening a project does."""
    states, blob = read_states(plugin, path)
    states.update(changes)
    component = re.search(rb"<IComponent>(.*?)</IComponent>", blob).group(1).decode()
    stream = juce_b64decode(component)
    head, rest = stream.split(b"__dpf_state_begin__\0", 1)
    tail = rest.split(b"__dpf_state_end__", 1)[1]
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in states.items())
    stream = head + b"__dpf_state_begin__\0" + body + b"__dpf_state_end__" + tail
    xml = re.sub(rb"<IComponent>.*?</IComponent>", b"<IComponent>" + juce_b64encode(stream).encode() + b"</IComponent>",
                 blob[8:-1])
    path.write_bytes(blob[:4] + len(xml).to_bytes(4, "little") + xml + b"\0")
    load_state(plugin, path)


def load_state(plugin, path: Path) -> None:
    """DawDreamer 0.9 hands the state to the plugin, then opens the plugin's editor window to make it take
    effect, and raises where it cannot ("Plugin has no available editor UI", "Failed to create plugin editor
    UI": a build without the window, or no display): the state is in by then."""
    try:
        plugin.load_state(str(path))
    except RuntimeError as e:
        if "editor UI" not in str(e):
            raise


GRID = Grid("150", "4/4")
BAR3 = GRID.bar_start_sample(2, RATE)     # the DAW's bar 3
END = GRID.bar_start_sample(4, RATE)      # where a 2-bar take from bar 3 ends


def new_plugin(dawdreamer, vst3: Path, rate: int = RATE):
    engine = dawdreamer.RenderEngine(rate, BLOCK)
    engine.set_bpm(150.0)
    plugin = engine.make_plugin_processor("stemd", str(vst3))
    engine.load_graph([(plugin, [])])
    return engine, plugin


def ask_for_take(engine, plugin, bars: int = 2, daw_bar: int = 3) -> None:
    """Sets bars and start bar, fires Generate, and renders a moment so that run() sees the transport."""
    set_plain(plugin, "Bars", bars, 1, 64)
    set_plain(plugin, "Start bar (0 = next bar line)", daw_bar, 0, 9999)
    plugin.set_parameter(parameter_index(plugin, "Generate"), 1.0)
    engine.render(0.5)
    plugin.set_parameter(parameter_index(plugin, "Generate"), 0.0)


def takes_state(plugin, tmp_path: Path) -> list:
    return json.loads(read_states(plugin, tmp_path / "state.bin")[0]["takes"])


@pytest.fixture
def plugin_env(start_daemon, tmp_path, monkeypatch):
    daemon = start_daemon()
    takes_dir = tmp_path / "plugin-takes"
    monkeypatch.setenv("STEMD_DAEMON", f"{daemon.host}:{daemon.port}")   # read by the plugin when it loads
    monkeypatch.setenv("STEMD_TAKES_DIR", str(takes_dir))
    return daemon, takes_dir


def test_click_take_plays_from_the_exact_sample_of_bar_3(vst3, dawdreamer, plugin_env, tmp_path):
    daemon, takes_dir = plugin_env
    engine, plugin = new_plugin(dawdreamer, vst3)
    ask_for_take(engine, plugin)
    wavs = wait_for(lambda: sorted(takes_dir.glob("*.wav")), 60, "the plugin wrote no take")
    assert [w.name for w in wavs] == ["take_bar003_take01.wav"]
    assert "done" in daemon.wait_log("-> done")

    # the render: the take plays from the plugin's memory on its bar
    assert BAR3 == 153600
    engine.render(7.0)
    audio = engine.get_audio()
    assert audio.shape[0] == 2 and audio.shape[1] >= END
    audible = np.flatnonzero(np.abs(audio).max(axis=0) > 1e-4)
    assert audible.size, "the render is silent"
    assert audible[0] == BAR3, f"first sound at sample {audible[0]}, bar 3 starts at {BAR3}"
    assert np.abs(audio[:, BAR3]).max() > 0.1                  # the click's attack is its first sample
    # every click of the take, one per beat, on its exact sample (4 beats x 2 bars)
    beat = GRID.bar_length_samples(2, RATE) // 4
    for k in range(8):
        onset = BAR3 + k * beat
        assert np.abs(audio[:, onset]).max() > 0.1, f"no click at beat {k} (sample {onset})"
        assert np.abs(audio[:, onset - 1]).max() < np.abs(audio[:, onset]).max() / 4
    assert np.abs(audio[:, END:]).max() < 1e-4                 # nothing after the take's 2 bars
    import soundfile

    take, _ = soundfile.read(sorted(daemon.out.rglob("*.wav"))[0], dtype="float32", always_2d=True)
    assert np.abs(audio[:, BAR3:BAR3 + len(take)].T - take).max() <= 1e-6    # the daemon's take, sample for sample

    # the take on disk: the daemon's sidecar as it came, plus the plugin's delivery
    sidecar = json.loads(wavs[0].with_suffix(".json").read_text())
    assert sidecar["delivery"]["client"] == "stemd plugin"
    assert sidecar["delivery"]["start_sample"] == BAR3
    assert sidecar["delivery"]["file"] == wavs[0].name
    assert sidecar["start_bar"] == 2 and sidecar["bars"] == 2 and sidecar["tempo_exact"] == "150/1"
    [daemon_json] = sorted(daemon.out.glob("*.json"))                   # what the daemon wrote and sent
    daemon_text = daemon_json.read_text()
    assert wavs[0].with_suffix(".json").read_text().startswith(daemon_text.rstrip()[:-1].rstrip())
    assert {k: v for k, v in sidecar.items() if k != "delivery"} == json.loads(daemon_text)
    [take] = takes_state(plugin, tmp_path)
    assert (take["daw_bar"], take["start_sample"], take["state"], take["chosen"]) == (3, BAR3, "done", 1)
    assert take["variations"][0]["wav"] == str(wavs[0]) and take["variations"][0]["sidecar_missing"] is False


def test_saved_project_plays_its_take_at_the_same_samples_with_no_daemon(vst3, dawdreamer, plugin_env, tmp_path,
                                                                          monkeypatch):
    daemon, takes_dir = plugin_env
    engine, plugin = new_plugin(dawdreamer, vst3)
    ask_for_take(engine, plugin)
    wait_for(lambda: sorted(takes_dir.glob("*.wav")), 60, "the plugin wrote no take")
    engine.render(7.0)
    before = engine.get_audio()
    saved = tmp_path / "project.bin"
    plugin.save_state(str(saved))
    daemon.stop()
    del plugin, engine

    # days later: the project reopens in a new host process's plugin, no daemon anywhere
    monkeypatch.setenv("STEMD_DAEMON", "127.0.0.1:9")
    engine, plugin = new_plugin(dawdreamer, vst3)
    load_state(plugin, saved)
    engine.render(7.0)
    after = engine.get_audio()
    assert np.abs(before).max() > 0.1
    assert np.array_equal(before, after), "the reopened project does not play the same samples"
    states, _ = read_states(plugin, tmp_path / "state.bin")
    assert "connected (" not in states["status"] and "playing what it has" in states["status"]
    [take] = json.loads(states["takes"])
    assert take["start_sample"] == BAR3 and take["state"] == "done"


def reopen_with_no_daemon(dawdreamer, vst3: Path, plugin, daemon, tmp_path: Path, monkeypatch, rate: int = RATE):
    """Saves the plugin's state as a project, stops the daemon and opens the project in a new plugin."""
    saved = tmp_path / "project.bin"
    plugin.save_state(str(saved))
    daemon.stop()
    monkeypatch.setenv("STEMD_DAEMON", "127.0.0.1:9")
    engine, plugin = new_plugin(dawdreamer, vst3, rate)
    load_state(plugin, saved)
    return engine, plugin


def test_accepting_a_take_reopened_from_a_project_rewrites_its_sidecar_with_the_daemons_part(
        vst3, dawdreamer, plugin_env, tmp_path, monkeypatch):
    daemon, takes_dir = plugin_env
    engine, plugin = new_plugin(dawdreamer, vst3)
    ask_for_take(engine, plugin)
    [wav] = wait_for(lambda: sorted(takes_dir.glob("*.wav")), 60, "the plugin wrote no take")
    sidecar = wav.with_suffix(".json")
    written = json.loads(sidecar.read_text())
    assert written["delivery"]["accepted"] is False and written["model"] == "click"
    engine, plugin = reopen_with_no_daemon(dawdreamer, vst3, plugin, daemon, tmp_path, monkeypatch)

    plugin.add_midi_note(2, 100, 0.0, 0.1)          # reserved note 2: accept
    engine.render(0.3)
    wait_for(lambda: json.loads(sidecar.read_text())["delivery"]["accepted"], 10, "the sidecar does not say accepted")
    after = json.loads(sidecar.read_text())
    assert {k: v for k, v in after.items() if k != "delivery"} == {k: v for k, v in written.items() if k != "delivery"}
    assert after["delivery"] == {**written["delivery"], "accepted": True}     # received: when it first came
    [take] = takes_state(plugin, tmp_path)
    assert take["accepted"] is True and take["variations"][0]["sidecar_missing"] is False


def test_a_take_cut_off_mid_stream_is_kept_on_disk_marked_partial_and_plays_what_came(
        vst3, dawdreamer, start_daemon, tmp_path, monkeypatch):
    daemon = start_daemon("--pace", "1.5")          # at least 1.5 s a bar
    takes_dir = tmp_path / "plugin-takes"
    monkeypatch.setenv("STEMD_DAEMON", f"{daemon.host}:{daemon.port}")
    monkeypatch.setenv("STEMD_TAKES_DIR", str(takes_dir))
    engine, plugin = new_plugin(dawdreamer, vst3)
    ask_for_take(engine, plugin, bars=4)
    wait_for(lambda: "(1 playable)" in read_states(plugin, tmp_path / "state.bin")[0]["status"], 30,
             "the take's first bar did not arrive")
    time.sleep(0.5)
    assert daemon_status(daemon)[1] == "busy"
    daemon.stop()                                   # gone mid-take: the link closes, the request fails
    [wav] = wait_for(lambda: sorted(takes_dir.glob("*.wav")), 30, "the cut-off take was not written")
    [take] = takes_state(plugin, tmp_path)
    assert take["state"] == "failed" and take["error"]["code"]
    kept = take["variations"][0]["bars_kept"]
    assert take["variations"][0]["partial"] is True and 1 <= kept < 4
    import soundfile

    audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    assert rate == RATE and len(audio) == GRID.span_samples(2, kept, RATE)
    delivery = json.loads(wav.with_suffix(".json").read_text())["delivery"]
    assert delivery["partial"] == {"bars_kept": kept, "bars": 4, "cut_off_by": take["error"]["code"]}
    assert delivery["frames"] == len(audio) and "cut off" in delivery["missing"]

    engine.render(float(GRID.bar_start_seconds(6)) + 0.2)   # the bars it kept play on their samples
    played = engine.get_audio()
    assert np.abs(played[:, :BAR3]).max() < 1e-4
    assert np.abs(played[:, BAR3:BAR3 + len(audio)].T - audio).max() <= 1e-6
    # reopened, the saved project lists the partial file and plays it the same
    engine, plugin = reopen_with_no_daemon(dawdreamer, vst3, plugin, daemon, tmp_path, monkeypatch)
    engine.render(float(GRID.bar_start_seconds(6)) + 0.2)
    assert np.array_equal(engine.get_audio(), played)
    assert takes_state(plugin, tmp_path)[0]["variations"][0]["bars_kept"] == kept


def test_a_project_reopened_at_another_sample_rate_plays_its_take_resampled_on_its_bar(vst3, dawdreamer, plugin_env,
                                                                                      tmp_path, monkeypatch):
    import soundfile
    from scipy.signal import resample_poly

    daemon, takes_dir = plugin_env
    engine, plugin = new_plugin(dawdreamer, vst3)
    ask_for_take(engine, plugin)                    # at 48 kHz
    [wav] = wait_for(lambda: sorted(takes_dir.glob("*.wav")), 60, "the plugin wrote no take")
    engine, plugin = reopen_with_no_daemon(dawdreamer, vst3, plugin, daemon, tmp_path, monkeypatch, rate=44100)
    engine.render(0.1)                              # run() sees the host's rate
    status = lambda: read_states(plugin, tmp_path / "state.bin")[0]["status"]  # noqa: E731
    wait_for(lambda: "(1 playable)" in status(), 30, "the take was not resampled to the host's rate")
    assert "silent" not in status()
    engine.render(7.0)
    audio = engine.get_audio()

    bar3 = GRID.bar_start_sample(2, 44100)
    assert bar3 == 141120
    take, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    assert rate == RATE                             # the file keeps the rate it was made at
    want = resample_poly(take, 147, 160, axis=0)    # 48000 -> 44100
    assert np.abs(audio[:, :bar3]).max() < 1e-6     # nothing before its bar
    got = audio[:, bar3:bar3 + len(want)].T
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
    beat = GRID.bar_length_samples(2, 44100) // 4
    for k in range(8):                              # every click on its sample at 44.1 kHz
        onset = bar3 + k * beat
        peak = onset - 32 + int(np.argmax(np.abs(audio[:, onset - 32:onset + 32]).max(axis=0)))
        assert abs(peak - onset) <= 1, f"click {k} at {peak}, its beat at {onset}"
    assert np.abs(audio[:, bar3 + len(want) + 64:]).max() < 1e-4     # nothing after its 2 bars
    [saved] = takes_state(plugin, tmp_path)
    assert saved["sample_rate"] == RATE and saved["variations"][0]["wav"] == str(wav)


def failed_take(plugin, tmp_path: Path, what: str) -> dict:
    return wait_for(lambda: [t for t in takes_state(plugin, tmp_path) if t["state"] == "failed"], 30, what)[0]


@pytest.mark.parametrize("states,code,named", [({"model": "no-such-model"}, "unknown_model", "no-such-model"),
                                               ({"chords": "Am | F"}, "unsupported_key", "chords")])
def test_a_refused_request_keeps_the_daemons_code_and_message(vst3, dawdreamer, plugin_env, tmp_path, states, code,
                                                              named):
    """A model the daemon lacks, or chords typed into the plugin for the click engine (which cannot follow a
    guide): the take keeps the daemon's code and message, and nothing plays."""
    daemon, takes_dir = plugin_env
    engine, plugin = new_plugin(dawdreamer, vst3)
    engine.render(0.1)
    write_states(plugin, tmp_path / "state.bin", **states)
    ask_for_take(engine, plugin)
    take = failed_take(plugin, tmp_path, "the take did not fail")
    assert take["error"]["code"] == code
    assert named in take["error"]["message"]
    assert take.get("chords", "") == states.get("chords", "")          # the chords it went with, saved
    assert code in read_states(plugin, tmp_path / "state.bin")[0]["status"]
    engine.render(7.0)
    assert np.abs(engine.get_audio()).max() == 0.0             # nothing to play, nothing invented
    assert not list(takes_dir.glob("*.wav"))


def test_a_midi_note_fires_its_slot_at_the_next_bar_line_and_a_reserved_note_picks_the_next_variation(
        vst3, dawdreamer, plugin_env, tmp_path):
    daemon, takes_dir = plugin_env
    engine, plugin = new_plugin(dawdreamer, vst3)
    engine.render(0.1)
    write_states(plugin, tmp_path / "state.bin", slots=json.dumps({"60": {"prompt": "slot clicks", "bars": 1}}))
    set_plain(plugin, "Variations", 2, 1, 16)
    plugin.add_midi_note(60, 100, 0.2, 0.1)        # while the host plays bar 1
    engine.render(0.5)
    wavs = wait_for(lambda: len(list(takes_dir.glob("*.wav"))) == 2 and sorted(takes_dir.glob("*.wav")), 60,
                    "the slot's two variations were not written")
    # the next bar line after the note is the DAW's bar 2; two variations, one file each
    assert [w.name for w in wavs] == ["slot-clicks_bar002_take01_v1.wav", "slot-clicks_bar002_take01_v2.wav"]
    [take] = takes_state(plugin, tmp_path)
    assert (take["prompt"], take["bars"], take["daw_bar"], take["chosen"]) == ("slot clicks", 1, 2, 1)
    assert take["start_sample"] == GRID.bar_start_sample(1, RATE)

    plugin.clear_midi()
    plugin.add_midi_note(1, 100, 0.0, 0.1)          # reserved note 1: next variation
    engine.render(0.3)
    chosen = wait_for(lambda: takes_state(plugin, tmp_path)[0]["chosen"] == 2, 10, "variation 2 was not chosen")
    assert chosen

    plugin.clear_midi()
    plugin.add_midi_note(2, 100, 0.0, 0.1)          # reserved note 2: accept
    engine.render(0.3)
    wait_for(lambda: all(json.loads(w.with_suffix(".json").read_text())["delivery"]["accepted"] for w in wavs), 10,
             "the sidecars do not say accepted")
    assert takes_state(plugin, tmp_path)[0]["accepted"] is True


def test_a_guide_played_into_the_vst3_is_recorded_where_it_was_played_and_goes_with_the_next_request(
        vst3, dawdreamer, plugin_env, tmp_path):
    """Record (the record_guide switch) arms the recorder; DawDreamer plays notes into the VST3 at exact
    samples while it renders 150 BPM 4/4 from bar 1; the recorded SMF holds them at their positions relative
    to the bars (within 1/960 quarter; the bound is 1/96), the one still held at the end cut there, and the
    guide is in the project's state. Then a request goes with it: the click engine, which cannot follow a
    guide, refuses it with unsupported_key."""
    from stemd.guides.smf import read_smf

    daemon, takes_dir = plugin_env
    engine, plugin = new_plugin(dawdreamer, vst3)
    engine.render(0.1)
    set_plain(plugin, "Guide bars", 2, 1, 64)
    plugin.set_parameter(parameter_index(plugin, "Record guide"), 1.0)
    engine.render(0.01)     # one block hands the switch over: the worker arms after it, not in a later block
    wait_for(lambda: "guide: armed: 2 bars" in read_states(plugin, tmp_path / "state.bin")[0]["status"], 10,
             "the recorder was not armed")
    quarter = Fraction(60, 150)                       # seconds
    played = [(Fraction(0), 60, Fraction(1, 2)),      # (quarters from bar 1, pitch, length in quarters)
              (Fraction(3, 2), 64, Fraction(1)),
              (Fraction(10, 3), 67, Fraction(1, 4)),  # a triplet's position: 64,000 samples
              (Fraction(7), 72, Fraction(3))]         # held past the end of bar 2: cut at quarter 8
    for q, pitch, length in played:
        plugin.add_midi_note(pitch, 100, float(q * quarter), float(length * quarter))
    engine.render(3.6)                                # bars 1-2 end at 3.2 s
    guides = wait_for(lambda: sorted(takes_dir.glob("guide-*.mid")), 10, "no guide was written")
    notes = read_smf(guides[0].read_bytes())
    assert [n.pitch for n in notes] == [60, 64, 67, 72]
    for note, (q, _, length) in zip(notes, played):
        assert abs(note.start - q) <= Fraction(1, 960), (note, q)            # 1/96 quarter is the bound
    assert notes[-1].start + notes[-1].length == 8                             # cut at the last bar line
    state = json.loads(read_states(plugin, tmp_path / "state.bin")[0]["guide"])
    assert (state["bars"], state["notes"], state["from_bar"], state["bpm"], state["meter"]) == (2, 4, 0, "150", "4/4")

    plugin.clear_midi()
    plugin.set_parameter(parameter_index(plugin, "Record guide"), 0.0)
    ask_for_take(engine, plugin, bars=2, daw_bar=3)
    take = failed_take(plugin, tmp_path, "the request with a guide was not refused")
    assert take["error"]["code"] == "unsupported_key" and "guide" in take["error"]["message"]

