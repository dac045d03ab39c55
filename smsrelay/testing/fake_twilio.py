"""A fast, faithful fake of Twilio's Messages API, for tests, the demo and benchmarks.

Serves `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` and `GET .../Messages/{Sid}.json`
as Twilio does (basic auth, form fields, validation, magic test numbers, error JSON), plus
control endpoints under `/_fake/` to script failures per `To` number and read what was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TypeVar
from urllib.parse import parse_qsl

from aiohttp import web

from smsrelay.schemas.segments import segment_count
from smsrelay.testing.fake_twilio_script import (
    API_VERSION,
    JSON_TYPE,
    MAGIC_FROM,
    MAGIC_TO,
    FakeMessage,
    RequestRecord,
    Script,
    Step,
    StepLike,
    error_message,
    error_response,
)

__all__ = ["FakeMessage", "FakeTwilio", "FakeTwilioThread", "RequestRecord", "Script", "Step"]

MAX_BODY_CHARS = 1600
_E164 = re.compile(r"\+[1-9]\d{6,14}")
_T = TypeVar("_T")


def _drop(request: web.Request) -> web.Response:
    """Close the connection without answering: the client sees ServerDisconnectedError."""
    if request.transport is not None:
        request.transport.close()
    # aiohttp swallows the write to the closed transport, so this response never leaves.
    return web.Response(status=204)


def _form_str(form: Mapping[str, str], name: str) -> str | None:
    return form.get(name) or None  # Twilio treats an empty field as a missing one


class FakeTwilio:
    """The fake server; run it with `await start()` or `async with FakeTwilio() as fake`."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        account_sid: str | None = None,
        auth_token: str | None = None,
        shutdown_timeout_s: float = 1.0,
    ) -> None:
        if (account_sid is None) != (auth_token is None):
            raise ValueError("give both account_sid and auth_token, or neither")
        self._initial_latency_s = latency_s
        self._latency_s = latency_s
        self._credentials = None if account_sid is None else (account_sid, auth_token)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._auth_cache: dict[tuple[str, str], bool] = {}
        self._scripts: dict[str, Script] = {}
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.messages: list[FakeMessage] = []
        self.requests: list[RequestRecord] = []
        self._by_sid: dict[str, FakeMessage] = {}
        self._sends: Counter[tuple[str, str]] = Counter()
        self._errors: Counter[int] = Counter()
        self._dropped = 0
        self._accepted_event: asyncio.Event | None = None  # exists only while someone waits

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("already started")
        runner = web.AppRunner(
            self.build_app(), access_log=None, shutdown_timeout=self._shutdown_timeout_s
        )
        await runner.setup()
        try:
            # A deep backlog: benchmark workers open hundreds of connections at once.
            await web.TCPSite(runner, host, port, backlog=1024).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        self._runner = runner
        self._url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeTwilio:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The API root to give the SDK as `client.api.base_url`."""
        if self._url is None:
            raise RuntimeError("the fake Twilio is not started")
        return self._url

    # -- control (Python) ------------------------------------------------------------------
    def script(self, to: str, steps: Iterable[StepLike], default: StepLike | None = None) -> None:
        """Replace the behaviour for `to`: `steps` one per request, then `default`."""
        self._scripts[to] = Script(steps, default)

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency_s = seconds

    @property
    def latency_s(self) -> float:
        return self._latency_s

    def reset(self) -> None:
        """Forget messages, requests, scripts and counters; latency returns to its start value."""
        self._latency_s = self._initial_latency_s
        self._scripts.clear()
        self.messages.clear()
        self.requests.clear()
        self._by_sid.clear()
        self._sends.clear()
        self._errors.clear()
        self._dropped = 0

    def messages_to(self, to: str) -> list[FakeMessage]:
        return [m for m in self.messages if m.to == to]

    async def wait_for_messages(self, count: int, timeout_s: float = 10.0) -> list[FakeMessage]:
        """Wait until at least `count` messages were accepted (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout_s):
            while len(self.messages) < count:
                if self._accepted_event is None:
                    self._accepted_event = asyncio.Event()
                await self._accepted_event.wait()
        return list(self.messages)

    def accepted_count(self, to: str, body: str) -> int:
        """How many times a message with this destination and body was accepted."""
        return self._sends[(to, body)]

    def duplicates(self) -> dict[tuple[str, str], int]:
        """(to, body) pairs accepted more than once, with their counts."""
        return {key: n for key, n in self._sends.items() if n > 1}

    def stats(self) -> dict[str, object]:
        """Counters of create requests; `errors` is keyed by Twilio code (HTTP status if none)."""
        return {
            "requests": len(self.requests),
            "accepted": len(self.messages),
            "errors": {str(code): n for code, n in sorted(self._errors.items())},
            "dropped": self._dropped,
            "duplicates": [
                {"to": to, "body": body, "count": n} for (to, body), n in self.duplicates().items()
            ],
            "latency_s": self._latency_s,
        }

    # -- HTTP ------------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application()
        base = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages"
        app.router.add_post(f"{base}.json", self._create)
        app.router.add_get(f"{base}/{{sid}}.json", self._fetch)
        app.router.add_post("/_fake/script", self._ctl_script)
        app.router.add_post("/_fake/latency", self._ctl_latency)
        app.router.add_post("/_fake/reset", self._ctl_reset)
        app.router.add_get("/_fake/messages", self._ctl_messages)
        app.router.add_get("/_fake/requests", self._ctl_requests)
        app.router.add_get("/_fake/stats", self._ctl_stats)
        return app

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        key = (header, request.match_info["account_sid"])
        cached = self._auth_cache.get(key)
        if cached is None:
            cached = self._check_auth(*key)
            if len(self._auth_cache) > 1024:  # bound memory against many distinct headers
                self._auth_cache.clear()
            self._auth_cache[key] = cached
        return cached

    def _check_auth(self, header: str, account_sid: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, token = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not (sep and user and token):
            return False
        if self._credentials is None:
            return True  # any credentials (API keys too: their SID differs from the account's)
        return (user, token) == self._credentials and account_sid == self._credentials[0]

    def _auth_error(self) -> web.Response:
        resp = error_response(401, 20003, detail="Your AccountSid or AuthToken was incorrect.")
        resp.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        return resp

    async def _create(self, request: web.Request) -> web.Response:
        # Twilio takes only url-encoded forms; parse_qsl is ~4x cheaper than request.post().
        form = dict(parse_qsl((await request.read()).decode(errors="replace")))
        to, from_ = _form_str(form, "To"), _form_str(form, "From")
        body, mss = _form_str(form, "Body"), _form_str(form, "MessagingServiceSid")
        record = RequestRecord(time.time(), to, from_, body, "error", None)
        self.requests.append(record)
        if self._latency_s > 0:
            await asyncio.sleep(self._latency_s)
        if not self._authorized(request):
            return self._fail(record, self._auth_error(), 20003)
        script = self._scripts.get(to) if to is not None else None
        step = script.next_step() if script is not None else None
        if step is not None:
            if step.delay_s > 0:
                await asyncio.sleep(step.delay_s)
            if step.action == "drop":
                record.outcome = "dropped"
                self._dropped += 1
                return _drop(request)
            if step.action == "error":
                text = error_message(step.code, to=to or "", from_=from_ or "") if step.code else ""
                resp = error_response(step.status, step.code, text)
                return self._fail(record, resp, step.code or step.status)
        code = self._validate(to, from_, mss, body)
        if code is not None:
            message = error_message(code, to=to or "", from_=from_ or "")
            return self._fail(record, error_response(400, code, message), code)
        # _validate guarantees both; the asserts narrow the types for mypy.
        assert to is not None
        assert body is not None
        message_ = FakeMessage(
            sid=f"SM{os.urandom(16).hex()}",
            account_sid=request.match_info["account_sid"],
            to=to,
            from_=from_,
            messaging_service_sid=mss,
            body=body,
            # A Messaging Service send starts as "accepted" (sender chosen later), else "queued".
            status="queued" if mss is None else "accepted",
            num_segments=segment_count(body),
            status_callback=_form_str(form, "StatusCallback"),
            received_at=time.time(),
        )
        self.messages.append(message_)
        self._by_sid[message_.sid] = message_
        self._sends[(to, body)] += 1
        if self._accepted_event is not None:
            self._accepted_event.set()
            self._accepted_event = None
        record.outcome, record.sid = "accepted", message_.sid
        if step is not None and step.action == "accept_drop":
            self._dropped += 1
            return _drop(request)
        record.status = 201
        return web.Response(
            status=201, text=json.dumps(message_.resource()), content_type=JSON_TYPE
        )

    @staticmethod
    def _validate(
        to: str | None, from_: str | None, mss: str | None, body: str | None
    ) -> int | None:
        if to is None:
            return 21604
        if from_ is None and mss is None:
            return 21603
        if body is None:
            return 21602
        if len(body) > MAX_BODY_CHARS:
            return 21617
        if from_ is not None and from_ in MAGIC_FROM:
            return MAGIC_FROM[from_]
        if to in MAGIC_TO:
            return MAGIC_TO[to]
        return None if _E164.fullmatch(to) else 21211

    def _fail(self, record: RequestRecord, resp: web.Response, code: int) -> web.Response:
        record.status, record.code = resp.status, code
        self._errors[code] += 1
        return resp

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._auth_error()
        message = self._by_sid.get(request.match_info["sid"])
        if message is None or message.account_sid != request.match_info["account_sid"]:
            return error_response(404, 20404, error_message(20404, path=request.path))
        return web.Response(text=json.dumps(message.resource()), content_type=JSON_TYPE)

    async def _ctl_script(self, request: web.Request) -> web.Response:
        try:
            to, script = Script.from_json(await request.json())
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return web.json_response({"error": str(exc)}, status=400)
        self._scripts[to] = script
        return web.json_response({"ok": True, "to": to, "steps": script.remaining})

    async def _ctl_latency(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            seconds = data["seconds"] if isinstance(data, dict) else None
            if not isinstance(seconds, int | float) or isinstance(seconds, bool):
                raise ValueError('expected {"seconds": <number>}')
            self.set_latency(float(seconds))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "latency_s": self._latency_s})

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _ctl_messages(self, request: web.Request) -> web.Response:
        to = request.query.get("to")
        items = self.messages if to is None else self.messages_to(to)
        return web.json_response([m.to_json() for m in items])

    async def _ctl_requests(self, request: web.Request) -> web.Response:
        to = request.query.get("to")
        return web.json_response([r.to_json() for r in self.requests if to in (None, r.to)])

    async def _ctl_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


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

    def accepted_count(self, to: str, body: str) -> int:
        return self._on_loop(lambda: self.fake.accepted_count(to, body))

    def duplicates(self) -> dict[tuple[str, str], int]:
        return self._on_loop(self.fake.duplicates)

    def stats(self) -> dict[str, object]:
        return self._on_loop(self.fake.stats)


async def _serve(
    host: str, port: int, latency_s: float, account_sid: str | None, auth_token: str | None
) -> None:
    fake = FakeTwilio(latency_s=latency_s, account_sid=account_sid, auth_token=auth_token)
    await fake.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake-twilio listening on {fake.url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await fake.stop()


def run_forever(
    host: str,
    port: int,
    latency_s: float = 0.0,
    account_sid: str | None = None,
    auth_token: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; prints `fake-twilio listening on <url>` once bound."""
    asyncio.run(_serve(host, port, latency_s, account_sid, auth_token))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fake-twilio", description="A fake Twilio Messages API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every send")
    parser.add_argument("--account-sid", help="enforce these credentials (default: accept any)")
    parser.add_argument("--auth-token")
    args = parser.parse_args(argv)
    if (args.account_sid is None) != (args.auth_token is None):
        parser.error("--account-sid and --auth-token go together")
    run_forever(args.host, args.port, args.latency_ms / 1000, args.account_sid, args.auth_token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
