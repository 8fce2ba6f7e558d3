"""Run a job: skip finished takes, render the missing batches (here or on Ray), write files and manifest.

The manifest is rewritten after every batch and when a run stops on an error or ^C, so it never
lists a take that is not finished; after a hard kill it may miss the takes of the batch in flight,
which the next run finds on disk (by the rule in ``files``) and lists.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from stemd.daemon.render.files import TakeFiles, is_finished, read_sidecar, remove_partials, write_take_files
from stemd.daemon.render.job import Batch, RenderJob, JobError
from stemd.daemon.render.manifest import entry, write_manifest
from stemd.daemon.render.progress import RenderProgress

LOCK_FILE = ".stemd-render.lock"


@dataclass
class RenderResult:
    manifest: Path
    planned: int
    skipped: int
    written: list = field(default_factory=list)  # paths of takes written by this run
    contact_sheet: Optional[Path] = None
    contact_png: Optional[Path] = None
    takes_per_minute: float = 0.0


def run_job(job: RenderJob, *, ray_address: Optional[str] = None, ray_workers: Optional[int] = None,
            progress: Optional[bool] = None, on_take: Callable[[Path], None] = lambda p: None) -> RenderResult:
    out = Path(job.out)
    batches = job.batches()
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        return _run_locked(job, out, batches, ray_address, ray_workers, progress, on_take)


@contextmanager
def folder_lock(out: Path):
    """One render per folder at a time (two would delete each other's half-written files)."""
    import fcntl

    with open(out / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(f"another stemd render is writing to {out}; wait for it or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_locked(job, out, batches, ray_address, ray_workers, progress, on_take) -> RenderResult:
    remove_partials(out)
    plan = [t for b in batches for t in b.takes]
    rows = {}
    for t in plan:
        if is_finished(out, t.name, t.extension, t.keys):
            rows[t.name] = entry(t, read_sidecar(out, t.name))
    todo = [b for b in batches if any(t.name not in rows for t in b.takes)]
    result = RenderResult(out / "manifest.json", len(plan), len(rows))
    manifest_takes = {t.name: t for t in plan}
    write_manifest(out, job, plan, rows)

    def gather(files: list[TakeFiles]) -> None:
        for f in files:
            if f.name in rows:  # a finished variation of a batch redone for its missing siblings
                continue
            path = write_take_files(out, f)
            rows[f.name] = entry(manifest_takes[f.name], read_sidecar(out, f.name))
            result.written.append(path)
            on_take(path)
            bar.advance()
        write_manifest(out, job, plan, rows)

    missing = sum(1 for b in todo for t in b.takes if t.name not in rows)
    with RenderProgress(missing, enabled=progress) as bar:
        try:
            if ray_address:
                from stemd.daemon.render.cluster import render_on_ray

                render_on_ray(job, todo, ray_address, gather, workers=ray_workers)
            else:
                render_here(job, todo, gather)
        finally:  # an error or ^C mid-batch: the manifest still lists every take written
            write_manifest(out, job, plan, rows)
        result.takes_per_minute = bar.takes_per_minute()
    if job.contact_sheet:
        from stemd.daemon.render.contact import write_contact_sheet

        result.contact_sheet, result.contact_png = write_contact_sheet(out)
    return result


def render_here(job: RenderJob, batches: Iterable[Batch], gather: Callable[[list[TakeFiles]], None]) -> None:
    from stemd.daemon.render.worker import BatchRenderer

    renderer = BatchRenderer(job)
    for batch in batches:
        gather(renderer.render(batch))
