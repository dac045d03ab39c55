"""A hung Redis costs one request the timeout, not every request (issue 12, defect 3).

After a timeout or a refused connection the producer spools at once for a short while and
its background flusher probes Redis; when Redis answers, publishing goes straight to Redis
again and the spool is flushed.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from smsrelay import AsyncProducer, Producer
from smsrelay.producers.gate import RedisGate
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.conftest import make_settings
from tests.support.clients import redis_client
from tests.support.servers import LOOPBACK, PrivateRedis
from tests.support.wait import wait_for, wait_until


class BlackHole:
    """A TCP server that takes connections and bytes and never answers (a hung Redis)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.received = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.sock.getsockname()[1]}/0"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.received += data

    def close(self) -> None:
        self.sock.close()
        with self._lock:
            for conn in self._open:
                conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def _entries(settings: Settings) -> list[str]:
    client = redis_client(settings.redis_url, decode_responses=True)
    try:
        entries = cast(list[Any], client.xrange(ShardKeys(settings.namespace).requests))
    finally:
        client.close()
    return [fields["body"] for _, fields in entries]


def test_a_hung_redis_costs_one_request_the_timeout(
    black_hole: BlackHole, namespace: str, tmp_path: Path
) -> None:
    settings = make_settings(black_hole.url, namespace, tmp_path, "http://127.0.0.1:9")
    # (no background flusher: its probes would connect too; the next test has them)
    with Producer(settings, background_flush=False) as producer:
        results = [producer.publish(f"+1415555{n:04d}", f"hung-{n}") for n in range(5)]
    assert [r.status for r in results] == ["spooled"] * 5
    # One publish waited for Redis; the four after it spooled at once, without trying (a
    # try after a timeout connects again: redis-py drops a connection that timed out).
    assert black_hole.connections == 1
    assert "not tried again" not in (results[0].error or "")
    assert all("not tried again until it answers" in (r.error or "") for r in results[1:])
    assert len(list(settings.spool_dir.glob("*.json"))) == 5


async def test_a_hung_redis_costs_one_async_request_the_timeout(
    black_hole: BlackHole, namespace: str, tmp_path: Path
) -> None:
    settings = make_settings(black_hole.url, namespace, tmp_path, "http://127.0.0.1:9")
    async with AsyncProducer(settings, background_flush=False) as producer:
        results = [await producer.publish(f"+1415555{n:04d}", f"hung-{n}") for n in range(5)]
    assert [r.status for r in results] == ["spooled"] * 5
    assert black_hole.connections == 1
    assert len(list(settings.spool_dir.glob("*.json"))) == 5


def test_publishing_goes_back_to_redis_once_a_probe_gets_an_answer(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path
) -> None:
    settings = make_settings(private_redis.url, namespace, tmp_path, "http://127.0.0.1:9")
    with Producer(settings) as producer:
        assert producer.publish("+14155550100", "before").status == "queued"
        private_redis.pause()
        try:
            statuses = [producer.publish("+14155550101", f"during-{n}").status for n in range(3)]
        finally:
            private_redis.resume()
        assert statuses == ["spooled"] * 3
        # The background probe finds Redis back: publishing is direct again, the spool empty
        wait_for(
            lambda: producer.publish("+14155550102", "after").status == "queued",
            15,
            "a publish that reaches Redis again",
        )
        wait_for(lambda: producer.spooled() == 0, 15, "the spool flushed")
    bodies = _entries(settings)
    assert {"before", "during-0", "during-1", "during-2", "after"} <= set(bodies)


async def test_async_publishing_goes_back_to_redis_once_a_probe_gets_an_answer(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path
) -> None:
    settings = make_settings(private_redis.url, namespace, tmp_path, "http://127.0.0.1:9")
    async with AsyncProducer(settings) as producer:
        assert (await producer.publish("+14155550100", "before")).status == "queued"
        private_redis.pause()
        try:
            spooled = [
                (await producer.publish("+14155550101", f"during-{n}")).status for n in range(3)
            ]
        finally:
            private_redis.resume()
        assert spooled == ["spooled"] * 3

        async def direct_again() -> bool:
            return (await producer.publish("+14155550102", "after")).status == "queued"

        await wait_until(direct_again, 15, what="a publish that reaches Redis again")
        await wait_until(lambda: producer.spooled() == 0, 15, what="the spool flushed")
    assert {"before", "during-0", "during-1", "during-2", "after"} <= set(_entries(settings))


# -- the gate itself: bounded, fork-safe ----------------------------------------------------------


def test_the_gate_closes_for_a_bounded_while() -> None:
    now = [100.0]
    gate = RedisGate(hold_s=5.0, clock=lambda: now[0])
    assert gate.closed() is None
    gate.fail("TimeoutError")
    assert gate.closed() == "TimeoutError"
    now[0] += 4.9
    assert gate.closed() == "TimeoutError"
    now[0] += 0.2  # nobody renewed it: the next publish tries Redis itself
    assert gate.closed() is None
    gate.fail("ConnectionError")
    gate.open()
    assert gate.closed() is None


def test_a_forked_child_starts_with_an_open_gate() -> None:
    gate = RedisGate(hold_s=60.0)
    gate.fail("TimeoutError")
    pid = os.fork()
    if pid == 0:  # the child: no prober came along, so it must try Redis itself
        os._exit(0 if gate.closed() is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert gate.closed() == "TimeoutError"


def test_the_gate_is_shared_safely_by_threads() -> None:
    gate = RedisGate(hold_s=60.0)
    errors: list[BaseException] = []

    def churn(n: int) -> None:
        try:
            for i in range(2000):
                if (i + n) % 2:
                    gate.fail(f"t{n}")
                else:
                    gate.open()
                reason = gate.closed()
                assert reason is None or reason.startswith("t")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_refused_write_does_not_close_the_gate(
    private_redis: PrivateRedis, namespace: str, tmp_path: Path
) -> None:
    # OOM, READONLY and the like answer at once: only timeouts and lost connections close it.
    settings = make_settings(private_redis.url, namespace, tmp_path, "http://127.0.0.1:9")
    admin = private_redis.client()
    with Producer(settings, background_flush=False) as producer:
        admin.config_set("maxmemory", "1")
        try:
            refused = producer.publish("+14155552671", "refused")
            assert producer._core.gate.closed() is None
        finally:
            admin.config_set("maxmemory", "0")
            admin.close()
        assert refused.status == "spooled" and "OutOfMemory" in (refused.error or "")
        assert producer.publish("+14155552671", "taken").status == "queued"
