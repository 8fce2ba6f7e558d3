"""What `stemd serve --ray` adds: time to first bar and per-bar overhead through a Ray cluster, against a local
`stemd serve` in the same run.

    .venv/bin/python bench/cluster.py                          # click and a tiny MusicGen test model
    .venv/bin/python bench/cluster.py --models click --runs 20
    .venv/bin/python bench/cluster.py --ray HEAD:6379          # an existing cluster (one replica is used)

Without --ray it starts a local cluster on this machine (``ray.cluster_utils.Cluster``: a head without GPUs and one
node declaring one logical GPU), so the replica runs in a Ray worker process on this machine and every bar
crosses Ray's object transfer and the streaming handle. For each model it starts the front door
(``stemd serve --ray ADDRESS --ray-replicas 1``) and a local ``stemd serve`` with the same model, and
alternates takes between them ``--rounds`` times:

- first bar: wall time from sending /stemd/generate to having the first /stemd/chunk decoded at the client
  (median of --runs one-bar takes on each side, alternating);
- per bar: (last bar - first bar) / (bars - 1) of a --bars take on each side (best of the rounds: a shared
  machine); the cluster's per-bar overhead is the difference.

Both daemons run the engine the same way: one torch thread (the local daemon under OMP_NUM_THREADS=1, the replica
under the OMP_NUM_THREADS=1 Ray gives a one-CPU actor; its ready line says ``torch threads N``, printed here) and
the same MusicGen decoding backend (``--backend``, default eager: left to itself, each daemon measures the
backends when it loads the model and, on a loaded machine, two processes choose differently: ONNX Runtime's int8
step, with a thread pool of its own, in one and torch in the other ran 4x apart here). Chunks are
2 s bars (120 BPM 4/4) of 48 kHz stereo float32 = 768 KiB, as in bench/daemon.py.

The same engine can still run at different speeds in the two processes on a loaded machine, so each side's own
engine time is read from its log too (the replica's ``made bars 1..N of N in T s (the first after F s)``, the
local daemon's ``first bar F ms, total T ms``: per bar (T - F) / (N - 1), as the client's figure) and the cluster's
overhead is given both ways: the client's per-bar difference, and what each side adds to its own engine's per-bar
time (client per bar minus the daemon's own), which does not move with the engine's speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from daemon import STEMD, Client, per_chunk, serve  # noqa: E402  (bench/daemon.py)


def start(args: list, out: Path, name: str, timeout: float = 300) -> tuple[subprocess.Popen, int]:
    return serve(args, out / name, out / f"{name}.log", env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def bench(model: str, label: str, address: str, runs: int, bars: int, rounds: int, device: str = "cpu",
          backend: str = "eager") -> dict:
    engine = ["--model", model] + (["--backend", backend] if model != "click" else [])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        front, fport = start([*engine, "--ray", address, "--ray-replicas", "1"], out, "cluster")
        local, lport = start([*engine, "--device", device], out, "local")
        try:
            sides = {"cluster": Client(fport), "local": Client(lport)}
            for client in sides.values():   # warm-up: the model's first takes are slow, the replica's too
                for i in range(2):
                    client.take(f"warm{i}", "bars", 2, "seed", 1)
            firsts = {k: [] for k in sides}
            for i in range(runs):
                for k, client in sides.items():
                    t0, arrivals = client.take(f"f{i}", "bars", 1, "seed", 1)
                    firsts[k].append(arrivals[0] - t0)
            chunk = {k: [] for k in sides}
            for r in range(rounds):
                for k, client in sides.items():
                    t0, arrivals = client.take(f"long{r}", "bars", bars, "seed", 1)
                    chunk[k].append(per_chunk(arrivals))
        finally:
            stop(front)
            stop(local)
        logs = {k: (out / f"{k}.log").read_text(errors="replace") for k in ("cluster", "local")}
    own = engine_per_bar(logs, rounds, bars)
    threads = re.search(r"ready: device \S+, torch threads (\d+)", logs["cluster"])
    added = {k: min(c - o for c, o in zip(chunk[k], own[k])) for k in sides}
    return {"label": label, "runs": runs, "bars": bars, "rounds": rounds,
            "first_cluster": statistics.median(firsts["cluster"]), "first_local": statistics.median(firsts["local"]),
            "chunk_cluster": min(chunk["cluster"]), "chunk_local": min(chunk["local"]),
            "own_cluster": min(own["cluster"]), "own_local": min(own["local"]),
            "added_cluster": added["cluster"], "added_local": added["local"],
            "threads": threads.group(1) if threads else "- (no torch)"}


def engine_per_bar(logs: dict, rounds: int, bars: int) -> dict:
    """Each side's own seconds per bar after the first, for each --bars take (round order), from its log."""
    replica = {int(r): (float(t) - float(f)) / (bars - 1) for r, t, f in re.findall(
        r"request long(\d+) made bars 1\.\.\d+ of \d+ in ([\d.]+) s \(the first after ([\d.]+) s\)", logs["cluster"])}
    local = {int(r): (int(t) - int(f)) / 1000 / (bars - 1) for r, f, t in re.findall(
        r"request long(\d+) from .*first bar (\d+) ms, total (\d+) ms", logs["local"])}
    missing = [k for k, d in (("cluster", replica), ("local", local)) if sorted(d) != list(range(rounds))]
    if missing:
        raise SystemExit(f"bench/cluster.py: no engine time in the {' and '.join(missing)} log for every take")
    return {"cluster": [replica[r] for r in range(rounds)], "local": [local[r] for r in range(rounds)]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="click,tiny", help="comma list: click, tiny (a MusicGen test model), or a path")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="an existing cluster (default: a local one)")
    p.add_argument("--runs", type=int, default=10, help="one-bar takes on each side for the first bar")
    p.add_argument("--bars", type=int, default=8, help="bars in the take used for per-bar timing")
    p.add_argument("--rounds", type=int, default=3, help="alternating cluster / local takes; the best is kept")
    p.add_argument("--device", default="cpu", help="the local daemon's device (cuda on a GPU node; the replica's is "
                                                     "its own GPU where the cluster has GPUs)")
    p.add_argument("--backend", default="eager", help="MusicGen's decoding backend on both sides (default eager)")
    args = p.parse_args()
    cluster = None
    address = args.ray
    if address is None:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                                "include_dashboard": False})
        cluster.add_node(num_cpus=2, num_gpus=1)
        cluster.wait_for_nodes()
        address = cluster.address
    load = os.getloadavg()
    print(f"stemd cluster bench {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {platform.machine()} "
          f"{platform.processor() or ''}, {os.cpu_count()} cores, load average {load[0]:.1f}; Ray cluster at "
          f"{address}{' (local, on this machine: a head and one node with a logical GPU)' if cluster else ''}; "
          "TCP 127.0.0.1, chunks of 768 KiB (2 s bars, 48 kHz stereo float32)")
    results = []
    try:
        for name in args.models.split(","):
            if name == "tiny":
                folder = Path(tempfile.mkdtemp(prefix="stemd-bench-tiny-"))
                r = subprocess.run(STEMD + ["make-test-model", str(folder), "--arch", "tiny"], capture_output=True,
                                   text=True)
                if r.returncode:
                    print(f"tiny: skipped (make-test-model failed: {r.stderr.strip()[:200]})")
                    continue
                results.append(bench(str(folder), f"MusicGen tiny test model (random weights), {args.device}, "
                                     f"{args.backend}", address, max(3, args.runs // 2), args.bars, args.rounds,
                                     args.device, args.backend))
                shutil.rmtree(folder, ignore_errors=True)
            else:
                results.append(bench(name, name, address, args.runs, args.bars, args.rounds, args.device,
                                     args.backend))
    finally:
        if cluster is not None:
            cluster.shutdown()
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print()
    print("| model | first bar, 1-bar takes (median): cluster / local | per bar at the client: cluster / local "
          "| the engine's own per bar: replica / local daemon | each side adds to its engine: cluster / local "
          "| cluster adds per bar | torch threads: replica / local |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {ms(r['first_cluster'])} / {ms(r['first_local'])} ({r['runs']} runs each) | "
              f"{ms(r['chunk_cluster'])} / {ms(r['chunk_local'])} ({r['bars']} bars, best of {r['rounds']}) | "
              f"{ms(r['own_cluster'])} / {ms(r['own_local'])} | {ms(r['added_cluster'])} / {ms(r['added_local'])} | "
              f"{ms(r['added_cluster'] - r['added_local'])} | {r['threads']} / 1 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
