from fractions import Fraction

import pytest

from stemd.timing import Grid, Meter, Section, Tempo, TimingError, round_half_up


def test_bar_10000_at_137_5_bpm_is_the_exact_position_rounded_once():
    grid = Grid(Tempo("137.5"), Meter(4, 4))
    # 10,000 bars of 4 quarters at 137.5 BPM: 40000 * 60 / 137.5 seconds, exactly 17454.5454... s
    exact_seconds = Fraction(40000 * 60) / Fraction(275, 2)
    for rate in (44100, 48000):
        expected = round_half_up(exact_seconds * rate)
        assert grid.bar_start_sample(10_000, rate) == expected
        # a sum of rounded bar lengths drifts; ours does not
        summed = sum(grid.bar_length_samples(k, rate) for k in range(10_000))
        assert summed == expected
    assert grid.bar_start_sample(10_000, 48000) == 837818182  # 837818181.8..., rounded once
    assert grid.bar_start_sample(10_000, 44100) == 769745455  # 769745454.5..., half rounds up


def test_naive_float_accumulation_would_drift_but_grid_does_not():
    grid = Grid("137.5", "7/8")
    rate = 44100
    bar_len = float(grid.bar_seconds(0)) * rate
    naive = sum(round(bar_len) for _ in range(10_000))
    assert naive != grid.bar_start_sample(10_000, rate)  # the bug we avoid is real at this tempo


def test_bpm_counts_quarter_notes_in_any_meter():
    grid = Grid(120, "7/8")  # 7 eighths = 3.5 quarters = 1.75 s at 120 BPM
    assert grid.bar_seconds(0) == Fraction(7, 4)
    assert Grid(120, "6/8").bar_seconds(0) == Fraction(3, 2)
    assert Grid(120, "4/4").bar_start_sample(1, 48000) == 96000


def test_float_tempo_keeps_the_decimal_the_user_typed():
    assert Tempo(137.5).bpm == Fraction(275, 2)
    assert Tempo(133.33).bpm == Fraction(13333, 100)
    assert Tempo("275/2").bpm == Fraction(275, 2)


@pytest.mark.parametrize("bad", [19.99, 1000, float("nan"), float("inf"), "fast", True])
def test_tempo_refuses_what_a_daw_cannot_play(bad):
    with pytest.raises(TimingError):
        Tempo(bad)


@pytest.mark.parametrize("text", ["4/5", "0/4", "4", "x/4", "65/4", "4/4/4"])
def test_meter_refuses_malformed_signatures(text):
    with pytest.raises(TimingError):
        Meter.parse(text)


def test_meter_and_tempo_changes_at_bar_lines_are_exact():
    grid = Grid(120, "4/4", changes=[Section(2, Tempo(90), Meter(3, 4)), Section(4, Tempo(120), Meter(7, 8))])
    assert grid.bar_start_seconds(2) == 4            # two bars of 2 s
    assert grid.bar_start_seconds(4) == 4 + 2 * 2    # two bars of 3 quarters at 90 BPM = 2 s each
    assert grid.bar_start_seconds(5) == 8 + Fraction(7, 4)
    assert grid.bar_start_quarters(5) == 8 + 6 + Fraction(7, 2)
    assert grid.position_at_seconds(Fraction(9)) == (4, Fraction(2))


def test_unit_onsets_follow_the_meter_unit():
    onsets = list(Grid(120, "7/8").unit_onsets_seconds(0, 1))
    assert len(onsets) == 7
    assert [t for _b, _u, t in onsets] == [Fraction(i, 4) for i in range(7)]
