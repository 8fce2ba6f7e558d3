"""One atomic writer (stemd.takes.atomic_write / PartialFile): whole files or none, and, where a final name
may be another writer's (a take, a new MIDI map), never over an existing file."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from stemd.takes import PARTIAL, TakeClaims, atomic_write


def test_atomic_write_without_replace_never_writes_over_a_file_and_leaves_no_partial(tmp_path):
    path = tmp_path / "take.json"
    atomic_write(path, "first\n", replace=False)
    with pytest.raises(FileExistsError):
        atomic_write(path, "second\n", replace=False)
    assert path.read_text() == "first\n"
    assert not list(tmp_path.glob(f"*{PARTIAL}"))
    atomic_write(path, b"third\n")                      # the default replaces (the history, a map being learned)
    assert path.read_text() == "third\n" and not list(tmp_path.glob(f"*{PARTIAL}"))


def test_a_streamed_take_never_publishes_over_a_file_another_writer_put_under_its_name(tmp_path):
    """The daemon's take stream publishes through the same writer: if its final name was taken while its
    bars arrived (another writer that ignored the claim), it fails and the other file stays as it was."""
    pytest.importorskip("torch")
    from stemd.daemon.takeio import TakeStream
    from stemd.models.click import ClickEngine
    from stemd.protocol import GenerateRequest

    request = GenerateRequest("r1", prompt="odd meter", bars=1, bpm=97, meter="7/8", seed=3)
    stream = TakeStream(TakeClaims(tmp_path), request, ClickEngine(), variations=1, channels=2)
    stream.write(np.zeros((1, 2, 100), np.float32))
    taken = stream.paths[0]
    taken.write_bytes(b"another writer's take")
    with pytest.raises(FileExistsError):
        stream.finish()
    stream.abort()
    assert taken.read_bytes() == b"another writer's take"
    assert not list(tmp_path.glob(f"*{PARTIAL}"))


def test_a_streamed_take_publishes_a_whole_wav_and_its_sidecar(tmp_path):
    pytest.importorskip("torch")
    import soundfile

    from stemd.daemon.takeio import TakeStream
    from stemd.models.click import ClickEngine
    from stemd.protocol import GenerateRequest

    request = GenerateRequest("r1", prompt="odd meter", bars=2, bpm=97, meter="3/4", seed=3, variations=2)
    stream = TakeStream(TakeClaims(tmp_path), request, ClickEngine(), variations=2, channels=2)
    for n in (100, 57):
        stream.write(np.full((2, 2, n), 0.25, np.float32))
    paths = stream.finish()
    assert [p.name for p in paths] == ["odd-meter_bar001_take01_v1.wav", "odd-meter_bar001_take01_v2.wav"]
    for v, path in enumerate(paths):
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        assert data.shape == (157, 2) and rate == 48000
        assert json.loads(path.with_suffix(".json").read_text())["variation"] == v
    assert not list(tmp_path.glob(f"*{PARTIAL}")) and not list(tmp_path.glob(".*.claim"))


def test_learning_into_a_new_map_never_writes_over_a_map_that_appeared_meanwhile(tmp_path, monkeypatch):
    """``--learn`` starts a missing map file; one another stemd started between the check and the write is
    kept (learned into), not emptied."""
    import os

    from stemd.midi import load_map

    args = argparse.Namespace(map=str(tmp_path / "new.toml"), learn="reroll")
    assert load_map(args).bindings == [] and (tmp_path / "new.toml").read_text().startswith("# stemd MIDI map")
    theirs = tmp_path / "theirs.toml"
    theirs.write_text('[[bind]]\nnote = 36\naction = "reroll"\n')
    monkeypatch.setattr(os.path, "exists", lambda p: False)    # it appeared after the check
    midimap = load_map(argparse.Namespace(map=str(theirs), learn="cancel"))
    assert theirs.read_text() == '[[bind]]\nnote = 36\naction = "reroll"\n' and len(midimap.bindings) == 1
    assert not list(tmp_path.glob(f"*{PARTIAL}"))
