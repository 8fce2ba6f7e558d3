"""Live playback: each finished take plays through an audio output (sounddevice, PortAudio), starting on
a bar line of the followed transport.

Where it starts: at the take's own start bar if that is still ahead (by more than the output latency),
else at the next bar line; when the transport is stopped, at once. The start is scheduled on PortAudio's
own clock (``outputBufferDacTime``), so a take starts on the sample it was scheduled for, not on whichever
buffer happens to be running when it arrives, and a voice that starts late skips what it missed to stay
on the grid.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional

import numpy as np

from stemd.bridge.delivery import DeliveredTake
from stemd.bridge.transport import Transport
from stemd.errors import StemdError

SAFETY_S = 0.02  # scheduling margin on top of the output latency


class PlaybackError(StemdError):
    code = "bad_arguments"


@dataclass
class Voice:
    audio: np.ndarray  # float32 (n, channels)
    start: float  # stream time (seconds) of its first sample
    pos: int = 0
    started_at: Optional[float] = None  # stream time its first sample was actually played at
    done: threading.Event = field(default_factory=threading.Event)


class Mixer:
    """Sums scheduled voices into output buffers; one call per PortAudio callback."""

    def __init__(self, channels: int):
        self.channels = channels
        self.voices: list[Voice] = []
        self._lock = threading.Lock()

    def add(self, audio: np.ndarray, start: float) -> Voice:
        """``audio`` float32 (channels, n), first sample at stream time ``start``."""
        frames = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).T)
        if frames.shape[1] != self.channels:
            frames = np.repeat(frames[:, :1], self.channels, axis=1) if frames.shape[1] == 1 else frames[:, :self.channels]
        voice = Voice(frames, start)
        with self._lock:
            self.voices.append(voice)
        return voice

    def remove(self, voice: Voice) -> None:
        """Stop ``voice`` now (it is silent from the next buffer on)."""
        with self._lock:
            if voice in self.voices:
                self.voices.remove(voice)
        voice.done.set()

    def render(self, out: np.ndarray, dac_time: float, rate: int) -> None:
        out.fill(0)
        frames = out.shape[0]
        with self._lock:
            voices = list(self.voices)
        for v in voices:
            if v.started_at is None:
                offset = int(round((v.start - dac_time) * rate))
                if offset >= frames:
                    continue
                dst, src = max(offset, 0), max(-offset, 0)  # late: skip what was missed, stay on the grid
                v.started_at = dac_time + dst / rate
            else:
                dst, src = 0, v.pos
            n = max(0, min(frames - dst, len(v.audio) - src))
            out[dst:dst + n] += v.audio[src:src + n]
            v.pos = src + n
            if v.pos >= len(v.audio):
                v.done.set()
                with self._lock:
                    if v in self.voices:
                        self.voices.remove(v)


def start_quarters(take: DeliveredTake, state, lead_s: float) -> Optional[Fraction]:
    """The transport position (quarters) where ``take`` should start; None: now (transport stopped)."""
    if not state.playing:
        return None
    bar_q = state.meter.bar_quarters
    earliest = state.quarters + Fraction(lead_s) * state.bpm / 60
    own = take.start_bar * take.request.meter.bar_quarters
    if own >= earliest:
        return own
    return math.ceil(earliest / bar_q) * bar_q


class LivePlayer:
    sets_state = "playing"

    def __init__(self, transport: Transport, device=None, channels: int = 2):
        self.transport, self.device, self.channels = transport, device, channels
        self.mixer = Mixer(channels)
        self.stream = None
        self.rate: Optional[int] = None
        self.last: Optional[Voice] = None

    def _open(self, rate: int) -> None:
        if self.stream is not None and self.rate == rate:
            return
        try:
            import sounddevice as sd
        except OSError as e:  # no PortAudio library
            raise PlaybackError(f"live playback needs PortAudio (Debian: libportaudio2): {e}") from None
        if self.stream is not None:
            self.stream.close()
        device = int(self.device) if isinstance(self.device, str) and self.device.isdigit() else self.device

        def callback(outdata, frames, time_info, status):
            self.mixer.render(outdata, time_info.outputBufferDacTime, rate)

        try:
            self.stream = sd.OutputStream(samplerate=rate, channels=self.channels, dtype="float32", device=device,
                                          callback=callback, latency="low")
            self.stream.start()
        except (sd.PortAudioError, ValueError) as e:
            raise PlaybackError(f"cannot open the audio output {device or '(default)'} at {rate} Hz: {e}") from None
        self.rate = rate

    def deliver(self, take: DeliveredTake) -> None:
        if take.variation:
            return  # variations 2, 3 ... are on disk; only the first plays (they would play on top of it)
        self.play(take)

    def play(self, take: DeliveredTake, replace: bool = False) -> Voice:
        """Schedule ``take`` (any variation) on the grid; ``replace``: stop what this player started
        last (auditioning variation after variation plays one at a time, not on top of each other)."""
        self._open(take.sample_rate)
        if replace and self.last is not None:
            self.mixer.remove(self.last)
        lead = float(self.stream.latency) + SAFETY_S
        state = self.transport.now()
        quarters = start_quarters(take, state, lead)
        now_mono, now_stream = time.monotonic(), self.stream.time
        if quarters is None:
            start = now_stream + lead
        else:
            at_mono = state.at + state.seconds_until_quarters(quarters)
            start = now_stream + (at_mono - now_mono)
        self.last = self.mixer.add(take.audio, start)
        return self.last

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
