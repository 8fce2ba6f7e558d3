"""The bar-exact chunker: bar k starts at round(k x exact bar length), across meter and tempo changes."""

import numpy as np
import pytest

from stemd.models.chunker import BarChunker, chunk_blocks
from stemd.timing import Grid, Meter, Section, Tempo


def ramp_blocks(total, sizes, variations=2, channels=2):
    """Blocks whose every sample holds its own index, so a chunk shows exactly which samples it got."""
    ramp = np.arange(total, dtype=np.float64).astype(np.float32)
    i, k = 0, 0
    while i < total:
        n = sizes[k % len(sizes)]
        yield np.broadcast_to(ramp[i:i + n], (variations, channels, len(ramp[i:i + n]))).copy()
        i, k = i + n, k + 1


CHANGING = Grid(Tempo("137.5"), "4/4", changes=[Section(3, Tempo(90), Meter(7, 8)),
                                                 Section(5, Tempo("101.25"), Meter(3, 4))])


@pytest.mark.parametrize("rate", [44100, 48000, 96000])
@pytest.mark.parametrize("sizes", [[4096], [1000, 37, 20000], [10 ** 6]])
def test_bars_start_where_the_grid_says_across_meter_changes(rate, sizes):
    start_bar, bars = 1, 7
    origin = CHANGING.bar_start_sample(start_bar, rate)
    total = CHANGING.span_samples(start_bar, bars, rate)
    chunks = list(chunk_blocks(ramp_blocks(total, sizes), CHANGING, rate, start_bar, bars))
    assert [c.bar for c in chunks] == list(range(start_bar, start_bar + bars))
    for c in chunks:
        start, end = CHANGING.bar_start_sample(c.bar, rate), CHANGING.bar_start_sample(c.bar + 1, rate)
        assert c.start_sample == start
        assert c.frames == end - start
        # the chunk holds exactly the take's samples [start, end) counted from the take's origin
        assert c.audio[0, 0, 0] == start - origin and c.audio[-1, -1, -1] == end - 1 - origin


def test_bar_lengths_follow_each_sections_tempo_and_meter():
    rate = 48000
    chunks = list(chunk_blocks(ramp_blocks(CHANGING.span_samples(0, 8, rate), [5000]), CHANGING, rate, 0, 8))
    seconds = [c.frames / rate for c in chunks]
    assert seconds[0] == pytest.approx(4 * 60 / 137.5, abs=1 / rate)   # 4/4 at 137.5
    assert seconds[3] == pytest.approx(3.5 * 60 / 90, abs=1 / rate)    # 7/8 at 90: 3.5 quarters
    assert seconds[6] == pytest.approx(3 * 60 / 101.25, abs=1 / rate)  # 3/4 at 101.25


def test_bar_starts_never_drift_over_ten_thousand_bars():
    grid, rate = Grid(Tempo("137.5"), "7/8"), 44100
    chunker = BarChunker(grid, rate, 0, 10_000)
    bar_len = grid.bar_length_samples(0, rate)
    total = 0
    for _ in range(10_000 // 100):
        total += sum(c.frames for c in chunker.push(np.zeros((1, 1, bar_len * 100 + 50), np.float32)))
    chunker.finish()
    exact = 10_000 * 3.5 * 60 / 137.5 * rate
    assert chunker.done and abs(total - exact) <= 0.5


def test_a_short_stream_is_padded_with_silence_to_whole_bars():
    grid, rate = Grid(120, "3/4"), 48000
    short = np.ones((1, 2, grid.span_samples(0, 2, rate) - 123), np.float32)
    chunks = list(chunk_blocks([short], grid, rate, 0, 2))
    assert [c.frames for c in chunks] == [grid.bar_length_samples(0, rate)] * 2
    assert np.all(chunks[1].audio[..., -123:] == 0) and np.all(chunks[1].audio[..., :-123] == 1)


def test_extra_audio_after_the_last_bar_is_dropped():
    grid, rate = Grid(100), 44100
    chunks = list(chunk_blocks([np.ones((1, 1, grid.span_samples(0, 3, rate) + 999), np.float32)], grid, rate, 0, 2))
    assert len(chunks) == 2


def test_the_chunker_keeps_its_own_copy_of_a_reused_buffer():
    grid, rate = Grid(120), 8000
    chunker = BarChunker(grid, rate, 0, 1)
    buf = np.ones((1, 1, grid.bar_length_samples(0, rate) // 2 + 1), np.float32)
    assert chunker.push(buf) == []
    buf[:] = 2.0  # the engine writes its next block into the same buffer
    (chunk,) = chunker.push(buf)
    assert chunk.audio[0, 0, 0] == 1.0 and chunk.audio[0, 0, -1] == 2.0


def test_blocks_that_change_shape_mid_take_are_refused():
    chunker = BarChunker(Grid(120), 48000, 0, 4)
    chunker.push(np.zeros((1, 2, 100), np.float32))
    with pytest.raises(ValueError, match="changed shape"):
        chunker.push(np.zeros((1, 1, 100), np.float32))
