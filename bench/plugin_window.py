"""The plugin's window with 200 takes in its list, scrolling: how long each frame takes to draw.

Runs the JACK standalone (build/plugin/stemd, or $STEMD_PLUGIN_BUILD/stemd) on a JACK dummy server with its
window on Xvfb (OpenGL through Mesa: llvmpipe, software), and a real ``stemd serve --model click``. xdotool
types a prompt and presses Enter 200 times (200 one-bar takes), then scrolls the list with the mouse wheel
down and up. The window writes one line per frame to $STEMD_UI_FRAMES (StemdUI.cpp): ms from the frame's
start to the next idle (the plugin snapshot, the drawing, NanoVG's flush and the buffer swap), and ms to
build it. Prints the frame times while scrolling against 16.7 ms (60 Hz).

    .venv/bin/python bench/plugin_window.py [--takes 200]   (--takes 0: the empty window)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("STEMD_PLUGIN_BUILD") or ROOT / "build" / "plugin")

sys.path.insert(0, str(ROOT / "tests"))
from plugin_hosts import wait_for  # noqa: E402  (tests/plugin_hosts.py)

PROMPT = (100, 105)
LIST = (660, 200)


def frames(path: Path) -> list[tuple[float, float, int, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            rows.append((float(parts[0]), float(parts[1]), int(parts[2]), float(parts[3])))
    return rows


def make_takes(xdo, win: str, count: int, frame_log: Path, tmp: Path) -> None:
    """Types a prompt, sets one bar, and presses Enter ``count`` times in the prompt box; waits until the
    list holds them and the daemon has stopped writing."""
    xdo("mousemove", "--window", win, str(PROMPT[0]), str(PROMPT[1]))
    xdo("click", "1")
    xdo("type", "--delay", "30", "bench take")
    # one bar each: the bars stepper down three times from 4
    for _ in range(3):
        xdo("mousemove", "--window", win, "115", "208")
        xdo("click", "1")
    xdo("mousemove", "--window", win, str(PROMPT[0]), str(PROMPT[1]))
    xdo("click", "1")
    made = time.monotonic()
    xdo("key", "--delay", "40", "--repeat", str(count), "Return")
    wait_for(lambda: any(r[2] >= count for r in frames(frame_log)[-5:]), 600,
             f"the list did not reach {count} takes", every=0.2)
    # the daemon may refuse some (its queue per client is bounded): those stay in the list as failed
    last, still = -1, time.monotonic()
    while time.monotonic() - still < 5 and time.monotonic() - made < 300:
        written = len(list((tmp / "takes").glob("*.wav")))
        if written != last:
            last, still = written, time.monotonic()
        time.sleep(0.5)
    print(f"{count} takes in the list ({last} ready and written, the rest refused or failed) "
          f"after {time.monotonic() - made:.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--takes", type=int, default=200, help="0: the empty window (its fixed cost)")
    ap.add_argument("--scrolls", type=int, default=120, help="wheel steps down, then as many up")
    args = ap.parse_args()
    for program in ("Xvfb", "xdotool", "jackd"):
        if not shutil.which(program):
            print(f"needs {program}")
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="stemd-window-bench-"))
    procs: list[subprocess.Popen] = []
    display = ""
    # one fixed name: JACK keeps a server that was killed in its registry (8 slots) until a server of the same
    # name starts again, so a name per run would fill it
    server = "stemd-bench-ui"
    env = {**os.environ, "DISPLAY": display, "JACK_DEFAULT_SERVER": server, "JACK_NO_AUDIO_RESERVATION": "1"}

    def start(cmd, **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        procs.append(p)
        return p

    try:
        read, write = os.pipe()  # Xvfb picks a free display number itself
        start(["Xvfb", "-displayfd", str(write), "-screen", "0", "1100x700x24", "-nolisten", "tcp"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write,))
        os.close(write)
        with os.fdopen(read) as pipe:
            display = ":" + pipe.readline().strip()
        env["DISPLAY"] = display
        start(["jackd", "-n", server, "-d", "dummy", "-r", "48000", "-p", "256"], stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL, env=env)
        subprocess.run(["jack_wait", "-w", "-t", "20"], env=env, check=True, capture_output=True)
        log = open(tmp / "daemon.log", "w")
        start([sys.executable, "-m", "stemd", "serve", "--model", "click", "--port", "0", "--out", str(tmp / "out")],
              stdout=log, stderr=subprocess.STDOUT)
        port = wait_for(lambda: (re.search(r"osc\.tcp://[^:]+:(\d+)", (tmp / "daemon.log").read_text())
                                 or [None, None])[1], 60, "the daemon wrote no port", every=0.2)
        frame_log = tmp / "frames.txt"
        exe = tmp / "stemd-jack"
        shutil.copy2(BUILD / "stemd", exe)
        start([str(exe)], stdout=open(tmp / "app.log", "w"), stderr=subprocess.STDOUT,
              env={**env, "STEMD_DAEMON": f"127.0.0.1:{port}", "STEMD_TAKES_DIR": str(tmp / "takes"),
                   "STEMD_UI_FRAMES": str(frame_log)})
        win = subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name", "^stemd"], env=env,
                             capture_output=True, text=True, timeout=60).stdout.split()[0]

        def xdo(*a: str) -> None:
            subprocess.run(["xdotool", *a], env=env, check=True, timeout=600)

        xdo("windowmove", win, "0", "0")
        time.sleep(2)
        if args.takes:
            make_takes(xdo, win, args.takes, frame_log, tmp)
            time.sleep(2)

        before = len(frames(frame_log))
        idle = frames(frame_log)[-60:]
        xdo("mousemove", "--window", win, str(LIST[0]), str(LIST[1]))
        xdo("click", "--repeat", str(args.scrolls), "--delay", "30", "5")
        xdo("click", "--repeat", str(args.scrolls), "--delay", "30", "4")
        time.sleep(1)
        rows = [r for r in frames(frame_log)[before:] if r[2] >= args.takes]
        scrolled = {r[3] for r in rows}
        if len(rows) < 20 or (args.takes and len(scrolled) < 10):
            print(f"too few frames while scrolling ({len(rows)}, {len(scrolled)} scroll positions)")
            return 1
        total = sorted(r[0] for r in rows)
        build = sorted(r[1] for r in rows)

        def pct(values, p):
            return values[min(len(values) - 1, int(p / 100 * len(values)))]

        gl = subprocess.run(["sh", "-c", "glxinfo -B 2>/dev/null | grep -i 'renderer string'"], env=env,
                            capture_output=True, text=True).stdout.strip()
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"renderer: {gl or 'unknown (glxinfo missing)'}; window 980x640 at scale 1; "
              f"{os.cpu_count()} CPUs, load average {load}")
        if idle:
            print(f"idle with {args.takes} takes: median frame {statistics.median(r[0] for r in idle):.2f} ms")
        print(f"scrolling {args.takes} takes ({len(rows)} frames, {len(scrolled)} scroll positions, "
              f"max scroll {max(scrolled):.0f} px):")
        print(f"  frame (snapshot + draw + flush + swap): median {statistics.median(total):.2f} ms, "
              f"p95 {pct(total, 95):.2f} ms, max {total[-1]:.2f} ms")
        print(f"  build (snapshot + drawing calls):       median {statistics.median(build):.2f} ms, "
              f"p95 {pct(build, 95):.2f} ms, max {build[-1]:.2f} ms")
        print(f"  budget at 60 Hz: 16.7 ms; p95 frame {'within' if pct(total, 95) <= 16.7 else 'OVER'} it")
        return 0
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
