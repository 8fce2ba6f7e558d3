"""``stemd bridge``: follow the DAW's transport, ask the daemon for takes, deliver them.

One shot (the demo):  stemd bridge --daemon 127.0.0.1:9130 --follow fixed:120:4/4 --out DIR \
                          --generate "dusty drums" --bars 4 --once
Running: commands come from stdin lines, from OSC on --command-port (127.0.0.1 UDP), and from a
MIDI controller map (--map FILE). See docs/daws.md.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_COMMAND_PORT = 9131
FOLLOWERS = "fixed:BPM[:METER], jack[:BPM[:METER]], midi-clock, reaper, ableton, ardour, bitwig"


def track_arg(text: str):
    """``--track``: a number (1-based) or a track's name."""
    text = str(text).strip()
    if not text:
        raise argparse.ArgumentTypeError("--track needs a track name or number")
    return int(text) if text.isdigit() else text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--daemon", default="127.0.0.1:9130", help="the daemon's HOST:PORT (TCP)")
    p.add_argument("--token", default=None, help="the daemon's token, if it was started with one")
    p.add_argument("--follow", default="fixed:120:4/4", help=f"the transport to follow: {FOLLOWERS}")
    p.add_argument("--out", default=".", help="where takes go: the DAW project's folder (or its audio folder)")
    p.add_argument("--midi-in", default=None, help="midi-clock: the MIDI input, by name or substring")
    p.add_argument("--daw-host", default="127.0.0.1", help="the DAW's host for its OSC surface")
    p.add_argument("--daw-port", type=int, default=None, help="the DAW's OSC port (default: the DAW's usual one)")
    p.add_argument("--listen-port", type=int, default=None,
                   help="UDP port where the DAW sends OSC feedback (default: the DAW's usual one)")
    p.add_argument("--meter", default=None, help="the DAW's meter when its OSC does not say (Ardour, REAPER)")
    p.add_argument("--print-transport", action="store_true", help="print one JSON line per beat")
    p.add_argument("--rate", type=int, default=48000, help="the DAW's sample rate: takes arrive at this rate")
    p.add_argument("--channels", type=int, default=2, choices=[1, 2])
    p.add_argument("--format", default="float32", choices=["float32", "pcm24", "pcm16"])
    # a take
    p.add_argument("--generate", metavar="PROMPT", default=None, help="ask for one take with this prompt")
    p.add_argument("--bars", type=int, default=None,
                   help="the take's length in bars (default 4; --extend: the take's own length)")
    p.add_argument("--model", default=None,
                   help="which of the daemon's models makes the takes, by its name (see /stemd/models or the "
                        "daemon's log; default: the daemon's first)")
    p.add_argument("--start-bar", type=int, default=None,
                   help="the take's first bar, counted from 0 (the DAW's bar 1); default: the next bar line")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--variations", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--key", default=None, help="musical key for the prompt")
    p.add_argument("--chords", default=None, help='a guide every take follows: chord symbols per bar, "Am | F | C | G" '
                   "(docs/guides.md)")
    p.add_argument("--guide", default=None, metavar="MID", help="a guide every take follows: a Standard MIDI File, "
                   "read in beats from the take's first bar line")
    p.add_argument("--guide-in", default=None, metavar="PORT",
                   help="play the guide: record --guide-bars bars from this JACK MIDI output (its name or a part of "
                        "it) from the next bar line, as played (not quantised); every following take follows it")
    p.add_argument("--guide-bars", type=int, default=4, help="--guide-in: how many bars to record (default 4)")
    p.add_argument("--stem", default=None, help="what part the take is (drums, bass, keys): names its files and "
                                                 "picks the DAW track of that name")
    p.add_argument("--reroll", metavar="TAKE_ID", default=None, help="the same take again with a new seed")
    p.add_argument("--extend", metavar="TAKE_ID", default=None, help="continue a take from its end")
    p.add_argument("--accept", metavar="TAKE_ID", default=None, help="mark a take as accepted (no daemon needed)")
    p.add_argument("--once", action="store_true", help="do the one thing asked, print the take's path, exit")
    p.add_argument("--timeout", type=float, default=600.0, help="--once: seconds to wait for the take")
    # delivery
    p.add_argument("--play", action="store_true", help="play takes live, from the next bar line, in sync")
    p.add_argument("--audio-device", default=None, help="--play: the output device (name or index)")
    p.add_argument("--insert", choices=["reaper", "ableton", "bitwig", "ardour", "ardour-session"], default=None,
                   help="put each take on the DAW's timeline at its start bar")
    p.add_argument("--track", type=track_arg, default=None,
                   help="--insert: the track to put takes on, by name (takes) or number (1-based); Bitwig: a number")
    p.add_argument("--reaper-action", default=None, help="--insert reaper: the command ID of stemd_insert.py")
    p.add_argument("--session", default=None, help="--insert ardour-session: the closed session's .ardour file")
    # commands
    p.add_argument("--command-port", type=int, default=DEFAULT_COMMAND_PORT,
                   help=f"UDP port on 127.0.0.1 for OSC commands (/stemd/bridge/...; 0 = off; default {DEFAULT_COMMAND_PORT})")
    p.add_argument("--no-stdin", action="store_true", help="do not read commands from stdin")
    p.add_argument("--map", default=None, help="a MIDI controller map (see docs/midi.md)")
    from stemd.bridge import midi  # light: imports neither mido nor rtmidi

    midi.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from stemd.bridge.runner import run_bridge

    return run_bridge(args, sys.stdout)
