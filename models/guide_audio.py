"""A guide rendered to audio on the take's grid, with FluidSynth and a General MIDI soundfont.

Sample-exact by construction: every distinct note (its program or drum kit, pitch, velocity and length) is
rendered once by the ``fluidsynth`` program, alone, from a note-on at a whole second of an SMF made for the
purpose, and cut out from its first sounding sample; each note of the guide is then that rendering added in
at the note's own first sample on the grid (``Note.start_sample``: exact time, rounded once). So a note at
bar b, beat k starts at that sample, at any rate, whatever FluidSynth's block size or millisecond timing.
Reverb and chorus are off. The soundfont is Debian's ``fluid-soundfont-gm`` unless ``--soundfont`` (or
``STEMD_SOUNDFONT``) names another; :func:`set_soundfont` checks it when the daemon starts.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np

from stemd.errors import StemdError
from stemd.guides import Note
from stemd.timing import Grid

DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
#: a note's rendering runs this long after its note-off (its release), then fades out over FADE seconds
RELEASE, FADE = 1.5, 0.01
GAIN = 0.5
_soundfont: Optional[Path] = None


class GuideAudioError(StemdError):
    code = "engine_error"


def check_soundfont(path) -> Path:
    """``path`` if it is a readable SoundFont 2 file (RIFF ... sfbk), else :class:`GuideAudioError` saying so."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        raise GuideAudioError(f"soundfont {path}: {e.strerror or e}; install Debian's fluid-soundfont-gm or give "
                              "--soundfont FILE.sf2") from None
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise GuideAudioError(f"soundfont {path} is not a SoundFont 2 file (.sf2)")
    return path


def set_soundfont(path) -> Path:
    """Use ``path`` for every guide from now on (checked now)."""
    global _soundfont
    _soundfont = check_soundfont(path)
    return _soundfont


def soundfont() -> Path:
    if _soundfont is not None:
        return _soundfont
    return check_soundfont(os.environ.get("STEMD_SOUNDFONT") or DEFAULT_SOUNDFONT)


def fluidsynth_program() -> str:
    found = shutil.which("fluidsynth")
    if not found:
        raise GuideAudioError("guides are rendered with the fluidsynth program, which is not installed "
                              "(Debian: apt install fluidsynth)")
    return found


def _note_key(note: Note, grid: Grid, start_bar: int, rate: int) -> tuple:
    length = note.end_sample(grid, start_bar, rate) - note.start_sample(grid, start_bar, rate)
    drums = note.channel == 9
    return (drums, 0 if drums else note.program, note.pitch, note.velocity, max(1, length))


def _render_alone(keys: list[tuple], rate: int) -> list[np.ndarray]:
    """Each distinct note rendered alone: float32 ``(2, n)`` from its first sounding sample."""
    import mido

    slot = max(math.ceil(k[4] / rate + RELEASE) + 1 for k in keys)   # whole seconds between note-ons
    ppq = 1000                                                        # at 60 BPM: a tick is a millisecond
    smf = mido.MidiFile(type=0, ticks_per_beat=ppq)
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=1_000_000)])
    events = []
    for i, (drums, program, pitch, velocity, length) in enumerate(keys):
        channel = 9 if drums else 0              # one at a time, each from silence; 9 is the drum kit
        on = i * slot * ppq
        off = on + max(1, round(Fraction(length, rate) * ppq))
        if not drums:
            events.append((on, 0, mido.Message("program_change", channel=channel, program=program)))
        events.append((on, 1, mido.Message("note_on", channel=channel, note=pitch, velocity=velocity)))
        events.append((off, 2, mido.Message("note_off", channel=channel, note=pitch)))
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=(len(keys) * slot * ppq) - now))
    smf.tracks.append(track)
    with tempfile.TemporaryDirectory(prefix="stemd-guide-") as tmp:
        mid, raw = Path(tmp) / "notes.mid", Path(tmp) / "notes.raw"
        smf.save(str(mid))
        done = subprocess.run([fluidsynth_program(), "-n", "-i", "-q", "-R", "0", "-C", "0", "-g", str(GAIN),
                               "-r", str(rate), "-T", "raw", "-O", "float", "-E", "little", "-F", str(raw),
                               str(soundfont()), str(mid)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not raw.exists():
            raise GuideAudioError(f"fluidsynth failed ({done.returncode}): {done.stderr.strip()[-300:]}")
        audio = np.fromfile(raw, dtype="<f4").reshape(-1, 2).T
    out = []
    fade = max(1, int(FADE * rate))
    for i, key in enumerate(keys):
        lo = i * slot * rate
        seg = audio[:, lo:lo + slot * rate]
        sounding = np.flatnonzero(np.abs(seg).max(axis=0) > 0)
        if not len(sounding):
            out.append(np.zeros((2, 0), np.float32))
            continue
        n = min(seg.shape[1] - sounding[0], key[4] + int(RELEASE * rate))
        piece = np.array(seg[:, sounding[0]:sounding[0] + n], dtype=np.float32)
        piece[:, -fade:] *= np.linspace(1, 0, min(fade, piece.shape[1]), dtype=np.float32)
        out.append(piece)
    return out


def render_notes(notes: list[Note], grid: Grid, start_bar: int, sample_rate: int) -> dict:
    """Each distinct note of ``notes`` rendered alone (one fluidsynth run): ``{key: float32 (2, n)}``."""
    distinct = sorted({_note_key(note, grid, start_bar, sample_rate) for note in notes})
    return dict(zip(distinct, _render_alone(distinct, sample_rate))) if distinct else {}


def render_guide(notes: list[Note], grid: Grid, start_bar: int, bars: int, sample_rate: int,
                 length: Optional[int] = None, rendered: Optional[dict] = None) -> np.ndarray:
    """The guide's audio: float32 stereo ``(2, n)`` at ``sample_rate``, sample 0 the take's first bar line;
    ``n`` is the take's length (``bars`` from ``start_bar``) or ``length`` when given (cut or padded).
    ``rendered``: the notes' renderings (:func:`render_notes`), made here when not given."""
    n = grid.span_samples(start_bar, bars, sample_rate) if length is None else int(length)
    out = np.zeros((2, n), dtype=np.float32)
    if not notes:
        return out
    keys = [_note_key(note, grid, start_bar, sample_rate) for note in notes]
    if rendered is None:
        rendered = render_notes(notes, grid, start_bar, sample_rate)
    for note, key in zip(notes, keys):
        at = note.start_sample(grid, start_bar, sample_rate)
        piece = rendered[key][:, :max(0, n - at)]
        out[:, at:at + piece.shape[1]] += piece
    return out


def spec_notes(spec) -> Optional[list[Note]]:
    """The notes of an engine spec's guide (``extra["chords"]`` or ``extra["guide"]``, checked again against the
    take), None when it has none."""
    from stemd.guides.chords import chord_notes
    from stemd.guides.notes import check_notes, take_quarters
    from stemd.guides.smf import read_smf

    chords, smf = spec.extra.get("chords"), spec.extra.get("guide")
    if not chords and smf is None:
        return None
    take = take_quarters(spec.grid, spec.start_bar, spec.bars)
    notes = chord_notes(chords, spec.grid, spec.start_bar, spec.bars) if chords else read_smf(smf)
    return check_notes(notes, take, "chords" if chords else "guide SMF")


def spec_guide_audio(spec, sample_rate: int, seconds: float) -> Optional[np.ndarray]:
    """The spec's guide rendered at ``sample_rate``, sample 0 the take's first bar line, padded with silence to
    ``seconds`` (the engine's canvas): float32 ``(2, n)``; None when the spec has no guide."""
    notes = spec_notes(spec)
    if notes is None:
        return None
    return render_guide(notes, spec.grid, spec.start_bar, spec.bars, sample_rate,
                        length=int(round(seconds * sample_rate)))
