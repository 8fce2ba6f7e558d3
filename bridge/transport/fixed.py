"""``--follow fixed:BPM[:METER]``: no DAW; a steady transport that starts playing at bar 1 now."""

from __future__ import annotations

from stemd.timing import Meter, Tempo, TimingError

from stemd.bridge.transport import FollowError, Transport


class FixedFollower:
    def __init__(self, transport: Transport, bpm, meter="4/4"):
        self.transport = transport
        transport.update(bpm=bpm, meter=meter, quarters=0, playing=True)

    @classmethod
    def parse(cls, rest: str, transport: Transport) -> "FixedFollower":
        bpm, _, meter = rest.partition(":")
        try:
            return cls(transport, Tempo(bpm or "120").bpm, Meter.parse(meter or "4/4"))
        except TimingError as e:
            raise FollowError(f"--follow fixed:{rest}: {e}") from None

    def stop(self) -> None:
        pass
