"""Commands a running bridge takes: from stdin lines and from OSC on a local UDP port.

    stdin                               OSC (udp://127.0.0.1:9131)
    generate PROMPT [BARS [START_BAR]]  /stemd/bridge/generate ,s[i[i]]
    reroll ID                           /stemd/bridge/reroll ,s
    extend ID [BARS]                    /stemd/bridge/extend ,s[i]
    accept ID                           /stemd/bridge/accept ,s
    cancel ID                           /stemd/bridge/cancel ,s
    next ID                             /stemd/bridge/next ,s        (choose and play the next variation)
    previous ID                         /stemd/bridge/previous ,s
    audition ID                         /stemd/bridge/audition ,s    (play the chosen variation again)
    takes                               /stemd/bridge/takes
    quit

Every OSC command is answered to its sender with ``/stemd/bridge/reply <text>`` (the new take id, or
``error: ...``); ``/stemd/midi/learn ACTION[:ARG]`` starts MIDI learn when the bridge has a ``--map``;
take state changes go to every sender seen as ``/stemd/bridge/take <id> <state> [file]``
(the file of the chosen variation).
"""

from __future__ import annotations

import socket
import threading

from stemd import osc
from stemd.bridge.udp import receive
from stemd.errors import StemdError
from stemd.midi.session import LEARN_ADDRESS, LEARNED_ADDRESS, LEARNING_ADDRESS

PREFIX = "/stemd/bridge/"
REPLY, TAKE = PREFIX + "reply", PREFIX + "take"


def run_command(bridge, argv: list, stop: threading.Event) -> str:
    if not argv:
        return ""
    name, rest = argv[0], list(argv[1:])
    ints = lambda values: [int(v) for v in values]  # noqa: E731
    if name == "generate" and rest:
        extra = ints(rest[1:3])
        return bridge.generate(str(rest[0]), extra[0] if extra else None,
                               start_bar=extra[1] if len(extra) > 1 else None)
    if name == "reroll" and len(rest) == 1:
        return bridge.reroll(str(rest[0]))
    if name == "extend" and 1 <= len(rest) <= 2:
        return bridge.extend(str(rest[0]), *ints(rest[1:]))
    if name == "accept" and len(rest) == 1:
        bridge.accept(str(rest[0]))
        return f"{rest[0]}: accepted"
    if name == "cancel" and len(rest) == 1:
        bridge.cancel(str(rest[0]))
        return f"{rest[0]}: cancel sent"
    if name in ("next", "previous", "prev") and len(rest) == 1:
        step = bridge.next_variation if name == "next" else bridge.previous_variation
        return step(str(rest[0]))
    if name == "audition" and len(rest) == 1:
        bridge.audition(str(rest[0]))
        return f"{rest[0]}: playing {bridge.take(str(rest[0])).file}"
    if name == "takes":
        return "\n".join(_take_line(t) for t in bridge.history.takes.values()) or "no takes yet"
    if name in ("quit", "exit"):
        stop.set()
        return "bye"
    raise StemdError(f"unknown command {' '.join(map(str, argv))!r}: generate PROMPT [BARS [START_BAR]], "
                     "reroll ID, extend ID [BARS], accept ID, cancel ID, next ID, previous ID, audition ID, "
                     "takes, quit", "bad_arguments")


def _take_line(t) -> str:
    """``t3 ready generate <chosen file>[ (variation 2 of 4)]``"""
    chosen = f" (variation {t.variation + 1} of {len(t.files)})" if len(t.files) > 1 else ""
    return f"{t.id} {t.state} {t.kind} {t.file or ''}".rstrip() + chosen


class CommandServer:
    """OSC commands on 127.0.0.1 UDP; answers each sender, tells every sender about take states."""

    def __init__(self, bridge, port: int, stop: threading.Event, host: str = "127.0.0.1"):
        self.bridge, self.stop_event = bridge, stop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            raise StemdError(f"cannot listen for OSC commands on {host}:{port}: {e.strerror} "
                             "(use --command-port to pick another, 0 for none)", "bad_arguments") from None
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.peers: set = set()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stemd-bridge-osc", daemon=True)
        bridge.subscribe(self._on_take)

    def start(self) -> "CommandServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=1)
        self.sock.close()

    def _send(self, peer, address: str, *args) -> None:
        try:
            self.sock.sendto(osc.encode_message(address, *args), peer)
        except OSError:
            self.peers.discard(peer)

    def _on_take(self, event) -> None:
        for peer in list(self.peers):
            chosen = event.files[event.variation:event.variation + 1] or event.files[:1]
            self._send(peer, TAKE, event.take_id, event.state, *chosen)

    def _run(self) -> None:
        for packet, peer in receive(self.sock, self._halt):
            if isinstance(packet, osc.OSCDecodeError):
                self._send(peer, REPLY, f"error: not OSC ({packet})")
                continue
            for message in osc.messages_in(packet):
                if message.address == LEARN_ADDRESS:
                    self._learn(message, peer)
                    continue
                if not message.address.startswith(PREFIX):
                    self._send(peer, REPLY, f"error: unknown address {message.address}")
                    continue
                self.peers.add(peer)
                argv = [message.address[len(PREFIX):], *message.args]
                try:
                    text = run_command(self.bridge, argv, self.stop_event)
                except (StemdError, ValueError, TypeError) as e:
                    text = f"error: {e}"
                self._send(peer, REPLY, text)

    def _learn(self, message, peer) -> None:
        """``/stemd/midi/learn ACTION[:ARG]`` (with ``--map``): ``/stemd/midi/learning`` now,
        ``/stemd/midi/learned <control> <action> <arg>`` when a control is bound."""
        session = getattr(self.bridge, "midi_session", None)
        if session is None:
            self._send(peer, REPLY, "error: no MIDI controller: start the bridge with --map FILE")
            return
        if len(message.args) != 1 or not isinstance(message.args[0], str):
            self._send(peer, REPLY, "error: /stemd/midi/learn takes one string: ACTION[:SLOT|PARAM|BANK]")
            return
        try:
            session.learn(message.args[0], then=lambda *learned: self._send(peer, LEARNED_ADDRESS, *learned))
        except StemdError as e:
            self._send(peer, REPLY, f"error: {e}")
            return
        self._send(peer, LEARNING_ADDRESS, message.args[0])
