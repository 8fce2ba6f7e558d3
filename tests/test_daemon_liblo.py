"""liblo's own tools talk to a real `stemd serve`: oscsend over UDP and TCP, oscdump receives replies."""

import os
import select
import shutil
import socket
import subprocess
import time

import pytest


pytestmark = pytest.mark.skipif(not (shutil.which("oscsend") and shutil.which("oscdump")),
                                reason="liblo-tools (oscsend, oscdump) is not installed")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def oscdump():
    """A real oscdump on a free UDP port; yields (port, read_lines)."""
    port = free_udp_port()
    proc = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, start_new_session=True)
    time.sleep(0.3)
    text = [b""]

    def read_until(pattern: str, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while pattern.encode() not in text[0]:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                raise AssertionError(f"oscdump never printed {pattern!r}; it printed {text[0]!r}")
            text[0] += os.read(proc.stdout.fileno(), 65536)
        return text[0].decode().splitlines(keepends=True)

    yield port, read_until
    proc.kill()
    proc.wait(5)


def oscsend(url: str, address: str, types: str, *args) -> None:
    subprocess.run(["oscsend", url, address, types, *map(str, args)], check=True, timeout=10)


def test_oscsend_over_udp_and_oscdump_receives_the_replies(daemon, oscdump):
    dump_port, read_until = oscdump
    url = f"osc.udp://127.0.0.1:{daemon.port}"
    oscsend(url, "/stemd/ping", "si", "reply_port", dump_port)
    oscsend(url, "/stemd/generate", "ssisfsssi", "u1", "bars", 2, "bpm", 137.5, "prompt", "dusty drums",
            "reply_port", dump_port)
    lines = read_until("/stemd/done")
    text = "".join(lines)
    assert '/stemd/pong sssssi "0.1.0" "click" "cpu" "click" "MIT (stemd)" 1' in text
    assert '/stemd/accepted s "u1"' in text
    take_line = next(line for line in lines if "/stemd/take" in line)
    path = take_line.split('"')[-2]
    assert path.startswith(str(daemon.out.resolve())) and path.endswith(".wav")
    assert (daemon.out / path.rsplit("/", 1)[-1]).exists()


def test_oscsend_errors_reach_oscdump_with_their_codes(daemon, oscdump):
    dump_port, read_until = oscdump
    url = f"osc.udp://127.0.0.1:{daemon.port}"
    oscsend(url, "/stemd/generate", "ssisi", "bad", "bars", 0, "reply_port", dump_port)
    oscsend(url, "/stemd/nope", "si", "reply_port", dump_port)
    text = "".join(read_until("unknown_address"))
    assert '"bad" "out_of_range" "bars must be 1..256, got 0"' in text


def test_oscsend_over_tcp_reaches_the_daemon(daemon, oscdump):
    # liblo's TCP sends OSC 1.0 length-prefixed packets. oscsend cannot read replies and hangs up at
    # once, so the proof is what the daemon did: it decoded the generate sent over osc.tcp:// and ran
    # (or, when oscsend left first, cancelled) it: its per-request log line names the TCP client.
    oscsend(f"osc.tcp://127.0.0.1:{daemon.port}", "/stemd/generate", "ssi", "over-tcp", "bars", 1)
    oscsend(f"osc.tcp://127.0.0.1:{daemon.port}", "/stemd/ping", "")
    daemon.wait_log("request over-tcp from tcp:127.0.0.1")
    assert "bad_packet" not in daemon.log and "bad_framing" not in daemon.log
    # and it still answers a UDP peer afterwards
    dump_port, read_until = oscdump
    oscsend(f"osc.udp://127.0.0.1:{daemon.port}", "/stemd/ping", "si", "reply_port", dump_port)
    assert "/stemd/pong" in "".join(read_until("/stemd/pong"))


def test_oscsend_asks_for_the_models_and_a_take_by_model_name(start_daemon, tiny, oscdump):
    from stemd.models.backend_plan import planned_dtype

    daemon = start_daemon("--model", f"tiny={tiny}", "--device", "cpu")
    dtype = planned_dtype("musicgen", "cpu", None)     # bfloat16 on CPUs that compute in it, else float32
    dump_port, read_until = oscdump
    url = f"osc.udp://127.0.0.1:{daemon.port}"
    oscsend(url, "/stemd/models", "si", "reply_port", dump_port)
    text = "".join(read_until("/stemd/models/reply"))
    assert ('/stemd/models/reply ississisisssissisis 2 "click" "click" 1 "cpu" "float32" 0 "MIT (stemd)" 1 "" '
            f'"tiny" "musicgen" 0 "" "{dtype}" 0 "CC-BY-NC-4.0" 0 ""') in text
    oscsend(url, "/stemd/generate", "ssssisi", "t1", "model", "tiny", "bars", 1, "reply_port", dump_port)
    read_until('/stemd/done s "t1"', timeout=120)
    oscsend(url, "/stemd/generate", "ssssi", "t2", "model", "drums", "reply_port", dump_port)
    assert '"t2" "unknown_model" "drums: models here are click, tiny"' in "".join(read_until("unknown_model"))


def test_a_liblo_tcp_client_receives_a_whole_48k_stereo_take_in_parts_under_its_largest_message(daemon):
    # liblo takes messages of at most 32 KiB by default; one bar of 48 kHz stereo float32 is about 750 KiB
    # (here 97 BPM 7/8: 2.16 s). The client says so (max_message) and gets each bar in parts under it.
    liblo = pytest.importorskip("pyliblo3")
    import numpy as np
    import soundfile

    from stemd.timing import Grid

    got = []
    server = liblo.Server(proto=liblo.TCP)
    server.add_method(None, None, lambda path, args, types, src: got.append((path, types, args)))
    target = liblo.Address("127.0.0.1", daemon.port, liblo.TCP)
    server.send(target, "/stemd/generate", "lib", "bars", 2, "bpm", 97, "meter", "7/8", "seed", 3,
                "max_message", 32768)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(p == "/stemd/done" for p, _t, _a in got):
        server.recv(100)
    addresses = [p for p, _t, _a in got]
    assert addresses[0] == "/stemd/accepted" and addresses[-1] == "/stemd/done", addresses[:5]
    assert "/stemd/chunk" not in addresses
    parts = [a for p, _t, a in got if p == "/stemd/chunk/part"]
    grid = Grid(97, "7/8")
    bars = []
    for bar in (0, 1):
        mine = [a for a in parts if a[2] == bar]
        assert [a[3] for a in mine] == list(range(mine[0][4])) and mine[0][4] > 1    # part, parts
        assert mine[0][5] == grid.bar_start_sample(bar, 48000)
        audio = np.concatenate([np.frombuffer(bytes(a[8]), "<f4").reshape(-1, 2) for a in mine])
        assert [a[5] for a in mine] == list(np.cumsum([0] + [len(bytes(a[8])) // 8 for a in mine[:-1]])
                                            + grid.bar_start_sample(bar, 48000))
        assert len(audio) == grid.bar_length_samples(bar, 48000)
        bars.append(audio)
    take = next(a for p, _t, a in got if p == "/stemd/take")[2]
    on_disk, rate = soundfile.read(take, dtype="float32", always_2d=True)
    assert rate == 48000 and np.array_equal(np.concatenate(bars), on_disk)   # the whole take, sample for sample
