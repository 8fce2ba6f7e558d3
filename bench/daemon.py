"""How long `stemd serve` takes to deliver: generate -> first chunk at the client, and per-chunk overhead.

    .venv/bin/python bench/daemon.py                 # click engine, and a tiny MusicGen test model if it can be built
    .venv/bin/python bench/daemon.py --models click --runs 30
    .venv/bin/python bench/daemon.py --models bench/.cache/musicgen-small-random --device cuda --backend cuda-graph

For each model it starts a real `stemd serve` process and talks to it over TCP (OSC 1.0 length-prefix
framing, as the bridge does), then measures:

- first chunk: wall time from sending /stemd/generate to having the whole first /stemd/chunk decoded at
  the client (median and 90th percentile of --runs one-bar requests, after a warm-up);
- per chunk: (last bar - first bar) / (bars - 1) of a --bars take, at the client through the daemon and
  for the same take made by models.pipeline.bar_chunks in this process (engines may emit bars in bursts,
  so this is a mean); daemon and in-process takes alternate --rounds times and the best of each is kept,
  because the machine may be shared;
- daemon + transport overhead per chunk = the difference; and what encoding + framing one chunk costs.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stemd import osc
from stemd.framing import StreamDecoder, frame_length_prefixed
from stemd.models.registry import DECODE_BACKENDS

STEMD = [sys.executable, "-m", "stemd"]


class Client:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder, self.pending = StreamDecoder(), []

    def send(self, address: str, *args) -> None:
        self.sock.sendall(frame_length_prefixed(osc.encode_message(address, *args)))

    def recv(self) -> tuple[float, osc.Message]:
        while not self.pending:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("daemon closed the connection")
            now = time.perf_counter()
            self.pending += [(now, osc.decode(p)) for p in self.decoder.feed(data)]
        return self.pending.pop(0)

    def take(self, request_id: str, *args) -> tuple[float, list[float]]:
        """Send a generate; return the send time and the arrival time of each chunk."""
        t0 = time.perf_counter()
        self.send("/stemd/generate", request_id, *args)
        arrivals = []
        while True:
            t, msg = self.recv()
            if msg.address == "/stemd/chunk":
                arrivals.append(t)
            elif msg.address == "/stemd/done":
                return t0, arrivals
            elif msg.address == "/stemd/error":
                raise RuntimeError(msg.args)


def serve(args: list, out: Path, log: Path, env: dict | None = None,
          timeout: float = 300) -> tuple[subprocess.Popen, int]:
    """``stemd serve --port 0 --out OUT ARGS`` in a session of its own, its output in ``log``: the process and
    the TCP port it says it listens on."""
    proc = subprocess.Popen(STEMD + ["serve", "--port", "0", "--out", str(out), *args], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stemd serve exited: {log.read_text()[-3000:]}")
        m = re.search(r"osc\.tcp://[^:]+:(\d+)", log.read_text(errors="replace"))
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    raise RuntimeError(f"stemd serve did not start: {log.read_text()[-3000:]}")


def start_daemon(model: str, out: Path, device: str = "cpu", backend: str | None = None) -> tuple[subprocess.Popen, int]:
    return serve(["--model", model, "--device", device] + (["--backend", backend] if backend else []), out / "takes",
                 out / "daemon.log")


class InProcess:
    """The same takes made by models.pipeline.bar_chunks in this process: no daemon, no OSC, no TCP."""

    def __init__(self, model: str, device: str = "cpu", backend: str | None = None):
        from concurrent.futures import ThreadPoolExecutor

        from stemd.models.registry import load_engine

        self.engine = load_engine(model, device=device, backend=backend)
        # one worker thread, as in the daemon: on a loaded 2-core machine torch ran up to 10x slower
        # in the main thread than in another thread (measured with the tiny test model)
        self.thread = ThreadPoolExecutor(1)

    def take(self, bars: int) -> tuple[float, list[float], float]:
        return self.thread.submit(self._take, bars).result()

    def _take(self, bars: int) -> tuple[float, list[float], float]:
        """(start time, each bar's ready time, median encode+frame seconds of one chunk message)."""
        from stemd.daemon.takeio import spec_from_request
        from stemd.models.pipeline import bar_chunks
        from stemd.protocol import Chunk, GenerateRequest

        spec = spec_from_request(GenerateRequest("bench", bars=bars, seed=1), self.engine)
        t0, times, encode, spent = time.perf_counter(), [], [], 0.0
        for chunk in bar_chunks(self.engine, spec):
            times.append(time.perf_counter() - spent)  # our own encoding is not the engine's time
            e0 = time.perf_counter()
            frame_length_prefixed(osc.encode_message("/stemd/chunk", *Chunk(
                "bench", 0, chunk.index, chunk.start_sample, chunk.sample_rate, chunk.channels,
                chunk.audio[0]).to_args()))
            encode.append(time.perf_counter() - e0)
            spent += encode[-1]
        return t0, times, statistics.median(encode)


def per_chunk(arrivals: list[float]) -> float:
    return (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)  # engines may emit bars in bursts: a mean


def bench(model: str, label: str, runs: int, bars: int, rounds: int, device: str = "cpu",
          backend: str | None = None) -> dict:
    """Daemon and in-process takes alternate, ``rounds`` times; the best of each is kept (a shared machine)."""
    local = InProcess(model, device, backend)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_daemon(model, Path(tmp), device, backend)
        try:
            client = Client(port)
            for _ in range(2):  # warm-up: the first runs of a torch model are slow
                client.take("warm", "bars", 2, "seed", 1)
                local.take(2)
            firsts = []
            for i in range(runs):
                t0, arrivals = client.take(f"f{i}", "bars", 1, "seed", 1)
                firsts.append(arrivals[0] - t0)
            d_first, d_chunk, l_first, l_chunk, encode = [], [], [], [], []
            for r in range(rounds):
                t0, arrivals = client.take(f"long{r}", "bars", bars, "seed", 1)
                d_first.append(arrivals[0] - t0)
                d_chunk.append(per_chunk(arrivals))
                t0, times, enc = local.take(bars)
                l_first.append(times[0] - t0)
                l_chunk.append(per_chunk(times))
                encode.append(enc)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    firsts.sort()
    return {"label": label, "first_median": statistics.median(firsts), "first_p90": firsts[int(0.9 * (len(firsts) - 1))],
            "runs": runs, "bars": bars, "rounds": rounds, "first_daemon": min(d_first), "first_local": min(l_first),
            "chunk_daemon": min(d_chunk), "chunk_local": min(l_chunk), "encode": min(encode)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="click,tiny", help="comma list: click, tiny (a MusicGen test model), or a path")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--bars", type=int, default=16, help="bars in the take used for per-chunk timing")
    p.add_argument("--rounds", type=int, default=3, help="alternating daemon / in-process takes; the best is kept")
    p.add_argument("--device", default="cpu", help="the daemon's and the in-process engine's device (cpu, cuda)")
    p.add_argument("--backend", default=None, choices=DECODE_BACKENDS,
                   help="MusicGen decoding backend (stemd serve --backend; default: the engine's)")
    args = p.parse_args()
    print(f"stemd daemon bench: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; TCP on 127.0.0.1, OSC 1.0 length-prefix framing; "
          "chunks are 2 s bars (120 BPM 4/4) of 48 kHz stereo float32 = 768 KiB")
    results = []
    for name in args.models.split(","):
        if name == "tiny":
            folder = Path(tempfile.mkdtemp(prefix="stemd-bench-tiny-"))
            r = subprocess.run(STEMD + ["make-test-model", str(folder), "--arch", "tiny"], capture_output=True, text=True)
            if r.returncode:
                print(f"tiny: skipped (make-test-model failed: {r.stderr.strip()[:200]})")
                continue
            results.append(bench(str(folder), f"MusicGen tiny test model, {args.device}", max(3, args.runs // 4),
                                 min(args.bars, 8), args.rounds, args.device, args.backend))
            shutil.rmtree(folder, ignore_errors=True)
        else:
            label = name if not args.backend else f"{name} ({args.device}, {args.backend})"
            results.append(bench(name, label, args.runs, args.bars, args.rounds, args.device, args.backend))
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    print()
    print("| model | generate -> first chunk, 1-bar takes (median / p90) | first bar of a long take: daemon / in "
          "process | per chunk: daemon / in process | daemon + transport per chunk | encode + frame a chunk |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {ms(r['first_median'])} / {ms(r['first_p90'])} ({r['runs']} runs) | "
              f"{ms(r['first_daemon'])} / {ms(r['first_local'])} | {ms(r['chunk_daemon'])} / {ms(r['chunk_local'])} "
              f"({r['bars']} bars, best of {r['rounds']}) | {ms(r['chunk_daemon'] - r['chunk_local'])} | "
              f"{ms(r['encode'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
