"""A progress bar for a render: takes done, takes per minute, ETA; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


class RenderProgress:
    """``with RenderProgress(total) as p: p.advance(n)``; rich on a terminal, nothing otherwise."""

    def __init__(self, total: int, *, enabled: bool | None = None, description: str = "rendering"):
        self.total, self.done = total, 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._progress = self._task = None
        self.description = description

    def __enter__(self) -> "RenderProgress":
        if self.enabled and self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(stderr=True))
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, rate="")
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._progress is not None:
            self._progress.update(self._task, advance=n, rate=f"{self.takes_per_minute():.1f} takes/min")

    def takes_per_minute(self) -> float:
        elapsed = time.monotonic() - self.started
        return 60.0 * self.done / elapsed if elapsed > 0 else 0.0

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
