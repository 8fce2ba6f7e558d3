"""MIDI controller mapping: pads and knobs -> generate, re-roll, accept, next variation, ...

Shared by ``stemd bridge --map`` (the bridge does the actions) and ``stemd serve --map`` (the daemon
does them, with a controller on its own machine). Pieces: :mod:`.actions` (what can be mapped, the
target interface), :mod:`.mapfile` (TOML map files, checked with line numbers; learn writes back),
:mod:`.curves`, :mod:`.decode` (bytes -> messages, tolerant), :mod:`.mapper` (the logic),
:mod:`.ports` (rtmidi ports that come back), :mod:`.session` (threads, OSC learn).

Everything here is the standard library and stemd's core; python-rtmidi is imported only when a
port is opened (:mod:`.ports`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

#: take states as the bridge and the daemon report them -> the states pads show
STATE_LIGHT = {"queued": "queued", "generating": "generating", "ready": "ready", "playing": "playing",
               "failed": "failed", "cancelled": "idle", "accepted": "ready"}


def add_arguments(p: argparse.ArgumentParser, input_help: str) -> None:
    """The controller options of a command that takes ``--map FILE`` (bridge and serve)."""
    from stemd.midi.ports import API_NAMES

    g = p.add_argument_group("MIDI controller (with --map; see docs/midi.md)")
    g.add_argument("--controller", metavar="PORT", default=None, help=input_help)
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


def load_map(args: argparse.Namespace):
    """``args.map`` read and checked (a :class:`~stemd.midi.mapfile.MapError` lists every mistake with
    its line); with ``--learn`` a missing file starts a new map. Call it before anything slow, so a
    mistake in the map is the first thing a producer hears."""
    from stemd.midi.mapfile import load

    if getattr(args, "learn", None) and not os.path.exists(args.map):
        from stemd.takes import atomic_write

        try:
            atomic_write(args.map, "# stemd MIDI map (see docs/midi.md)\n", replace=False)
        except FileExistsError:     # another stemd started the map first: learn into it
            pass
    return load(args.map)


def open_session(midimap, target: Any, args: argparse.Namespace, client_name: str, who: str):
    """A started :class:`~stemd.midi.session.MidiSession` for ``args`` (see :func:`add_arguments`);
    ``who`` names the command in what it prints (``stemd bridge``)."""
    from stemd.midi.ports import api_id
    from stemd.midi.session import MidiSession

    session = MidiSession(midimap, target, api_id(getattr(args, "midi_api", None) or ""),
                          input_port=getattr(args, "controller", None) or midimap.input,
                          output_port=getattr(args, "controller_out", None) or midimap.output,
                          client_name=client_name).start()
    try:
        if getattr(args, "learn_osc_port", None) is not None:
            port = session.listen_osc(args.learn_osc_port)
            print(f"{who}: MIDI learn on udp://127.0.0.1:{port}/stemd/midi/learn", file=sys.stderr)
        if getattr(args, "learn", None):
            session.learn(args.learn)
            print(f"{who}: learn {args.learn}: move a control on the controller", file=sys.stderr)
    except BaseException:
        session.close()
        raise
    return session
