"""``make demo``: start the daemon, ask it for a take through the bridge, stop the daemon.

The same path a producer uses: ``stemd serve`` keeps the model warm, ``stemd bridge`` requests N bars
at a tempo, receives them bar by bar over OSC/TCP and writes the take (WAV + JSON sidecar).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from stemd import osc
from stemd.protocol import PING, PONG

READY_TIMEOUT_S = 600.0  # a large model's first load
CLICK_READY_TIMEOUT_S = 60.0  # the click engine loads nothing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(osc.encode_message(PING), ("127.0.0.1", port))
            data, _ = s.recvfrom(65536)
            return osc.decode(data).address == PONG
        except (OSError, osc.OSCDecodeError):
            return False


def stemd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stemd", *args]


def available_model(model: str) -> str:
    """``model`` when it is on this machine or can be fetched now (``stemd pull``: once, into the Hugging
    Face cache); else ``click``, said in one line."""
    if model == "click" or Path(model).expanduser().exists():
        return model
    from stemd.errors import StemdError
    from stemd.models.cmd_pull import pull

    print(f"stemd demo: looking for {model} (stemd pull: fetched once into the Hugging Face cache)", flush=True)
    try:
        pull(model)
        return model
    except StemdError as e:
        print(f"stemd demo: {e}; making the take with the click engine (a metronome, no weights) instead",
              flush=True)
        return "click"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m stemd.demo")
    p.add_argument("--model", default="facebook/musicgen-small")
    p.add_argument("--prompt", default="dusty boom bap drums")
    p.add_argument("--bars", default="4")
    p.add_argument("--bpm", default="120")
    p.add_argument("--meter", default="4/4")
    p.add_argument("--out", default="takes")
    args = p.parse_args(argv)

    model = available_model(args.model)
    port = free_port()
    out = Path(args.out).resolve()
    args.model = model
    print(f"stemd demo: starting the daemon with model {args.model} on 127.0.0.1:{port}", flush=True)
    daemon = subprocess.Popen(stemd("serve", "--model", args.model, "--port", str(port), "--out",
                                    str(out / "daemon")), stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        wait = CLICK_READY_TIMEOUT_S if args.model == "click" else READY_TIMEOUT_S
        deadline = time.monotonic() + wait
        while not ping(port):
            if daemon.poll() is not None:
                reason = (daemon.stderr.read() or "").strip().splitlines()
                offline = ("; to run offline: make demo MODEL=click, or stemd make-test-model DIR and "
                           "make demo MODEL=DIR" if args.model != "click" else "")
                print(f"stemd demo: the daemon could not start: {reason[-1] if reason else 'no reason given'}"
                      f"{offline}")
                return 2
            if time.monotonic() > deadline:
                print(f"stemd demo: the daemon did not answer a ping on 127.0.0.1:{port} within {wait:.0f} s "
                      "(is the loopback interface up?)")
                return 2
            time.sleep(0.2)
        bridge = subprocess.run(stemd("bridge", "--daemon", f"127.0.0.1:{port}", "--follow",
                                      f"fixed:{args.bpm}:{args.meter}", "--out", str(out), "--generate",
                                      args.prompt, "--bars", str(args.bars), "--once"))
        if bridge.returncode == 0:
            print(f"stemd demo: done with {'the click engine' if args.model == 'click' else args.model}; "
                  f"the take is in {out}")
        return bridge.returncode
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
