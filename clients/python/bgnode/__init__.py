"""A bgnode client for Python, written from PROTOCOL.md: plain Redis, no node needed.

Tasks go in through the inbox (``LPUSH bg:inbox``), so they are durable without Lua; results
come back on the reply list (``BLPOP bg:reply:{id}``); status is the task hash; cancel and retry
run the cluster's own scripts (``actors/store/lua``, each after ``common.lua``).

    from bgnode import Client
    bg = Client("redis://127.0.0.1:6379")
    print(bg.call("hello", {"name": "Ada"}, timeout=30))
"""

import json
import os
import uuid

import redis

__all__ = ["Client", "BgnodeError", "TaskFailed", "Rejected", "Timeout"]

# Envelope fields (PROTOCOL.md, "The envelope"), besides `worker`, `args` and `id`.
OPTIONS = (
    "priority", "attempts", "timeout", "backoff", "backoff_cap", "in", "at", "every", "cron",
    "deadline", "key", "result_key", "target", "reply",
)

# States of a finished task (PROTOCOL.md, "States").
FINISHED = ("done", "failed", "dead", "cancelled", "expired")

# The final events of a task and the state each one ends in.
FINAL = {"done": "done", "error": "failed", "dead": "dead", "cancelled": "cancelled",
         "expired": "expired"}

CANCEL = {1: "cancelled", 2: "requested", 0: "not_found", -1: "finished"}
RETRY = {1: "queued", 2: "deferred", 0: "not_found", -1: "not_finished"}


class BgnodeError(Exception):
    """Anything this client raises on purpose."""


class TaskFailed(BgnodeError):
    """The task ended without a result: `state` is failed, dead, cancelled or expired."""

    def __init__(self, task_id, state, error):
        super().__init__(f"task {task_id} {state}: {error}")
        self.id, self.state, self.error = task_id, state, error


class Rejected(BgnodeError):
    """The cluster refused the envelope; `reason` says why (from ``bg:rejected``)."""

    def __init__(self, task_id, reason):
        super().__init__(f"task {task_id} was refused: {reason}")
        self.id, self.reason = task_id, reason


class Timeout(BgnodeError):
    """The task had not finished when the wait ran out."""

    def __init__(self, task_id, seconds):
        super().__init__(f"task {task_id} did not finish within {seconds}s")
        self.id, self.seconds = task_id, seconds


def _default_scripts():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "..", "actors", "store", "lua"))


class Client:
    """A connection to a bgnode cluster's Redis.

    `prefix`, `channel` and `events` are the cluster's ``[redis] prefix``, ``channel`` and
    ``events``; `result_ttl` its ``[saver] result_ttl`` in seconds (cancel keeps a cancelled
    task that long); `scripts` the folder of the cluster's Lua scripts (the repository's
    ``actors/store/lua`` by default).
    """

    def __init__(self, url="redis://127.0.0.1:6379", prefix="bg", channel="background",
                 events=None, result_ttl=86400, scripts=None):
        self.redis = redis.Redis.from_url(url)
        self.prefix = prefix
        self.channel = channel
        self.events = events if events is not None else channel + ":events"
        self.result_ttl_ms = int(result_ttl * 1000)
        self.scripts = scripts or _default_scripts()
        self._loaded = {}

    # -- enqueueing ------------------------------------------------------------------------

    def envelope(self, worker, args=None, id=None, **options):
        """The envelope of a task: `options` are the envelope's other fields (``in`` is
        spelled ``in_``). A task always gets an id here, so that it can be waited for and a
        push retried without storing it twice."""
        env = {"worker": worker, "args": args, "id": id or str(uuid.uuid4())}
        for name, value in options.items():
            field = name.rstrip("_")
            if field not in OPTIONS:
                raise TypeError(f"unknown envelope field {name!r} (allowed: {', '.join(OPTIONS)})")
            if value is not None:
                env[field] = value
        return env

    def enqueue(self, worker, args=None, id=None, **options):
        """Pushes one task on the inbox; returns its id."""
        return self.enqueue_many([self.envelope(worker, args, id, **options)])[0]

    def enqueue_many(self, envelopes):
        """Pushes many envelopes (dicts, see `envelope`) with one ``LPUSH``; returns their ids
        in order. An envelope without an id is given one."""
        envelopes = [dict(e, id=e.get("id") or str(uuid.uuid4())) for e in envelopes]
        if not envelopes:
            return []
        self.redis.lpush(self._key("inbox"), *[json.dumps(e) for e in envelopes])
        return [e["id"] for e in envelopes]

    def call(self, worker, args=None, timeout=30, **options):
        """Enqueues a task with a reply and waits for its result."""
        options["reply"] = True
        return self.wait(self.enqueue(worker, args, **options), timeout)

    # -- results ---------------------------------------------------------------------------

    def wait(self, task_id, timeout=30):
        """Waits up to `timeout` seconds for the task's final event on its reply list (the
        task must have been enqueued with ``reply=True``) and returns its result. Raises
        `TaskFailed`, `Rejected` or `Timeout`."""
        popped = self.redis.blpop([self._key("reply", task_id)], timeout=timeout)
        if popped is not None:
            event = json.loads(popped[1])
            if event["event"] == "done":
                return event.get("result")
            raise TaskFailed(task_id, FINAL.get(event["event"], event["event"]),
                             event.get("error"))
        # The reply was popped by another waiter, or never asked for: the record says.
        status = self.status(task_id)
        if status is not None and status["state"] == "done":
            return status["result"]
        if status is not None and status["state"] in FINISHED:
            raise TaskFailed(task_id, status["state"], status.get("error"))
        if status is None:
            reason = self.rejection(task_id)
            if reason is not None:
                raise Rejected(task_id, reason)
        raise Timeout(task_id, timeout)

    def status(self, task_id):
        """The task record (``HGETALL bg:task:{id}``) with `args` and `result` read as JSON and
        `id` filled in, or None when there is no such task (or it expired). Fields at their
        defaults may be absent (PROTOCOL.md, "Task record")."""
        raw = self.redis.hgetall(self._key("task", task_id))
        if not raw:
            return None
        record = {k.decode(): v.decode() for k, v in raw.items()}
        record.setdefault("id", task_id)
        for field in ("args", "result"):
            if field in record:
                try:
                    record[field] = json.loads(record[field])
                except ValueError:
                    pass
        record["progress"] = {"running": 1, "retrying": 1}.get(record.get("state"), 0)
        if record.get("state") in FINISHED:
            record["progress"] = 2
        return record

    def rejection(self, task_id):
        """The reason the inbox refused the message with this id, if ``bg:rejected`` still
        lists it."""
        for entry in reversed(self.rejected()):
            if entry.get("id") == task_id:
                return entry["reason"]
        return None

    def rejected(self):
        """The refused inbox messages kept on ``bg:rejected``, oldest first."""
        return [json.loads(e) for e in self.redis.lrange(self._key("rejected"), 0, -1)]

    # -- cancel and retry ------------------------------------------------------------------

    def cancel(self, task_id):
        """Cancels a task: ``cancelled`` (it was waiting), ``requested`` (its node was asked
        to stop it), ``not_found`` or ``finished``."""
        code = self._run("cancel.lua", [self._key("task", task_id)],
                         [self.prefix, task_id, self.result_ttl_ms, self.channel, self.events])
        return CANCEL[code]

    def retry(self, task_id):
        """Queues a finished task again: ``queued``, ``deferred``, ``not_found`` or
        ``not_finished``."""
        code = self._run("retry.lua", [self._key("task", task_id)],
                         [self.prefix, task_id, self.channel, self.events])
        return RETRY[code]

    # -- plumbing --------------------------------------------------------------------------

    def _key(self, *parts):
        return ":".join((self.prefix,) + parts)

    def _run(self, name, keys, args):
        script = self._loaded.get(name)
        if script is None:
            with open(os.path.join(self.scripts, "common.lua"), encoding="utf-8") as f:
                text = f.read()
            with open(os.path.join(self.scripts, name), encoding="utf-8") as f:
                text += f.read()
            script = self._loaded[name] = self.redis.register_script(text)
        return int(script(keys=keys, args=args))
