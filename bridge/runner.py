"""Runs ``stemd bridge``: wires the follower, the daemon client, the deliveries and the command sources."""

from __future__ import annotations

import argparse
import os
import shlex
import threading
from pathlib import Path
from typing import TextIO

from stemd.errors import StemdError


class BridgeError(StemdError):
    code = "bad_arguments"


#: set when stdout's reader has gone (``stemd bridge --print-transport | head``): the bridge stops quietly
OUTPUT_GONE = threading.Event()


def _say(out: TextIO, lock: threading.Lock, line: str) -> None:
    with lock:
        if OUTPUT_GONE.is_set():
            return
        try:
            out.write(line + "\n")
            out.flush()
        except BrokenPipeError:
            OUTPUT_GONE.set()
            try:  # what is still buffered goes nowhere, without a second error at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            except (OSError, ValueError):
                pass


def build_deliveries(args: argparse.Namespace, transport) -> list:
    deliveries = []
    if getattr(args, "play", False):
        from stemd.bridge.delivery.live import LivePlayer

        deliveries.append(LivePlayer(transport, device=args.audio_device))
    insert = getattr(args, "insert", None)
    if insert:
        from stemd.bridge.delivery import daws

        deliveries.append(daws.make_inserter(insert, args))
    return deliveries


def request_params(args: argparse.Namespace) -> dict:
    keys = {"seed": args.seed, "variations": args.variations, "temperature": args.temperature,
            "guidance": args.guidance, "key": args.key, "stem": args.stem, "model": args.model,
            "chords": getattr(args, "chords", None)}
    if getattr(args, "guide", None):
        try:
            keys["guide"] = Path(args.guide).expanduser().read_bytes()
        except OSError as e:
            raise StemdError(f"--guide {args.guide}: {e.strerror or e}", "bad_arguments") from None
    return {k: v for k, v in keys.items() if v is not None}


def run_bridge(args: argparse.Namespace, out: TextIO) -> int:
    from stemd.bridge.app import Bridge, TakeEvent
    from stemd.bridge.client import DaemonClient, parse_address
    from stemd.bridge.history import TakeHistory
    from stemd.bridge.transport import BeatPrinter, Transport, make_follower

    lock = threading.Lock()
    out_dir = Path(args.out)
    if args.accept and args.once:
        TakeHistory(out_dir).accept(args.accept)
        _say(out, lock, f"{args.accept}: accepted")
        return 0

    midimap = None
    if args.map:  # a mistake in the map is reported before anything connects
        from stemd import midi

        midimap = midi.load_map(args)
    try:        # --meter: what a source that does not say its meter (a MIDI clock) is taken to be
        transport = Transport(meter=getattr(args, "meter", None) or "4/4")
    except ValueError as e:
        raise BridgeError(f"--meter {args.meter}: {e}") from None
    follower = make_follower(args.follow, transport, args)
    printer = BeatPrinter(transport, lambda line: _say(out, lock, line)).start() if args.print_transport else None
    client = None
    try:
        if args.daemon.lower() == "none":
            if (args.once and not args.guide_in) or args.generate or args.reroll or args.extend:
                raise BridgeError("--daemon none only follows the transport (and records --guide-in); requests "
                                  "need a daemon")
            if record_guide_in(args, transport, follower, out_dir, lambda line: _say(out, lock, line)) and args.once:
                return 0
            _wait_forever(args, out, lock, None)
            return 0
        host, port = parse_address(args.daemon)
        client = DaemonClient(host, port, args.token).connect()
        bridge = Bridge(client, transport, out_dir, sample_rate=args.rate, channels=args.channels,
                        deliveries=build_deliveries(args, transport), subtype=args.format)

        def report(event: TakeEvent) -> None:
            if event.state == "generating":
                _say(out, lock, f"{event.take_id}: bar {event.bars}/{event.total_bars} landed")
            elif event.state in ("ready", "failed", "cancelled", "accepted", "playing") and not args.once:
                detail = event.error or " ".join(event.files)
                _say(out, lock, f"{event.take_id}: {event.state} {detail}".rstrip())

        bridge.subscribe(report)
        if args.map:
            from stemd.bridge import midi

            bridge.midi_session = midi.attach(bridge, args, midimap)  # /stemd/midi/learn on the command port
        given = request_params(args)       # --chords or --guide: the guide of every take, asked in any way
        bridge.defaults.update({k: given[k] for k in ("chords", "guide") if k in given})
        guide = record_guide_in(args, transport, follower, out_dir, lambda line: _say(out, lock, line))
        if guide is not None:          # the guide of every take from now on
            bridge.defaults["guide"] = guide.smf
            bridge.defaults.setdefault("bars", guide.bars)
            args.bars = args.bars or guide.bars
        if args.once:
            if guide is not None and not _initial_actions(args, bridge):
                return 0
            return _once(args, bridge, out, lock)
        for action in _initial_actions(args, bridge):
            action()
        _wait_forever(args, out, lock, bridge)
        return 0
    finally:
        if printer is not None:
            printer.stop()
        follower.stop()
        if client is not None:
            client.close()


def record_guide_in(args, transport, follower, out_dir: Path, say):
    """``--guide-in PORT``: the guide played there, recorded and saved in ``out_dir`` (its path said); None
    without ``--guide-in``. The follower's own JACK client reads the port with ``--follow jack``; with
    another follower a JACK client of its own does, placing events on the followed transport."""
    if not getattr(args, "guide_in", None):
        return None
    if args.guide or args.chords:
        raise BridgeError("--guide-in records the guide: give no --guide or --chords with it")
    from stemd.bridge import guide_in
    from stemd.bridge.transport.jack import JackClient

    client = follower if isinstance(follower, JackClient) else JackClient(transport, follow=False)
    try:
        guide = guide_in.record(client, args.guide_in, args.guide_bars, args.timeout, say)
    except TimeoutError as e:
        raise BridgeError(str(e)) from None
    finally:
        if client is not follower:
            client.stop()
    path = guide_in.save(guide, out_dir)
    say(f"guide: {path} ({guide.describe()})")
    return guide


def _initial_actions(args, bridge) -> list:
    actions = []
    if args.generate is not None:
        actions.append(lambda: bridge.generate(args.generate, args.bars or 4, start_bar=args.start_bar,
                                               **request_params(args)))
    if args.reroll:
        actions.append(lambda: bridge.reroll(args.reroll, seed=args.seed))
    if args.extend:
        actions.append(lambda: bridge.extend(args.extend, bars=args.bars, seed=args.seed))
    if args.accept:
        actions.append(lambda: bridge.accept(args.accept))
    return actions


POSITION_WAIT_S = 10.0


def grid_unknown(follow: str) -> str:
    return (f"--follow {follow}: the DAW has not told its tempo and meter (Ardour sends neither): give --session "
            "<the session's folder> (the bridge reads its tempo map), or --meter and roll the transport a bar")


def _once(args, bridge, out, lock) -> int:
    actions = _initial_actions(args, bridge)
    if len(actions) != 1:
        raise BridgeError("--once needs exactly one of --generate PROMPT, --reroll ID, --extend ID, --accept ID")
    if args.generate is not None and args.start_bar is None and not bridge.transport.positioned.wait(POSITION_WAIT_S):
        raise BridgeError(f"--follow {args.follow} told no position within {POSITION_WAIT_S:g} s (is the DAW "
                          "sending?); give --start-bar to ask anyway")
    if args.generate is not None and not bridge.transport.grid_known.wait(POSITION_WAIT_S):
        raise BridgeError(grid_unknown(args.follow))
    take_id = actions[0]()
    record = bridge.wait(take_id, timeout=args.timeout)
    bridge.close()
    for delivery in bridge.deliveries:  # --play --once: let the take play out before exiting
        voice = getattr(delivery, "last", None)
        if voice is not None:
            voice.done.wait(len(voice.audio) / (delivery.rate or 48000) + 30)
            delivery.close()
    if record.state not in ("ready", "playing"):
        reason = record.error or f"no answer within {args.timeout:g} s"
        raise BridgeError(f"take {take_id} {record.state if record.error else 'timed out'}: {reason}",
                          "internal")
    for path in record.files:
        _say(out, lock, path)
    errors = bridge.delivery_errors.get(take_id)
    if errors:    # written, but not where it was asked to go: the DAW's own words
        raise BridgeError(f"take {take_id} was written but not delivered: {'; '.join(errors)}")
    return 0


def _wait_forever(args, out, lock, bridge) -> None:
    stop = threading.Event()
    sources = []
    if bridge is not None:
        from stemd.bridge.commands import CommandServer, run_command

        def execute(line: str) -> str:
            try:
                return run_command(bridge, shlex.split(line), stop)
            except (StemdError, ValueError) as e:
                return f"error: {e}"

        if args.command_port:
            sources.append(CommandServer(bridge, args.command_port, stop).start())
            _say(out, lock, f"stemd bridge: OSC commands on udp://127.0.0.1:{sources[-1].port}")
        if not args.no_stdin:
            def read_stdin() -> None:
                import sys

                for line in sys.stdin:
                    if line.strip():
                        _say(out, lock, execute(line))
                    if stop.is_set():
                        break

            threading.Thread(target=read_stdin, name="stemd-stdin", daemon=True).start()
    try:
        while not stop.wait(0.5):
            if OUTPUT_GONE.is_set():
                return
            if bridge is not None and bridge.client.closed.is_set():
                raise BridgeError(f"stopped: {bridge.client.close_reason}", "internal")
    finally:
        for source in sources:
            source.stop()
