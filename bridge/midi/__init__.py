"""MIDI controller mapping for ``stemd bridge``: pads and knobs -> generate, re-roll, accept, ...

    stemd bridge --map bridge/maps/akai-mpd218.toml              # play it
    stemd bridge --map my.toml --learn generate:drums            # bind the next pad you hit

Pieces: :mod:`.actions` (what can be mapped, the target interface), :mod:`.mapfile` (TOML map files,
checked with line numbers; learn writes back), :mod:`.curves`, :mod:`.decode` (bytes -> messages,
tolerant), :mod:`.mapper` (the logic), :mod:`.ports` (rtmidi ports that come back),
:mod:`.session` (threads, OSC learn). Importing this package imports neither mido nor rtmidi.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import sys
from typing import Any, Optional

log = logging.getLogger("stemd.bridge.midi")

#: Bridge take states -> the states pads show
_STATE_LIGHT = {"queued": "queued", "generating": "generating", "ready": "ready", "playing": "playing",
                "failed": "failed", "cancelled": "idle", "accepted": "ready"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The MIDI mapping's options for ``stemd bridge`` (``--map FILE`` itself is the bridge's)."""
    from stemd.bridge.midi.ports import API_NAMES

    g = p.add_argument_group("MIDI controller (with --map; see docs/midi.md)")
    g.add_argument("--controller", metavar="PORT", default=None,
                   help="the controller's MIDI output to read, by name or substring (overrides the map's "
                        "device.input; default: a port of our own, stemd-midi-in:in, to connect to)")
    g.add_argument("--controller-out", metavar="PORT", default=None,
                   help="where pad lights go, by name or substring (overrides the map's device.output)")
    g.add_argument("--midi-api", choices=sorted(API_NAMES), default=None,
                   help="MIDI system (default: CoreMIDI on macOS, WinMM on Windows, ALSA where its sequencer "
                        "exists, else JACK)")
    g.add_argument("--learn", metavar="ACTION[:ARG]", default=None,
                   help="bind the next control that moves to ACTION (generate:SLOT, param:temperature, "
                        "bank:NAME, reroll, accept ...) and write it into the map file")
    g.add_argument("--learn-osc-port", type=int, default=None, metavar="PORT",
                   help="UDP port on 127.0.0.1 for /stemd/midi/learn ACTION[:ARG] (0: any free port)")


class BridgeTarget:
    """Adapts ``stemd.bridge.app.Bridge`` to :class:`~stemd.bridge.midi.actions.ActionTarget`."""

    def __init__(self, bridge: Any):
        self.bridge = bridge

    def generate(self, slot: str, params: dict) -> str:
        params = {k: v for k, v in params.items() if k != "stem"}  # the daemon has no stem key (yet)
        return self.bridge.generate(**params)

    def reroll(self, take_id: str) -> Optional[str]:
        return self.bridge.reroll(take_id)

    def extend(self, take_id: str) -> Optional[str]:
        return self.bridge.extend(take_id)

    def accept(self, take_id: str) -> None:
        self.bridge.accept(take_id)

    def cancel(self, take_id: str) -> None:
        self.bridge.cancel(take_id)

    def _optional(self, name: str, take_id: str) -> None:
        method = getattr(self.bridge, name, None)
        if method is None:
            log.warning("midi: %s is not supported by this bridge yet", name)
            return
        method(take_id)

    def next_variation(self, take_id: str) -> None:
        self._optional("next_variation", take_id)

    def previous_variation(self, take_id: str) -> None:
        self._optional("previous_variation", take_id)

    def audition(self, take_id: str) -> None:
        self._optional("audition", take_id)


def open_session(midimap, target, args: argparse.Namespace, client_name: str = "stemd"):
    """A started :class:`~stemd.bridge.midi.session.MidiSession` for ``args`` (see add_arguments)."""
    from stemd.bridge.midi.ports import api_id
    from stemd.bridge.midi.session import MidiSession

    session = MidiSession(midimap, target, api_id(getattr(args, "midi_api", None) or ""),
                          input_port=getattr(args, "controller", None) or midimap.input,
                          output_port=getattr(args, "controller_out", None) or midimap.output,
                          client_name=client_name).start()
    try:
        if getattr(args, "learn_osc_port", None) is not None:
            port = session.listen_osc(args.learn_osc_port)
            print(f"stemd bridge: MIDI learn on udp://127.0.0.1:{port}/stemd/midi/learn", file=sys.stderr)
        if getattr(args, "learn", None):
            session.learn(args.learn)
            print(f"stemd bridge: learn {args.learn}: move a control on the controller", file=sys.stderr)
    except BaseException:
        session.close()
        raise
    return session


def attach(bridge: Any, args: argparse.Namespace):
    """Load ``args.map``, open the controller, drive ``bridge`` from it and light pads from its takes."""
    import os

    from stemd.bridge.midi.mapfile import load

    if getattr(args, "learn", None) and not os.path.exists(args.map):
        with open(args.map, "w", encoding="utf-8") as f:  # learn starts a new map
            f.write("# stemd MIDI map (see docs/midi.md)\n")
    midimap = load(args.map)
    session = open_session(midimap, BridgeTarget(bridge), args)
    bridge.subscribe(lambda event: session.take_state(event.take_id, _STATE_LIGHT.get(event.state, "")))
    atexit.register(session.close)
    return session
