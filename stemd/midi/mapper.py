"""The mapping at work: MIDI messages in, actions on a target out, pad lights back.

:class:`Mapper` is pure logic (no ports, no threads): ``handle(message)`` for each incoming MIDI
message, ``take_state(take_id, state)`` when the bridge reports a take's progress, ``learn(spec)`` to
bind the next control that moves. Feedback goes out through the ``send`` callable as raw MIDI bytes.
Nothing a controller sends can raise out of ``handle``: a failing action is logged and forgotten.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from stemd.midi.actions import TAKE_ACTIONS, TAKE_STATES, ActionTarget
from stemd.errors import StemdError
from stemd.midi.learn import learn_into_file, parse_learn_spec
from stemd.midi.mapfile import Binding, Control, MidiMap

log = logging.getLogger("stemd.midi")

Send = Callable[[list], None]


def control_of(msg) -> Optional[tuple[Control, int]]:
    """(the control a message comes from, its value), for the messages a map can bind."""
    channel = getattr(msg, "channel", 0) + 1
    if msg.type == "note_on":
        return Control("note", msg.note, channel), msg.velocity
    if msg.type == "note_off":
        return Control("note", msg.note, channel), 0
    if msg.type == "control_change":
        return Control("cc", msg.control, channel), msg.value
    if msg.type == "program_change":
        return Control("program", msg.program, channel), 127
    return None


class Mapper:
    def __init__(self, midimap: MidiMap, target: ActionTarget, send: Optional[Send] = None,
                 on_learned: Optional[Callable[[Binding], None]] = None):
        self.map, self.target, self.send = midimap, target, send
        self.on_learned = on_learned
        self.bank = ""
        self.params: dict[str, Any] = {}      # knob values: override the slot presets once moved
        self.slot_take: dict[str, str] = {}   # the take each slot made last
        self.take_slot: dict[str, str] = {}
        self.take_states: dict[str, str] = {}
        self.focus: Optional[str] = None      # the take that slot-less take actions act on
        self._last: dict[Control, int] = {}   # last value of each CC (buttons fire on the rising edge)
        self._learning: Optional[tuple[str, str]] = None
        self._lock = threading.RLock()

    # --- MIDI in ---------------------------------------------------------------------------------
    def handle(self, msg) -> Optional[Binding]:
        """Act on one message; returns the binding it triggered (None: nothing bound or not a press)."""
        with self._lock:
            try:
                found = control_of(msg)
                if found is None:
                    return None
                control, value = found
                if self._learning and self._moved(control, value):
                    self._learn_now(control)
                    return None
                return self._dispatch(control, value)
            except Exception as e:  # a broken action never takes the MIDI thread down
                log.error("midi: %s failed: %s", msg, e)
                return None

    def _moved(self, control: Control, value: int) -> bool:
        action = self._learning[0] if self._learning else ""
        if action == "param":
            return control.kind == "cc"
        return control.kind != "note" or value > 0

    def _dispatch(self, control: Control, value: int) -> Optional[Binding]:
        previous = self._last.get(control, 0)
        self._last[control] = value
        for b in self.map.bindings:
            if not b.control.overlaps(control):
                continue
            if b.action == "param":
                self.params[b.param] = b.value(value)
                log.info("midi: %s = %s", b.param, self.params[b.param])
                return b
            pressed = value > 0 if control.kind != "cc" else (value >= 64 > previous)
            if not pressed:
                return None
            self._run(b)
            return b
        return None

    def _run(self, b: Binding) -> None:
        if b.action == "generate":
            params = {**self.map.slot_params(b.slot, self.bank), **self.params}
            take = self.target.generate(b.slot, params)
            if take:
                self._own(b.slot, str(take))
            log.info("midi: generate %s -> %s", b.slot, take)
        elif b.action == "bank":
            self.bank = b.bank
            log.info("midi: bank %s", b.bank or "(slots as written)")
        elif b.action in TAKE_ACTIONS:
            take = self.slot_take.get(b.slot) if b.slot else self.focus
            if take is None:
                log.info("midi: %s: no take yet%s", b.action, f" for slot {b.slot}" if b.slot else "")
                return
            new = getattr(self.target, b.action)(take)
            if isinstance(new, str) and new and new != take:  # reroll / extend made a new take
                slot = self.take_slot.get(take)
                if slot:
                    self._own(slot, new)
                else:
                    self.focus = new
            log.info("midi: %s %s", b.action, take)

    def _own(self, slot: str, take: str) -> None:
        self.slot_take[slot] = take
        self.take_slot[take] = slot
        self.focus = take

    # --- learn -----------------------------------------------------------------------------------
    def learn(self, spec: str) -> None:
        """Bind the next control that moves to ``spec`` (``ACTION[:SLOT|PARAM|BANK]``)."""
        with self._lock:
            if self.map.path.startswith("<"):
                raise StemdError("learn writes the binding into the map file: give --map FILE")
            self._learning = parse_learn_spec(spec, self.map)
            log.info("midi: learn %s: move a control", spec)

    @property
    def learning(self) -> bool:
        return self._learning is not None

    def _learn_now(self, control: Control) -> None:
        action, arg = self._learning  # type: ignore[misc]
        try:   # learning ends once the binding is in the file (a reader then finds it there)
            self.map = learn_into_file(self.map.path, control, action, arg)
        finally:
            self._learning = None
        bound = next(b for b in self.map.bindings if b.control == control)
        log.warning("midi: learned %s -> %s (%s:%d)", control.describe(), bound.describe(), self.map.path,
                    bound.line)
        self.refresh_lights()
        if self.on_learned:
            self.on_learned(bound)

    # --- feedback --------------------------------------------------------------------------------
    def take_state(self, take_id: str, state: str) -> None:
        """The bridge reports a take's state; the pad of the slot that made it lights up."""
        if state not in TAKE_STATES:
            log.debug("midi: ignoring unknown take state %r", state)
            return
        with self._lock:
            self.take_states[take_id] = state
            slot = self.take_slot.get(take_id)
            if slot and self.slot_take.get(slot) == take_id:
                self._light(slot, state)

    def refresh_lights(self) -> None:
        """Send every slot's current state (idle when it has no take): at start and after learn."""
        for slot in self.map.slots:
            take = self.slot_take.get(slot)
            self._light(slot, self.take_states.get(take, "idle") if take else "idle")

    def _light(self, slot: str, state: str) -> None:
        if self.send is None:
            return
        value = self.map.feedback[state]
        for b in self.map.bindings:
            if b.action != "generate" or b.slot != slot or not b.feedback or b.control.kind == "program":
                continue
            status = (0x90 if b.control.kind == "note" else 0xB0) | ((b.control.channel or 1) - 1)
            try:
                self.send([status, b.control.number, value])
            except Exception as e:  # a vanished output port: lights are best effort
                log.debug("midi: feedback not sent: %s", e)
