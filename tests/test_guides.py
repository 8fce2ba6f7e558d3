"""Guides on the core side: chord symbols per bar and Standard MIDI Files become notes on the request's exact
grid; a guide that cannot be used is refused with the protocol's typed error when the request is built."""

import io
from fractions import Fraction

import mido
import pytest

from stemd.families import check_keys
from stemd.guides import MAX_NOTES, Note, guide_notes
from stemd.guides.chords import chord_pitches
from stemd.guides.smf import read_smf, write_smf
from stemd.protocol import GenerateRequest, ProtocolError
from stemd.timing import Grid


def request(**kw):
    base = dict(bars=4, bpm=97, meter="3/4")
    base.update(kw)
    return GenerateRequest("g1", **base)


def test_chord_symbols_are_the_usual_pitch_classes():
    pcs = {s: sorted({p % 12 for p in chord_pitches(s)}) for s in
           ("C", "Cmaj", "Am", "G7", "Fmaj7", "Dm7", "Bm7b5", "Bdim", "Bdim7", "Caug", "Dsus2", "Dsus4", "C6",
            "C9", "Cadd9", "G7sus4", "F#m", "Bb7")}
    assert pcs["C"] == pcs["Cmaj"] == [0, 4, 7]
    assert pcs["Am"] == [0, 4, 9] and pcs["G7"] == [2, 5, 7, 11] and pcs["Fmaj7"] == [0, 4, 5, 9]
    assert pcs["Dm7"] == [0, 2, 5, 9] and pcs["Bm7b5"] == [2, 5, 9, 11] and pcs["Bdim"] == [2, 5, 11]
    assert pcs["Bdim7"] == [2, 5, 8, 11] and pcs["Caug"] == [0, 4, 8] and pcs["Dsus2"] == [2, 4, 9]
    assert pcs["Dsus4"] == [2, 7, 9] and pcs["C6"] == [0, 4, 7, 9] and pcs["C9"] == [0, 2, 4, 7, 10]
    assert pcs["Cadd9"] == [0, 2, 4, 7] and pcs["G7sus4"] == [0, 2, 5, 7] and pcs["F#m"] == [1, 6, 9]
    assert pcs["Bb7"] == [2, 5, 8, 10]
    c_over_e = chord_pitches("C/E")
    assert c_over_e[0] % 12 == 4 and c_over_e[0] < min(chord_pitches("C"))     # the slash bass is the lowest note


def test_a_bar_per_bar_line_several_chords_split_it_evenly_or_by_beats_at_97_3_4():
    notes = guide_notes(request(chords="Am7 | F C | C/E . G | G7sus4"))
    starts = sorted({(n.start, n.length) for n in notes})
    # 3/4: a bar is 3 quarters; "F C" halves bar 2; "C/E . G" is C/E two beats, G one
    assert starts == [(0, 3), (3, Fraction(3, 2)), (Fraction(9, 2), Fraction(3, 2)), (6, 2), (8, 1), (9, 3)]


def test_beats_are_the_meters_units_in_7_8_and_the_last_chord_rings_to_the_bar_line():
    notes = guide_notes(request(meter="7/8", chords="C . . G | Am"))
    spans = sorted({(n.start, n.length) for n in notes})
    # 7/8: a beat is an eighth (1/2 quarter); C three eighths, G from the fourth eighth to the bar line
    assert spans == [(0, Fraction(3, 2)), (Fraction(3, 2), 2), (Fraction(7, 2), Fraction(7, 2))]


def test_a_notes_first_sample_is_its_exact_grid_position_rounded_once():
    grid = Grid(97, "7/8")
    note = Note(Fraction(7, 2) * 1000 + Fraction(1, 2), Fraction(1), 60)      # bar 1000, its second eighth
    exact = (Fraction(7, 2) * 1000 + Fraction(1, 2)) * Fraction(60, 97) * 48000
    assert note.start_sample(grid, 0, 48000) == int(exact + Fraction(1, 2))
    # from a start bar: counted from the take's first sample
    assert Note(Fraction(1, 2), Fraction(1), 60).start_sample(grid, 1000, 48000) == \
        int(exact + Fraction(1, 2)) - grid.bar_start_sample(1000, 48000)


@pytest.mark.parametrize("chords,bar,symbol", [("Am | F | Hm | G", 3, "Hm"), ("C G | Am Cmaj13b9", 2, "Cmaj13b9")])
def test_an_unknown_symbol_is_a_typed_error_naming_it_and_its_bar(chords, bar, symbol):
    with pytest.raises(ProtocolError) as e:
        request(chords=chords)
    assert e.value.code == "bad_arguments"
    assert f"{symbol!r} in bar {bar}" in e.value.message and e.value.request_id == "g1"


def test_chords_longer_than_the_take_and_too_many_beats_are_refused():
    with pytest.raises(ProtocolError) as e:
        request(bars=2, chords="Am | F | C")
    assert e.value.code == "out_of_range" and "3 bars for a take of 2" in e.value.message
    with pytest.raises(ProtocolError) as e:
        request(chords="Am . . . | F")            # four beats in 3/4
    assert e.value.code == "bad_arguments" and "bar 1 has 4 beats" in e.value.message


def smf_bytes(notes_at, ppq=480, extra_tracks=()):
    smf = mido.MidiFile(type=1, ticks_per_beat=ppq)
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=300000), mido.Message("program_change", program=33)])
    now = 0
    for tick, length, pitch in notes_at:
        track.append(mido.Message("note_on", note=pitch, velocity=100, time=tick - now))
        track.append(mido.Message("note_off", note=pitch, time=length))
        now = tick + length
    smf.tracks.append(track)
    smf.tracks.extend(extra_tracks)
    out = io.BytesIO()
    smf.save(file=out)
    return out.getvalue()


def test_an_smf_guide_is_read_in_beats_whatever_its_own_tempo():
    data = smf_bytes([(0, 240, 45), (720, 480, 48), (1300, 20, 52)])
    notes = guide_notes(request(guide=data))
    assert [(n.start, n.length, n.pitch, n.program) for n in notes] == [
        (0, Fraction(1, 2), 45, 33), (Fraction(3, 2), 1, 48, 33), (Fraction(65, 24), Fraction(1, 24), 52, 33)]
    assert read_smf(write_smf(notes, Fraction(97), (3, 4))) == notes      # written and read back exactly


def test_bad_smf_guides_are_typed_errors_before_any_work():
    with pytest.raises(ProtocolError) as e:
        request(guide=b"MThd\x00\x00\x00\x06garbage")
    assert e.value.code == "bad_arguments" and "not a Standard MIDI File" in e.value.message
    with pytest.raises(ProtocolError) as e:
        request(guide=b"\0" * (1024 * 1024 + 1))
    assert e.value.code == "too_large"
    many = smf_bytes([(i * 10, 5, 60) for i in range(MAX_NOTES + 1)])
    with pytest.raises(ProtocolError) as e:
        request(guide=many, bars=256)
    assert e.value.code == "too_large" and str(MAX_NOTES) in e.value.message
    assert len(guide_notes(request(guide=smf_bytes([(i * 10, 5, 60) for i in range(MAX_NOTES)]), bars=256))) \
        == MAX_NOTES
    late = smf_bytes([(0, 100, 60), (12 * 480, 100, 62)])        # 4 bars of 3/4 are 12 quarters: starts at the end
    with pytest.raises(ProtocolError) as e:
        request(guide=late)
    assert e.value.code == "out_of_range" and "longer than the take" in e.value.message
    with pytest.raises(ProtocolError) as e:
        request(guide=smf_bytes([(0, 100, 60)]), chords="Am")
    assert e.value.code == "bad_arguments"


def test_a_note_running_past_the_take_is_cut_at_its_end():
    notes = guide_notes(request(bars=1, guide=smf_bytes([(960, 960, 60)])))
    assert [(n.start, n.length) for n in notes] == [(2, 1)]


def test_guide_keys_come_over_osc_and_only_the_families_that_follow_guides_take_them():
    r = GenerateRequest.from_args(("g2", "chords", "Am | F", "guide_strength", 0.5, "bars", 2))
    assert r.chords == "Am | F" and r.guide_strength == 0.5
    g = GenerateRequest.from_args(("g3", "guide", smf_bytes([(0, 10, 60)])))
    assert g.describe()["guide"].startswith("<SMF of ")
    for family in ("ace-step", "stable-audio-3"):
        check_keys(r if family == "ace-step" else GenerateRequest("g4", chords="Am"), family, "m")
        check_keys(g, family, "m")
    for family in ("musicgen", "click"):
        with pytest.raises(ProtocolError) as e:
            check_keys(r, family, "m")
        assert e.value.code == "unsupported_key" and "chords" in e.value.message
    with pytest.raises(ProtocolError) as e:
        check_keys(r, "stable-audio-3", "m")           # guide_strength is ACE-Step's cover strength
    assert e.value.code == "unsupported_key" and "guide_strength" in e.value.message


def test_a_takes_sidecar_holds_its_guide_so_it_can_be_made_again():
    import hashlib

    from stemd.sidecar import encode, take_sidecar

    info = {"model": "m", "family": "ace-step"}
    kw = dict(file="t.wav", sample_rate=48000, channels=2, frames=10, format="float32")
    meta = take_sidecar(request(chords="Am | F", guide_strength=0.4), 0, info, **kw)
    assert meta["guide"] == {"chords": "Am | F", "guide_strength": 0.4}
    data = smf_bytes([(0, 100, 60)])
    meta = take_sidecar(request(guide=data), 0, info, **kw)
    assert meta["guide"] == {"smf_sha256": hashlib.sha256(data).hexdigest(), "smf_bytes": len(data)}
    assert hashlib.sha256(data).hexdigest() in meta["request"]["guide"]
    encode(meta)                                  # JSON-ready, within the sidecar's size
    assert "guide" not in take_sidecar(request(), 0, info, **kw)


def test_the_bridge_sends_chords_or_a_midi_guide_with_every_take(tmp_path):
    import argparse

    from stemd.bridge.cmd_bridge import add_arguments
    from stemd.bridge.runner import request_params
    from stemd.errors import StemdError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    smf = tmp_path / "part.mid"
    smf.write_bytes(smf_bytes([(0, 100, 60)]))
    params = request_params(parser.parse_args(["--chords", "Am | F"]))
    assert params["chords"] == "Am | F" and "guide" not in params
    params = request_params(parser.parse_args(["--guide", str(smf)]))
    assert params["guide"] == smf.read_bytes()
    assert guide_notes(request(**params))[0].pitch == 60       # what the daemon reads of it
    with pytest.raises(StemdError, match="none.mid"):
        request_params(parser.parse_args(["--guide", str(tmp_path / "none.mid")]))
