"""Takes onto a DAW's timeline at their start bar, through the DAW's own scripting.

    --insert reaper          appends to the inbox, then REAPER's OSC /action runs plugin_host/reaper/stemd_insert.py,
                             which inserts each file at TimeMap2_beatsToTime(bar) on the track
    --insert ableton         /stemd/live/insert_clip to our Remote Script (Live 12.0.5+: Track.create_audio_clip)
    --insert bitwig          DrivenByMoss: /track/N/clip/M/insertFile (into a launcher slot; Bitwig has no
                             arrangement insert over OSC)
    --insert ardour          appends to <session>/stemd-inbox.jsonl for plugin_host/ardour/stemd_takes.lua
    --insert ardour-session  writes the region into a closed session's .ardour file

The inbox (for the scripts that run inside a DAW) is ``$STEMD_HOME/inbox/<daw>.jsonl`` (STEMD_HOME defaults
to ~/.stemd): one JSON object per take with the file, its bar (from 1), beat position, sample and track.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional, Union

from stemd import osc
from stemd.bridge.delivery import DeliveredTake
from stemd.errors import StemdError


class InsertError(StemdError):
    code = "bad_arguments"


def stemd_home() -> Path:
    return Path(os.environ.get("STEMD_HOME") or Path.home() / ".stemd")


def inbox_path(daw: str) -> Path:
    return stemd_home() / "inbox" / f"{daw}.jsonl"


def take_line(take: DeliveredTake, track: Union[int, str, None]) -> dict:
    """What a host script needs of a take; ``track``: a number (1-based) or a name (``track_name``)."""
    request = take.request
    beats = take.start_bar * request.meter.bar_quarters
    line = {"file": str(Path(take.path).resolve()), "bar": take.start_bar + 1, "bar_index": take.start_bar,
            "quarters": float(beats), "sample": take.start_sample, "rate": take.sample_rate,
            "track": track if isinstance(track, int) else 0, "stem": request.stem, "take_id": take.take_id,
            "bpm": float(request.bpm.bpm), "meter": str(request.meter)}
    if isinstance(track, str):
        line["track_name"] = track
    return line


def append_line(path: Path, line: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


class _OscSender:
    def __init__(self, host: str, port: int):
        self.address = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, address: str, *args) -> None:
        try:
            self.sock.sendto(osc.encode_message(address, *args), self.address)
        except OSError as e:
            raise InsertError(f"cannot send {address} to {self.address[0]}:{self.address[1]}: {e}") from None


class ReaperInserter(_OscSender):
    def __init__(self, host: str, port: int, action: Optional[str], track: Optional[int] = None):
        super().__init__(host, port)
        if not action:
            raise InsertError("--insert reaper needs --reaper-action: the command ID REAPER gave stemd_insert.py "
                              "(Actions > Show action list > right-click > Copy selected action command ID)")
        self.action, self.track = action, track

    def deliver(self, take: DeliveredTake) -> None:
        append_line(inbox_path("reaper"), take_line(take, self.track))
        if str(self.action).lstrip("-").isdigit():
            self.send("/action", int(self.action))
        else:
            self.send("/action/str", str(self.action))


class AbletonInserter(_OscSender):
    """Inserts through stemd's Live script and reads its answer: ``/stemd/live/inserted``, or its error
    (not an audio track, no such track), which becomes this take's delivery error."""

    REPLY_S = 3.0

    def __init__(self, host: str, port: int, track: Union[int, str, None] = None):
        super().__init__(host, port)
        self.sock.bind(("0.0.0.0" if host not in ("127.0.0.1", "localhost") else "127.0.0.1", 0))
        self.track = track

    def deliver(self, take: DeliveredTake) -> None:
        line = take_line(take, self.track)
        self.send("/stemd/live/insert_clip", line.get("track_name") or int(line["track"]), line["file"],
                  float(line["quarters"]))
        deadline = time.monotonic() + self.REPLY_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise InsertError(f"Live did not answer /stemd/live/insert_clip within {self.REPLY_S:g} s: is "
                                  "stemd_live chosen as a Control Surface in Live's preferences (Link, Tempo & MIDI)?")
            self.sock.settimeout(left)
            try:
                data, _peer = self.sock.recvfrom(65536)
                reply = osc.decode(data)
            except socket.timeout:
                continue
            except (OSError, osc.OSCDecodeError):
                continue
            if reply.address == "/stemd/live/inserted":
                return
            if reply.address == "/stemd/live/error":
                raise InsertError(f"Live: {reply.args[0] if reply.args else 'an error'} ({Path(line['file']).name})")


class BitwigInserter(_OscSender):
    def __init__(self, host: str, port: int, track: Optional[int] = None, slot: int = 1):
        super().__init__(host, port)
        if isinstance(track, str):
            raise InsertError(f"--insert bitwig needs --track as a number: DrivenByMoss inserts by track index "
                              f"(counted from the current bank page), not by name ({track!r})")
        self.track, self.slot = track or 1, slot

    def deliver(self, take: DeliveredTake) -> None:
        self.send(f"/track/{self.track}/clip/{self.slot}/insertFile", str(Path(take.path).resolve()))


DEFAULT_PORTS = {"reaper": 8000, "ableton": 11000, "bitwig": 8000}


def make_inserter(name: str, args):
    host = getattr(args, "daw_host", "127.0.0.1")
    port = getattr(args, "daw_port", None) or DEFAULT_PORTS.get(name, 0)
    track = getattr(args, "track", None)
    if name == "reaper":
        return ReaperInserter(host, port, getattr(args, "reaper_action", None), track)
    if name == "ableton":
        return AbletonInserter(host, port, track)
    if name == "bitwig":
        return BitwigInserter(host, port, track)
    from stemd.bridge.delivery.ardour import ArdourInbox, ArdourSessionWriter

    session = getattr(args, "session", None)
    if not session:
        raise InsertError(f"--insert {name} needs --session: the Ardour session's folder or .ardour file")
    track_name = str(track) if track else None
    if name == "ardour-session":
        return ArdourSessionWriter(Path(session), track_name)
    folder = Path(session)
    return ArdourInbox(folder.parent if folder.suffix == ".ardour" else folder, track_name)
