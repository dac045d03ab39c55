"""`FakeTwilioThread`: a `FakeTwilio` on its own event loop in a daemon thread, for sync code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TypeVar

from smsrelay.testing.fake_twilio_callbacks import CallbackRecord, Receipts
from smsrelay.testing.fake_twilio_outage import DEFAULT_STEP
from smsrelay.testing.fake_twilio_script import FakeMessage, RequestRecord, StepLike
from smsrelay.testing.fake_twilio_server import FakeTwilio

_T = TypeVar("_T")


class FakeTwilioThread:
    """Runs a `FakeTwilio` on its own event loop in a daemon thread, for sync code.

    `with FakeTwilioThread() as fake: ... fake.url ...`; the control methods hop onto the
    server's loop so they never race a request in flight.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        account_sid: str | None = None,
        auth_token: str | None = None,
    ) -> None:
        self.fake = FakeTwilio(latency_s=latency_s, account_sid=account_sid, auth_token=auth_token)
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()

    def start(self) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.name = "fake-twilio"
        self._thread.start()
        self._started.result(timeout=10)  # re-raises a failure to bind

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.fake.start(self._host, self._port)
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            await self._stop.wait()
        finally:
            await self.fake.stop()

    def __enter__(self) -> FakeTwilioThread:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _on_loop(self, fn: Callable[[], _T]) -> _T:
        if self._loop is None:
            raise RuntimeError("the fake Twilio thread is not started")
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(fn())
            except Exception as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        return done.result(timeout=10)

    @property
    def url(self) -> str:
        return self.fake.url

    def script(self, to: str, steps: Iterable[StepLike], default: StepLike | None = None) -> None:
        self._on_loop(lambda: self.fake.script(to, steps, default))

    def set_latency(self, seconds: float) -> None:
        self._on_loop(lambda: self.fake.set_latency(seconds))

    def reset(self) -> None:
        self._on_loop(self.fake.reset)

    @property
    def messages(self) -> list[FakeMessage]:
        """A snapshot of the accepted messages."""
        return self._on_loop(lambda: list(self.fake.messages))

    @property
    def requests(self) -> list[RequestRecord]:
        return self._on_loop(lambda: list(self.fake.requests))

    def messages_to(self, to: str) -> list[FakeMessage]:
        return self._on_loop(lambda: self.fake.messages_to(to))

    def wait_for_messages(self, count: int, timeout_s: float = 10.0) -> list[FakeMessage]:
        if self._loop is None:
            raise RuntimeError("the fake Twilio thread is not started")
        waiting = self.fake.wait_for_messages(count, timeout_s)
        return asyncio.run_coroutine_threadsafe(waiting, self._loop).result()

    def start_outage(self, step: StepLike = DEFAULT_STEP, seconds: float | None = None) -> None:
        self._on_loop(lambda: self.fake.start_outage(step, seconds))

    def end_outage(self) -> None:
        self._on_loop(self.fake.end_outage)

    def outage(self) -> dict[str, object]:
        return self._on_loop(self.fake.outage)

    def script_receipts(self, to: str | None, receipts: Receipts) -> None:
        self._on_loop(lambda: self.fake.script_receipts(to, receipts))

    def callbacks(self, sid: str | None = None, to: str | None = None) -> list[CallbackRecord]:
        return self._on_loop(lambda: self.fake.callbacks(sid, to))

    def wait_for_callbacks(self, timeout_s: float = 10.0) -> list[CallbackRecord]:
        if self._loop is None:
            raise RuntimeError("the fake Twilio thread is not started")
        waiting = self.fake.wait_for_callbacks(timeout_s)
        return asyncio.run_coroutine_threadsafe(waiting, self._loop).result()

    def accepted_count(self, to: str, body: str) -> int:
        return self._on_loop(lambda: self.fake.accepted_count(to, body))

    def duplicates(self) -> dict[tuple[str, str], int]:
        return self._on_loop(self.fake.duplicates)

    def stats(self) -> dict[str, object]:
        return self._on_loop(self.fake.stats)
