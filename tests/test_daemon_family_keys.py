"""A key its model's family lacks is refused when the request arrives (``unsupported_key``, never
``/stemd/accepted``), by a real ``stemd serve``, for the click engine and for models not loaded yet (the
daemon knows every model's family from its start). The MusicGen and ACE-Step models here are test models:
the real architectures with random weights, built here."""

from __future__ import annotations

import numpy as np
import pytest

from daemon_fixtures import TcpClient
from diffusion_fixtures import written
from stemd.families import FAMILY_KEYS, FAMILY_ONLY, keys_set
from stemd.protocol import GenerateRequest

BAD_FOR_CLICK = [("strength", 0.5), ("steps", 4), ("track", "drums"), ("guidance", 3.0), ("temperature", 0.7),
                 ("top_k", 50), ("top_p", 0.9), ("extract", "vocals"), ("repaint", "1-1")]


def replies_to(client: TcpClient, rid: str, *keys) -> list:
    """Every reply to a generate up to its error or accept, and what else came before a ping's pong."""
    client.send("/stemd/generate", rid, "bars", 1, "bpm", 97, "meter", "7/8", *keys)
    client.send("/stemd/ping")
    return [m for m in client.until("/stemd/pong") if m.address != "/stemd/pong"]


def test_every_family_only_key_is_in_the_table_and_set_only_away_from_its_default():
    assert set(FAMILY_ONLY) == set().union(*FAMILY_KEYS.values())
    assert keys_set(GenerateRequest("r", temperature=1.0, top_k=250, top_p=0.0)) == []
    assert keys_set(GenerateRequest("r", temperature=0.5, guidance=1.0, steps=8)) == ["temperature", "guidance",
                                                                                      "steps"]


@pytest.mark.parametrize("key, value", BAD_FOR_CLICK)
def test_the_click_engine_refuses_what_it_lacks_before_accepting(daemon, key, value):
    client = TcpClient(daemon.port)
    got = replies_to(client, "c1", key, value)
    assert [(m.address, m.args[:2]) for m in got] == [("/stemd/error", ("c1", "unsupported_key"))]
    assert f"click (click) has no {key}" in got[0].args[2]
    # the same request without it is made; a token key at its default is no key set
    got = replies_to(client, "c2", "temperature", 1.0, "top_k", 250)
    assert got[0].address == "/stemd/accepted"
    assert client.until("/stemd/done", "c2")[-1].address == "/stemd/done"
    client.close()


@pytest.fixture(scope="module")
def acestep(tmp_path_factory):
    return written(tmp_path_factory, "acestep-tiny")


def test_models_not_loaded_yet_refuse_other_families_keys_at_once_and_stay_unloaded(start_daemon, tiny, acestep):
    daemon = start_daemon("--model", f"ace={acestep}", "--model", f"tiny={tiny}", "--device", "cpu", model="click")
    client = TcpClient(daemon.port)
    for rid, model, keys, lacking in (("a1", "ace", ("top_k", 50), "top_k"),            # MusicGen's
                                      ("a2", "ace", ("temperature", 0.5), "temperature"),
                                      ("a3", "ace", ("strength", 0.5), "strength"),     # Stable Audio 3's
                                      ("t1", "tiny", ("steps", 4), "steps"),            # a diffusion model's
                                      ("t2", "tiny", ("repaint", "1-1"), "repaint")):   # ACE-Step's
        got = replies_to(client, rid, "model", model, *keys)
        assert [(m.address, m.args[:2]) for m in got] == [("/stemd/error", (rid, "unsupported_key"))], got
        assert f"{model} (" in got[0].args[2] and f"has no {lacking}" in got[0].args[2]
    client.send("/stemd/models")
    reply = client.until("/stemd/models/reply")[-1].args
    assert [reply[1 + 9 * i: 4 + 9 * i] for i in range(3)] == [
        ("click", "click", 1), ("ace", "ace-step", 0), ("tiny", "musicgen", 0)]     # nothing was loaded
    client.close()


def test_a_repaint_outside_the_take_is_refused_with_its_bars_before_accepting(start_daemon, acestep):
    # ACE-Step takes repaint (not loaded here: the protocol refuses before the model is ever asked)
    daemon = start_daemon("--model", f"ace={acestep}", "--device", "cpu", model="click")
    client = TcpClient(daemon.port)
    for rid, bars in (("r1", "0-2"), ("r2", "3-2"), ("r3", "2-4"), ("r4", "4-4")):
        client.send("/stemd/generate", rid, "model", "ace", "bars", 3, "bpm", 97, "meter", "3/4", "repaint", bars,
                    "continuation", np.zeros(2 * 4800, "<f4").tobytes())
        client.send("/stemd/ping")
        got = [m for m in client.until("/stemd/pong") if m.address != "/stemd/pong"]
        assert [(m.address, m.args[:2]) for m in got] == [("/stemd/error", (rid, "out_of_range"))], got
        assert f"repaint '{bars}'" in got[0].args[2] and "1..3" in got[0].args[2]
    client.send("/stemd/models")
    assert client.until("/stemd/models/reply")[-1].args[10:13] == ("ace", "ace-step", 0)    # never loaded
    client.close()
