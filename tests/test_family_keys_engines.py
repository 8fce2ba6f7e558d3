"""Every engine refuses exactly the family-only keys that stemd/families.py's table refuses for its family, and
no other: the daemon's dispatch and the engines read one table, so a key added to one cannot be missed by the
other. Each family's real engine (click; MusicGen, Stable Audio 3 and ACE-Step as test models with random
weights, built here) gets a request with one key set, built and turned into a spec the way the daemon does."""

from __future__ import annotations

import io
import re

import pytest

from diffusion_fixtures import ACE, SA3, engines, pipelines  # noqa: F401  (fixtures)
from stemd.families import FAMILY_KEYS, FAMILY_ONLY, check_keys
from stemd.protocol import GenerateRequest, ProtocolError

pytest.importorskip("torch")
pytest.importorskip("diffusers")


def one_note_smf() -> bytes:
    """A Standard MIDI File with one quarter-note A2: a guide that fits a bar of 3/4."""
    import mido

    smf = mido.MidiFile(type=1, ticks_per_beat=480)
    smf.tracks.append(mido.MidiTrack([mido.Message("note_on", note=45, velocity=100, time=0),
                                      mido.Message("note_off", note=45, time=480)]))
    out = io.BytesIO()
    smf.save(file=out)
    return out.getvalue()


#: a value for each family-only key that the protocol takes (one bar of 97 BPM 3/4)
VALUES = {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "guidance": 3.0, "steps": 2, "strength": 0.5,
          "track": "drums", "extract": "vocals", "repaint": "1-1", "guide": one_note_smf(), "chords": "Am",
          "guide_strength": 0.5}


@pytest.fixture(scope="module")
def by_family(engines, tiny, tmp_path_factory):  # noqa: F811
    """``{family: engine}`` for every family of the table: a family added to it without an engine here fails."""
    from stemd.models.click import ClickEngine
    from stemd.models.musicgen.engine import MusicGenEngine
    from stemd.models.musicgen.testmodel import write_test_model

    def musicgen(folder):
        return MusicGenEngine.load(str(folder), device="cpu", dtype="float32")

    makers = {"click": ClickEngine, "musicgen": lambda: musicgen(tiny),
              "musicgen-melody": lambda: musicgen(write_test_model(tmp_path_factory.mktemp("melody"),
                                                                   "musicgen-melody-tiny")),
              "stable-audio-3": lambda: engines[SA3], "ace-step": lambda: engines[ACE]}
    return {family: makers[family]() for family in FAMILY_KEYS}


def engine_refusal(engine, request: GenerateRequest) -> str:
    """The engine's ``unsupported_key`` message when it starts ``request``'s take ("" when it starts it)."""
    from stemd.daemon.takeio import spec_from_request

    try:
        engine.stream(spec_from_request(request, engine)).close()
    except ProtocolError as e:
        if e.code == "bad_arguments":   # a key taken only with another (track: over given audio): dispatch says so too
            with pytest.raises(ProtocolError, match=f"^bad_arguments: {re.escape(e.message)}$"):
                check_keys(request, engine.info()["family"], engine.name)
            return ""
        assert e.code == "unsupported_key", e
        return e.message
    return ""


def test_a_value_for_every_family_only_key_and_each_engine_is_of_its_family(by_family):
    assert set(VALUES) == set(FAMILY_ONLY)
    assert {family: engine.info()["family"] for family, engine in by_family.items()} == {f: f for f in by_family}


@pytest.mark.parametrize("family", sorted(FAMILY_KEYS))
def test_each_engine_refuses_what_the_table_refuses_and_starts_what_it_takes(by_family, family):
    engine = by_family[family]
    for key in FAMILY_ONLY:
        request = GenerateRequest("k1", bars=1, bpm=97, meter="3/4", **{key: VALUES[key]})
        refused = engine_refusal(engine, request)
        if key in FAMILY_KEYS[family]:
            assert refused == "", f"{family}'s engine refuses {key}, which the table gives it: {refused}"
        else:
            with pytest.raises(ProtocolError) as dispatch:
                check_keys(request, family, engine.name)
            assert refused == dispatch.value.message, f"{family}'s engine and dispatch differ on {key}"
