"""One take lifecycle (stemd.lifecycle) for both controllers: the daemon's own MIDI controller
(daemon/midi.py DaemonTarget) re-rolls an extension with its continuation and extends the chosen
variation, as the bridge does (tests/test_bridge_client.py) and docs/midi.md says.

Unit tests of the controller's logic: the daemon's dispatch is replaced by a recorder of the
/stemd/generate messages the controller sends, and its replies are fed back through ``send``, as the
daemon's worker does. The whole path through a real ``stemd serve --map`` on JACK is in
tests/test_midi_jack.py.
"""

from __future__ import annotations

import pytest

from stemd import lifecycle
from stemd.daemon.midi import DaemonTarget
from stemd.errors import StemdError
from stemd.protocol import DONE, GENERATE, TAKE
from stemd.takes import read_sidecar


class Recorder:
    def __init__(self):
        self.sent = []

    def __call__(self, fn, service, client, message):
        if message.address == GENERATE:
            args = message.args
            self.sent.append(dict(zip(args[1::2], args[2::2]), id=args[0]))


def finish(target, take_id, files):
    for v, path in enumerate(files):
        target.send(TAKE, take_id, v, str(path))
    target.send(DONE, take_id)


def test_the_daemons_controller_extends_the_chosen_variation_and_rerolls_an_extension_with_it(tmp_path):
    calls = Recorder()
    target = DaemonTarget(calls, service=None)
    first = target.generate("drums", {"prompt": "funk drums", "bars": 2, "bpm": 97, "meter": "3/4",
                                      "variations": 2})
    files = [tmp_path / "funk_v1.wav", tmp_path / "funk_v2.wav"]
    finish(target, first, files)
    lifecycle.choose(target.takes[first], +1)                   # next variation: v2
    longer = target.extend(first)
    ext = calls.sent[-1]
    assert (ext["continuation_path"], ext["start_bar"], ext["meter"]) == (str(files[1]), 2, "3/4")
    finish(target, longer, [tmp_path / "ext_v1.wav", tmp_path / "ext_v2.wav"])
    target.reroll(longer)
    rer = calls.sent[-1]
    # the daemon's controller used to drop the continuation here: a re-roll of an extension is a fresh take
    assert rer["continuation_path"] == str(files[1]) and rer["start_bar"] == 2 and rer["seed"] != ext["seed"]
    target.reroll(first)
    assert "continuation_path" not in calls.sent[-1]         # a plain take's re-roll continues nothing


def test_accept_marks_the_chosen_file_and_only_a_finished_take(tmp_path):
    take = lifecycle.TakeRecord("t1", {"prompt": "x"})
    with pytest.raises(StemdError, match="only a finished take"):
        lifecycle.accept(take)
    take.files = [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    for f in take.files:
        (tmp_path / f).with_suffix(".json").write_text('{"prompt": "x"}')
    take.state = "ready"
    assert lifecycle.choose(take, -1) == 1                      # wraps around
    lifecycle.accept(take)
    # a producer's word, under delivery (these sidecars had none: it holds only that); the other file untouched
    assert read_sidecar(take.files[1]) == {"prompt": "x", "delivery": {"accepted": True}}
    assert read_sidecar(take.files[0]) == {"prompt": "x"}
    with pytest.raises(StemdError, match="accepted as variation 2"):
        lifecycle.choose(take, +1)
