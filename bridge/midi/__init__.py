"""The bridge as the target of a MIDI controller map (the mapping itself: :mod:`stemd.midi`).

    stemd bridge --map bridge/maps/akai-mpd218.toml              # play it
    stemd bridge --map my.toml --learn generate:drums            # bind the next pad you hit

Importing this package imports neither mido nor rtmidi.
"""

from __future__ import annotations

import argparse
import atexit
from typing import Any, Optional

from stemd import midi


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The MIDI mapping's options for ``stemd bridge`` (``--map FILE`` itself is the bridge's)."""
    midi.add_arguments(p, input_help="the controller's MIDI output to read, by name or substring (overrides the "
                                     "map's device.input; default: a port of our own, stemd-midi-in:in, to "
                                     "connect to)")


class BridgeTarget:
    """Adapts ``stemd.bridge.app.Bridge`` to :class:`~stemd.midi.actions.ActionTarget`."""

    def __init__(self, bridge: Any):
        self.bridge = bridge

    def generate(self, slot: str, params: dict) -> str:
        return self.bridge.generate(**params)

    def reroll(self, take_id: str) -> Optional[str]:
        return self.bridge.reroll(take_id)

    def extend(self, take_id: str) -> Optional[str]:
        return self.bridge.extend(take_id)

    def accept(self, take_id: str) -> None:
        self.bridge.accept(take_id)

    def cancel(self, take_id: str) -> None:
        self.bridge.cancel(take_id)

    def next_variation(self, take_id: str) -> None:
        midi_log(self.bridge.next_variation(take_id))

    def previous_variation(self, take_id: str) -> None:
        midi_log(self.bridge.previous_variation(take_id))

    def audition(self, take_id: str) -> None:
        self.bridge.audition(take_id)


def midi_log(text: str) -> None:
    import logging

    logging.getLogger("stemd.midi").info("midi: %s", text)


def attach(bridge: Any, args: argparse.Namespace, midimap=None):
    """Open the controller, drive ``bridge`` from it and light pads from its takes (``midimap``:
    already loaded with :func:`stemd.midi.load_map`, else loaded now)."""
    midimap = midimap if midimap is not None else midi.load_map(args)
    session = midi.open_session(midimap, BridgeTarget(bridge), args, client_name="stemd", who="stemd bridge")
    bridge.subscribe(lambda event: session.take_state(event.take_id, midi.STATE_LIGHT.get(event.state, "")))
    atexit.register(session.close)
    return session
