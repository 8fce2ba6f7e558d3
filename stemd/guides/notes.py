"""A guide's notes and the checks every guide goes through (the limits are the protocol's)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from stemd.protocol import ProtocolError
from stemd.timing import Grid, samples_at

#: the largest ``guide`` blob (an SMF) and the most notes a guide may hold
MAX_GUIDE_BYTES = 1024 * 1024
MAX_NOTES = 4096


class GuideError(ProtocolError):
    """A guide that cannot be used: the protocol's typed error (``code``) naming what is wrong."""


@dataclass(frozen=True)
class Note:
    """One note of a guide: ``start`` and ``length`` in quarter notes from the take's first bar line."""

    start: Fraction
    length: Fraction
    pitch: int
    velocity: int = 90
    program: int = 0          # General MIDI program (0: acoustic grand piano)
    channel: int = 0

    def start_sample(self, grid: Grid, start_bar: int, sample_rate: int) -> int:
        """The note's first sample, counted from the take's first sample (exact time, rounded once)."""
        return samples_at(quarters_to_seconds(grid, start_bar, self.start), sample_rate) - \
            grid.bar_start_sample(start_bar, sample_rate)

    def end_sample(self, grid: Grid, start_bar: int, sample_rate: int) -> int:
        return samples_at(quarters_to_seconds(grid, start_bar, self.start + self.length), sample_rate) - \
            grid.bar_start_sample(start_bar, sample_rate)


def quarters_to_seconds(grid: Grid, start_bar: int, quarters: Fraction) -> Fraction:
    """The exact time (from the grid's origin) of ``quarters`` after bar ``start_bar``'s line."""
    bar = start_bar
    while True:
        _, section = grid.section_at(bar)
        length = section.meter.bar_quarters
        if quarters < length:
            return grid.bar_start_seconds(bar) + quarters * section.tempo.seconds_per_quarter
        quarters -= length
        bar += 1


def take_quarters(grid: Grid, start_bar: int, bars: int) -> Fraction:
    return grid.bar_start_quarters(start_bar + bars) - grid.bar_start_quarters(start_bar)


def check_notes(notes: list[Note], take: Fraction, what: str, request_id: str = "") -> list[Note]:
    """At most :data:`MAX_NOTES`; none starting at or after the take's end (``take`` quarters); a note that
    runs past the end is cut there."""
    if len(notes) > MAX_NOTES:
        raise GuideError("too_large", f"the {what} holds {len(notes)} notes; a guide holds at most {MAX_NOTES}",
                         request_id)
    late = [n for n in notes if n.start >= take]
    if late:
        raise GuideError("out_of_range", f"the {what} is longer than the take: a note starts {float(late[0].start):g} "
                         f"quarters after the first bar line, the take is {float(take):g} quarters", request_id)
    return [n if n.start + n.length <= take else
            Note(n.start, take - n.start, n.pitch, n.velocity, n.program, n.channel) for n in notes]


def guide_notes(request) -> Optional[list[Note]]:
    """The notes of ``request``'s guide (its ``chords`` or ``guide`` SMF), checked against the take; None when it
    has none. Raises :class:`GuideError` (the protocol's typed errors)."""
    from stemd.guides.chords import chord_notes
    from stemd.guides.smf import read_smf

    chords, smf = getattr(request, "chords", ""), getattr(request, "guide", None)
    if not chords and smf is None:
        return None
    if chords and smf is not None:
        raise GuideError("bad_arguments", "give one guide: chords or a guide SMF, not both", request.request_id)
    grid = Grid(request.bpm, request.meter)
    take = take_quarters(grid, request.start_bar, request.bars)
    try:
        if chords:
            notes, what = chord_notes(chords, grid, request.start_bar, request.bars), "chords"
        else:
            notes, what = read_smf(smf), "guide SMF"
    except GuideError as e:
        e.request_id = request.request_id
        raise
    return check_notes(notes, take, what, request.request_id)
