"""A take's sidecar (stemd.sidecar): one schema, bounded, and what a client adds; against a real daemon, the
/stemd/sidecar message before each /stemd/take over TCP and UDP, carrying the file's text exactly."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from daemon_fixtures import TcpClient
from stemd import osc
from stemd.licenses import card
from stemd.protocol import LIMITS, MAX_SIDECAR_BYTES, GenerateRequest
from stemd.sidecar import DELIVERY, MAX_BYTES, SidecarTooLarge, delivered, encode, take_sidecar
from stemd.timing import Grid

CLICK_INFO = {"model": "click", "device": "cpu", "dtype": "float32", "family": "click", "license": card("click")}


def sidecar_of(request: GenerateRequest, info: dict = CLICK_INFO) -> dict:
    return take_sidecar(request, 1, info, "metronome", file="x_v2.wav", sample_rate=request.sample_rate,
                        channels=request.channels, frames=1234, format="float32")


def test_the_schema_names_the_model_the_music_and_the_file():
    request = GenerateRequest("r1", prompt="glassy arps", bars=3, bpm="275/2", meter="7/8", seed=9, stem="keys",
                              variations=2, start_bar=4)
    meta = sidecar_of(request)
    assert (meta["model"], meta["model_name"], meta["family"], meta["license"]["name"], meta["commercial_use"]) == \
        ("click", "metronome", "click", "MIT (stemd)", True)
    assert (meta["prompt"], meta["stem"], meta["seed"], meta["variation"], meta["tempo"], meta["tempo_exact"],
            meta["meter"], meta["bars"], meta["start_bar"]) == ("glassy arps", "keys", 9, 1, 137.5, "275/2", "7/8", 3, 4)
    assert (meta["file"], meta["frames"], meta["format"], meta["request"]["variations"]) == ("x_v2.wav", 1234,
                                                                                            "float32", 2)
    assert "weights_sha256" not in meta and "note" not in meta      # click: no weights, not a test model
    tiny = sidecar_of(request, {**CLICK_INFO, "family": "musicgen", "weights_sha256": "ab" * 32, "test_model": True,
                                "license": card("musicgen", test_model=True)})
    assert tiny["weights_sha256"] == "ab" * 32 and tiny["commercial_use"] is False and "random" in tiny["note"]


def test_the_largest_request_stemd_accepts_makes_a_sidecar_under_its_bound():
    """Every string key at its longest, in the characters JSON spends most bytes on (a control character is
    six: \\u0001; a character outside the BMP four in UTF-8): still under MAX_BYTES, so a /stemd/sidecar
    always fits one UDP datagram and the documented 64 KiB."""
    longest = {}
    for ch in ("\x01", "\U0001f941"):
        request = GenerateRequest("r" * LIMITS["id_chars"][1], prompt=ch * LIMITS["prompt_chars"][1],
                                  key=ch * LIMITS["key_chars"][1],
                                  continuation_path=ch * LIMITS["continuation_path_chars"][1],
                                  stem="s" * 32, track="t" * 32, extract="e" * 32, bars=256, repaint="100-256",
                                  model="m" * 64, seed=2 ** 63 - 1, bpm="997/3", meter="63/32")
        text = encode(sidecar_of(request))
        longest[ch] = len(text.encode())
        assert json.loads(text)["prompt"] == ch * LIMITS["prompt_chars"][1]
    assert max(longest.values()) <= MAX_BYTES < MAX_SIDECAR_BYTES == 64 * 1024
    message = osc.encode_message("/stemd/sidecar", "r" * 128, 15, "x" * MAX_BYTES)
    assert len(message) <= 65507                                  # the largest UDP datagram


def test_a_sidecar_over_the_bound_is_refused_not_cut():
    request = GenerateRequest("r1", prompt="x")
    with pytest.raises(SidecarTooLarge) as e:
        encode(sidecar_of(request, {**CLICK_INFO, "notes": "n" * MAX_BYTES}))
    assert e.value.code == "internal"


def test_a_client_adds_only_its_delivery_and_guesses_nothing_it_was_not_sent():
    text = encode(sidecar_of(GenerateRequest("r1", prompt="dub chords", seed=3)))
    ours = delivered(text, {"client": "stemd bridge", "file": "mine.wav"})
    assert {k: v for k, v in ours.items() if k != DELIVERY} == json.loads(text)
    assert ours[DELIVERY] == {"client": "stemd bridge", "file": "mine.wav"}
    for received in (None, "not json", "[1, 2]", json.dumps({DELIVERY: {"x": 1}})):
        missing = delivered(received, {"client": "stemd bridge"})
        assert list(missing) == [DELIVERY] and "not known" in missing[DELIVERY]["missing"]


def test_the_daemon_sends_each_takes_sidecar_as_written_before_its_path_over_tcp_and_udp(daemon):
    tcp = TcpClient(daemon.port)
    tcp.send("/stemd/generate", "t1", "bars", 2, "bpm", 97, "meter", "7/8", "variations", 2, "prompt", "ünïcode",
             "seed", 5)
    over_tcp = tcp.until("/stemd/done", "t1")
    tcp.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(osc.encode_message("/stemd/generate", "u1", "bars", 1, "bpm", 97, "meter", "3/4"),
                 ("127.0.0.1", daemon.port))
        over_udp = []
        while not over_udp or over_udp[-1].address != "/stemd/done":
            over_udp.append(osc.decode(s.recvfrom(65536)[0]))
    for messages, rid, variations in ((over_tcp, "t1", 2), (over_udp, "u1", 1)):
        tail = [m for m in messages if m.address in ("/stemd/sidecar", "/stemd/take", "/stemd/done")]
        assert [(m.address, m.args[1] if len(m.args) > 1 else None) for m in tail] == \
            [(a, v) for v in range(variations) for a in ("/stemd/sidecar", "/stemd/take")] + [("/stemd/done", None)]
        for sidecar, take in zip(tail[0::2], tail[1::2]):
            assert sidecar.args[0] == rid and isinstance(sidecar.args[1], int)
            assert sidecar.args[2] == Path(take.args[2]).with_suffix(".json").read_text(encoding="utf-8")
    first = json.loads(over_tcp[[m.address for m in over_tcp].index("/stemd/sidecar")].args[2])
    assert (first["prompt"], first["frames"], first["seed"]) == ("ünïcode", Grid(97, "7/8").span_samples(0, 2, 48000),
                                                                 5)
