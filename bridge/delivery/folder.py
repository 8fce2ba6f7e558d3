"""Takes into the DAW project's folder: one WAV per take (and variation) with a JSON sidecar."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from stemd.protocol import GenerateRequest
from stemd.takes import next_take_number, take_name, take_prefix, write_take


class FolderWriter:
    """Names takes ``[<stem>_]<prompt words>_bar<NNN>_take<NN>[_v<k>]`` so a producer finds them in the
    DAW's browser; the variations of one take share its number."""

    def __init__(self, folder: Path, subtype: str = "float32"):
        self.folder = Path(folder)
        self.subtype = subtype
        self._lock = threading.Lock()
        self._numbers: dict[str, int] = {}  # take id -> its number

    def write(self, take_id: str, request: GenerateRequest, variation: Optional[int], audio: np.ndarray,
              sample_rate: int, extra: dict) -> Path:
        prefix = take_prefix(request.prompt, request.start_bar, request.stem)
        sidecar = {"take_id": take_id, **request.sidecar(variation or 0), "daw_bar": request.start_bar + 1,
                   **extra}
        with self._lock:  # two takes finishing together must not pick the same number
            number = self._numbers.get(take_id) or next_take_number(self.folder, prefix)
            self._numbers[take_id] = number
            name = take_name(request.prompt, request.start_bar, number, variation, request.stem)
            return write_take(self.folder, name, audio, sample_rate, sidecar, self.subtype)
