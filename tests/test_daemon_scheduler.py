"""The scheduler's order, bounds and flags, in process (no sockets)."""

import threading

import pytest

from stemd.daemon.scheduler import Job, Scheduler
from stemd.protocol import GenerateRequest, ProtocolError


class Client:
    def __init__(self, key):
        self.key = self.name = key


def job(client, rid, priority="live"):
    return Job(GenerateRequest(rid, priority=priority), client)


def drain(scheduler):
    order = []
    while (j := scheduler.next_job(timeout=0)) is not None:
        order.append(j.id)
        scheduler.finished(j)
    return order


def test_live_before_offline_and_clients_take_turns():
    s, a, b, c = Scheduler(16), Client("a"), Client("b"), Client("c")
    for j in [job(a, "a-off", "offline"), job(a, "a1"), job(a, "a2"), job(a, "a3"), job(b, "b1"), job(c, "c1"),
              job(b, "b2")]:
        s.submit(j)
    assert drain(s) == ["a1", "b1", "c1", "a2", "b2", "a3", "a-off"]


def test_position_predicts_the_order():
    s, a, b = Scheduler(16), Client("a"), Client("b")
    jobs = [job(a, "a1"), job(a, "a2"), job(b, "b1"), job(a, "off", "offline")]
    for j in jobs:
        s.submit(j)
    assert [s.position(j) for j in jobs] == [0, 2, 1, 3]
    assert drain(s) == ["a1", "b1", "a2", "off"]


def test_a_full_queue_refuses_with_busy_and_a_closed_one_with_shutting_down():
    s, a = Scheduler(2), Client("a")
    s.submit(job(a, "1"))
    s.submit(job(a, "2"))
    with pytest.raises(ProtocolError) as e:
        s.submit(job(a, "3"))
    assert e.value.code == "busy"
    s.close()
    with pytest.raises(ProtocolError) as e:
        s.submit(job(a, "4"))
    assert e.value.code == "shutting_down"
    assert drain(s) == ["1", "2"]  # what was accepted still runs


def test_a_live_job_flags_a_running_offline_job_to_yield_and_requeue_puts_it_first_again():
    s, a, b = Scheduler(4), Client("a"), Client("b")
    render = job(a, "render", "offline")
    s.submit(render)
    assert s.next_job(timeout=0) is render and not render.should_stop()
    s.submit(job(b, "pad"))
    assert render.preempt and render.should_stop()
    s.requeue(render)
    s.finished(render)
    assert not render.preempt
    assert drain(s) == ["pad", "render"]


def test_cancel_removes_a_queued_job_and_flags_a_running_one():
    s, a = Scheduler(4), Client("a")
    running, waiting = job(a, "r"), job(a, "w")
    s.submit(running)
    s.submit(waiting)
    assert s.next_job(timeout=0) is running
    assert s.cancel(waiting, "cancel") is True and waiting.state == "cancelled"
    assert s.cancel(running, "cancel") is False and running.should_stop()
    s.finished(running)
    assert drain(s) == []


def test_next_job_blocks_until_work_arrives():
    s, a = Scheduler(4), Client("a")
    got = []
    t = threading.Thread(target=lambda: got.append(s.next_job(timeout=5)))
    t.start()
    s.submit(job(a, "late"))
    t.join(5)
    assert got and got[0].id == "late"
