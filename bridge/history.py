"""Take history: every take the bridge asked for, by take id, persisted in the output folder.

A take's record (``stemd.lifecycle.TakeRecord``) keeps the request parameters (the generate keys,
without any continuation audio; a guide SMF as base64), so a take can be re-rolled (same parameters, new seed) or extended
(continue from its end) in a later session. The file is ``<out>/.stemd-history.json``, rewritten atomically on every change.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import re
import threading
from dataclasses import asdict
from pathlib import Path

from stemd import lifecycle
from stemd.errors import StemdError
from stemd.lifecycle import TakeRecord
from stemd.takes import atomic_write

HISTORY_FILE = ".stemd-history.json"


class UnknownTake(StemdError):
    code = "unknown_request"


class TakeHistory:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / HISTORY_FILE
        self._lock = threading.RLock()
        self.takes: dict[str, TakeRecord] = {}
        if self.path.exists():
            try:
                for raw in json.loads(self.path.read_text()).get("takes", []):
                    raw["params"] = {k: _unblob(v) for k, v in raw.get("params", {}).items()}
                    self.takes[raw["id"]] = TakeRecord(**raw)
            except (ValueError, KeyError, TypeError) as e:
                raise StemdError(f"{self.path} is not a stemd take history ({e}); move it away to start afresh",
                                 "bad_arguments") from None

    def new_id(self) -> str:
        """``t<n>``: short, typeable, unique within this output folder."""
        with self._lock:
            numbers = [int(m.group(1)) for m in (re.match(r"t(\d+)$", k) for k in self.takes) if m]
            return f"t{max(numbers, default=0) + 1}"

    def add(self, record: TakeRecord) -> TakeRecord:
        with self._lock:
            record.created = record.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            self.takes[record.id] = record
            self.save()
        return record

    def get(self, take_id: str) -> TakeRecord:
        with self._lock:
            if take_id not in self.takes:
                known = ", ".join(list(self.takes)[-8:]) or "none yet"
                raise UnknownTake(f"no take {take_id!r} in {self.folder} (recent: {known})")
            return self.takes[take_id]

    def set(self, take_id: str, **changes) -> TakeRecord:
        with self._lock:
            record = self.get(take_id)
            for key, value in changes.items():
                setattr(record, key, value)
            self.save()
            return record

    def accept(self, take_id: str) -> TakeRecord:
        """Keep a finished take, in its chosen variation: the history and that file's sidecar say
        ``accepted``."""
        with self._lock:
            record = self.get(take_id)
            lifecycle.accept(record)
            self.save()
            return record

    def save(self) -> None:
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps({"takes": [asdict(t) for t in self.takes.values()]}, indent=1,
                                               default=_blob) + "\n")


def _blob(value):
    """A blob parameter (a guide SMF) in the history file: ``{"base64": ...}``."""
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not a generate value")


def _unblob(value):
    if isinstance(value, dict) and list(value) == ["base64"]:
        return base64.b64decode(value["base64"])
    return value
