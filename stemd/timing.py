"""Musical time, exactly.

Positions are fractions of a quarter note (``Fraction``); tempo counts quarter notes per minute, as
DAWs do. Time becomes a sample offset only at the edge, once: bar k starts at
``round(k x exact bar length)``, never at a sum of rounded lengths, so a 10,000-bar session drifts by
zero samples at any rate.

    >>> grid = Grid(Tempo("137.5"), Meter(7, 8))
    >>> grid.bar_start_sample(4, 44100) - grid.bar_start_sample(0, 44100)
    269411
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Sequence, Union

Number = Union[int, float, str, Fraction]

MIN_BPM = Fraction(20)
MAX_BPM = Fraction(999)
METER_DENOMINATORS = (1, 2, 4, 8, 16, 32)
MAX_METER_NUMERATOR = 64


class TimingError(ValueError):
    """A tempo, meter or position that cannot describe music."""


MAX_NUMBER_CHARS = 32
#: a decimal (no exponent) or a ratio of whole numbers, ASCII digits only
_NUMBER = re.compile(r"[+-]?(\d{1,12}(\.\d{0,12})?|\.\d{1,12}|\d{1,12}/\d{1,12})", re.ASCII)
_METER = re.compile(r"(\d{1,3})\s*/\s*(\d{1,3})", re.ASCII)


def exact(value: Number, what: str = "value") -> Fraction:
    """A finite number as an exact Fraction; floats keep the decimal the user typed (137.5, not its
    binary neighbour), strings may be decimals ("137.5") or ratios ("275/2")."""
    if isinstance(value, bool):
        raise TimingError(f"{what} must be a number, not a bool")
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TimingError(f"{what} must be a finite number, got {value!r}")
        return Fraction(repr(value))
    if isinstance(value, str):
        # bounded before parsing: Fraction("1e20000000") would compute a 20-million-digit number
        text = value.strip()
        if len(text) > MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
            raise TimingError(f"{what} must be a number like 120, 137.5 or 275/2, got {value[:40]!r}")
        try:
            return Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise TimingError(f"{what} must be a number like 120, 137.5 or 275/2, got {value[:40]!r}") from None
    raise TimingError(f"{what} must be a number, got {type(value).__name__}")


def round_half_up(x: Fraction) -> int:
    """Round an exact value to the nearest integer, halves upward (deterministic, no banker's rounding)."""
    return math.floor(x + Fraction(1, 2))


@dataclass(frozen=True)
class Tempo:
    """Quarter notes per minute, 20 to 999, fractional allowed."""

    bpm: Fraction

    def __init__(self, bpm: Number):
        value = exact(bpm, "tempo")
        if not MIN_BPM <= value <= MAX_BPM:
            raise TimingError(f"tempo must be between {MIN_BPM} and {MAX_BPM} BPM, got {float(value):g}")
        object.__setattr__(self, "bpm", value)

    @property
    def seconds_per_quarter(self) -> Fraction:
        return Fraction(60) / self.bpm

    def __float__(self) -> float:
        return float(self.bpm)

    def __str__(self) -> str:
        return f"{float(self.bpm):g}"


@dataclass(frozen=True)
class Meter:
    """A time signature n/d: n units of a 1/d note per bar (7/8: seven eighth notes)."""

    numerator: int
    denominator: int

    def __post_init__(self):
        n, d = self.numerator, self.denominator
        if isinstance(n, bool) or isinstance(d, bool) or not isinstance(n, int) or not isinstance(d, int):
            raise TimingError("meter must be two whole numbers, like 4/4 or 7/8")
        if not 1 <= n <= MAX_METER_NUMERATOR:
            raise TimingError(f"meter numerator must be 1..{MAX_METER_NUMERATOR}, got {n}")
        if d not in METER_DENOMINATORS:
            raise TimingError(f"meter denominator must be one of {METER_DENOMINATORS}, got {d}")

    @classmethod
    def parse(cls, text: Union[str, "Meter"]) -> "Meter":
        if isinstance(text, Meter):
            return text
        m = _METER.fullmatch(str(text)[:64].strip())
        if m is None:
            raise TimingError(f"meter must look like 4/4 or 7/8, got {str(text)[:40]!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def unit_quarters(self) -> Fraction:
        """Length of one meter unit (one click) in quarter notes: 1/2 for an eighth."""
        return Fraction(4, self.denominator)

    @property
    def bar_quarters(self) -> Fraction:
        return self.numerator * self.unit_quarters

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator}"


def samples_at(seconds: Fraction, sample_rate: int) -> int:
    """The sample offset of an exact time, rounded once."""
    return round_half_up(seconds * sample_rate)


def check_sample_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int):
        raise TimingError(f"sample rate must be a whole number of Hz, got {sample_rate!r}")
    if not 8000 <= sample_rate <= 384000:
        raise TimingError(f"sample rate must be 8000..384000 Hz, got {sample_rate}")
    return sample_rate


@dataclass(frozen=True)
class Section:
    """From ``start_bar`` on, the grid runs at ``tempo`` in ``meter`` (changes happen at bar lines)."""

    start_bar: int
    tempo: Tempo
    meter: Meter


class Grid:
    """A DAW's bar grid: a tempo and meter, optionally changing at bar lines.

    Every position is exact: ``bar_start_seconds`` is a Fraction, ``bar_start_sample`` rounds it once.
    Bars are counted from 0 at the grid's origin (the DAW's bar 1 is our bar 0 unless the caller
    offsets it).
    """

    def __init__(self, tempo: Union[Tempo, Number], meter: Union[Meter, str] = "4/4",
                 changes: Sequence[Section] = ()):
        first = Section(0, tempo if isinstance(tempo, Tempo) else Tempo(tempo), Meter.parse(meter))
        sections = [first]
        for section in sorted(changes, key=lambda s: s.start_bar):
            if section.start_bar <= sections[-1].start_bar:
                raise TimingError(f"grid changes must be at increasing bars > 0, got bar {section.start_bar}")
            sections.append(section)
        self.sections: tuple[Section, ...] = tuple(sections)
        # exact start time (seconds) and start position (quarters) of each section
        starts_s, starts_q = [Fraction(0)], [Fraction(0)]
        for prev, nxt in zip(sections, sections[1:]):
            bars = nxt.start_bar - prev.start_bar
            starts_q.append(starts_q[-1] + bars * prev.meter.bar_quarters)
            starts_s.append(starts_s[-1] + bars * prev.meter.bar_quarters * prev.tempo.seconds_per_quarter)
        self._start_seconds = tuple(starts_s)
        self._start_quarters = tuple(starts_q)

    @property
    def tempo(self) -> Tempo:
        return self.sections[0].tempo

    @property
    def meter(self) -> Meter:
        return self.sections[0].meter

    def section_at(self, bar: int) -> tuple[int, Section]:
        index = 0
        for i, section in enumerate(self.sections):
            if section.start_bar <= bar:
                index = i
        return index, self.sections[index]

    def bar_start_seconds(self, bar: int) -> Fraction:
        if bar < 0:
            raise TimingError(f"bar must be >= 0, got {bar}")
        i, section = self.section_at(bar)
        bars = bar - section.start_bar
        return self._start_seconds[i] + bars * section.meter.bar_quarters * section.tempo.seconds_per_quarter

    def bar_start_quarters(self, bar: int) -> Fraction:
        i, section = self.section_at(bar)
        return self._start_quarters[i] + (bar - section.start_bar) * section.meter.bar_quarters

    def bar_seconds(self, bar: int) -> Fraction:
        return self.bar_start_seconds(bar + 1) - self.bar_start_seconds(bar)

    def bar_start_sample(self, bar: int, sample_rate: int) -> int:
        return samples_at(self.bar_start_seconds(bar), sample_rate)

    def bar_length_samples(self, bar: int, sample_rate: int) -> int:
        """Samples in bar ``bar`` at this rate: differs by at most one between bars of equal length."""
        return self.bar_start_sample(bar + 1, sample_rate) - self.bar_start_sample(bar, sample_rate)

    def span_samples(self, start_bar: int, bars: int, sample_rate: int) -> int:
        return self.bar_start_sample(start_bar + bars, sample_rate) - self.bar_start_sample(start_bar, sample_rate)

    def unit_onsets_seconds(self, start_bar: int, bars: int) -> Iterator[tuple[int, int, Fraction]]:
        """(bar, unit index in bar, exact time) of every meter unit (every click) in the span."""
        for bar in range(start_bar, start_bar + bars):
            _, section = self.section_at(bar)
            t0 = self.bar_start_seconds(bar)
            unit_s = section.meter.unit_quarters * section.tempo.seconds_per_quarter
            for unit in range(section.meter.numerator):
                yield bar, unit, t0 + unit * unit_s

    def position_at_seconds(self, seconds: Fraction) -> tuple[int, Fraction]:
        """(bar, quarters into the bar) at an exact time from the origin."""
        seconds = exact(seconds, "time")
        if seconds < 0:
            raise TimingError("time must be >= 0")
        i = 0
        for j, start in enumerate(self._start_seconds):
            if start <= seconds:
                i = j
        section = self.sections[i]
        quarters = (seconds - self._start_seconds[i]) / section.tempo.seconds_per_quarter
        bars = math.floor(quarters / section.meter.bar_quarters)
        return section.start_bar + bars, quarters - bars * section.meter.bar_quarters

    def __repr__(self) -> str:
        return f"Grid({self.tempo} BPM, {self.meter}, {len(self.sections) - 1} changes)"
