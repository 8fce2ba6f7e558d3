"""The plugin's window, driven the way a person drives it: the JACK standalone (build/plugin/stemd) on a
JACK dummy server, its window on Xvfb, a real ``stemd serve --model click`` reached through $STEMD_DAEMON.
xdotool types the prompt and clicks; ImageMagick's ``import`` photographs each step (saved in the test's
tmp folder, and copied to $STEMD_WINDOW_SHOTS when that is set).

What the plugin holds is read two ways: the files it writes (each finished variation's WAV and sidecar,
the sidecar rewritten with ``accepted: true``), and $STEMD_UI_LOG, where the window writes one line each
time what it shows of the plugin changes (every take's id, state, bars received, chosen variation,
accepted): the window's own read of the plugin's take list through direct access.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from plugin_hosts import ROOT, Timebase, build_jack_timebase, needs_cc, plugin_build, wait_for  # noqa: F401 (fixture)
from stemd.timing import Meter

pytestmark = pytest.mark.skipif(
    not all(shutil.which(p) for p in ("Xvfb", "xdotool", "import", "jackd")),
    reason="needs Xvfb, xdotool, ImageMagick's import and jackd")

# where the window's controls are, in its own pixels at scale 1 (StemdUI.cpp's layout at 980 x 640,
# with the daemon's model known, so its licence lines are shown)
PROMPT = (100, 105)
BARS_DOWN = (115, 208)
VARIATIONS_UP = (341, 238)
KEY = (220, 298)
FIRST_OPTION_UP = (341, 328)  # the "+" of the chosen family's first own key (MusicGen: temperature)
GENERATE = (110, 429)  # below the guide's rows (chords, guide bars, Record, Clear)
NEXT = (539, 549)
PREVIOUS = (389, 549)
ACCEPT = (660, 549)
REROLL = (727, 549)
EXTEND = (793, 549)
AUDITION = (593, 549)
WAVE = (376, 390, 956, 524)  # inside the selected take's waveform (left, top, right, bottom)
FIRST_ROW = (500, 94)    # the take list's first row (the newest take)
SECOND_ROW = (500, 138)  # the take list's second row
BARS_UP = (341, 208)
EMPTY = (180, 500)       # the request panel below its buttons: nothing there

CLIPBOARD_OWNER = """
import sys, tkinter
root = tkinter.Tk()
root.withdraw()
root.clipboard_clear()
root.clipboard_append(sys.argv[1])
root.update()
print("ready", flush=True)
root.mainloop()
"""


class Xvfb:
    def __init__(self, folder: Path, size: str = "1100x700"):
        # Xvfb picks a free display number itself and writes it to the pipe (no race with other servers)
        read, write = os.pipe()
        self.proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", f"{size}x24", "-nolisten",
                                      "tcp"], stdout=open(folder / "xvfb.log", "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True, pass_fds=(write,))
        os.close(write)
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start: " + (folder / "xvfb.log").read_text()[-2000:])
        self.display = f":{number}"
        self.env = {**os.environ, "DISPLAY": self.display}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if subprocess.run(["xdotool", "getmouselocation"], env=self.env, capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("Xvfb did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Window:
    """The JACK app's window, found by its title (the JACK client's name)."""

    def __init__(self, env: dict, shots: Path):
        self.env, self.shots, self.count = env, shots, 0
        out = subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name", "^stemd"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.split(), "no stemd window appeared (is build/plugin/stemd a build with the window?)"
        self.id = out.stdout.split()[0]
        self.xdo("windowmove", self.id, "0", "0")

    def xdo(self, *args: str) -> None:
        subprocess.run(["xdotool", *args], env=self.env, check=True, timeout=30)

    def xdo_output(self, *args: str) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, check=True, timeout=30, capture_output=True,
                              text=True).stdout

    def click(self, at: tuple[int, int]) -> None:
        self.xdo("mousemove", "--window", self.id, str(at[0]), str(at[1]))
        time.sleep(0.1)
        self.xdo("click", "1")
        time.sleep(0.3)

    def type(self, text: str) -> None:
        self.xdo("type", "--delay", "40", text)
        time.sleep(0.3)

    def shot(self, name: str) -> Path:
        self.xdo("mousemove", "--window", self.id, "970", "630")  # an event: the window's next frame is drawn
        time.sleep(0.6)
        self.count += 1
        path = self.shots / f"{self.count:02d}-{name}.png"
        subprocess.run(["import", "-window", "root", "-crop", "980x640+0+0", str(path)], env=self.env, check=True,
                       timeout=60)
        return path


def wait_log(log: Path, test, what: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()
            if lines:
                last = lines[-1]
                if test(last):
                    return last
        time.sleep(0.1)
    raise AssertionError(f"the window never showed {what}; last line: {last!r}")


def takes_of(line: str) -> list[str]:
    return [part.strip() for part in line.split(" | ")[1:]]


@pytest.fixture(params=["click", "musicgen-test-model"])
def window_daemon(request, start_daemon):
    """``stemd serve`` paced to at least 1.5 s a bar (the window can be seen streaming): the click engine, or
    a random-weight MusicGen test model (the family's own keys, temperature and guidance, then show)."""
    if request.param == "click":
        return start_daemon("--pace", "1.5"), "click"
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: no MusicGen test model")
    tiny = request.getfixturevalue("tiny")
    return start_daemon("--device", "cpu", "--pace", "1.5", model=str(tiny)), "musicgen"


class App:
    """The JACK app (a copy of build/plugin/stemd) with its window on Xvfb, reaching ``daemon``: its
    window (``win``), the window's log (``log``), its takes folder (``takes_dir``), the process (``proc``)."""

    def __init__(self, plugin_build: Path, jack, daemon, tmp_path: Path, env: Optional[dict] = None,
                 screen: str = "1100x700"):
        self.shots = tmp_path / "shots"
        self.shots.mkdir()
        self.takes_dir = tmp_path / "plugin-takes"
        self.log = tmp_path / "window.log"
        self.xvfb = Xvfb(tmp_path, screen)
        exe = tmp_path / "stemd-jack"
        shutil.copy2(plugin_build / "stemd", exe)
        env = {**jack.env, "DISPLAY": self.xvfb.display, "STEMD_DAEMON": f"127.0.0.1:{daemon.port}" if daemon else
               "127.0.0.1:9", "STEMD_TAKES_DIR": str(self.takes_dir), "STEMD_UI_LOG": str(self.log),
               "LIBGL_ALWAYS_SOFTWARE": "1", **(env or {})}
        self.proc = jack.start([str(exe)], stdout=open(tmp_path / "app.log", "w"), stderr=subprocess.STDOUT,
                               env=env)
        try:
            self.win = Window({**self.xvfb.env}, self.shots)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if os.environ.get("STEMD_WINDOW_SHOTS"):
            dest = Path(os.environ["STEMD_WINDOW_SHOTS"])
            dest.mkdir(parents=True, exist_ok=True)
            for p in self.shots.glob("*.png"):
                shutil.copy2(p, dest / p.name)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.xvfb.stop()

    def written(self) -> list[Path]:
        """The WAVs the plugin has written, by name."""
        return sorted(self.takes_dir.glob("*.wav")) if self.takes_dir.exists() else []


def test_window_types_a_prompt_generates_picks_and_accepts(plugin_build, jack, window_daemon, tmp_path):
    daemon, family = window_daemon
    app = App(plugin_build, jack, daemon, tmp_path)
    win, log, takes_dir, xvfb = app.win, app.log, app.takes_dir, app.xvfb
    try:
        # connected, the daemon's models known: the request panel has its licence lines
        wait_log(log, lambda l: "connected=1" in l and "models=1" in l, "the daemon connected", 60)
        win.shot("connected")

        win.click(PROMPT)
        win.type("dusty lo-fi drums")
        wait_log(log, lambda l: "prompt=dusty lo-fi drums" in l.split(" | ")[0], "the typed prompt", 10)
        for _ in range(2):
            win.click(BARS_DOWN)       # 4 -> 2 bars
        win.click(VARIATIONS_UP)       # 1 -> 2 variations
        win.click(KEY)
        win.type("A minor")
        if family == "musicgen":
            for _ in range(2):
                win.click(FIRST_OPTION_UP)  # MusicGen's temperature: set (1.00), then 1.05
        win.shot("typed")
        if family == "click":
            win.click(GENERATE)
        else:  # the family's own keys move the Generate button down: Enter in the prompt box generates too
            wait_log(log, lambda l: True, "a frame", 5)
            win.click(PROMPT)
            win.xdo("key", "Return")
        first = wait_log(log, lambda l: len(takes_of(l)) == 1, "a take in the list", 20)
        assert "dusty lo-fi drums" in first and "v1/2" in first, first
        win.shot("requested")
        streaming = wait_log(log, lambda l: takes_of(l) and " streaming " in takes_of(l)[0]
                             and " bars0 " not in takes_of(l)[0], "the take generating, bars arriving", 60)
        assert " bars4 " not in streaming, streaming  # some bars in, not all: it is seen while it streams
        win.shot("generating")
        done = wait_log(log, lambda l: takes_of(l) and " done " in takes_of(l)[0], "the take ready", 90)
        take = takes_of(done)[0]
        assert " bars4 " in take, take  # 2 bars x 2 variations received
        states = [takes_of(l)[0].split()[1] for l in log.read_text().splitlines() if takes_of(l)]
        assert states[-1] == "done" and "streaming" in states, states  # it passed through the daemon's states
        win.shot("ready")

        # both variations written, with the daemon's sidecars
        wavs = wait_for(lambda: len(app.written()) >= 2 and app.written(), 30, "the plugin writing both variations")
        assert len(wavs) == 2, wavs
        assert all(p.with_suffix(".json").exists() for p in wavs)
        made = json.loads(wavs[0].with_suffix(".json").read_text())
        assert made["request"]["key"] == "A minor", made["request"]  # the key box reached the daemon
        if family == "musicgen":
            assert abs(made["request"]["temperature"] - 1.05) < 1e-3, made["request"]

        win.click(NEXT)
        wait_log(log, lambda l: takes_of(l) and " v2/2" in takes_of(l)[0], "variation 2 chosen", 10)
        win.shot("variation-2")
        win.click(PREVIOUS)
        wait_log(log, lambda l: takes_of(l) and " v1/2" in takes_of(l)[0], "variation 1 chosen again", 10)
        win.click(NEXT)
        wait_log(log, lambda l: takes_of(l) and " v2/2" in takes_of(l)[0], "variation 2 chosen again", 10)

        win.click(ACCEPT)
        wait_log(log, lambda l: takes_of(l) and " accepted" in takes_of(l)[0], "the take accepted", 10)
        win.shot("accepted")
        deadline = time.monotonic() + 20
        sidecars = []
        while time.monotonic() < deadline:
            sidecars = [json.loads(p.with_suffix(".json").read_text()) for p in wavs]
            if all(s["delivery"]["accepted"] for s in sidecars):
                break
            time.sleep(0.2)
        assert all(s["delivery"]["accepted"] for s in sidecars), [s["delivery"] for s in sidecars]
        assert all("token" not in json.dumps(s["delivery"]) for s in sidecars)
        # keys: with no text box focused the window takes none (its handlers return false, for the host);
        # in the prompt box a space is text (typed above: "dusty lo-fi drums")
        win.click(EMPTY)
        # the prompt box held X's keyboard focus while focused (tests/test_plugin_ardour_window.py); it gave it back
        focus = subprocess.run(["xdotool", "getwindowfocus"], env=win.env, capture_output=True, text=True, timeout=30)
        assert focus.stdout.split() != [win.id], "the window kept the keyboard after its text box let go"
        win.type("zz ")
        time.sleep(0.5)
        assert "prompt=dusty lo-fi drums " in log.read_text().splitlines()[-1] + " ", "keys reached the prompt box"
        # paste: Ctrl+V in the prompt box takes the X11 clipboard (held here by a Tk window of the test's)
        if importlib.util.find_spec("tkinter") is None:
            pytest.skip("no tkinter to hold the X11 clipboard: everything before the paste passed")
        clip = subprocess.Popen([sys.executable, "-c", CLIPBOARD_OWNER, " with brushes"], env=xvfb.env,
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert clip.stdout.readline().strip() == "ready"
            win.click(PROMPT)
            win.xdo("key", "End")
            win.xdo("key", "ctrl+v")
            wait_log(log, lambda l: "prompt=dusty lo-fi drums with brushes" in l.split(" | ")[0], "the pasted text", 10)
        finally:
            clip.kill()
            clip.wait(10)
        assert app.proc.poll() is None, "the JACK app exited"
    finally:
        app.close()


def two_bar_take(app: App, prompt: str, key: str, enter: bool = False) -> list[Path]:
    """Once the daemon is connected: types ``prompt`` and ``key``, sets 2 bars and generates (by Enter in the
    prompt box when ``enter``: a family's own keys move the Generate button down); the take's WAVs once
    written."""
    win = app.win
    wait_log(app.log, lambda l: "connected=1" in l and "models=1" in l, "the daemon connected", 60)
    win.click(PROMPT)
    win.type(prompt)
    for _ in range(2):
        win.click(BARS_DOWN)       # 4 -> 2 bars
    win.click(KEY)
    win.type(key)
    if enter:
        wait_log(app.log, lambda l: True, "a frame", 5)
        win.click(PROMPT)
        win.xdo("key", "Return")
    else:
        win.click(GENERATE)
    wait_log(app.log, lambda l: len(takes_of(l)) == 1 and " done " in takes_of(l)[0], "the first take ready", 120)
    return wait_for(lambda: app.written(), 30, "the plugin writing the first take")


@needs_cc
def test_reroll_repeats_the_takes_own_prompt_key_and_bars_with_a_new_seed(plugin_build, jack, start_daemon, tmp_path):
    daemon = start_daemon("--pace", "0.3")
    Timebase(jack, build_jack_timebase(tmp_path), 97, Meter(3, 4))  # JACK's transport at 97 BPM 3/4
    app = App(plugin_build, jack, daemon, tmp_path)
    win = app.win
    try:
        first = two_bar_take(app, "brushed snare", "A minor")
        # a second take with other settings: another prompt, key and length
        win.click(PROMPT)
        win.xdo("key", "ctrl+u")
        win.type("tambourine")
        win.click(KEY)
        win.xdo("key", "ctrl+u")
        win.type("C major")
        win.click(BARS_UP)             # 2 -> 3 bars
        win.click(GENERATE)
        wait_log(app.log, lambda l: len(takes_of(l)) == 2 and " done " in takes_of(l)[0], "the second take ready", 60)
        second = wait_for(lambda: len(app.written()) == 2 and app.written(), 30, "the plugin writing the second take")
        # the first take selected in the list (newest first: the second row), and re-rolled
        win.click(SECOND_ROW)
        wait_log(app.log, lambda l: len(takes_of(l)) == 2 and " selected" in takes_of(l)[1], "the first take selected",
                 10)
        win.click(REROLL)
        wait_log(app.log, lambda l: len(takes_of(l)) == 3 and " done " in takes_of(l)[0], "the re-rolled take ready",
                 60)
        wavs = wait_for(lambda: len(app.written()) == 3 and app.written(), 30, "the plugin writing the re-roll")
        win.shot("rerolled")
        again = next(p for p in wavs if p not in second)
        made = [json.loads(p.with_suffix(".json").read_text()) for p in (first[0], again)]
        for sidecar in made:
            asked = (sidecar["prompt"], sidecar["request"]["key"], sidecar["bars"], sidecar["tempo"], sidecar["meter"])
            assert asked == ("brushed snare", "A minor", 2, 97.0, "3/4"), sidecar["request"]
        assert made[0]["seed"] != made[1]["seed"], "the re-roll asked for the same seed"
        assert app.proc.poll() is None, "the JACK app exited"
    finally:
        app.close()


@needs_cc
def test_extend_continues_the_chosen_variation_from_the_bar_after_its_end(plugin_build, jack, start_daemon, tmp_path,
                                                                         request):
    """A 2-bar MusicGen take at 97 BPM 3/4, selected and extended with the window's bars set to 3: the new take
    starts on the bar after the first one's end, with its prompt and key, and its request carried the first
    take's chosen variation (under 30 s: all of it) as the continuation."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: no MusicGen test model")
    import soundfile

    daemon = start_daemon("--device", "cpu", "--pace", "0.3", model=str(request.getfixturevalue("tiny")))
    Timebase(jack, build_jack_timebase(tmp_path), 97, Meter(3, 4))  # JACK's transport at 97 BPM 3/4
    app = App(plugin_build, jack, daemon, tmp_path)
    win = app.win
    try:
        first = two_bar_take(app, "upright bass walk", "D dorian", enter=True)[0]
        win.click(BARS_UP)             # the window's bars: 2 -> 3, what the extension asks for
        win.click(FIRST_ROW)
        wait_log(app.log, lambda l: len(takes_of(l)) == 1 and " selected" in takes_of(l)[0], "the take selected", 10)
        win.shot("before-extend")
        win.click(EXTEND)
        wait_log(app.log, lambda l: len(takes_of(l)) == 2 and " done " in takes_of(l)[0], "the extension ready", 120)
        wavs = wait_for(lambda: len(app.written()) == 2 and app.written(), 30, "the plugin writing the extension")
        win.shot("extended")
        second = next(p for p in wavs if p != first)
        made = [json.loads(p.with_suffix(".json").read_text()) for p in (first, second)]
        assert made[1]["start_bar"] == made[0]["start_bar"] + 2, (made[0]["start_bar"], made[1]["start_bar"])
        assert (made[1]["prompt"], made[1]["request"]["key"], made[1]["bars"], made[1]["tempo"], made[1]["meter"]) == \
            ("upright bass walk", "D dorian", 3, 97.0, "3/4"), made[1]["request"]
        frames = soundfile.info(str(first)).frames
        assert 0 < frames < 30 * 48000, frames  # under 30 s: the whole variation goes
        assert made[1]["request"].get("continuation") == f"<{frames * 2 * 4} bytes>", made[1]["request"]
        assert made[1]["request"].get("continuation_rate") == 48000, made[1]["request"]
        assert made[0]["request"]["continuation"] is None, made[0]["request"]
        assert made[0]["seed"] != made[1]["seed"], "the extension asked for the same seed"
        assert app.proc.poll() is None, "the JACK app exited"
    finally:
        app.close()


@needs_cc
def test_extend_sends_only_the_last_30_s_of_a_longer_take(plugin_build, jack, start_daemon, tmp_path):
    """18 bars at 97 BPM 3/4 (33.4 s) from the click model, extended: the continuation is 30 s of it. Extend
    pressed while the take still streams does nothing."""
    import soundfile

    daemon = start_daemon("--pace", "0.3")
    Timebase(jack, build_jack_timebase(tmp_path), 97, Meter(3, 4))
    app = App(plugin_build, jack, daemon, tmp_path)
    win = app.win
    try:
        wait_log(app.log, lambda l: "connected=1" in l and "models=1" in l, "the daemon connected", 60)
        win.click(PROMPT)
        win.type("shaker")
        for _ in range(14):
            win.click(BARS_UP)         # 4 -> 18 bars
        win.click(GENERATE)
        wait_log(app.log, lambda l: takes_of(l) and " streaming " in takes_of(l)[0] and " bars0 " not in takes_of(l)[0],
                 "the long take streaming", 60)
        win.click(EXTEND)              # not yet: its bars are still arriving
        wait_log(app.log, lambda l: " done " in takes_of(l)[0], "the long take ready", 120)
        time.sleep(1)
        assert len(takes_of(app.log.read_text().splitlines()[-1])) == 1, "a take was extended before it was ready"
        first = wait_for(lambda: app.written(), 30, "the plugin writing the long take")[0]
        assert soundfile.info(str(first)).frames > 30 * 48000, soundfile.info(str(first))
        win.click(EXTEND)
        wait_log(app.log, lambda l: len(takes_of(l)) == 2 and " done " in takes_of(l)[0], "the extension ready", 120)
        wavs = wait_for(lambda: len(app.written()) == 2 and app.written(), 30, "the plugin writing the extension")
        made = [json.loads(p.with_suffix(".json").read_text()) for p in wavs if p != first][0]
        assert made["request"]["continuation"] == f"<{30 * 48000 * 2 * 4} bytes>", made["request"]
        assert made["start_bar"] == json.loads(first.with_suffix(".json").read_text())["start_bar"] + 18
    finally:
        app.close()


# the request panel's guide row (click family: no keys of its own), in the window's pixels at scale 1
GUIDE_BARS_UP = (202, 374)
RECORD = (255, 374)
CLEAR = (324, 374)
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
PANEL = re.compile(r"guide_bars=(?P<guide_bars>\d+) record=(?P<record>\S+) clear=(?P<clear>[01]) "
                   r"generate@(?P<generate>\d+,\d+) record@(?P<record_at>\d+,\d+) chords@(?P<chords_at>\d+,\d+) "
                   r"guide=(?P<guide>.*) recorder=(?P<recorder>.*) warning=(?P<warning>.*) "
                   r"chords(?P<dim>\(dim\))?=(?P<chords>.*) prompt=")


def panel(line: str) -> dict:
    """The guide panel as the window drew it, from a STEMD_UI_LOG line (free text shows '|' as '¦')."""
    m = PANEL.search(line.split(" | ")[0])
    assert m, f"no guide panel in the window's log line {line!r}"
    return m.groupdict()


def point(text: str) -> tuple[int, int]:
    x, y = text.split(",")
    return int(x), int(y)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or shutil.which("fluidsynth") is None
                    or not SOUNDFONT.exists(),
                    reason="torch (a MusicGen melody test model), the fluidsynth program or Debian's fluid-soundfont-gm "
                           "is missing")
@needs_cc
def test_chords_typed_in_the_window_go_with_the_request_at_97_bpm_3_4(plugin_build, jack, start_daemon, tmp_path,
                                                                     tmp_path_factory):
    """A MusicGen melody test model (a family that follows a guide) at 97 BPM 3/4: chords typed in the window's
    box, one bar split by beats, are what the daemon's sidecar says the request carried; the window says the
    next request goes with 3 bars of chords, warns of nothing, and the take lists its guide."""
    from stemd.models.musicgen.testmodel import write_test_model

    melody = write_test_model(tmp_path_factory.mktemp("melody-tiny"), "musicgen-melody-tiny")
    daemon = start_daemon("--device", "cpu", "--pace", "0.3", model=str(melody))
    Timebase(jack, build_jack_timebase(tmp_path), 97, Meter(3, 4))
    app = App(plugin_build, jack, daemon, tmp_path)
    win, log = app.win, app.log
    chords = "Am7 | F . C/E | G7sus4"
    try:
        line = wait_log(log, lambda l: "connected=1" in l and "models=1" in l, "the daemon connected", 60)
        assert panel(line)["guide"] == "no guide", line
        win.click(PROMPT)
        win.type("felt piano")
        for _ in range(2):
            win.click(BARS_DOWN)       # 4 -> 2 bars: shorter than the chords
        win.click(point(panel(line)["chords_at"]))
        win.type(chords)
        line = wait_log(log, lambda l: panel(l)["chords"] == chords.replace("|", "¦"), "the typed chords", 10)
        assert panel(line)["guide"] == "guide: the chords, 3 bars", line
        assert panel(line)["warning"] == "the chords have 3 bars, the take 2: the daemon will refuse them", line
        win.click(BARS_UP)             # 3 bars: the chords' length
        line = wait_log(log, lambda l: panel(l)["warning"] == "", "no warning", 10)  # musicgen-melody follows a guide
        win.shot("chords")
        win.click(point(panel(line)["generate"]))
        done = wait_log(log, lambda l: len(takes_of(l)) == 1 and " done " in takes_of(l)[0], "the take ready", 180)
        assert f" guide=chords {chords.replace('|', '¦')} prompt=" in takes_of(done)[0], done  # the list shows its guide
        win.shot("chords-take")
        wavs = wait_for(lambda: app.written(), 30, "the plugin writing the take")
        made = json.loads(wavs[0].with_suffix(".json").read_text())
        assert made["request"]["chords"] == chords, made["request"]
        assert (made["bars"], made["tempo"], made["meter"]) == (3, 97.0, "3/4"), made
        assert app.proc.poll() is None, "the JACK app exited"
    finally:
        app.close()


def test_the_window_warns_when_the_model_cannot_follow_chords_and_the_daemon_refuses_them(plugin_build, jack,
                                                                                          start_daemon, tmp_path):
    """The click model follows no guide: with chords typed the window says so in orange before Generate, and the
    daemon, given them, refuses the take (unsupported_key): the chords went with the request."""
    daemon = start_daemon()
    app = App(plugin_build, jack, daemon, tmp_path)
    win, log = app.win, app.log
    try:
        line = wait_log(log, lambda l: "connected=1" in l and "models=1" in l, "the daemon connected", 60)
        assert panel(line)["warning"] == "", line  # no chords, no guide: nothing to warn of
        win.click(PROMPT)
        win.type("rimshot")
        win.click(point(panel(line)["chords_at"]))
        win.type("Dm | G7")
        line = wait_log(log, lambda l: panel(l)["chords"] == "Dm ¦ G7", "the typed chords", 10)
        assert panel(line)["warning"] == "click cannot follow a guide: the daemon will refuse it", line
        win.xdo("key", "Return")      # Enter in the chords box generates
        failed = wait_log(log, lambda l: len(takes_of(l)) == 1 and " failed " in takes_of(l)[0], "the take refused", 30)
        assert " error=unsupported_key (click (click) has no chords;" in takes_of(failed)[0], failed
        assert app.written() == [], "a take was written for a refused request"
    finally:
        app.close()


def test_record_arms_the_recorder_which_waits_while_the_host_is_stopped(plugin_build, jack, start_daemon, tmp_path):
    """No timebase master: JACK's transport stays stopped. Guide bars 4 -> 6 reaches the plugin's recorder, Record
    arms it (the button says Stop, the window the bars and that it waits for the next bar line) and it stays armed;
    Clear stays disabled with no guide recorded; Stop disarms it."""
    app = App(plugin_build, jack, start_daemon(), tmp_path)
    win, log = app.win, app.log
    try:
        line = wait_log(log, lambda l: "connected=1" in l and "models=1" in l, "the daemon connected", 60)
        assert (panel(line)["record"], panel(line)["clear"], panel(line)["guide_bars"]) == ("Record", "0", "4"), line
        assert point(panel(line)["record_at"]) == RECORD, line
        for _ in range(2):
            win.click(GUIDE_BARS_UP)
        wait_log(log, lambda l: panel(l)["guide_bars"] == "6", "guide bars 6", 10)
        win.click(RECORD)
        armed = wait_log(log, lambda l: panel(l)["record"] == "Stop", "the recorder armed", 10)
        assert panel(armed)["recorder"].startswith("armed (6 bars): starts at the next bar line"), armed
        win.shot("armed")
        win.click(CLEAR)               # disabled: nothing to clear
        time.sleep(3)
        still = log.read_text().splitlines()[-1]
        assert panel(still)["record"] == "Stop" and panel(still)["recorder"].startswith("armed"), still
        assert panel(still)["clear"] == "0", still
        win.click(RECORD)              # Stop
        stopped = wait_log(log, lambda l: panel(l)["record"] == "Record", "the recorder stopped", 10)
        assert not panel(stopped)["recorder"].startswith("armed"), stopped
        assert app.proc.poll() is None, "the JACK app exited"
    finally:
        app.close()


GUIDE_BARS_DOWN = (115, 374)
MIDI_GUIDE = re.compile(r"MIDI guide: (\d+) notes, 2 bars played at bar (\d+) \(97(?:\.0*)? BPM 3/4\)")


@pytest.mark.skipif(not (shutil.which("jack_midiseq") and shutil.which("jack_connect")),
                    reason="jack_midiseq, jack_connect (Debian jackd2) are not installed")
@needs_cc
def test_a_part_recorded_from_midi_shows_as_the_guide_and_wins_over_the_chords_until_cleared(plugin_build, jack,
                                                                                             start_daemon, tmp_path):
    """97 BPM 3/4, JACK's transport stopped, a note on every beat from jack_midiseq into the app's MIDI input:
    Record arms 2 bars; the transport rolls and the window counts the bars recorded, then says what was recorded
    (notes, bars, where, tempo and meter), greys the chords it now overrides and enables Clear; Clear brings the
    chords back."""
    daemon = start_daemon()
    timebase = Timebase(jack, build_jack_timebase(tmp_path), 97, Meter(3, 4))
    app = App(plugin_build, jack, daemon, tmp_path)
    win, log = app.win, app.log
    beat = round(48000 * 60 / 97)
    try:
        jack.start(["jack_midiseq", "stemd-window-notes", str(beat), "0", "60", str(beat // 2)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: subprocess.run(["jack_connect", "stemd-window-notes:out", "stemd:events-in"], env=jack.env,
                                        capture_output=True, timeout=20).returncode == 0, 20,
                 "jack_midiseq connected to the app's MIDI input")
        line = wait_log(log, lambda l: "connected=1" in l and "models=1" in l, "the daemon connected", 60)
        win.click(point(panel(line)["chords_at"]))
        win.type("Am | F")
        for _ in range(2):
            win.click(GUIDE_BARS_DOWN)  # 4 -> 2 bars
        wait_log(log, lambda l: panel(l)["guide_bars"] == "2" and panel(l)["chords"] == "Am ¦ F", "chords, 2 bars", 10)
        seen = len(log.read_text().splitlines())
        win.click(RECORD)
        wait_log(log, lambda l: panel(l)["recorder"].startswith("armed (2 bars)"), "the recorder armed", 10)
        timebase.tell("play")
        # a late JACK cycle on a loaded machine reads as a jump of the transport, and the recorder keeps nothing
        # (it says so): Record again, while the transport rolls, up to twice
        for attempt in range(3):
            outcome = panel(wait_log(log, lambda l: panel(l)["guide"].startswith("MIDI guide") or
                                     panel(l)["recorder"].startswith("not recorded"), "the recording's outcome", 40))
            if outcome["guide"].startswith("MIDI guide") or attempt == 2:
                break
            print(f"recording {attempt + 1}: {outcome['recorder']}")
            seen = len(log.read_text().splitlines())
            win.click(RECORD)
            wait_log(log, lambda l: not panel(l)["recorder"].startswith("not recorded"), "the recorder armed again", 10)
        win.shot("recorded")
        lines = [panel(l) for l in log.read_text().splitlines()[seen:] if " guide_bars=" in l]
        counted = [p["recorder"] for p in lines if p["recorder"].startswith("recording bar")]
        assert counted, [p["recorder"] for p in lines]  # the window said it was recording
        m = re.fullmatch(r"recording bar [12] of 2 \(from bar (\d+)\)", counted[-1])
        assert m, counted
        done = outcome
        got = MIDI_GUIDE.fullmatch(done["guide"])
        assert got and int(got[1]) >= 5 and got[2] == m[1], done  # 6 beats, a note on each (one may fall at an end)
        assert (done["record"], done["clear"], done["dim"], done["chords"]) == ("Record", "1", "(dim)", "Am ¦ F"), done
        win.click(CLEAR)
        cleared = panel(wait_log(log, lambda l: panel(l)["clear"] == "0", "the guide cleared", 10))
        assert (cleared["guide"], cleared["dim"]) == ("guide: the chords, 2 bars", None), cleared
        assert app.proc.poll() is None, "the JACK app exited"
    finally:
        app.close()


def test_at_its_smallest_640x460_every_request_control_is_inside_the_window_and_generate_works(plugin_build, jack,
                                                                                                start_daemon, tmp_path):
    """The window made as small as it goes (640x460): the request panel packs its rows; Generate and Record lie
    inside the window, and Generate, clicked where it is drawn, makes a take."""
    daemon = start_daemon("--pace", "0.2")
    app = App(plugin_build, jack, daemon, tmp_path)
    win, log = app.win, app.log
    try:
        line = wait_log(log, lambda l: "connected=1" in l and "models=1" in l, "the daemon connected", 60)
        win.click(point(panel(line)["chords_at"]))
        win.type("C | G")              # a warning line too (click cannot follow it): the longest panel
        big = panel(wait_log(log, lambda l: panel(l)["warning"] != "", "the warning", 10))
        win.xdo("windowsize", win.id, "640", "460")
        small = panel(wait_log(log, lambda l: panel(l)["generate"] != big["generate"], "the window packed at 640x460",
                               20))
        geometry = win.xdo_output("getwindowgeometry", win.id)
        assert "Geometry: 640x460" in geometry, geometry
        assert small["warning"].startswith("click cannot follow a guide"), small
        for name in ("generate", "record_at", "chords_at"):  # each whole control above the panel's 12 px margin
            x, y = point(small[name])
            assert 0 < x < 640 and 0 < y <= 460 - 12 - 15, (name, small)
        win.shot("smallest")
        win.click(point(small["chords_at"]))
        win.xdo("key", "ctrl+u")        # no chords: the click model makes the take
        win.click(PROMPT)
        win.type("claves")
        cleared = panel(wait_log(log, lambda l: panel(l)["chords"] == "", "the chords cleared", 10))
        x, y = point(cleared["generate"])  # without the warning line the panel may unpack: still inside
        assert 0 < x < 640 and 0 < y <= 460 - 12 - 15, cleared
        win.click((x, y))
        wait_log(log, lambda l: len(takes_of(l)) == 1 and " done " in takes_of(l)[0], "the take ready", 60)
    finally:
        app.close()


def playhead_x(shot: Path) -> Optional[int]:
    """The column of the waveform's playhead (its yellow line) in a screenshot of the window, or None."""
    from PIL import Image

    image = Image.open(shot).convert("RGB").crop(WAVE)
    width, height = image.size
    data = image.tobytes()
    def yellow(x: int, y: int) -> bool:
        r, g, b = data[(y * width + x) * 3:(y * width + x) * 3 + 3]
        return r > 220 and g > 190 and b < 130

    hits = [x for x in range(width) for y in (height // 4, height // 2 + 20, 3 * height // 4) if yellow(x, y)]
    return WAVE[0] + min(hits) if hits else None


def test_the_playhead_moves_over_the_waveform_while_a_take_auditions_with_the_host_stopped(plugin_build, jack,
                                                                                           start_daemon, tmp_path):
    daemon = start_daemon("--pace", "0.2")
    app = App(plugin_build, jack, daemon, tmp_path)  # no timebase master: JACK's transport stays stopped
    win = app.win
    try:
        wait_log(app.log, lambda l: "connected=1" in l, "the daemon connected", 60)
        win.click(PROMPT)
        win.type("shaker")
        win.click(BARS_DOWN)       # 4 -> 3 bars: 6 s at 120 BPM
        win.click(GENERATE)
        wait_log(app.log, lambda l: len(takes_of(l)) == 1 and " done " in takes_of(l)[0], "the take ready", 60)
        before = win.shot("before-audition")
        assert playhead_x(before) is None, "a playhead while nothing plays"
        win.click(AUDITION)
        seen = []
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and len(set(seen)) < 4:
            x = playhead_x(win.shot("auditioning"))
            if x is not None:
                seen.append(x)
        assert len(set(seen)) >= 3, f"playhead columns seen while auditioning: {seen}"
        assert seen == sorted(seen), f"the playhead went back: {seen}"
    finally:
        app.close()


def text_extent(image, box: tuple[int, int, int, int]) -> tuple[int, int]:
    """(width, height) of the light (text) pixels inside ``box`` (left, top, right, bottom) of a screenshot."""
    crop = image.convert("L").crop(box)
    width, height = crop.size
    data = crop.tobytes()
    rows = [y for y in range(height) if sum(1 for v in data[y * width:(y + 1) * width] if v > 150) >= 2]
    cols = [x for x in range(width) if sum(1 for y in range(height) if data[y * width + x] > 150) >= 1]
    return (cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1) if rows and cols else (0, 0)


def test_window_at_200_percent_opens_twice_the_size_with_its_text_twice_as_tall(plugin_build, jack, tmp_path):
    """DGL's DPF_SCALE_FACTOR=2 (what a 200% desktop gives the window): 1960 x 1280, and the status line
    ("No daemon at ...", drawn at 14 px) twice as wide and tall as at scale 1."""
    from PIL import Image

    extent = {}
    for scale in (1, 2):
        folder = tmp_path / f"scale{scale}"
        folder.mkdir()
        app = App(plugin_build, jack, None, folder, env={"DPF_SCALE_FACTOR": str(scale)}, screen="2100x1400")
        try:
            wait_log(app.log, lambda l: "connected=0" in l, "the window drawn", 30)
            geometry = app.win.xdo_output("getwindowgeometry", app.win.id)
            size = re.search(r"Geometry: (\d+)x(\d+)", geometry)
            assert size and (int(size[1]), int(size[2])) == (980 * scale, 640 * scale), geometry
            app.win.xdo("mousemove", "--window", app.win.id, str(500 * scale), str(600 * scale))
            time.sleep(1.0)
            shot = folder / "window.png"
            subprocess.run(["import", "-window", "root", "-crop", f"{980 * scale}x{640 * scale}+0+0", str(shot)],
                           env=app.xvfb.env, check=True, timeout=60)
            # the status line: at scale 1 its text is centred on y = 16, from x = 28
            extent[scale] = text_extent(Image.open(shot), (20 * scale, 6 * scale, 975 * scale, 26 * scale))
            assert extent[scale][0] > 100, f"no status line at scale {scale} ({shot})"
        finally:
            app.close()
    print(f"status line text (width, height) at 100%: {extent[1]}, at 200%: {extent[2]}")
    for i in (0, 1):
        assert 1.7 <= extent[2][i] / extent[1][i] <= 2.3, \
            f"status line (width, height) {extent[1]} at 100%, {extent[2]} at 200%"


ASAN_FLAGS = "-fsanitize=address -fno-omit-frame-pointer -g -O1"


def build_asan_lv2() -> Path:
    """The LV2 (plugin and window in one binary) with AddressSanitizer, DGL included, into build/plugin-asan."""
    out = ROOT / "build" / "plugin-asan"
    env = {**os.environ, "CXXFLAGS": ASAN_FLAGS, "CFLAGS": ASAN_FLAGS, "LDFLAGS": "-fsanitize=address"}
    done = subprocess.run(["make", "-C", str(ROOT / "plugin_host" / "plugin"), f"PLUGIN_OUT={out}", "lv2", "-j2"],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "stemd.lv2"


@pytest.mark.skipif(not (Path("/usr/include/lv2/ui/ui.h").exists() and Path("/usr/include/X11/Xlib.h").exists()
                         and shutil.which("c++") and Path("/usr/share/dpf/Makefile.plugins.mk").exists()),
                    reason="needs the LV2 and X11 headers, a C++ compiler and DPF")
def test_window_opened_and_closed_50_times_in_a_running_host_under_asan(tmp_path):
    bundle = build_asan_lv2()
    host = tmp_path / "plugin_window_cycle"
    built = subprocess.run(["c++", "-std=c++17", *ASAN_FLAGS.split(), str(ROOT / "tests" / "plugin_window_cycle.cpp"),
                            "-o", str(host), "-ldl", "-lpthread", "-lX11"], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    xvfb = Xvfb(tmp_path)
    try:
        # a small quarantine, so that freed memory is given back and the host's growth is what stays
        env = {**xvfb.env, "STEMD_DAEMON": "127.0.0.1:9", "STEMD_TAKES_DIR": str(tmp_path / "takes"),
               "ASAN_OPTIONS": "detect_leaks=0:quarantine_size_mb=16:abort_on_error=0", "LIBGL_ALWAYS_SOFTWARE": "1"}
        run = subprocess.run([str(host), str(bundle), "50"], env=env, capture_output=True, text=True, timeout=900)
    finally:
        xvfb.stop()
    report = run.stdout + run.stderr
    assert "AddressSanitizer" not in report, report[-4000:]
    assert run.returncode == 0, report[-4000:]
    rss = {int(m[0]): int(m[1]) for m in re.findall(r"cycle (\d+) rss_kib (\d+)", run.stdout)}
    assert sorted(rss) == list(range(1, 51)), run.stdout
    growth = rss[50] - rss[5]
    print(f"host RSS after cycle 5: {rss[5]} KiB, after cycle 50: {rss[50]} KiB (+{growth} KiB)")
    assert growth < 16 * 1024, f"the host grew by {growth} KiB over 45 openings of the window"
