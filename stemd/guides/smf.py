"""Standard MIDI Files <-> a guide's notes (mido).

A guide SMF is read in beats: a note at tick ``t`` starts ``t / ticks_per_beat`` quarters after the take's
first bar line, whatever tempo the file holds (the take's tempo places it). Every track is read; a note's
program is its channel's last program change before it (0, a piano, if none). Channel 10 (index 9) is
General MIDI's drum channel and is rendered as drums.
"""

from __future__ import annotations

import hashlib
import io
from fractions import Fraction

from stemd.guides.notes import MAX_GUIDE_BYTES, MAX_NOTES, GuideError, Note


def smf_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_smf(data: bytes) -> list[Note]:
    """The notes of SMF ``data``, sorted by start. A file that does not parse, over :data:`MAX_GUIDE_BYTES` or
    with more than :data:`MAX_NOTES` notes is a :class:`GuideError` (before any note is made of it)."""
    import mido

    if len(data) > MAX_GUIDE_BYTES:
        raise GuideError("too_large", f"the guide SMF is {len(data)} bytes; at most {MAX_GUIDE_BYTES}")
    try:
        smf = mido.MidiFile(file=io.BytesIO(bytes(data)))
    except Exception as e:         # mido raises OSError, EOFError, ValueError, KeyError ... on bad files
        raise GuideError("bad_arguments", f"the guide is not a Standard MIDI File ({type(e).__name__}: {e})") from None
    if smf.type == 2:
        raise GuideError("bad_arguments", "the guide is an SMF of type 2 (independent sequences): give type 0 or 1")
    ppq = smf.ticks_per_beat
    if not ppq or ppq <= 0:
        raise GuideError("bad_arguments", "the guide SMF has no ticks per beat (SMPTE time is not read)")
    notes: list[Note] = []
    for track in smf.tracks:
        tick, programs, sounding = 0, [0] * 16, {}
        for msg in track:
            tick += msg.time
            if msg.type == "program_change":
                programs[msg.channel] = msg.program
            elif msg.type == "note_on" and msg.velocity > 0:
                sounding.setdefault((msg.channel, msg.note), []).append((tick, msg.velocity, programs[msg.channel]))
            elif msg.type in ("note_off", "note_on"):
                started = sounding.get((msg.channel, msg.note))
                if started:
                    on, velocity, program = started.pop(0)
                    if tick > on:
                        notes.append(Note(Fraction(on, ppq), Fraction(tick - on, ppq), msg.note, velocity, program,
                                          msg.channel))
                    if len(notes) > MAX_NOTES:
                        raise GuideError("too_large", f"the guide SMF holds more than {MAX_NOTES} notes")
        for (channel, pitch), left in sounding.items():       # never released: to the end of its track
            for on, velocity, program in left:
                if tick > on:
                    notes.append(Note(Fraction(on, ppq), Fraction(tick - on, ppq), pitch, velocity, program, channel))
    if len(notes) > MAX_NOTES:
        raise GuideError("too_large", f"the guide SMF holds {len(notes)} notes; a guide holds at most {MAX_NOTES}")
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def write_smf(notes: list[Note], bpm: Fraction = Fraction(120), meter: tuple[int, int] = (4, 4),
              ticks_per_beat: int = 960) -> bytes:
    """A type-1 SMF of ``notes`` (tempo and meter in its first track; one track of notes), ticks rounded
    once from exact positions."""
    import mido

    smf = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=int(round(60_000_000 / Fraction(bpm))), time=0))
    meta.append(mido.MetaMessage("time_signature", numerator=meter[0], denominator=meter[1], time=0))
    smf.tracks.append(meta)
    events = []
    for n in notes:
        on = round(n.start * ticks_per_beat)
        off = max(on + 1, round((n.start + n.length) * ticks_per_beat))
        events.append((on, 1, n.channel, n.program, n.pitch, n.velocity))
        events.append((off, 0, n.channel, n.program, n.pitch, 0))
    track, now, programs = mido.MidiTrack(), 0, {}
    for tick, is_on, channel, program, pitch, velocity in sorted(events):
        if is_on and programs.get(channel) != program and channel != 9:
            track.append(mido.Message("program_change", channel=channel, program=program, time=tick - now))
            programs[channel], now = program, tick
        kind = "note_on" if is_on else "note_off"
        track.append(mido.Message(kind, channel=channel, note=pitch, velocity=velocity, time=tick - now))
        now = tick
    smf.tracks.append(track)
    out = io.BytesIO()
    smf.save(file=out)
    return out.getvalue()
