"""The stemd plugin's packet decoder under libFuzzer, seeded with a real daemon's traffic.

``make -C plugin_host/plugin fuzz`` builds build/plugin/fuzz_packets (clang, -fsanitize=fuzzer,address,
undefined): every byte a daemon can send reaches the OSC decoder, the OSC 1.0 framing reader and the
link's event checks (plugin_host/plugin/fuzz_packets.cpp). The seed corpus is what a real
``stemd serve --model click`` sent back over TCP for one generate (accepted, progress, chunks, sidecars,
takes, done) and for ``/stemd/models``; libFuzzer then runs 100,000 mutated inputs under AddressSanitizer.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stemd import osc
from stemd.framing import LengthPrefixDecoder, frame_length_prefixed

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = ROOT / "plugin_host" / "plugin"
FUZZER = ROOT / "build" / "plugin" / "fuzz_packets"

# The request fuzz_packets.cpp opens before feeding each input (seed_request there): small bars
# (999 BPM 1/32 at 8 kHz is 60 frames a bar) keep the seed inputs, and so each run, small.
REQUEST = ["fuzz", "prompt", "click", "bars", 2, "variations", 2, "bpm", "999", "meter", "1/32",
           "start_bar", 2, "sample_rate", 8000, "channels", 2, "seed", 1]


@pytest.fixture(scope="module")
def fuzzer() -> Path:
    """build/plugin/fuzz_packets, built (or a skip saying what is missing)."""
    if not shutil.which("clang++") or not shutil.which("make"):
        pytest.skip("the fuzzer needs clang++ and make (Debian: clang)")
    # Makefile.link alone: the plugin's Makefile includes it (`make -C plugin_host/plugin fuzz`) but needs DPF
    proc = subprocess.run(["make", "-C", str(PLUGIN_SRC), "-f", "Makefile.link", "fuzz"], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        if "libclang_rt" in proc.stderr:
            pytest.skip("clang's sanitizer and libFuzzer runtimes are missing (Debian: libclang-rt-14-dev)")
        raise AssertionError(proc.stdout + proc.stderr)
    return FUZZER


def _record(port: int) -> list[bytes]:
    """The framed packets a daemon sends back for /stemd/models and one generate, as they came."""
    decoder = LengthPrefixDecoder()
    packets: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(frame_length_prefixed(osc.encode_message("/stemd/models")))
        sock.sendall(frame_length_prefixed(osc.encode_message("/stemd/generate", *REQUEST)))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not select.select([sock], [], [], 1.0)[0]:
                continue
            data = sock.recv(1 << 16)
            assert data, "the daemon closed the connection"
            for packet in decoder.feed(data):
                packets.append(packet)
                if osc.decode(packet).address in ("/stemd/done", "/stemd/error"):
                    return packets
    raise AssertionError(f"no /stemd/done in 60 s; got {[osc.decode(p).address for p in packets]}")


def _run_fuzzer(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Runs the fuzzer as the forked child of a shell, not as a child of this process.

    libFuzzer's -rss_limit_mb reads the process's peak RSS (getrusage's ru_maxrss), and Linux carries a
    peak across execve: a fuzzer that this pytest process starts directly begins with pytest's own peak.
    That is the likely cause of the one CI run that stopped at 5,607 MB from input #3,661 (libFuzzer's
    first RSS check, about a second in, in a pytest process that had run the suite before it), while
    reruns peaked at 523 MB. A process the shell forks starts its count afresh. Measured: from a Python
    parent holding 2.6 GB, the fuzzer run directly stops with "out-of-memory (used: 2614Mb; limit:
    2048Mb)" at once; through the shell it starts at 46 MB.
    """
    return subprocess.run([*FORKED_BY_A_SHELL, *command], capture_output=True, text=True, **kwargs)


# `sh -c 'CMD; exit $?'` forks CMD (its last command is the exit), so CMD's peak RSS is its own
FORKED_BY_A_SHELL = ["sh", "-c", '"$@"; exit $?', "sh"]

# A parent that holds 600 MB, then runs the command in argv[2:] after the prefix in argv[1] (JSON).
_BIG_PARENT = """
import json, subprocess, sys
held = b"\\1" * (600 << 20)
proc = subprocess.run(json.loads(sys.argv[1]) + sys.argv[2:], capture_output=True, text=True)
sys.stdout.write(proc.stdout + proc.stderr)
sys.exit(proc.returncode)
"""


def test_the_fuzzers_rss_limit_counts_its_own_memory_not_its_parents(fuzzer, tmp_path):
    # Under a 400 MB limit, from a parent that has held 600 MB: run straight from it, the fuzzer stops at
    # libFuzzer's first RSS check; forked by a shell, it runs its 3 s (its own peak is far below 400 MB
    # with ASan's quarantine at 16 MB).
    command = [str(fuzzer), "-max_total_time=3", "-runs=100000000", "-max_len=256", "-rss_limit_mb=400",
               "-malloc_limit_mb=400", str(tmp_path)]
    env = {**os.environ, "ASAN_OPTIONS": "quarantine_size_mb=16"}

    def from_big_parent(prefix: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _BIG_PARENT, json.dumps(prefix), *command],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)

    direct = from_big_parent([])
    assert direct.returncode != 0 and "libFuzzer: out-of-memory" in direct.stdout, direct.stdout[-3000:]
    forked = from_big_parent(FORKED_BY_A_SHELL)
    assert forked.returncode == 0 and "out-of-memory" not in forked.stdout, forked.stdout[-3000:]
    assert "Done" in forked.stdout, forked.stdout[-3000:]


def test_fuzzer_runs_100000_inputs_from_real_daemon_traffic_without_a_crash(fuzzer, start_daemon, tmp_path):
    daemon = start_daemon()
    packets = _record(daemon.port)
    addresses = [osc.decode(p).address for p in packets]
    assert addresses[-1] == "/stemd/done", addresses
    for address in ("/stemd/models/reply", "/stemd/accepted", "/stemd/progress", "/stemd/chunk",
                    "/stemd/sidecar", "/stemd/take"):
        assert address in addresses, (address, addresses)

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stream = b"".join(frame_length_prefixed(p) for p in packets)
    (corpus / "stream.bin").write_bytes(stream)
    for k, packet in enumerate(packets):
        (corpus / f"packet{k:02d}.bin").write_bytes(frame_length_prefixed(packet))
    (corpus / "oversized.bin").write_bytes(struct.pack(">I", 0x7FFFFFF0) + packets[0][:64])

    # The recorded stream reads as good traffic: every event delivered, the request closed, nothing dropped
    # (so the mutations start from inputs that reach the chunk, sidecar and take checks).
    traced = _run_fuzzer([str(fuzzer), str(corpus / "stream.bin")], timeout=120,
                         env={**os.environ, "STEMD_FUZZ_TRACE": "1"})
    assert traced.returncode == 0, traced.stderr[-3000:]
    events = len(packets)  # each packet is one event: models, accepted, progress..., chunks, sidecars, takes, done
    assert f"stemd-fuzz-trace events={events} alive=1 open=0 why=\n" in traced.stderr, traced.stderr[-3000:]

    # libFuzzer's RSS limit at its default, 2,048 MB. The fuzzer's peak here is about 450 MB, most of it
    # AddressSanitizer's quarantine of freed blocks (256 MB by default; quarantine_size_mb=0 gives 53 MB).
    proc = _run_fuzzer(
        [str(fuzzer), "-runs=100000", "-seed=1", "-max_len=8192", "-timeout=30", "-rss_limit_mb=2048",
         "-malloc_limit_mb=2048", "-print_final_stats=1", str(corpus)],
        timeout=1200, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "ERROR: AddressSanitizer" not in log and "runtime error:" not in log, log[-4000:]
    assert "Done 100000 runs" in log, log[-4000:]
    assert "out-of-memory" not in log, log[-4000:]
