"""The diffusion canvas in numbers: whole latent frames, the 10 s keep, the model's longest canvas.

Stable Audio 3 small-music's grid: 4096-sample frames at 44.1 kHz (about 92.9 ms), canvases up to 120 s.
"""

import importlib.util
import math

import numpy as np
import pytest

from stemd.models.diffusion.canvas import LatentFrames, canvas_bound, longest_take

SMALL = LatentFrames(4096, 44100, 120.0)


def test_the_canvas_is_the_take_and_a_tenth_plus_a_bar_rounded_up_to_whole_frames():
    take, bar = 7 * 7 * 30 / 97, 7 * 30 / 97          # 7 bars of 7/8 at 97 BPM
    seconds = SMALL.canvas_seconds(take, bar)
    frames = seconds * 44100 / 4096
    assert abs(frames - round(frames)) < 1e-9
    assert round(frames) == math.ceil((take * 1.1 + bar) * 44100 / 4096) == 203      # 18.84 s


def test_no_canvas_passes_the_longest_and_the_longest_take_leaves_room_for_its_bar():
    assert longest_take(120.0) == pytest.approx(112 / 1.1)
    assert canvas_bound(longest_take(120.0)) == pytest.approx(120.0)
    assert SMALL.canvas_seconds(200.0, 2.0) == 1291 * 4096 / 44100 <= 120.0      # 1291 whole frames fit in 120 s


def test_a_continuation_keeps_at_most_ten_seconds_of_whole_frames_from_the_selections_end():
    canvas = 86 * 4096 / 44100
    assert SMALL.keep_frames(int(12.5 * 44100), canvas) == 107     # 10 s are 107.7 frames
    assert SMALL.keep_frames(15 * 4096 + 4095, canvas) == 15
    assert SMALL.keep_frames(4095, canvas) == 0


def test_tail_and_canvas_together_never_pass_the_longest_canvas():
    canvas = SMALL.canvas_seconds(100.0, 2.0)            # 100 x 1.1 + 2 = 112 s: 1206 frames of 1291
    assert round(canvas * 44100 / 4096) == 1206
    assert SMALL.keep_frames(30 * 44100, canvas) == 1291 - 1206
    assert SMALL.keep_frames(30 * 44100, SMALL.canvas_seconds(200.0, 2.0)) == 0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch (the daemon extra) is not installed")
def test_a_continuation_is_the_selections_tail_then_silence_and_its_mask_names_whole_frames():
    import torch

    rng = np.random.default_rng(2)
    selection = torch.from_numpy(rng.standard_normal((2, 15 * 4096 + 1000)).astype(np.float32))
    canvas = 86 * 4096 / 44100
    tail = SMALL.continuation(selection, canvas)
    assert tail.keep == 15 * 4096 and tail.audio.shape == (2, (15 + 86) * 4096)
    assert torch.equal(tail.audio[:, :tail.keep], selection[:, 1000:])
    assert not tail.audio[:, tail.keep:].any()
    # a pipeline floors seconds x 44100 / 4096 to a frame: the mask starts at frame 15 and ends past frame 100
    assert int(tail.mask_start * 44100 / 4096) == 15
    assert int(tail.mask_end * 44100 / 4096) >= 15 + 86
    out = torch.arange(3 * 2 * 101 * 4096).reshape(3, 2, -1)
    assert torch.equal(tail.trim(out), out[..., 15 * 4096:])
    assert SMALL.continuation(selection[:, :4095], canvas) is None
