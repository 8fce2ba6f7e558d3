from fractions import Fraction

import numpy as np
import pytest

from stemd.protocol import Chunk, GenerateRequest, ProtocolError
from stemd.sampling import Sampling


def test_generate_args_become_a_validated_request():
    req = GenerateRequest.from_args(("r1", "prompt", "dusty drums", "bars", 8, "bpm", 137.5, "meter", "7/8",
                                     "seed", 3, "guidance", 2, "priority", "offline", "loop", True))
    assert (req.bars, req.bpm.bpm, str(req.meter), req.seed, req.guidance) == (8, Fraction(275, 2), "7/8", 3, 2.0)
    assert req.priority == "offline" and req.loop is True
    assert GenerateRequest.from_args(tuple(req.to_args())) == req


@pytest.mark.parametrize("args, code", [
    (("r1", "bars", 0), "out_of_range"),
    (("r1", "bars", 1_000_000), "out_of_range"),
    (("r1", "bpm", float("nan")), "out_of_range"),
    (("r1", "sample_rate", 7), "out_of_range"),
    (("r1", "bars", "4"), "wrong_type"),
    (("r1", "bars", 4.0), "wrong_type"),
    (("r1", "colour", "red"), "unknown_key"),
    (("r1", "bars"), "bad_arguments"),
    (("r1", "bars", 4, "bars", 5), "bad_arguments"),
    (("bad id with spaces",), "bad_arguments"),
    ((), "bad_arguments"),
    (("r1", "priority", "urgent"), "out_of_range"),
    (("r1", "continuation", b"\0\0\0"), "bad_arguments"),
])
def test_bad_requests_get_stable_codes(args, code):
    with pytest.raises(ProtocolError) as e:
        GenerateRequest.from_args(args)
    assert e.value.code == code
    assert str(e.value)


def test_request_id_is_kept_on_errors_after_the_id():
    with pytest.raises(ProtocolError) as e:
        GenerateRequest.from_args(("take-7", "bars", -1))
    assert e.value.request_id == "take-7"


def test_chunk_blob_is_float32_little_endian_interleaved():
    audio = np.array([[0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]], dtype=np.float32)
    args = Chunk("r", 0, 2, 96000, 48000, 2, audio).to_args()
    assert args[6] == np.array([0.1, -0.1, 0.2, -0.2, 0.3, -0.3], dtype="<f4").tobytes()
    back = Chunk.from_args(args)
    np.testing.assert_array_equal(back.audio, audio)


def test_take_wavs_read_back_exactly_in_every_format(tmp_path):
    import soundfile

    from stemd.takes import write_take

    rng = np.random.default_rng(0)
    for channels in (1, 2):
        audio = (rng.uniform(-0.9, 0.9, (channels, 1001))).astype(np.float32)
        for subtype, tol in (("float32", 0), ("pcm24", 2 ** -23), ("pcm16", 2 ** -15)):
            # a transposed view: the layout that once broke 24-bit mono writing
            view = np.asfortranarray(audio)
            wav = write_take(tmp_path, f"t{channels}{subtype}", view, 44100, {"prompt": "x"}, subtype)
            data, rate = soundfile.read(wav, dtype="float32", always_2d=True)
            assert rate == 44100 and data.shape == (1001, channels)
            assert np.abs(data.T - audio).max() <= tol
            assert not list(tmp_path.glob("*.partial"))


def test_model_keys_are_checked_however_the_request_is_built():
    from stemd.protocol import GenerateRequest, ProtocolError

    built = GenerateRequest.from_args(("r1", "steps", 12, "strength", 0.25, "track", "drums", "repaint", "2-3"))
    assert (built.steps, built.strength, built.track, built.repaint) == (12, 0.25, "drums", "2-3")
    assert GenerateRequest("r2").guidance is None            # the model's own default
    for kwargs, code in [({"steps": 0}, "out_of_range"), ({"steps": 1.5}, "wrong_type"),
                         ({"strength": 1.5}, "out_of_range"), ({"track": "../x"}, "out_of_range"),
                         ({"extract": ""}, None), ({"repaint": "3"}, "bad_arguments")]:
        if code is None:
            GenerateRequest("r3", **kwargs)
            continue
        with pytest.raises(ProtocolError) as e:
            GenerateRequest("r3", **kwargs)
        assert e.value.code == code and next(iter(kwargs)) in e.value.message


@pytest.mark.parametrize("kw, code, field", [
    ({"bpm": "fast"}, "out_of_range", "tempo"),
    ({"bpm": [120]}, "wrong_type", "bpm"),
    ({"meter": 7}, "wrong_type", "meter"),
    ({"key": 5}, "wrong_type", "key"),
    ({"key": "x" * 65}, "out_of_range", "key"),
    ({"loop": "yes"}, "wrong_type", "loop"),
    ({"bars": "4"}, "wrong_type", "bars"),
    ({"bars": 0}, "out_of_range", "bars"),
    ({"variations": 17}, "out_of_range", "variations"),
    ({"temperature": float("nan")}, "out_of_range", "temperature"),
    ({"top_k": 1.5}, "wrong_type", "top_k"),
    ({"prompt": b"drums"}, "wrong_type", "prompt"),
    ({"priority": "urgent"}, "out_of_range", "priority"),
    ({"stem": "../etc"}, "out_of_range", "stem"),
    ({"track": 3}, "wrong_type", "track"),
    ({"repaint": "3"}, "bad_arguments", "repaint"),
    ({"repaint": "2-5"}, "out_of_range", "repaint"),       # the take has 4 bars
    ({"repaint": "3-2"}, "out_of_range", "repaint"),
    ({"repaint": "0-1"}, "out_of_range", "repaint"),
    ({"continuation": "not bytes"}, "wrong_type", "continuation"),
    ({"continuation": b"\0" * 8, "continuation_channels": 0}, "out_of_range", "continuation_channels"),
    ({"continuation_rate": 100}, "out_of_range", "continuation_rate"),
    ({"continuation_path": 1}, "wrong_type", "continuation_path"),
    ({"reply_port": 70000}, "out_of_range", "reply_port"),
    ({"seed": -1}, "out_of_range", "seed"),
])
def test_keyword_construction_checks_every_field_like_the_wire(kw, code, field):
    # the keyword path is the same table as from_args: each wrong field is the typed error naming it
    with pytest.raises(ProtocolError) as e:
        GenerateRequest("kw", **kw)
    assert e.value.code == code and e.value.message.startswith(field), e.value.message
    args = ["kw"] + [x for k, v in kw.items() for x in (k, v)]
    with pytest.raises(ProtocolError) as wire:
        GenerateRequest.from_args(tuple(args))
    assert (wire.value.code, wire.value.message) == (e.value.code, e.value.message)
    assert wire.value.request_id == "kw"


def test_keywords_are_normalised_like_the_wire():
    a = GenerateRequest("n", bpm=97, meter="3/4", loop=1)
    b = GenerateRequest.from_args(("n", "bpm", 97, "meter", "3/4", "loop", 1))
    assert a == b and a.bpm.bpm == 97 and str(a.meter) == "3/4" and a.loop is True
    assert a.seconds == Fraction(720, 97)         # 4 bars of 3/4 at 97 BPM
    assert a.sampling == Sampling() and not a.sampling.guided
    assert GenerateRequest("g", guidance=3).sampling.with_guidance(1.0).guidance == 3.0
    assert Sampling(top_k=50).token_keys_given() == ["top_k"]


def test_a_bar_over_the_clients_largest_message_goes_in_parts_under_it():
    import numpy as np

    from stemd import osc
    from stemd.protocol import CHUNK, CHUNK_PART, Chunk

    audio = np.random.default_rng(1).standard_normal((2, 103_957)).astype(np.float32)   # a bar of 83 BPM 7/8
    bar = Chunk("r" * 128, 3, 41, 2 ** 33, 48000, 2, audio)
    assert [a for a, _args in bar.messages()] == [CHUNK] == [a for a, _ in bar.messages(10 ** 7)]
    for limit in (1024, 32768, 100_000):
        parts = bar.messages(limit)
        assert {a for a, _args in parts} == {CHUNK_PART}
        assert max(len(osc.encode_message(a, *args)) for a, args in parts) <= limit
        assert [args[3] for _a, args in parts] == list(range(len(parts))) and parts[0][1][4] == len(parts)
        joined = np.concatenate([np.frombuffer(args[8], "<f4").reshape(-1, 2).T for _a, args in parts], axis=1)
        assert np.array_equal(joined, audio)
        last_frames = len(parts[-1][1][8]) // 8
        assert parts[-1][1][5] == 2 ** 33 + 103_957 - last_frames       # each part's own timeline sample
