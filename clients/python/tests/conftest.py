"""A real redis-server on a free port in a temporary folder and a real `bgnode start` (the
binary named by BGNODE_BIN), both started here for the session and stopped after it."""

import os
import socket
import subprocess
import tempfile
import time

import pytest
import redis

from bgnode import Client


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(check, what, timeout=20.0):
    """Polls `check` until it returns something true, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def script(folder, name, body):
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(body)
    os.chmod(path, 0o755)


@pytest.fixture(scope="session")
def cluster():
    binary = os.environ.get("BGNODE_BIN")
    if not binary:
        pytest.fail("BGNODE_BIN must name the bgnode binary to test")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}"
        workers = os.path.join(tmp, "workers")
        os.mkdir(workers)
        script(workers, "echo.sh", "#!/bin/sh\ncat\n")
        script(workers, "fail.sh", "#!/bin/sh\necho 'the disk is on fire' >&2\nexit 3\n")
        script(workers, "nap.sh", "#!/bin/sh\nsleep 30\n")
        log = open(os.path.join(tmp, "node.log"), "wb")
        node = None
        try:
            probe = redis.Redis.from_url(url)
            eventually(lambda: _pings(probe), "redis-server to answer")
            env = dict(os.environ)
            env.pop("BGNODE_CONFIG", None)
            env.pop("BGNODE_BIN", None)  # not a setting: the node would refuse it
            env.update({
                "BGNODE_REDIS__URL": url,
                "BGNODE_NODE__ID": "py1",
                "BGNODE_NODE__LISTEN": f"127.0.0.1:{free_port()}",
                "BGNODE_NODE__COOKIE": "python-test-cookie",
                "BGNODE_WORKERS__DIR": workers,
                "BGNODE_HTTP__LISTEN": f"127.0.0.1:{free_port()}",
            })
            node = subprocess.Popen([binary, "start"], env=env, cwd=tmp,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=log)
            # Ready once it holds the ingress lease: then it drains the inbox.
            try:
                eventually(lambda: probe.get("bg:ingress") or node.poll() is not None,
                           "the node to take the ingress lease")
                assert node.poll() is None, "the node exited"
            except AssertionError:
                log.flush()
                with open(log.name, encoding="utf-8", errors="replace") as f:
                    raise AssertionError("the node did not start; its log:\n" + f.read())
            yield Client(url)
        finally:
            if node is not None:
                node.kill()
                node.wait()
            server.kill()
            server.wait()
            log.close()


def _pings(con):
    try:
        return con.ping()
    except redis.ConnectionError:
        return False
