"""Chord symbols per bar -> a guide's notes.

``"Am7 | F | C/E | G7sus4"``: a bar per ``|``. Several chords in a bar split it evenly (``"C G | Am"``: C and G
half a bar each); with ``.`` the bar is counted in the meter's beats, each symbol or ``.`` one beat, a ``.``
holding the chord before it (``"Am7 . F ."`` in 4/4: Am7 two beats, F two; in 7/8: ``"C . . . G . ."``); a bar
given fewer beats than it has lets its last chord ring to the bar line. An empty bar is silent.

A symbol is a root (``C``, ``F#``, ``Bb``), a quality from :data:`QUALITIES` (``m7``, ``sus4``, ``add9``,
``m7b5`` ...) and optionally a bass note after ``/`` (``C/E``). Voicing: the root between C3 and B3 (MIDI
48-59) with the chord's tones above it; a slash bass an octave below the root's octave. An unknown symbol is a
typed error naming it and its bar.
"""

from __future__ import annotations

import re
from fractions import Fraction

from stemd.guides.notes import GuideError, Note
from stemd.timing import Grid

#: quality -> semitones above the root
QUALITIES = {
    "": (0, 4, 7), "maj": (0, 4, 7), "M": (0, 4, 7),
    "m": (0, 3, 7), "min": (0, 3, 7), "-": (0, 3, 7),
    "5": (0, 7),
    "7": (0, 4, 7, 10), "dom7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11), "M7": (0, 4, 7, 11), "Δ": (0, 4, 7, 11),
    "m7": (0, 3, 7, 10), "min7": (0, 3, 7, 10), "-7": (0, 3, 7, 10),
    "mmaj7": (0, 3, 7, 11), "mM7": (0, 3, 7, 11),
    "m7b5": (0, 3, 6, 10), "ø": (0, 3, 6, 10),
    "dim": (0, 3, 6), "°": (0, 3, 6),
    "dim7": (0, 3, 6, 9), "°7": (0, 3, 6, 9),
    "aug": (0, 4, 8), "+": (0, 4, 8),
    "sus2": (0, 2, 7), "sus4": (0, 5, 7), "sus": (0, 5, 7),
    "7sus4": (0, 5, 7, 10), "7sus2": (0, 2, 7, 10),
    "6": (0, 4, 7, 9), "m6": (0, 3, 7, 9),
    "9": (0, 4, 7, 10, 14), "maj9": (0, 4, 7, 11, 14), "m9": (0, 3, 7, 10, 14),
    "add9": (0, 4, 7, 14), "madd9": (0, 3, 7, 14),
    "11": (0, 4, 7, 10, 14, 17), "m11": (0, 3, 7, 10, 14, 17), "13": (0, 4, 7, 10, 14, 21),
}
_NAMES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_SYMBOL = re.compile(r"([A-G])([#b♯♭]?)([^/]*)(?:/([A-G])([#b♯♭]?))?")
HOLD = "."
VELOCITY = 90


def pitch_class(letter: str, accidental: str) -> int:
    return (_NAMES[letter] + {"#": 1, "♯": 1, "b": -1, "♭": -1}.get(accidental, 0)) % 12


def chord_pitches(symbol: str, bar: int = 1) -> list[int]:
    """The MIDI pitches of one symbol, lowest first (``bar``, counted from 1, names it in an error)."""
    m = _SYMBOL.fullmatch(symbol)
    if not m or m.group(3) not in QUALITIES:
        raise GuideError("bad_arguments", f"unknown chord symbol {symbol!r} in bar {bar}; a symbol is a root (C, F#, "
                         "Bb), a quality (" + ", ".join(q for q in QUALITIES if q) + ") and an optional /bass")
    root = 48 + pitch_class(m.group(1), m.group(2))
    pitches = [root + i for i in QUALITIES[m.group(3)]]
    if m.group(4):
        pitches.insert(0, 36 + pitch_class(m.group(4), m.group(5)))
    return pitches


def parse_chords(text: str, grid: Grid, start_bar: int = 0) -> list[tuple[int, Fraction, Fraction, str]]:
    """``(bar, start, length, symbol)`` of each chord: ``bar`` from 0, ``start`` and ``length`` in quarters within
    the bar (exact). Bars take their meter from ``grid`` (from ``start_bar`` on)."""
    out = []
    for index, bar_text in enumerate(text.split("|")):
        tokens = bar_text.split()
        if not tokens:
            continue
        _, section = grid.section_at(start_bar + index)
        meter = section.meter
        if HOLD in tokens:
            if tokens[0] == HOLD:
                raise GuideError("bad_arguments", f"bar {index + 1} starts with '.': a '.' holds the chord before it "
                                 "in its bar", "")
            if len(tokens) > meter.numerator:
                raise GuideError("bad_arguments", f"bar {index + 1} has {len(tokens)} beats; a bar of {meter} has "
                                 f"{meter.numerator}", "")
            beat = meter.unit_quarters
            chords = []             # [symbol, first beat, beats]
            for i, token in enumerate(tokens):
                if token == HOLD:
                    chords[-1][2] += 1
                else:
                    chords.append([token, i, 1])
            chords[-1][2] += meter.numerator - len(tokens)     # the last chord rings to the bar line
            spans = [(symbol, first * beat, beats * beat) for symbol, first, beats in chords]
        else:
            share = meter.bar_quarters / len(tokens)
            spans = [(symbol, i * share, share) for i, symbol in enumerate(tokens)]
        for symbol, start, length in spans:
            chord_pitches(symbol, index + 1)      # an unknown symbol: the error names it and its bar
            out.append((index, Fraction(start), Fraction(length), symbol))
    return out


def chord_count_bars(text: str) -> int:
    """How many bars the text spans (its last non-empty bar)."""
    bars = [i for i, b in enumerate(text.split("|")) if b.split()]
    return bars[-1] + 1 if bars else 0


def chord_notes(text: str, grid: Grid, start_bar: int, bars: int) -> list[Note]:
    """The guide's notes for chord text over a take of ``bars`` bars from ``start_bar``: every chord tone from
    its chord's start to its end, quarters counted from the take's first bar line."""
    if not text.strip().strip("|").strip():
        raise GuideError("bad_arguments", "chords holds no chord symbol", "")
    given = chord_count_bars(text)
    if given > bars:
        raise GuideError("out_of_range", f"the chords are longer than the take: {given} bars for a take of {bars}", "")
    notes = []
    for bar, start, length, symbol in parse_chords(text, grid, start_bar):
        origin = grid.bar_start_quarters(start_bar + bar) - grid.bar_start_quarters(start_bar)
        for pitch in chord_pitches(symbol, bar + 1):
            notes.append(Note(origin + start, length, pitch, VELOCITY))
    return notes
