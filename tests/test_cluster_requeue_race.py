"""A job put back in the queue (preempted, or its cluster replica lost) and taken at once by another
worker, before the first worker has said it is done with it: the second worker's claim must stay.

The interleaving is fixed by hand: worker "a" runs the job, re-queues it, and worker "b" takes it before
"a"'s ``finished``. The local multi-device path (daemon.worker.Worker) and ``stemd serve --ray``'s replica
slots (daemon.cluster.frontdoor.RemoteWorker) end their jobs through the same loop."""

from types import SimpleNamespace

from stemd.daemon.scheduler import Job, Scheduler
from stemd.daemon.worker import Worker
from stemd.protocol import GenerateRequest


class Client:
    key = name = "daw"


class RequeuingWorker(Worker):
    """Runs one job by handing it back, and lets worker "b" take it before this one is done with it."""

    def __init__(self, service, device):
        super().__init__(service, device)
        self.taken_by_b = None

    def run_job(self, job: Job) -> None:
        scheduler = self.service.scheduler
        scheduler.requeue(job, first=True)              # as a preemption or a lost replica does
        self.taken_by_b = scheduler.next_job(timeout=0, device="b")


def test_a_requeued_job_taken_by_another_worker_keeps_that_workers_claim():
    scheduler = Scheduler(4, devices=("a", "b"))
    job = Job(GenerateRequest("take-1", bars=6, bpm=97, meter="3/4", priority="offline"), Client())
    scheduler.submit(job)
    scheduler.close()                                   # the worker's loop ends once the queue is empty
    worker = RequeuingWorker(SimpleNamespace(scheduler=scheduler), "a")
    worker.run()                                        # here, on this thread: the order above, every time
    assert worker.taken_by_b is job
    assert scheduler.running_on == {"b": job}           # "a" is free, "b" still runs the job
    assert scheduler.running_jobs() == [job]
    scheduler.finished(job, "b")
    assert scheduler.running_on == {}


def test_finished_without_a_device_frees_the_device_the_job_last_ran_on():
    scheduler = Scheduler(4, devices=("a", "b"))
    first = Job(GenerateRequest("one", bars=2, bpm=97, meter="7/8"), Client())
    second = Job(GenerateRequest("two", bars=2, bpm=97, meter="7/8"), Client())
    scheduler.submit(first)
    scheduler.submit(second)
    assert scheduler.next_job(timeout=0, device="a") is first
    assert scheduler.next_job(timeout=0, device="b") is second
    scheduler.finished(first)                           # (the service's ending of a job says no device)
    assert scheduler.running_on == {"b": second}
