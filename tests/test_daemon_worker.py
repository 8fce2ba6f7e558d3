"""The worker in process: what each ending of a request sends, and that a take is on disk before `done`."""

from pathlib import Path

import numpy as np

from stemd.daemon.takeio import spec_from_request
from stemd.daemon.scheduler import Job
from stemd.daemon.service import Service, Settings
from stemd.daemon.worker import Worker
from stemd.models.base import AudioStream, Engine, EngineError
from stemd.models.click import ClickEngine
from stemd.models.pool import ModelPool
from stemd.protocol import GenerateRequest


class RecordingClient:
    """Stands in for a connection: records what the worker sends, and whether each take existed then."""

    stream, key, name = True, ("test", 1), "test"

    def __init__(self):
        self.sent = []

    def send(self, address, *args):
        on_disk = Path(args[2]).exists() if address == "/stemd/take" else None
        self.sent.append((address, args, on_disk))

    def addresses(self):
        return [a for a, _args, _d in self.sent]


def run_one(engine: Engine, tmp_path: Path, **request) -> RecordingClient:
    service = Service(ModelPool.of(engine), Settings(out=tmp_path))
    worker = Worker(service, "cpu")
    client = RecordingClient()
    request = GenerateRequest("r", seed=1, **request)
    job = Job(request, client, spec_from_request(request, engine))
    service.register(job)
    service.scheduler.submit(job)
    worker.run_job(service.scheduler.next_job(timeout=0))
    return client


def test_the_take_is_on_disk_before_take_and_done_are_sent(tmp_path):
    client = run_one(ClickEngine(), tmp_path, bars=2, variations=2)
    addresses = client.addresses()
    assert addresses.count("/stemd/chunk") == 4 and addresses[-5:] == [
        "/stemd/sidecar", "/stemd/take", "/stemd/sidecar", "/stemd/take", "/stemd/done"]
    assert [d for a, _args, d in client.sent if a == "/stemd/take"] == [True, True]


class Failing(Engine):
    name = "failing"

    def __init__(self, bars_before: int, error: bool):
        self.bars_before, self.error = bars_before, error

    def stream(self, spec, **_kw):
        def blocks():
            click = ClickEngine().stream(spec)
            for i, block in enumerate(click.blocks):
                if i == self.bars_before:
                    if self.error:
                        raise EngineError("the device fell over")
                    return  # ends early without a word
                yield block
        return AudioStream(spec.sample_rate, spec.channels, blocks(), on_grid=True)


def test_an_engine_error_ends_the_request_with_its_code_and_writes_nothing(tmp_path):
    client = run_one(Failing(1, error=True), tmp_path, bars=3)
    assert client.addresses().count("/stemd/chunk") == 1
    assert client.sent[-1][:2] == ("/stemd/error", ("r", "engine_error", "the device fell over"))
    assert not list(tmp_path.glob("*.wav"))


def test_audio_that_ends_short_is_padded_to_whole_bars(tmp_path):
    # the chunker pads a stream that ends early with silence: the take is still whole bars
    client = run_one(Failing(1, error=False), tmp_path, bars=3)
    chunks = [args for a, args, _d in client.sent if a == "/stemd/chunk"]
    assert [c[2] for c in chunks] == [0, 1, 2] and client.addresses()[-1] == "/stemd/done"
    assert not np.frombuffer(chunks[2][6], "<f4").any()


# --- the outbox: a connection's replies, without sockets ------------------------------------------
class Transport:
    def __init__(self):
        self.written, self.closed, self.pending = [], False, []

    def schedule(self, fn):          # the event loop: run later, when the test says
        self.pending.append(fn)

    def run(self):
        while self.pending:
            self.pending.pop(0)()


def outbox(limit=100):
    from stemd.daemon.outbox import Outbox

    t = Transport()
    return Outbox(limit, t.written.append, lambda: setattr(t, "closed", True), t.schedule), t


def test_the_outbox_writes_in_order_with_one_scheduled_flush_and_holds_while_paused():
    box, t = outbox()
    assert [box.put(b"a"), box.put(b"bb")] == ["queued", "queued"] and len(t.pending) == 1
    t.run()
    assert t.written == [b"abb"] and box.bytes == 0          # small replies leave in one write
    box.pause()
    box.put(b"ccc")
    t.run()
    assert t.written == [b"abb"] and box.bytes == 3
    box.resume()
    assert t.written[-1] == b"ccc" and box.bytes == 0


def test_a_box_at_its_limit_asks_its_producer_to_wait_and_a_dropped_one_refuses():
    box, t = outbox(limit=10)
    box.pause()
    assert [box.put(b"x" * 6), box.put(b"x" * 6)] == ["queued", "queued"]     # 12 bytes wait
    assert box.over(1) == "client" and box.put(b"y") == "queued"              # the worker waits; put never drops
    box.lost()                                                                # dropped: the server decides
    assert box.put(b"z") == "refused" and box.bytes == 0 and box.over(1) == ""
    box.resume()
    t.run()
    assert t.written == [] and not t.closed


def test_close_when_flushed_sends_what_waits_then_closes_and_a_lost_connection_forgets():
    box, t = outbox()
    box.put(b"bye")
    box.close_when_flushed()
    assert not box.accepting and box.put(b"last words") == "queued"          # replies still go out
    t.run()
    assert b"".join(t.written) == b"byelast words" and t.closed and box.state == "closed"
    assert box.put(b"late") == "refused"
    other, t2 = outbox()
    other.put(b"a")
    other.lost()
    t2.run()
    assert t2.written == [] and other.put(b"b") == "refused"


def test_each_ending_is_told_from_one_place(tmp_path):
    # what a client hears on cancel, shutdown, disconnect and failure: Service decides, once
    engine = ClickEngine()
    service = Service(ModelPool.of(engine), Settings(out=tmp_path))
    heard = {}
    for reason in ("cancel", "shutdown", "disconnect"):
        client = RecordingClient()
        client.key = ("test", reason)
        request = GenerateRequest("r", seed=1, bars=1)
        job = Job(request, client, spec_from_request(request, engine))
        service.scheduler.submit(job)
        service.register(job)
        if reason == "shutdown":
            service.cancel_all()
        elif reason == "disconnect":
            service.drop_client(client, "disconnect")
        else:
            assert service.scheduler.cancel(job, "cancel")
            service.cancelled(job, "cancel", queued=True)
        heard[reason] = [(a, args) for a, args, _d in client.sent]
        assert job.state == "cancelled" and not service.active
        # remembered for /stemd/status, without the client's connection; forgotten once the client left
        assert service.lookup(client, "r") is (None if reason == "disconnect" else job)
        assert not isinstance(job.client, RecordingClient)
    assert heard == {"cancel": [("/stemd/cancelled", ("r",))],
                     "shutdown": [("/stemd/error", ("r", "shutting_down",
                                                    "the daemon is stopping; the request was cancelled"))],
                     "disconnect": []}


def test_the_pool_bounds_what_all_peers_hold_and_idle_counts_from_the_last_byte_taken():
    from stemd.daemon.outbox import Outbox, Pool

    pool, now, held = Pool(16), [0.0], [0]
    a, b = (Outbox(100, lambda d: None, lambda: None, lambda fn: None, pool, clock=lambda: now[0],
                   buffered=lambda: held[0]) for _ in "ab")
    a.pause()
    b.pause()
    assert a.put(b"a" * 10) == "queued" and a.put(b"a" * 5) == "queued" and pool.bytes == 15
    assert a.over(2) == "total" and b.over(2) == "total" and not b.over(1)   # the pool is full: producers wait
    assert a.idle() == 0
    now[0] = 31.0
    assert a.stalled(30) and not a.stalled(40)
    a.resume()                                                          # the transport takes it all ...
    held[0] = 15                                                        # ... and holds it: nothing was read
    assert a.bytes == 0 and pool.bytes == 0 and a.waiting() == 15 and a.idle() == 31.0
    now[0], held[0] = 32.0, 5                                           # the peer took 10 bytes
    assert a.idle() == 0.0 and a.over(1) == ""
    a.lost()
    assert pool.bytes == 0


def test_serve_imports_what_conform_runs_on_before_it_listens_when_a_model_is_conformed(tiny, tmp_path):
    """On a cold process scipy.signal alone took over a second to import: it belongs before the daemon
    listens, not in the first request's bar 1; a click-only daemon (never conformed) skips it. Fresh
    interpreters: this one may have imported it already."""
    import subprocess
    import sys

    code = """
import sys
from stemd.daemon.cmd_serve import warm
from stemd.models.pool import ModelEntry, ModelPool
source = sys.argv[1]
pool = ModelPool([ModelEntry("m", source)], ["cpu"], {"cpu": 8 << 30})
pool.preload()
before = 'scipy.signal' in sys.modules
warm(pool)
print(before, all(m in sys.modules for m in ('scipy.signal', 'soxr', 'pylibrb', 'stemd.models.conform.stream')))
"""
    said = {}
    for source in ("click", str(tiny)):
        out = subprocess.run([sys.executable, "-c", code, source], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        said[source] = out.stdout.split()[-2:]
    assert said == {"click": ["False", "False"], str(tiny): ["False", "True"]}, said
