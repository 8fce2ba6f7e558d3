"""Takes into Ardour: a closed session gets the region written into its ``.ardour`` file; a session open
in Ardour's GUI gets it through our Lua script (plugin_host/ardour/stemd_takes.lua), which imports the
files the bridge lists in the session's inbox file.

The session writer (Ardour 7 session format): each channel of the WAV is a Source (Ardour reads one
channel of a multichannel file per source), a whole-file Region goes into <Regions>, and a Region at the
exact position goes into the track's Playlist. Ardour 7 keeps positions in superclock ticks
(``superclocks-per-second`` in the TempoMap, 282240000), written as ``a<ticks>``: a bar's start sample
``s`` at session rate ``r`` is ``a<s * 282240000 / r>``, exact for every common rate. Lengths are
``a<ticks>@<position>`` (a distance and where it is measured from); a bare ``a<ticks>`` length makes
Ardour 7.3 refuse to load the session.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path
from typing import Optional

from stemd.bridge.delivery import DeliveredTake
from stemd.errors import StemdError
from stemd.takes import atomic_write

DEFAULT_SUPERCLOCK = 282240000
INBOX = "stemd-inbox.jsonl"


class ArdourSessionError(StemdError):
    code = "bad_arguments"


def wav_info(path: Path) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) of a RIFF/WAVE file, read from its header."""
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ArdourSessionError(f"{path} is not a WAV file")
    pos, rate, channels, block = 12, 0, 0, 0
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"fmt ":
            _fmt, channels, rate, _bps, block = struct.unpack("<HHIIH", data[pos + 8:pos + 22])
        elif cid == b"data":
            return rate, channels, size // block
        pos += 8 + size + (size & 1)
    raise ArdourSessionError(f"{path}: no data chunk in the first 64 KiB")


def _superclock(samples: int, rate: int, per_second: int) -> str:
    value = Fraction(samples * per_second, rate)
    if value.denominator != 1:
        raise ArdourSessionError(f"sample {samples} at {rate} Hz is not a whole superclock tick")
    return f"a{value.numerator}"


class ArdourSession:
    """A closed Ardour 7 session file, edited in place (a ``.bak`` of the previous state is kept)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / (self.path.name + ".ardour")
        if not self.path.exists():
            raise ArdourSessionError(f"no Ardour session file at {self.path}")
        self.tree = ET.parse(self.path)
        self.root = self.tree.getroot()
        if self.root.tag != "Session":
            raise ArdourSessionError(f"{self.path} is not an Ardour session file")
        self.sample_rate = int(self.root.get("sample-rate", "0"))
        tempo_map = self.root.find("TempoMap")
        self.superclock = int(tempo_map.get("superclocks-per-second", DEFAULT_SUPERCLOCK)) if tempo_map is not None \
            else DEFAULT_SUPERCLOCK

    @property
    def name(self) -> str:
        return self.root.get("name") or self.path.stem

    def _new_id(self) -> str:
        counter = int(self.root.get("id-counter", "1000"))
        self.root.set("id-counter", str(counter + 1))
        return str(counter)

    def tempo_map(self) -> tuple[Optional[Fraction], Optional[str]]:
        """The session's first tempo (quarter notes per minute) and meter (``"3/4"``), from its TempoMap;
        None for what the file does not say."""
        tempo = self.root.find("TempoMap/Tempos/Tempo")
        meter = self.root.find("TempoMap/Meters/Meter")
        bpm = None
        if tempo is not None and tempo.get("npm"):
            # npm: note types per minute; 8 (eighths) at 194 is 97 quarters
            bpm = Fraction(tempo.get("npm")) * 4 / Fraction(tempo.get("note-type", "4"))
        text = None
        if meter is not None and meter.get("divisions-per-bar"):
            text = f"{int(float(meter.get('divisions-per-bar')))}/{int(float(meter.get('note-value', '4')))}"
        return bpm, text

    def tracks(self) -> list[tuple[str, str]]:
        """(track name, audio playlist id) of each audio track, in the session's order."""
        out = []
        routes = self.root.find("Routes")
        for route in routes.findall("Route") if routes is not None else []:
            playlist = route.get("audio-playlist")
            if playlist:
                out.append((route.get("name", ""), playlist))
        return out

    def _playlist(self, track: Optional[str]) -> ET.Element:
        tracks = self.tracks()
        if not tracks:
            raise ArdourSessionError(f"{self.path.name} has no audio track: add one in Ardour first")
        if track is None:
            name, pid = tracks[0]
        else:
            matches = [t for t in tracks if t[0] == track] or \
                      ([tracks[int(track) - 1]] if str(track).isdigit() and 0 < int(track) <= len(tracks) else [])
            if not matches:
                raise ArdourSessionError(f"no audio track {track!r}; tracks: {', '.join(t[0] for t in tracks)}")
            name, pid = matches[0]
        for playlist in self.root.iter("Playlist"):
            if playlist.get("id") == pid:
                return playlist
        raise ArdourSessionError(f"track {name!r} has no playlist {pid} in the session file")

    def add_region(self, wav: Path, position_samples: int, track: Optional[str] = None, copy: bool = True) -> str:
        """Put ``wav`` on ``track`` (name or 1-based number; default the first audio track) starting at
        ``position_samples`` (session rate); returns the region's id."""
        rate, channels, frames = wav_info(wav)
        if rate != self.sample_rate:
            raise ArdourSessionError(f"{wav.name} is {rate} Hz but the session runs at {self.sample_rate} Hz: "
                                     f"ask for takes at --rate {self.sample_rate}")
        playlist = self._playlist(track)
        if copy:  # into the session, where Ardour looks for its audio: interchange/<name>/audiofiles
            folder = self.path.parent / "interchange" / self.name / "audiofiles"
            folder.mkdir(parents=True, exist_ok=True)
            if Path(wav).resolve() != (folder / wav.name).resolve():
                shutil.copyfile(wav, folder / wav.name)
        sources = self.root.find("Sources")
        if sources is None:
            sources = ET.SubElement(self.root, "Sources")
        regions = self.root.find("Regions")
        if regions is None:
            regions = ET.SubElement(self.root, "Regions")
        source_ids = []
        for channel in range(channels):
            sid = self._new_id()
            source_ids.append(sid)
            attrs = {"name": wav.name, "type": "audio", "flags": "" if copy else "ExternalToSession",
                     "id": sid, "captured-for": "", "take-id": "", "channel": str(channel),
                     "origin": str(wav) if not copy else "", "gain": "1"}
            sources.append(ET.Element("Source", attrs))
        length = _superclock(frames, rate, self.superclock)
        common = {"muted": "0", "opaque": "1", "locked": "0", "video-locked": "0", "automatic": "0",
                  "import": "0", "external": "1", "sync-marked": "0", "left-of-split": "0",
                  "right-of-split": "0", "hidden": "0", "position-locked": "0", "valid-transients": "0",
                  "start": "a0", "sync-position": "a0", "ancestral-start": "a0",
                  "ancestral-length": "a0@a0", "stretch": "1", "shift": "1", "layering-index": "0", "tags": "",
                  "reg-group": "0", "contents": "0", "envelope-active": "0", "default-fade-in": "0",
                  "default-fade-out": "0", "fade-in-active": "0", "fade-out-active": "0",
                  "scale-amplitude": "1", "type": "audio", "first-edit": "nothing", "channels": str(channels)}
        for i, sid in enumerate(source_ids):
            common[f"source-{i}"] = sid
            common[f"master-source-{i}"] = sid
        position = _superclock(position_samples, rate, self.superclock)
        # lengths are timecnt_t: a distance and the position it is measured from, "a<ticks>@a<ticks>"
        whole = dict(common, name=wav.stem, id=self._new_id(), position="a0", length=f"{length}@a0")
        whole["whole-file"] = "1"
        regions.append(ET.Element("Region", whole))
        placed = dict(common, name=f"{wav.stem}.1", id=self._new_id(), position=position,
                      length=f"{length}@{position}")
        placed["whole-file"] = "0"
        playlist.append(ET.Element("Region", placed))
        self._extend_session_range(position_samples + frames)
        return placed["id"]

    def enable_osc(self, feedback: int = 0) -> None:
        """Turn on Ardour's OSC surface (UDP 3819), answering each client on the port it sent from."""
        protocols = self.root.find("ControlProtocols")
        if protocols is None:
            protocols = ET.SubElement(self.root, "ControlProtocols")
        for protocol in protocols.findall("Protocol"):
            if protocol.get("name") == "Open Sound Control (OSC)":
                break
        else:
            protocol = ET.SubElement(protocols, "Protocol", {"name": "Open Sound Control (OSC)"})
        protocol.attrib.update({"active": "1", "debugmode": "0", "address-only": "0", "remote-port": "8000",
                                "banksize": "0", "striptypes": "31", "feedback": str(feedback), "gainmode": "0",
                                "send-page-size": "0", "plugin-page-size": "0"})

    def _extend_session_range(self, end_samples: int) -> None:
        locations = self.root.find("Locations")
        if locations is None:
            locations = ET.SubElement(self.root, "Locations")
        end = _superclock(end_samples, self.sample_rate, self.superclock)
        for location in locations.findall("Location"):
            if "IsSessionRange" in location.get("flags", ""):
                if int(location.get("end", "a0")[1:] or 0) < int(end[1:]):
                    location.set("end", end)
                return
        locations.append(ET.Element("Location", {
            "id": self._new_id(), "name": "session", "start": "a0", "end": end, "flags": "IsSessionRange",
            "locked": "0", "timestamp": "0", "cue": "0"}))

    def save(self) -> None:
        backup = self.path.with_suffix(".ardour.bak")
        shutil.copyfile(self.path, backup)
        ET.indent(self.tree, space="  ")
        atomic_write(self.path, ET.tostring(self.tree.getroot(), encoding="UTF-8", xml_declaration=True))


class ArdourSessionWriter:
    """``--insert ardour-session --session FILE``: each take becomes a region at its start bar."""

    def __init__(self, session: Path, track: Optional[str] = None):
        self.session_path, self.track = Path(session), track

    def deliver(self, take: DeliveredTake) -> None:
        session = ArdourSession(self.session_path)
        track = self.track
        if track is None and take.request.stem in {name for name, _ in session.tracks()}:
            track = take.request.stem  # a "drums" take goes onto the track called drums
        session.add_region(take.path, take.start_sample, track)
        session.save()


class ArdourInbox:
    """``--insert ardour``: the session is open in Ardour's GUI. The bridge appends one JSON line per take
    to ``<session folder>/stemd-inbox.jsonl`` (one ``write`` of the whole line, O_APPEND);
    plugin_host/ardour/stemd_takes.lua (an editor hook) takes the file over by renaming it, imports each
    line's file a second later at its sample position on the named track (``--track``, else the take's
    stem; a name no track has imports as a new track) and removes it. A line written while the hook
    renames lands in the renamed file (read a second later) or in a new inbox: none is lost."""

    def __init__(self, session_dir: Path, track: Optional[str] = None):
        self.path = Path(session_dir) / INBOX
        self.track = track

    def deliver(self, take: DeliveredTake) -> None:
        line = {"file": str(Path(take.path).resolve()), "sample": take.start_sample, "rate": take.sample_rate,
                "bar": take.start_bar + 1, "track": self.track or take.request.stem, "take_id": take.take_id}
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode()  # the Lua reader keeps UTF-8 as is
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
