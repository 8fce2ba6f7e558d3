"""MIDI ports through python-rtmidi (CoreMIDI, WinMM, ALSA, JACK): chosen by name or part of one,
watched, and reopened when they come back.

An input hands raw byte events to a callback from rtmidi's thread; we only queue them there (see
:class:`stemd.midi.session.MidiSession`). A port that is not there is a one-line
:class:`PortMissing` that lists the ports that are. rtmidi is imported when a port is opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Callable, Optional

from stemd.errors import StemdError

log = logging.getLogger("stemd.midi")

#: --midi-api names -> rtmidi API constant names
API_NAMES = {"jack": "API_UNIX_JACK", "alsa": "API_LINUX_ALSA", "coremidi": "API_MACOSX_CORE",
             "winmm": "API_WINDOWS_MM"}


class PortMissing(StemdError):
    code = "bad_arguments"
    ambiguous = False       # several ports match: more of the name is needed


def _rtmidi():
    try:
        import rtmidi
    except ImportError as e:  # pragma: no cover - a dependency of stemd
        raise StemdError(f"MIDI needs python-rtmidi: pip install python-rtmidi ({e})") from None
    return rtmidi


def default_api() -> str:
    """The platform's usual API: CoreMIDI, WinMM; on Linux ALSA when its sequencer exists, else JACK."""
    if sys.platform == "darwin":
        return "coremidi"
    if sys.platform.startswith("win"):
        return "winmm"
    if os.path.exists("/dev/snd/seq"):
        return "alsa"
    return "jack"


def api_id(name: str) -> int:
    rtmidi = _rtmidi()
    name = name or default_api()
    if name not in API_NAMES:
        raise StemdError(f"unknown MIDI API {name!r}; choose one of {', '.join(API_NAMES)}")
    api = getattr(rtmidi, API_NAMES[name])
    if api not in rtmidi.get_compiled_api():
        raise StemdError(f"this python-rtmidi was built without {name} support")
    return api


@contextlib.contextmanager
def quiet_native_stderr():
    """The MIDI and audio libraries write to fd 2 when a system is missing (ALSA's sequencer, a JACK
    server: a hundred lines); stemd's own line says it better. Python's own errors still raise."""
    os.environ.setdefault("JACK_NO_START_SERVER", "1")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _client(kind: str, api: int, client_name: str):
    rtmidi = _rtmidi()
    cls = rtmidi.MidiIn if kind == "input" else rtmidi.MidiOut
    try:
        with quiet_native_stderr():    # a missing JACK server or ALSA sequencer: our line, not theirs
            return cls(rtapi=api, name=client_name)
    except (rtmidi.SystemError, RuntimeError) as e:
        hint = " (is the JACK server running? start it or choose --midi-api)" if "JACK" in str(e) else ""
        raise StemdError(f"cannot open MIDI {kind}: {e}{hint}") from None


def match_port(pattern: str, names: list[str], kind: str) -> str:
    """The port called ``pattern``, else the one port whose name contains it (case-insensitive)."""
    if pattern in names:
        return pattern
    hits = [n for n in names if pattern.lower() in n.lower()]
    if len(hits) == 1:
        return hits[0]
    listing = ", ".join(repr(n) for n in names) or "none"
    if hits:
        e = PortMissing(f"MIDI {kind} {pattern!r} matches {len(hits)} ports ({', '.join(map(repr, hits))}); "
                        "give more of the name")
        e.ambiguous = True
        raise e
    raise PortMissing(f"no MIDI {kind} port matches {pattern!r}; {kind} ports: {listing}")


class Port:
    """One of our ports: ``pattern`` connects to an existing port (reopened when it comes back);
    ``virtual`` creates a port of our own that other programs connect to."""

    def __init__(self, kind: str, api: int, pattern: str = "", virtual: str = "", client_name: str = "stemd",
                 on_bytes: Optional[Callable[[list], None]] = None):
        assert kind in ("input", "output") and (pattern or virtual)
        self.kind, self.api, self.pattern, self.virtual = kind, api, pattern, virtual
        self.on_bytes = on_bytes
        self.client_name = client_name
        self.connected_to = ""  # the port we opened, when pattern is set
        self.reopened = 0
        self._rt = None
        self._probe = None  # a client kept for listing ports while ours is closed
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._rt is not None

    def names(self) -> list[str]:
        with self._lock:
            if self._rt is not None:
                return list(self._rt.get_ports())
            if self._probe is None:
                self._probe = _client(self.kind, self.api, self.client_name + "-probe")
            return list(self._probe.get_ports())

    def open(self) -> None:
        """Open now; :class:`PortMissing` (listing the ports there are) when no port matches."""
        target = match_port(self.pattern, self.names(), self.kind) if self.pattern else ""
        with self._lock:
            self._close_locked()
            rt = _client(self.kind, self.api, self.client_name)
            if self.kind == "input":
                rt.ignore_types(sysex=False, timing=True, active_sense=True)
                rt.set_callback(self._callback)
            if target:
                rt.open_port(list(rt.get_ports()).index(target), "in" if self.kind == "input" else "out")
            else:
                rt.open_virtual_port(self.virtual)
            self._rt, self.connected_to = rt, target

    def _callback(self, event, _data) -> None:
        if self.on_bytes is not None:
            self.on_bytes(event[0])

    def send(self, data: list) -> bool:
        """Send one message; False when the port is not open (feedback is best effort)."""
        with self._lock:
            if self._rt is None:
                return False
            self._rt.send_message(data)
            return True

    def check(self) -> None:
        """Close a port whose peer went away; reopen it when a matching port is back."""
        if not self.pattern:
            return
        try:
            names = self.names()
        except StemdError as e:
            log.debug("midi: cannot list %s ports: %s", self.kind, e)
            return
        if self._rt is not None and self.connected_to not in names:
            log.warning("midi: %s port %r went away; waiting for it to come back", self.kind, self.connected_to)
            self.close()
        elif self._rt is None:
            try:
                match_port(self.pattern, names, self.kind)
            except PortMissing:
                return
            self.open()
            self.reopened += 1
            log.warning("midi: %s port %r is back", self.kind, self.connected_to)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def shutdown(self) -> None:
        """Close the port and the probe client for good."""
        with self._lock:
            self._close_locked()
            if self._probe is not None:
                self._probe.delete()
                self._probe = None

    def _close_locked(self) -> None:
        if self._rt is not None:
            rt, self._rt = self._rt, None
            if self.kind == "input":
                rt.cancel_callback()
            rt.close_port()
            rt.delete()
