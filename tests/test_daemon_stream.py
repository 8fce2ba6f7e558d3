"""A real `stemd serve` streams takes over TCP: bars in order, on the grid, exactly one bar each."""

import json
import time
from pathlib import Path

import numpy as np
import soundfile
from pythonosc.tcp_client import SimpleTCPClient

from daemon_fixtures import TcpClient
from stemd.protocol import Chunk
from stemd.timing import Grid, Meter, Tempo


def collect_python_osc(client: SimpleTCPClient, timeout: float = 30.0) -> list:
    """python-osc's get_messages reads until a read times out: poll with a short one."""
    messages: list = []
    deadline = time.monotonic() + timeout
    while not any(m.address in ("/stemd/done", "/stemd/error") for m in messages):
        assert time.monotonic() < deadline, f"no done within {timeout} s; got {[m.address for m in messages]}"
        messages += list(client.get_messages(0.2))
    return messages


def test_python_osc_client_streams_a_four_bar_take_bar_by_bar(daemon):
    client = SimpleTCPClient("127.0.0.1", daemon.port)  # OSC 1.1 SLIP framing: python-osc's default
    try:
        client.send_message("/stemd/generate", ["take-1", "bars", 4, "bpm", 137.5, "start_bar", 8,
                                                "prompt", "dusty drums"])
        messages = collect_python_osc(client)
    finally:
        client.close()
    addresses = [m.address for m in messages]
    assert addresses[0] == "/stemd/accepted" and addresses[-1] == "/stemd/done", addresses
    chunks = [m.params for m in messages if m.address == "/stemd/chunk"]
    grid, rate = Grid(Tempo(137.5), Meter(4, 4)), 48000
    assert [c[2] for c in chunks] == [0, 1, 2, 3]                    # in order
    for i, (rid, variation, bar_index, start, c_rate, channels, blob) in enumerate(chunks):
        assert (rid, variation, c_rate, channels) == ("take-1", 0, rate, 2)
        assert start == grid.bar_start_sample(8 + i, rate)            # on the DAW's bar
        assert len(blob) == grid.bar_length_samples(8 + i, rate) * channels * 4  # exactly one bar
    # the first bar starts with the accented click, on its first sample
    first = np.frombuffer(chunks[0][6], "<f4").reshape(-1, 2)
    assert abs(first[0, 0] - 0.9) < 1e-6
    # done comes after the take's path, and the file on disk is the bars that were streamed
    takes = [m.params for m in messages if m.address == "/stemd/take"]
    assert addresses.index("/stemd/take") < addresses.index("/stemd/done")
    on_disk, file_rate = soundfile.read(takes[0][2], dtype="float32")
    streamed = np.concatenate([np.frombuffer(c[6], "<f4").reshape(-1, 2) for c in chunks])
    assert file_rate == rate and np.array_equal(on_disk, streamed)


def test_length_prefixed_client_gets_variations_at_its_rate_and_meter(daemon):
    client = TcpClient(daemon.port)  # OSC 1.0 length-prefix framing, as liblo speaks it
    client.send("/stemd/generate", "odd", "bars", 3, "bpm", "275/2", "meter", "7/8", "sample_rate", 44100,
                "channels", 1, "variations", 2, "seed", 7)
    messages = client.until("/stemd/done", "odd")
    chunks = [Chunk.from_args(m.args) for m in messages if m.address == "/stemd/chunk"]
    grid = Grid(Tempo("275/2"), Meter(7, 8))
    assert [(c.bar_index, c.variation) for c in chunks] == [(b, v) for b in range(3) for v in range(2)]
    for c in chunks:
        assert c.audio.shape == (1, grid.bar_length_samples(c.bar_index, 44100))
        assert c.start_sample == grid.bar_start_sample(c.bar_index, 44100) and c.sample_rate == 44100
    assert len([m for m in messages if m.address == "/stemd/take"]) == 2
    client.close()


def test_udp_clients_get_the_take_path_and_no_chunks(daemon):
    import socket

    from stemd import osc

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(osc.encode_message("/stemd/generate", "u1", "bars", 2), ("127.0.0.1", daemon.port))
        got = []
        while not got or got[-1].address != "/stemd/done":
            got.append(osc.decode(s.recvfrom(65536)[0]))
    addresses = [m.address for m in got]
    assert "/stemd/chunk" not in addresses and addresses[0] == "/stemd/accepted"
    take = next(m for m in got if m.address == "/stemd/take")
    audio, rate = soundfile.read(take.args[2], dtype="float32")
    assert rate == 48000 and audio.shape == (2 * 96000, 2)
    assert take.args[2].startswith(str(daemon.out.resolve()))


def test_continuation_audio_travels_as_a_blob_over_tcp_and_as_a_path(start_daemon, tmp_path):
    daemon = start_daemon("--input-root", str(tmp_path))   # continuation_path: files in --input-root only
    one_second = np.zeros((48000, 2), dtype="<f4")
    one_second[::4800] = 0.5
    client = TcpClient(daemon.port)
    client.send("/stemd/generate", "blob", "bars", 1, "continuation", one_second.tobytes())
    assert client.until("/stemd/done", "blob")[-1].address == "/stemd/done"
    path = tmp_path / "selection.wav"
    soundfile.write(path, one_second, 48000, subtype="FLOAT")
    client.send("/stemd/generate", "path", "bars", 1, "continuation_path", str(path))
    messages = client.until("/stemd/done", "path")
    take = next(m.args[2] for m in messages if m.address == "/stemd/take")
    sidecar = json.loads(Path(take).with_suffix(".json").read_text())
    assert sidecar["request"]["continuation_path"] == str(path)


def test_take_names_never_leave_the_output_folder(daemon):
    client = TcpClient(daemon.port)
    client.send("/stemd/generate", "esc", "bars", 1, "prompt", "../../../../tmp/evil/..//etc/passwd")
    take = next(m.args[2] for m in client.until("/stemd/done", "esc") if m.address == "/stemd/take")
    assert Path(take).resolve().parent == daemon.out.resolve()
    assert Path(take).name.startswith("tmp-evil-etc-passwd_bar001")
