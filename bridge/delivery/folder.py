"""Takes into the DAW project's folder: one WAV per take (and variation) with a JSON sidecar: the daemon's
sidecar for the take as it came (``/stemd/sidecar``), with what the bridge did under ``"delivery"``."""

from __future__ import annotations

import datetime as _dt
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from stemd.protocol import GenerateRequest
from stemd.sidecar import DELIVERY, delivered
from stemd.takes import TakeClaims, take_name, take_prefix, write_take


class FolderWriter:
    """Names takes ``[<stem>_]<prompt words>_bar<NNN>_take<NN>[_v<k>]`` so a producer finds them in the
    DAW's browser; the variations of one take share its number."""

    def __init__(self, folder: Path, subtype: str = "float32"):
        self.folder = Path(folder)
        self.subtype = subtype
        self._lock = threading.Lock()
        self._numbers: dict[str, tuple] = {}  # take id -> (its number, its claim file)
        self._written: dict[str, int] = {}
        self._claims = TakeClaims(self.folder)

    def write(self, take_id: str, request: GenerateRequest, variation: Optional[int], audio: np.ndarray,
              sample_rate: int, received: Optional[str], daemon: str = "") -> Path:
        """``received``: the daemon's sidecar for this variation (None: it never came, and the file says so);
        ``daemon``: where it came from (host:port)."""
        prefix = take_prefix(request.prompt, request.start_bar, request.stem)
        sidecar = delivered(received, {"client": "stemd bridge", "daemon": daemon, "take_id": take_id,
                                       "daw_bar": request.start_bar + 1,
                                       "received": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
        with self._lock:  # two takes finishing together must not pick the same number
            if take_id not in self._numbers:    # claimed: another bridge or daemon on this folder skips it
                count = max(1, request.variations)

                def names(number: int) -> list:
                    stems = [take_name(request.prompt, request.start_bar, number, v if count > 1 else None,
                                       request.stem) for v in range(count)]
                    return [n + ext for n in stems for ext in (".json", ".wav")]

                self._numbers[take_id] = self._claims.claim(prefix, names)
            number, claim = self._numbers[take_id]
            name = take_name(request.prompt, request.start_bar, number, variation, request.stem)
            path = write_take(self.folder, name, audio, sample_rate, sidecar, self.subtype, under=DELIVERY)
            self._written[take_id] = self._written.get(take_id, 0) + 1
            if self._written[take_id] >= max(1, request.variations):
                claim.unlink(missing_ok=True)   # every variation is written: the number is taken by its files
            return path
