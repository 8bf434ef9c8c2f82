"""The Python client against a real node: every call goes through Redis as PROTOCOL.md says,
so where the document and the code disagree these tests fail."""

import pytest

from bgnode import Rejected, TaskFailed, Timeout
from conftest import eventually


def test_call_runs_a_task_through_the_inbox_and_returns_its_result(cluster):
    assert cluster.call("echo", {"name": "Ada"}, timeout=20) == {"name": "Ada"}


def test_enqueue_many_stores_every_task_once(cluster):
    ids = cluster.enqueue_many([
        cluster.envelope("echo", i, reply=True, priority=i) for i in range(5)
    ])
    assert len(set(ids)) == 5
    assert [cluster.wait(i, timeout=20) for i in ids] == list(range(5))
    # Pushing the same envelopes again changes nothing: the id is the idempotency key.
    again = cluster.enqueue_many([cluster.envelope("echo", 99, id=ids[0])])
    assert again == [ids[0]]
    eventually(lambda: cluster.redis.llen("bg:inbox:processing") == 0
               and cluster.redis.llen("bg:inbox") == 0, "the inbox to drain")
    assert cluster.status(ids[0])["result"] == 0


def test_status_shows_the_record(cluster):
    task = cluster.enqueue("echo", [1, 2], reply=True, attempts=2)
    cluster.wait(task, timeout=20)
    status = cluster.status(task)
    assert status["state"] == "done"
    assert status["progress"] == 2
    assert status["args"] == [1, 2]
    assert status["result"] == [1, 2]
    assert status["attempts"] == "2"
    assert status["id"] == task
    assert cluster.status("no-such-task") is None


def test_a_failure_raises_with_the_workers_error(cluster):
    with pytest.raises(TaskFailed) as failed:
        cluster.call("fail", None, timeout=20, attempts=1)
    assert failed.value.state == "dead"
    assert "the disk is on fire" in failed.value.error


def test_cancel_a_waiting_task_and_a_running_one(cluster):
    later = cluster.enqueue("echo", None, in_="1h", reply=True)
    eventually(lambda: (cluster.status(later) or {}).get("state") == "scheduled",
               "the delayed task to be stored")
    assert cluster.cancel(later) == "cancelled"
    with pytest.raises(TaskFailed) as cancelled:
        cluster.wait(later, timeout=20)
    assert cancelled.value.state == "cancelled"
    assert cluster.cancel(later) == "finished"
    assert cluster.cancel("no-such-task") == "not_found"

    running = cluster.enqueue("nap", None, reply=True)
    eventually(lambda: (cluster.status(running) or {}).get("state") == "running",
               "the nap to start")
    assert cluster.cancel(running) == "requested"
    with pytest.raises(TaskFailed) as stopped:
        cluster.wait(running, timeout=20)
    assert stopped.value.state == "cancelled"


def test_retry_runs_a_finished_task_again(cluster):
    task = cluster.enqueue("echo", "again", reply=True)
    assert cluster.wait(task, timeout=20) == "again"
    assert cluster.retry(task) == "queued"
    eventually(lambda: cluster.status(task)["state"] == "done"
               and int(cluster.status(task)["epoch"]) > 0, "the task to run again")
    assert cluster.retry("no-such-task") == "not_found"
    waiting = cluster.enqueue("echo", None, in_="1h")
    eventually(lambda: cluster.status(waiting), "the delayed task to be stored")
    assert cluster.retry(waiting) == "not_finished"


def test_a_refused_envelope_is_reported_with_its_reason(cluster):
    task = cluster.enqueue("no-such-worker", None, reply=True)
    with pytest.raises(Rejected) as refused:
        cluster.wait(task, timeout=2)
    assert "unknown worker `no-such-worker`" in refused.value.reason
    bad = cluster.enqueue("echo", None, priority=500)
    eventually(lambda: cluster.rejection(bad), "the refusal to be listed")
    assert "outside -100..=100" in cluster.rejection(bad)


def test_a_wait_that_runs_out_says_so(cluster):
    task = cluster.enqueue("echo", None, in_="1h", reply=True)
    with pytest.raises(Timeout):
        cluster.wait(task, timeout=1)


def test_an_unknown_option_is_refused_before_anything_is_pushed(cluster):
    with pytest.raises(TypeError):
        cluster.envelope("echo", None, prority=1)
