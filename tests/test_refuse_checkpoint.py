"""A request its model cannot do is refused when it arrives, before ``/stemd/accepted``, whether the model is loaded
or not: the daemon reads which components each checkpoint holds and its longest take when it locates it
(``model_index.json`` and config files, no weights loaded). Here ACE-Step's cover of a guide, which needs the audio
tokenizer and detokenizer, on an ACE-Step test model (the real architecture with random weights, built here) saved
without them; takes longer than a model makes; keys that make no task together. At 97 BPM 3/4 and 7/8 (and 83 BPM
where a long take needs it)."""

from __future__ import annotations

import numpy as np
import pytest

from daemon_fixtures import TcpClient
from diffusion_fixtures import written
from stemd.families import refuse_missing
from stemd.protocol import ProtocolError

TOKENIZER = ("audio_tokenizer", "audio_token_detokenizer")
COVER = ("chords", "Am | F | C")


@pytest.fixture(scope="module")
def no_tokenizer(tmp_path_factory):
    return written(tmp_path_factory, "acestep-tiny", without=TOKENIZER)


def replies_to(client: TcpClient, rid: str, meter: str, *keys) -> list:
    """Every reply to a 3-bar generate at 97 BPM up to what a ping sent after it gets."""
    client.send("/stemd/generate", rid, "bars", 3, "bpm", 97, "meter", meter, *keys)
    client.send("/stemd/ping")
    return [m for m in client.until("/stemd/pong") if m.address != "/stemd/pong"]


def assert_refused_cover(got: list, rid: str, model: str) -> None:
    assert [(m.address, m.args[:2]) for m in got] == [("/stemd/error", (rid, "unsupported_key"))], got
    assert got[0].args[2].startswith(f"{model} (ace-step) has no audio_tokenizer, audio_token_detokenizer, which a "
                                     "cover of a guide needs"), got[0].args[2]


def test_the_checkpoint_folder_says_which_components_it_holds(no_tokenizer):
    from stemd.models.diffusion.loading import pipeline_parts

    held = pipeline_parts(no_tokenizer)
    assert {"transformer", "vae", "text_encoder", "condition_encoder"} <= held
    assert not held & set(TOKENIZER)
    assert pipeline_parts(None) is None and pipeline_parts(no_tokenizer / "vae") is None    # not a pipeline


def test_a_cover_is_refused_only_where_a_part_it_needs_is_missing():
    with pytest.raises(ProtocolError, match="m \\(ace-step\\) has no audio_token_detokenizer, which") as e:
        refuse_missing(["guide"], "ace-step", "m", {"audio_tokenizer", "vae"}, "r1")
    assert (e.value.code, e.value.request_id) == ("unsupported_key", "r1")
    refuse_missing(["chords", "track"], "ace-step", "m", {"vae"})      # lego over the guide needs no tokenizer
    refuse_missing(["chords"], "ace-step", "m", set(TOKENIZER))         # a checkpoint that has them
    refuse_missing(["chords"], "ace-step", "m", None)                   # parts unknown: the engine checks
    refuse_missing(["chords"], "stable-audio-3", "m", {"vae"})          # another family's task


def test_a_loaded_checkpoint_without_its_audio_tokenizer_refuses_a_cover_before_accepting(start_daemon, no_tokenizer):
    daemon = start_daemon("--device", "cpu", model=str(no_tokenizer))     # the first model loads before it listens
    client = TcpClient(daemon.port)
    client.send("/stemd/models")
    model = client.until("/stemd/models/reply")[-1].args
    assert model[2:4] == ("ace-step", 1)                                  # loaded
    for rid, meter in (("c1", "3/4"), ("c2", "7/8")):
        assert_refused_cover(replies_to(client, rid, meter, *COVER), rid, model[1])
    # the lego task over the same guide needs no tokenizer: accepted (then cancelled)
    got = replies_to(client, "l1", "7/8", *COVER, "track", "bass")
    assert got[0].address == "/stemd/accepted", got
    client.send("/stemd/cancel", "l1")
    client.close()


def test_a_checkpoint_not_loaded_yet_refuses_a_cover_before_accepting_and_stays_unloaded(start_daemon, no_tokenizer):
    daemon = start_daemon("--model", f"ace={no_tokenizer}", "--device", "cpu", model="click")
    client = TcpClient(daemon.port)
    for rid, meter in (("c1", "3/4"), ("c2", "7/8")):
        assert_refused_cover(replies_to(client, rid, meter, "model", "ace", *COVER), rid, "ace")
    client.send("/stemd/models")
    assert client.until("/stemd/models/reply")[-1].args[10:13] == ("ace", "ace-step", 0)    # never loaded
    client.close()


def test_the_engine_refuses_the_same_cover_with_the_same_words(no_tokenizer):
    from stemd.models.base import GenerationSpec
    from stemd.models.registry import load_engine
    from stemd.protocol import GenerateRequest
    from stemd.daemon.takeio import spec_from_request

    engine = load_engine(str(no_tokenizer), device="cpu")
    spec: GenerationSpec = spec_from_request(GenerateRequest("e1", bars=2, bpm=97, meter="3/4", chords="Am | F"), engine)
    for run in (engine.stream, engine.raw):                   # raw() alone too: the cover's own backstop
        with pytest.raises(ProtocolError) as e:
            run(spec)
        assert e.value.code == "unsupported_key"
        assert e.value.message.startswith(f"{engine.name} (ace-step) has no audio_tokenizer, audio_token_detokenizer, "
                                          "which a cover of a guide needs"), e.value.message


def test_a_take_longer_than_the_model_makes_is_refused_before_accepting_while_not_loaded(start_daemon, no_tokenizer,
                                                                                      tiny):
    daemon = start_daemon("--model", f"ace={no_tokenizer}", "--model", f"tiny={tiny}", "--device", "cpu",
                          model="click")
    client = TcpClient(daemon.port)
    # ACE-Step's 600 s canvas holds a take of 538 s: 249 bars of 7/8 at 97 BPM (539 s) or of 3/4 at 83 BPM (540 s);
    # MusicGen makes 600 s: 256 bars of 7/8 at 83 BPM (648 s; at 16 kHz mono, within the daemon's take bytes)
    for rid, model, bars, meter, bpm, most in (("l1", "ace", 249, "7/8", 97, 538), ("l2", "ace", 249, "3/4", 83, 538),
                                               ("l3", "tiny", 256, "7/8", 83, 600)):
        client.send("/stemd/generate", rid, "model", model, "bars", bars, "bpm", bpm, "meter", meter,
                    "sample_rate", 16000, "channels", 1)
        client.send("/stemd/ping")
        got = [m for m in client.until("/stemd/pong") if m.address != "/stemd/pong"]
        assert [(m.address, m.args[:2]) for m in got] == [("/stemd/error", (rid, "out_of_range"))], got
        assert got[0].args[2].endswith(f"{model} takes at most {most} s"), got[0].args[2]
    client.send("/stemd/models")
    reply = client.until("/stemd/models/reply")[-1].args
    assert [reply[1 + 9 * i: 4 + 9 * i] for i in (1, 2)] == [("ace", "ace-step", 0), ("tiny", "musicgen", 0)]
    client.close()


@pytest.fixture(scope="module")
def sa3(tmp_path_factory):
    return written(tmp_path_factory, "sa3-tiny")


def test_the_pool_knows_a_checkpoints_longest_take_and_parts_before_it_loads_as_its_engine_does(sa3):
    from stemd.models.entries import ModelEntry
    from stemd.models.pool import locate_slot
    from stemd.models.registry import load_engine

    folder = sa3                                                     # its duration conditioner: 120 s at most
    slot = locate_slot(ModelEntry("sa3", str(folder)), "cpu")
    engine = load_engine(str(folder), device="cpu")
    assert slot.max_seconds == pytest.approx((120 - 8) / 1.1) and slot.max_seconds == engine.max_seconds
    assert slot.holds == engine.holds and "duration_embedder" in slot.holds


AUDIO = ("continuation", np.zeros(2 * 4800, "<f4").tobytes())
#: (model, keys, what the refusal says): keys that make no task together, or a task without its audio
CLASHES = [
    ("ace", ("track", "bass", "extract", "drums", *AUDIO), "track and extract are different tasks: ask for one"),
    ("ace", ("repaint", "1-2"), "repaint works on given audio: send it as continuation"),
    ("ace", ("guide_strength", 0.5), "guide_strength is how closely a cover follows its guide"),
    ("ace", (*COVER, "extract", "drums"), "extract works on given audio, not on a guide"),
    ("ace", (*COVER, "track", "bass", "guide_strength", 0.5), "guide_strength is a cover's"),
    ("ace", (*COVER, "track", "bass", *AUDIO), "a guide is the audio the take is made from"),
    ("sa3", ("strength", 0.5), "strength makes a variation of given audio"),
    ("sa3", (*COVER, *AUDIO), "a guide is the audio the take is made from"),
]


def test_keys_that_make_no_task_together_are_refused_before_accepting_by_models_not_loaded(start_daemon,
                                                                                         no_tokenizer, sa3):
    daemon = start_daemon("--model", f"ace={no_tokenizer}", "--model", f"sa3={sa3}", "--device", "cpu", model="click")
    client = TcpClient(daemon.port)
    for i, (model, keys, says) in enumerate(CLASHES):
        rid = f"x{i}"
        got = replies_to(client, rid, "7/8" if i % 2 else "3/4", "model", model, *keys)
        assert [(m.address, m.args[:2]) for m in got] == [("/stemd/error", (rid, "bad_arguments"))], (keys, got)
        assert says in got[0].args[2], got[0].args[2]
    client.send("/stemd/models")
    reply = client.until("/stemd/models/reply")[-1].args
    assert [reply[1 + 9 * i: 4 + 9 * i] for i in (1, 2)] == [("ace", "ace-step", 0), ("sa3", "stable-audio-3", 0)]
    client.close()


def test_a_melody_model_refuses_a_guide_with_given_audio_before_any_work():
    from stemd.families import check_keys
    from stemd.protocol import GenerateRequest

    with pytest.raises(ProtocolError, match="a melody model follows a guide from the take's first bar") as e:
        check_keys(GenerateRequest("m1", bars=2, bpm=97, meter="7/8", chords="Am | F", continuation_path="a.wav"),
                   "musicgen-melody", "melody")
    assert e.value.code == "bad_arguments"
    check_keys(GenerateRequest("m2", bars=2, bpm=97, meter="7/8", chords="Am | F"), "musicgen-melody", "melody")
