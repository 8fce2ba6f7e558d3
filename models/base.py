"""What every engine promises: a spec in, a stream of audio blocks out.

An engine turns a :class:`GenerationSpec` into an :class:`AudioStream`: consecutive float32 blocks of
shape ``(variations, channels, n)`` at the engine's own rate. It checks ``should_stop`` between
decoding steps and raises :class:`Cancelled` when it returns True; it reports ``on_progress(fraction)``.
The pipeline (``stemd.models.pipeline``) conforms the stream to the DAW's rate and grid and cuts it
into bar-exact chunks; the daemon and ``stemd render`` only ever see those chunks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Iterator, Optional

import numpy as np

from stemd.errors import StemdError
from stemd.protocol import DEFAULT_SAMPLING, Sampling
from stemd.timing import Grid


class EngineError(StemdError):
    """An engine could not do what was asked; ``code`` is a stable protocol error code."""

    code = "engine_error"


class ModelNotFound(EngineError):
    code = "model_not_found"


class Cancelled(Exception):
    """Raised inside an engine when ``should_stop()`` said so between steps."""


@dataclass(frozen=True)
class Audio:
    """Audio with its rate: ``samples`` is float32 ``(channels, n)``."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


@dataclass(frozen=True)
class GenerationSpec:
    """Everything an engine needs for one request, already validated by the protocol layer."""

    grid: Grid
    bars: int
    prompt: str = ""
    start_bar: int = 0
    sample_rate: int = 48000          # the DAW's rate: what the pipeline delivers
    channels: int = 2                 # what the pipeline delivers (engines may produce 1 or 2)
    variations: int = 1
    seed: Optional[int] = None
    sampling: Sampling = DEFAULT_SAMPLING  # temperature, top-k, top-p, guidance (None: the model's own)
    continuation: Optional[Audio] = None   # the DAW's selection to continue from (trimmed from output)
    loop: bool = False                # make the take loop seamlessly at its bar length
    extra: dict = field(default_factory=dict)

    @property
    def seconds(self) -> Fraction:
        """Exact length of the take on the DAW's grid."""
        return self.grid.bar_start_seconds(self.start_bar + self.bars) - self.grid.bar_start_seconds(self.start_bar)


@dataclass
class AudioStream:
    """Audio as an engine makes it: consecutive blocks ``(variations, channels, n)`` at ``sample_rate``.

    ``on_grid`` is True when the engine already placed its audio exactly on the spec's grid at the
    spec's rate (the click engine); otherwise the pipeline conforms it. ``tempo_hint`` is the tempo the
    engine aimed for, a starting point for tempo estimation. ``need(n)``: the consumer can give nothing
    more until the stream has delivered ``n`` samples in all (conform, once it knows where bar 1 ends);
    an engine that streams in chunks may end its next block exactly there instead of on its own chunk
    grid. Engines that cannot leave it as it is (it does nothing).
    """

    sample_rate: int
    channels: int
    blocks: Iterator[np.ndarray]
    on_grid: bool = False
    tempo_hint: Optional[float] = None
    need: Callable[[int], None] = field(default=lambda _samples: None, repr=False)

    def close(self) -> None:
        close = getattr(self.blocks, "close", None)
        if close:
            close()


ProgressFn = Callable[[float], None]
StopFn = Callable[[], bool]


def never_stop() -> bool:
    return False


def no_progress(_fraction: float) -> None:
    return None


class Engine(ABC):
    """One model, held warm. Not thread-safe: one worker owns it."""

    name: str = "engine"
    #: the longest take (seconds) this engine accepts in one request
    max_seconds: float = 600.0
    #: the most variations per request
    max_variations: int = 16

    @classmethod
    def max_seconds_in(cls, folder) -> Optional[float]:
        """The longest take (seconds) of the checkpoint in ``folder`` before it loads (None: known once it loads):
        the model pool reads it when it locates each model, so dispatch refuses a longer take at once."""
        return cls.max_seconds

    @abstractmethod
    def stream(self, spec: GenerationSpec, *, should_stop: StopFn = never_stop,
               on_progress: ProgressFn = no_progress) -> AudioStream:
        """Start generating; audio is produced lazily as the returned stream's blocks are pulled."""

    def info(self) -> dict:
        """What a ``/stemd/pong`` or ``stemd doctor`` says about this engine."""
        return {"model": self.name, "device": "cpu", "dtype": "float32"}

    def modules(self) -> list:
        """The torch modules this engine holds on its device (none: the click engine)."""
        return []

    def device_bytes(self) -> int:
        """Bytes this engine's tensors hold on its device now: weights, buffers and kept caches."""
        seen, total = set(), 0
        for module in self.modules():
            for tensor in [*module.parameters(), *module.buffers()]:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
        return total

    def reset(self) -> None:
        """Drop what the engine keeps between requests (caches sized for the last one): after an
        out-of-memory error, the next request allocates afresh."""


def is_out_of_memory(error: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA, and what MPS raises), a ``MemoryError``, or an allocator's
    ``RuntimeError`` saying so (a CPU allocation that failed)."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "failed to allocate" in text
                                                or "can't allocate memory" in text)
