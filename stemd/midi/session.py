"""A running MIDI mapping: ports, the queue between rtmidi's thread and ours, the watchdog that
reopens ports, and the OSC address that starts MIDI learn.

rtmidi calls us from its own (on JACK: real-time) thread; the callback only appends the bytes to a
bounded queue. One worker thread decodes and maps them, so a slow action never blocks MIDI input, and
a flood (sysex, clock) costs at most the queue: the oldest events are dropped and counted.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
from typing import Callable, Optional

from stemd import osc
from stemd.midi.actions import ActionTarget
from stemd.midi.decode import MidiDecoder
from stemd.midi.mapfile import MidiMap
from stemd.midi.mapper import Mapper
from stemd.midi.ports import Port

log = logging.getLogger("stemd.midi")

LEARN_ADDRESS = "/stemd/midi/learn"    # ,s ACTION[:ARG]  -> bind the next control that moves
LEARNING_ADDRESS = "/stemd/midi/learning"  # reply (daemon): ,s ACTION[:ARG] -> waiting for a control
LEARNED_ADDRESS = "/stemd/midi/learned"  # reply: ,sss control action arg
QUEUE_EVENTS = 2048


class MidiSession:
    def __init__(self, midimap: MidiMap, target: ActionTarget, api: int, input_port: str = "",
                 output_port: str = "", virtual_in: str = "in", virtual_out: str = "",
                 client_name: str = "stemd", watch_seconds: float = 0.5):
        self.decoder = MidiDecoder()
        self.input = Port("input", api, pattern=input_port, virtual="" if input_port else virtual_in,
                          client_name=f"{client_name}-midi-in", on_bytes=self._enqueue)
        self.output = (Port("output", api, pattern=output_port, virtual="" if output_port else virtual_out,
                            client_name=f"{client_name}-midi-out")
                       if (output_port or virtual_out) else None)
        self.mapper = Mapper(midimap, target, send=self._send, on_learned=self._learned)
        self.dropped_events = 0
        self.errors = 0
        self.watch_seconds = watch_seconds
        self._queue: collections.deque = collections.deque()
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._osc: Optional[socket.socket] = None
        self._then: Optional[Callable] = None  # told the binding the current learn makes

    # --- life ------------------------------------------------------------------------------------
    def start(self) -> "MidiSession":
        """Open the ports (PortMissing when a named one is not there) and start the threads."""
        self.input.open()
        if self.output is not None:
            self.output.open()
        for name, fn in (("midi-map", self._work), ("midi-watch", self._watch)):
            t = threading.Thread(target=fn, name=f"stemd-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.mapper.refresh_lights()
        return self

    def close(self) -> None:
        self._stop.set()
        with self._ready:
            self._ready.notify_all()
        if self._osc is not None:
            self._osc.close()
        for t in self._threads:
            t.join(timeout=2)
        self.input.shutdown()
        if self.output is not None:
            self.output.shutdown()

    def __enter__(self) -> "MidiSession":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the bridge's side -------------------------------------------------------------------------
    def take_state(self, take_id: str, state: str) -> None:
        self.mapper.take_state(take_id, state)

    def learn(self, spec: str, then: Optional[Callable] = None) -> None:
        """Bind the next control that moves to ``spec``; ``then(*learned_args(binding))`` once it is bound
        (a newer learn replaces an older one, and its ``then``)."""
        self.mapper.learn(spec)
        self._then = then

    # --- threads ---------------------------------------------------------------------------------
    def _enqueue(self, data: list) -> None:
        with self._ready:
            if len(self._queue) >= QUEUE_EVENTS:
                self._queue.popleft()
                self.dropped_events += 1
            self._queue.append(data)
            self._ready.notify()

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._ready:
                while not self._queue and not self._stop.is_set():
                    self._ready.wait(0.5)
                batch = list(self._queue)
                self._queue.clear()
            for data in batch:
                try:
                    for msg in self.decoder.feed(data):
                        self.mapper.handle(msg)
                except Exception as e:  # never let one event end MIDI input
                    self.errors += 1
                    log.error("midi: event %r: %s", data[:8], e)

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_seconds):
            for port in (self.input, self.output):
                if port is None:
                    continue
                try:
                    port.check()
                except Exception as e:
                    log.warning("midi: %s port: %s", port.kind, e)

    def _send(self, data: list) -> None:
        if self.output is not None:
            self.output.send(data)

    # --- OSC learn -------------------------------------------------------------------------------
    def handle_osc(self, message: osc.Message, reply_to: Optional[tuple] = None) -> bool:
        """``/stemd/midi/learn ACTION[:ARG]``: True when the message was ours. Errors go to the log."""
        if message.address != LEARN_ADDRESS:
            return False
        if len(message.args) != 1 or not isinstance(message.args[0], str):
            log.error("midi: %s needs one string: ACTION[:SLOT|PARAM|BANK]", LEARN_ADDRESS)
            return True
        try:
            self.learn(message.args[0], then=lambda *args: self._reply(reply_to, args))
        except Exception as e:
            log.error("midi: learn %s: %s", message.args[0], e)
        return True

    def _reply(self, peer: Optional[tuple], args: tuple) -> None:
        if peer is not None and self._osc is not None:
            try:
                self._osc.sendto(osc.encode_message(LEARNED_ADDRESS, *args), peer)
            except OSError:
                pass

    def listen_osc(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve :data:`LEARN_ADDRESS` on UDP ``host:port`` (0: any free port); returns the port."""
        self._osc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._osc.bind((host, port))
        t = threading.Thread(target=self._osc_loop, name="stemd-midi-osc", daemon=True)
        t.start()
        self._threads.append(t)
        return self._osc.getsockname()[1]

    def _osc_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._osc.recvfrom(65536)  # type: ignore[union-attr]
            except OSError:
                return
            try:
                for message in osc.messages_in(osc.decode(data)):
                    self.handle_osc(message, peer)
            except osc.OSCDecodeError as e:
                log.warning("midi: bad OSC packet from %s: %s", peer, e)

    def _learned(self, binding) -> None:
        then, self._then = self._then, None
        if then is not None:
            try:
                then(*learned_args(binding))
            except Exception as e:  # the one who asked has gone
                log.warning("midi: could not say what was learned: %s", e)


def learned_args(binding) -> tuple:
    """What ``/stemd/midi/learned`` says: ``"cc 22", "param", "guidance"``."""
    c = binding.control
    return f"{c.kind} {c.number}", binding.action, binding.slot or binding.param or binding.bank
