"""Where finished takes go: the project folder (always), live playback, the DAW's timeline.

A delivery is an object with ``deliver(take: DeliveredTake) -> None``; the bridge calls each one, in
order, after the take's WAV and sidecar are on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemd.protocol import GenerateRequest


@dataclass
class DeliveredTake:
    take_id: str
    request: GenerateRequest
    variation: int
    path: Path  # the WAV in the project folder
    audio: np.ndarray  # float32 (channels, n)
    sample_rate: int
    start_sample: int  # where the take starts on the DAW timeline at ``sample_rate``

    @property
    def start_bar(self) -> int:
        return self.request.start_bar
