"""The stemd plugin's build and its bar maths.

``make plugin`` builds all four formats (VST3, CLAP, LV2 with its .ttl, the JACK app) from DPF with no
compiler warning from stemd's own sources; the plugin's transport maths (plugin_host/plugin/transport.cpp,
through build/plugin/transport_test) gives the same first sample for every bar as stemd.timing.Grid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stemd.timing import Grid

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = ROOT / "plugin_host" / "plugin"
DPF_PATH = Path(os.environ.get("DPF_PATH", "/usr/share/dpf"))
OUR_SOURCES = sorted(p.name for p in PLUGIN_SRC.iterdir() if p.suffix in (".cpp", ".hpp", ".h"))

needs_toolchain = pytest.mark.skipif(
    not (shutil.which("make") and shutil.which("g++") and shutil.which("cc")
         and (DPF_PATH / "Makefile.plugins.mk").is_file()),
    reason="the plugin needs make, g++ and DPF (Debian: build-essential dpf-source)")


@pytest.fixture(scope="module")
def transport_test() -> Path:
    proc = subprocess.run(["make", "-C", str(PLUGIN_SRC), "check"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ROOT / "build" / "plugin" / "transport_test"


@needs_toolchain
def test_make_plugin_builds_four_formats_with_no_warning_from_our_sources(tmp_path):
    # a fresh build into a folder of its own compiles every file, so every warning of ours would show
    out = tmp_path / "plugin"
    proc = subprocess.run(["make", "-C", str(PLUGIN_SRC), f"PLUGIN_OUT={out}", "VERBOSE=true"],
                          capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    files_dsp = re.search(r"^FILES_DSP\s*=((?:.*\\\n)*.*)$", (PLUGIN_SRC / "Makefile").read_text(), re.M)
    compiled = files_dsp.group(1).replace("\\", " ").split()
    assert "StemdPlugin.cpp" in compiled and "transport.cpp" in compiled
    for name in compiled:
        assert re.search(rf"\s{re.escape(name)}\s", log), f"{name} was not compiled"
    ours = [line for line in log.splitlines()
            if re.search(r"(warning|error):", line) and any(name in line for name in OUR_SOURCES)]
    assert ours == [], "\n".join(ours)
    assert (out / "stemd.vst3" / "Contents" / "x86_64-linux" / "stemd.so").is_file()
    assert (out / "stemd.clap").is_file()
    ttl = (out / "stemd.lv2" / "stemd.ttl").read_text()
    assert "urn:stemd:plugin" in (out / "stemd.lv2" / "manifest.ttl").read_text()
    assert "lv2:InstrumentPlugin" in ttl and "atom:supports midi:MidiEvent" in ttl
    assert "atom:supports <http://lv2plug.in/ns/ext/time#Position>" in ttl   # it reads the host transport
    assert (out / "stemd.lv2" / "stemd.so").is_file()
    if shutil.which("pkg-config") and subprocess.run(["pkg-config", "--exists", "jack"]).returncode == 0:
        assert os.access(out / "stemd", os.X_OK), "the JACK standalone was not built"


@needs_toolchain
def test_make_plugin_from_the_top_level_makefile():
    proc = subprocess.run(["make", "-C", str(ROOT), "plugin"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (ROOT / "build" / "plugin" / "stemd.vst3" / "Contents" / "x86_64-linux" / "stemd.so").is_file()


@needs_toolchain
@pytest.mark.parametrize("bpm, meter, rate, sent", [
    ("97", "3/4", 48000, "97"),
    ("137", "7/8", 44100, "137"),
    ("137.5", "7/8", 48000, "275/2"),
    ("150", "4/4", 48000, "150"),
    ("123.456789", "5/4", 96000, "123456789/1000000"),
])
def test_bar_starts_match_stemd_timing_for_ten_thousand_bars(transport_test, bpm, meter, rate, sent):
    n, d = meter.split("/")
    proc = subprocess.run([str(transport_test), "grid", bpm, n, d, str(rate), "0", "10000"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[0] == sent                              # the tempo the request carries, exact
    grid = Grid(sent, meter)
    expected = [grid.bar_start_sample(k, rate) for k in range(10001)]
    got = [int(x) for x in lines[1:]]
    assert len(got) == len(expected)
    wrong = [(k, g, e) for k, (g, e) in enumerate(zip(got, expected)) if g != e]
    assert wrong == [], f"{len(wrong)} bars differ, first (bar, plugin, stemd.timing): {wrong[:3]}"


@needs_toolchain
@pytest.mark.parametrize("host, exact", [
    ("137.5", "275/2"), ("97", "97"), ("120.0000000004", "120"), ("99.9999996", "100"),
    ("133.3333333333", "133333333/1000000"), ("19.5", "invalid"), ("1000", "invalid"), ("nan", "invalid"),
    ("inf", "invalid"),
])
def test_host_tempo_becomes_an_exact_rational_once(transport_test, host, exact):
    proc = subprocess.run([str(transport_test), "tempo", host], capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == exact


@needs_toolchain
@pytest.mark.parametrize("n, d, text", [("7", "8", "7/8"), ("3", "4", "3/4"), ("3.5", "4", "invalid"),
                                        ("4", "3", "invalid"), ("0", "4", "invalid"), ("65", "4", "invalid")])
def test_host_meter_is_checked(transport_test, n, d, text):
    proc = subprocess.run([str(transport_test), "meter", n, d], capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == text


@needs_toolchain
@pytest.mark.parametrize("fmt", ["vst3", "clap", "lv2", "jack"])
@pytest.mark.parametrize("bpm, n, d, rate, origin, block", [
    ("97", 3, 4, 48000, 0, 256),
    ("137", 7, 8, 44100, 12345, 512),        # bar 1 at frame 12345: the plugin finds it from bar/beat/tick
    ("137.5", 7, 8, 48000, 0, 1024),
])
def test_the_plugin_reads_the_timeline_position_from_each_formats_bar_beat_tick(transport_test, fmt, bpm, n, d, rate,
                                                                               origin, block):
    # the host's bar/beat/tick as DPF 1.6 fills them per format (VST3: bars of int(n*4/d) quarters; CLAP:
    # quarters as beats and a running clock for its frame; LV2: the meter's bars and beats)
    proc = subprocess.run([str(transport_test), "follow", fmt, bpm, str(n), str(d), str(rate), str(origin),
                           str(block), "3000"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [tuple(map(int, line.split())) for line in proc.stdout.splitlines()]
    assert len(rows) == 3000
    settled = rows[3:] if origin and fmt != "clap" else rows      # 4 blocks must agree before the origin moves
    wrong = [(i, got, want) for i, (got, want) in enumerate(settled) if got != want]
    assert wrong == [], f"{len(wrong)} blocks off, first (block, plugin, exact): {wrong[:3]}"


@needs_toolchain
def test_lv2s_early_bar_number_at_each_bar_line_does_not_move_the_timeline(transport_test):
    proc = subprocess.run([str(transport_test), "follow", "lv2", "97", "3", "4", "48000", "0", "256", "3000",
                           "glitch"], capture_output=True, text=True, timeout=120)
    rows = [tuple(map(int, line.split())) for line in proc.stdout.splitlines()]
    assert len(rows) == 3000 and all(got == want for got, want in rows)


def jack_cycles(origin: int, blocks: int, late: int | None = None, back: bool = False, stopped: int = 0) -> str:
    """JACK's cycles for transport_test lv2host: "frame bbt_frame rolling" a line, 256 frames each, the
    master's bar 1 at frame `origin`. `stopped` cycles at `origin` before it rolls. At cycle `late` the
    frame is one cycle ahead while the master's bar/beat/tick is still the previous cycle's: JACK's dummy
    driver under load; with `back` the frame returns to its place the cycle after, else it stays ahead."""
    lines, frame = [], origin
    for k in range(stopped):
        lines.append(f"{origin} 0 0")
    for k in range(blocks):
        bbt = frame - origin
        if k == late:
            frame += 256
        elif back and late is not None and k == late + 1:
            frame -= 256
            bbt = frame - origin
        lines.append(f"{frame} {bbt} 1")
        frame += 256
    return "\n".join(lines) + "\n"


@needs_toolchain
@pytest.mark.parametrize("origin, late, back, stopped", [
    (0, 300, False, 0),          # a late cycle: the frame jumps a cycle, the bar/beat lags it; jalv says no more
    (0, 300, True, 0),           # one cycle's frame 256 off, then back
    (12345, 300, False, 8),      # the master's bar 1 at frame 12,345: learnt while stopped, kept through it
    (12345, 500, False, 0),      # ... learnt from the first event while rolling
    (0, None, False, 0),
])
def test_lv2_places_a_take_on_its_bar_whatever_one_glitched_jack_cycle_said(transport_test, origin, late, back,
                                                                             stopped):
    # 97 BPM 3/4 at 48 kHz: bar 3 (start_bar 2) starts at sample 178,144 of the timeline
    proc = subprocess.run([str(transport_test), "lv2host", "97", "3", "4", "48000", "256"],
                          input=jack_cycles(origin, 1000, late, back, stopped), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [tuple(map(int, line.split())) for line in proc.stdout.splitlines()]
    assert len(rows) == 1000 + stopped
    bar3 = Grid(97, "3/4").bar_start_sample(2, 48000)
    assert bar3 == 178144
    # the JACK frame where the take's first sample plays: in the block whose timeline covers bar 3
    heard = [frame + bar3 - ts for ts, frame in rows[stopped:] if ts <= bar3 < ts + 256]
    assert heard == [origin + bar3]
    wrong = [(i, ts, frame) for i, (ts, frame) in enumerate(rows) if ts != frame - origin]
    assert wrong == [], f"{len(wrong)} blocks off, first (block, plugin, JACK frame): {wrong[:3]}"


def cycles_from(start: int, blocks: int, stopped: int = 0, late: int | None = None, block: int = 256) -> str:
    """JACK's cycles for transport_test jackhost, the master's bar 1 at frame 0: `stopped` cycles located at
    `start`, then a roll from it; at cycle `late` the frame comes a cycle early and stays (jalv sends an event)."""
    rows = [f"{start} {start} 0"] * stopped
    rows += [f"{f} {f} 1" for f in (start + block * k + (block if late is not None and k >= late else 0)
                                     for k in range(blocks))]
    return "\n".join(rows) + "\n"


def jack_host(transport_test, fmt: str, meter: str, convention: str, cycles: str,
              block: int = 256) -> list[tuple[int, int, str]]:
    n, d = meter.split("/")
    proc = subprocess.run([str(transport_test), "jackhost", fmt, "97", n, d, "48000", str(block), convention],
                          input=cycles, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [(int(ts), int(frame), tempo) for ts, frame, tempo in (line.split() for line in proc.stdout.splitlines())]


@needs_toolchain
@pytest.mark.parametrize("meter", ["7/8", "5/16", "3/2"])
@pytest.mark.parametrize("convention", ["beats", "quarters"])
@pytest.mark.parametrize("start", [0, 51959])
def test_the_jack_app_reads_97_quarters_a_minute_from_a_master_counting_either_beat(transport_test, meter,
                                                                                   convention, start):
    # JACK's example master writes 97 BPM 7/8 as 194 (eighths), Ardour 7 as 97 (quarters): the plugin tells
    # them apart by how the bar/beat/tick advances against the frames within the first rolling blocks
    rows = jack_host(transport_test, "jack", meter, convention, cycles_from(start, 600, stopped=4))
    rolled = rows[4:]
    assert {tempo for _, _, tempo in rolled[64:]} == {"97"}, rolled[64]
    if convention == "quarters":       # Ardour's reading is the plugin's until told: never anything else
        assert {tempo for _, _, tempo in rows} == {"97"}
    wrong = [(i, ts, frame) for i, (ts, frame, _) in enumerate(rows) if ts != frame]
    assert wrong == [], f"{len(wrong)} blocks off, first (block, plugin, JACK frame): {wrong[:3]}"


@needs_toolchain
@pytest.mark.parametrize("convention", ["beats", "quarters"])
def test_the_jack_app_reads_the_tempo_unit_on_a_roll_whose_cycles_jack_repeats_and_skips(transport_test,
                                                                                        convention):
    # JACK's dummy driver under load: every 6th cycle repeats the last one's frame and the next skips one, and
    # a locate comes half-way. No 16 blocks in a row follow on from each other; summed, they tell it
    frames, frame = [], 51959
    for k in range(160):
        if k == 80:
            frame = 300_000
        elif k % 6 == 5:
            frame -= 256
        elif k % 6 == 0 and k:
            frame += 256
        frames.append(frame)
        frame += 256
    rows = jack_host(transport_test, "jack", "7/8", convention, "".join(f"{f} {f} 1\n" for f in frames))
    tempos = [tempo for _, _, tempo in rows]
    assert "97" in tempos and set(tempos[tempos.index("97"):]) == {"97"} and tempos.index("97") <= 40, tempos


@needs_toolchain
def test_the_jack_app_keeps_bar_1_where_it_is_while_it_reads_twice_the_tempo(transport_test):
    # 64-frame blocks: until told, 194 eighths read as quarters put bar 1 half the frame back, moving 32 frames
    # a block (under the 2 ms that four agreeing blocks need): no block votes for an origin until it is told
    rows = jack_host(transport_test, "jack", "7/8", "beats", cycles_from(0, 400, block=64), block=64)
    assert rows[0][2] == "194" and {tempo for _, _, tempo in rows[64:]} == {"97"}
    wrong = [(i, ts, frame) for i, (ts, frame, _) in enumerate(rows) if ts != frame]
    assert wrong == [], f"{len(wrong)} blocks off, first (block, plugin, JACK frame): {wrong[:3]}"


@needs_toolchain
@pytest.mark.parametrize("convention", ["beats", "quarters"])
def test_lv2_in_jalv_reads_97_quarters_a_minute_from_either_master_once_an_event_is_off_bar_1(transport_test,
                                                                                            convention):
    # jalv sends the master's position only when the transport starts, stops or jumps, and DPF sums bar/beat
    # between them at the master's beats per minute taken as the meter's beats: only events are evidence.
    # Located at 51,959 (mid bar 1 of 7/8 at 97 BPM) the first event tells it
    rows = jack_host(transport_test, "lv2", "7/8", convention, cycles_from(51959, 600, stopped=4))
    assert {tempo for _, _, tempo in rows} == {"97"}
    assert all(ts == frame for ts, frame, _ in rows)
    # rolled from frame 0, bar 1 beat 1 says nothing: a late cycle (an event at frame 76,800) does
    rows = jack_host(transport_test, "lv2", "7/8", convention, cycles_from(0, 600, late=300))
    assert {tempo for _, _, tempo in rows[301:]} == {"97"}
    assert {tempo for _, _, tempo in rows[:300]} == {"194" if convention == "beats" else "97"}
    assert all(ts == frame for ts, frame, _ in rows)


# --- the take store (plugin_host/plugin/take_store.cpp through build/plugin/take_store_test) -------------
@pytest.fixture(scope="module")
def take_store_test(transport_test) -> Path:      # `make check` builds both
    return ROOT / "build" / "plugin" / "take_store_test"


def run_tool(tool: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(tool), *args], input=stdin, capture_output=True, text=True, timeout=60)


@needs_toolchain
@pytest.mark.parametrize("prompt, bar, take, variation, named", [
    ("Dusty lo-fi drums, 90 BPM!", 4, 3, 1, True), ("", 0, 1, 0, False), ("!!!", 9998, 12, 15, True),
    ("Ünïcode wörds and MORE words than five here", 2, 7, 0, False),
    ("a" * 60 + " b", 0, 100, 0, False),
])
def test_take_names_are_stemd_takes_names(take_store_test, prompt, bar, take, variation, named):
    from stemd.takes import take_name

    out = run_tool(take_store_test, "name", prompt, str(bar), str(take), str(variation), "1" if named else "0")
    assert out.stdout.strip() == take_name(prompt, bar, take, variation if named else None)


@needs_toolchain
def test_wav_files_are_stemd_takes_float32_wavs(take_store_test, tmp_path):
    import numpy as np

    from stemd.takes import wav_bytes

    path = tmp_path / "t.wav"
    assert run_tool(take_store_test, "wav", str(path), "3000", "44100").returncode == 0
    i = np.arange(3000)
    audio = np.stack([(i % 1024) / 1024.0, -(i % 2048) / 2048.0]).astype(np.float32)
    assert path.read_bytes() == wav_bytes(audio, 44100, "float32")
    assert not list(tmp_path.glob("*.partial"))


@needs_toolchain
@pytest.mark.parametrize("subtype", ["float32", "pcm24", "pcm16"])
def test_wav_files_are_read_back_as_stereo_float(take_store_test, tmp_path, subtype):
    import numpy as np

    from stemd.takes import wav_bytes

    audio = np.stack([np.linspace(-0.5, 0.5, 500), np.linspace(0.25, -0.25, 500)]).astype(np.float32)
    path = tmp_path / "t.wav"
    path.write_bytes(wav_bytes(audio, 48000, subtype))
    lines = run_tool(take_store_test, "readwav", str(path), "400").stdout.splitlines()
    assert lines[0] == "400 48000"                                # at most MAXFRAMES frames
    got = np.array([[float(x) for x in line.split()] for line in lines[1:]]).T
    assert np.abs(got - audio[:, :400]).max() < (1e-7 if subtype == "float32" else 2 ** -14)


@needs_toolchain
def test_a_file_that_is_not_a_wav_is_refused(take_store_test, tmp_path):
    path = tmp_path / "t.wav"
    path.write_bytes(b"RIFF\xff\xff\xff\xffWAVEdata\xff\xff\xff\xff")
    assert run_tool(take_store_test, "readwav", str(path), "100").stdout.startswith("error ")
    path.write_text("not audio")
    assert run_tool(take_store_test, "readwav", str(path), "100").stdout.startswith("error ")


@needs_toolchain
@pytest.mark.parametrize("text, result", [
    ('{"a": [1, 2.5e3, -0.5, true, false, null, {"b": "x\\u00e9\\ud83c\\udfb5"}]}', "ok object"),
    ('"tab\\tand \\"quote\\""', "ok string"),
    ("[" * 33 + "]" * 33, "error JSON nested too deep"),
    ("[" * 32 + "]" * 32, "ok array"),
    ('{"a": 1,}', "error"), ('{"a" 1}', "error"), ("[1 2]", "error"), ('"open', "error unterminated string"),
    ("1e999", "error bad number"), ("", "error JSON ends early"), ('{"a": 1} x', "error text after"),
    ('"\x01"', "error control character"), ("nul", "error"), ("-", "error bad number"),
])
def test_the_json_parser_is_bounded_and_strict(take_store_test, text, result):
    out = run_tool(take_store_test, "json", stdin=text).stdout
    assert out.startswith(result), out


@needs_toolchain
def test_the_json_parser_decodes_strings_as_python_does(take_store_test):
    text = '"caf\\u00e9 \\ud83c\\udfb5 \\n \\\\ \\/ \\b\\f\\r"'
    out = run_tool(take_store_test, "json", stdin=text).stdout.splitlines()
    assert out[0] == "ok string"
    assert json.loads(out[1]) == json.loads(text)


@needs_toolchain
def test_a_sidecar_is_the_daemons_text_plus_delivery(take_store_test):
    daemon = json.dumps({"model": "click", "prompt": "x \u00e9", "tempo_exact": "275/2"}, indent=2, sort_keys=True,
                         ensure_ascii=False) + "\n"
    delivery = '{"client": "stemd plugin", "accepted": false}'
    out = run_tool(take_store_test, "sidecar", delivery, stdin=daemon).stdout
    assert out.startswith(daemon.rstrip()[:-1].rstrip())              # the daemon's bytes, as they came
    assert json.loads(out) == {**json.loads(daemon), "delivery": json.loads(delivery)}
    assert json.loads(run_tool(take_store_test, "sidecar", delivery, stdin="{}").stdout) == \
        {"delivery": json.loads(delivery)}
    for refused in ['[1]', '{"delivery": {}}', '{"a": ', "not json"]:
        assert run_tool(take_store_test, "sidecar", delivery, stdin=refused).stdout == ""


@needs_toolchain
def test_a_sidecar_written_before_is_rewritten_from_the_daemons_part_with_a_new_delivery(take_store_test):
    # a take reloaded from a project, then accepted: the plugin holds no daemon JSON, only the file it wrote
    daemon = json.dumps({"model": "click", "seed": 7, "prompt": "x \u00e9", "bars": 2}, indent=2,
                        ensure_ascii=False) + "\n"
    first = '{"client": "stemd plugin", "accepted": false, "received": "2026-12-01T10:00:00+00:00"}'
    written = run_tool(take_store_test, "sidecar", first, stdin=daemon).stdout
    accepted = '{"client": "stemd plugin", "accepted": true}'
    out = run_tool(take_store_test, "residecar", accepted, stdin=written).stdout
    text, received = out.rsplit("received: ", 1)
    assert received.strip() == "2026-12-01T10:00:00+00:00"
    assert text.startswith(daemon.rstrip()[:-1].rstrip())              # the daemon's bytes, as they came
    assert json.loads(text) == {**json.loads(daemon), "delivery": json.loads(accepted)}
    # a sidecar written with no daemon JSON (delivery only), or not one of ours: nothing to rewrite from
    missing = '{\n  "delivery": {"client": "stemd plugin", "missing": "the daemon sent no sidecar"}\n}\n'
    for text in [missing, daemon, "{", "[]"]:
        assert run_tool(take_store_test, "residecar", accepted, stdin=text).stdout.startswith("received: ")


@needs_toolchain
def test_the_takes_state_round_trips_and_refuses_out_of_range_takes(take_store_test):
    good = {"id": "plugin-1-1", "prompt": "dusty \"drums\"\n", "model": "", "key": "A minor",
            "options": '{"steps": 8, "guidance": 4.5}', "bpm": "275/2", "meter": "7/8",
            "start_bar": 2, "bars": 2, "sample_rate": 44100, "start_sample": 123, "take": 3, "chosen": 2,
            "accepted": True, "state": "done", "error": {"code": "io_error", "message": "disk full"},
            "variations": [{"variation": 1, "wav": "/t/a_v1.wav", "sidecar": "/t/a_v1.json", "sidecar_missing": False},
                           {"variation": 2, "wav": "/t/a_v2.wav", "sidecar": None, "sidecar_missing": True,
                            "partial": True, "bars_kept": 1}]}       # cut off after its first bar
    bad = [{**good, "id": "bars0", "bars": 0}, {**good, "id": "bpm", "bpm": "1e9"}, {**good, "id": "meter", "meter": "7/7"},
           {**good, "id": "rate", "sample_rate": 7}, {**good, "id": "novars", "variations": []}]
    out = run_tool(take_store_test, "takes", stdin=json.dumps([good, *bad, 5, "x"]))
    assert out.returncode == 0
    [back] = json.loads(out.stdout)
    assert back == {**good, "daw_bar": 3}
    for take in bad:
        assert f"take {take['id']}" in out.stderr
    assert run_tool(take_store_test, "takes", stdin='{"not": "a list"}').returncode == 1
