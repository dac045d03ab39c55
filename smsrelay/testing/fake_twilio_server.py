"""The fake Twilio server: the Messages API as Twilio serves it, and its Python control methods.

Serves `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (create),
`GET .../Messages.json` (list, filtered and paged) and `GET .../Messages/{Sid}.json` (fetch) as
Twilio does: basic auth, form fields, validation, magic test numbers, error JSON, and signed
status callbacks. The `/_fake/` control routes live in fake_twilio_control.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from smsrelay.schemas.segments import segment_count
from smsrelay.testing.fake_twilio_callbacks import CallbackRecord, Receipts, StatusCallbacks
from smsrelay.testing.fake_twilio_control import add_control_routes
from smsrelay.testing.fake_twilio_list import ListQueryError, list_page
from smsrelay.testing.fake_twilio_outage import DEFAULT_STEP, Outage
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

MAX_BODY_CHARS = 1600
_E164 = re.compile(r"\+[1-9]\d{6,14}")


def _drop(request: web.Request) -> web.Response:
    """Close the connection without answering: the client sees ServerDisconnectedError."""
    if request.transport is not None:
        request.transport.close()
    # aiohttp swallows the write to the closed transport, so this response never leaves.
    return web.Response(status=204)


def _form_str(form: Mapping[str, str], name: str) -> str | None:
    return form.get(name) or None  # Twilio treats an empty field as a missing one


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, token = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, token) if sep and user and token else None


def _is_callback_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class FakeTwilio:
    """The fake server; run it with `await start()` or `async with FakeTwilio() as fake`."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        account_sid: str | None = None,
        auth_token: str | None = None,
        shutdown_timeout_s: float = 1.0,
        callback_timeout_s: float = 5.0,
    ) -> None:
        if (account_sid is None) != (auth_token is None):
            raise ValueError("give both account_sid and auth_token, or neither")
        self._initial_latency_s = latency_s
        self._latency_s = latency_s
        self._credentials = None if account_sid is None else (account_sid, auth_token)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._auth_cache: dict[tuple[str, str], bool] = {}
        self._scripts: dict[str, Script] = {}
        self._outage = Outage()
        self._callbacks = StatusCallbacks(timeout_s=callback_timeout_s)
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
        # After the handlers finished: callbacks they scheduled are cancelled, not left behind.
        await self._callbacks.close()

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

    def set_script(self, to: str, script: Script) -> None:
        self._scripts[to] = script

    def start_outage(self, step: StepLike = DEFAULT_STEP, seconds: float | None = None) -> None:
        """Answer every Messages API request with `step` (default 503/20503) for `seconds`
        (None: until `end_outage`). Numbers' scripts wait, unconsumed, until it ends."""
        self._outage.start(Step.parse(step), seconds)

    def end_outage(self) -> None:
        self._outage.end()

    def outage(self) -> dict[str, object]:
        """The current or last outage: active, step, remaining_s, requests seen during it."""
        return self._outage.to_json()

    def script_receipts(self, to: str | None, receipts: Receipts) -> None:
        """The status callbacks for messages to `to` (None: every number not given its own)."""
        self._callbacks.set_plan(to, receipts)

    def callbacks(self, sid: str | None = None, to: str | None = None) -> list[CallbackRecord]:
        """Every status callback attempted so far, with what its receiver answered."""
        return self._callbacks.select(sid, to)

    async def wait_for_callbacks(self, timeout_s: float = 10.0) -> list[CallbackRecord]:
        """Wait until every callback scheduled so far was attempted (TimeoutError otherwise)."""
        return await self._callbacks.wait_idle(timeout_s)

    def callback_summary(self) -> dict[str, int]:
        return self._callbacks.summary()

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency_s = seconds

    @property
    def latency_s(self) -> float:
        return self._latency_s

    def reset(self) -> None:
        """Forget messages, requests, scripts, receipts, callbacks, the outage and counters;
        latency returns to its start value."""
        self._latency_s = self._initial_latency_s
        self._scripts.clear()
        self._outage.reset()
        self._callbacks.reset()
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
        app.router.add_get(f"{base}.json", self._list)
        app.router.add_get(f"{base}/{{sid}}.json", self._fetch)
        add_control_routes(app, self)
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
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        if self._credentials is None:
            return True  # any credentials (API keys too: their SID differs from the account's)
        return credentials == self._credentials and account_sid == self._credentials[0]

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
        step = self._outage.hit()  # an outage counts the requests that arrive during it
        if self._latency_s > 0:
            await asyncio.sleep(self._latency_s)
        if step is None or step.accepts:
            if not self._authorized(request):
                return self._fail(record, self._auth_error(), 20003)
            if step is None:  # an outage leaves the number's script for after it
                script = self._scripts.get(to) if to is not None else None
                step = script.next_step() if script is not None else None
        if step is not None and not step.accepts:
            return await self._refuse(request, record, step, to or "", from_ or "")
        delay_s = 0.0 if step is None else step.delay_s
        callback = _form_str(form, "StatusCallback")
        code = self._validate(to, from_, mss, body, callback)
        if code is not None:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            message = error_message(code, to=to or "", from_=from_ or "")
            return self._fail(record, error_response(400, code, message), code)
        # _validate guarantees both; the asserts narrow the types for mypy.
        assert to is not None
        assert body is not None
        message_ = self._accept(request, record, to, from_, mss, body, callback)
        # The answer shows the message as created; its receipts may move it on meanwhile.
        text = json.dumps(message_.resource())
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        answered = self._callbacks.start(message_, credentials and credentials[1])
        try:
            # The SMS is already on its way: a late or lost answer does not take it back.
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if step is not None and step.action == "accept_drop":
                self._dropped += 1
                return _drop(request)
            record.status = 201
            resp = web.Response(status=201, text=text, content_type=JSON_TYPE)
            if answered is not None:  # send it now, so callbacks come after it
                await resp.prepare(request)
                await resp.write_eof()
            return resp
        finally:
            if answered is not None and not answered.done():
                answered.set_result(None)

    def _accept(
        self,
        request: web.Request,
        record: RequestRecord,
        to: str,
        from_: str | None,
        mss: str | None,
        body: str,
        callback: str | None,
    ) -> FakeMessage:
        message = FakeMessage(
            sid=f"SM{os.urandom(16).hex()}",
            account_sid=request.match_info["account_sid"],
            to=to,
            from_=from_,
            messaging_service_sid=mss,
            body=body,
            # A Messaging Service send starts as "accepted" (sender chosen later), else "queued".
            status="queued" if mss is None else "accepted",
            num_segments=segment_count(body),
            status_callback=callback,
            received_at=time.time(),
        )
        self.messages.append(message)
        self._by_sid[message.sid] = message
        self._sends[(to, body)] += 1
        if self._accepted_event is not None:
            self._accepted_event.set()
            self._accepted_event = None
        record.outcome, record.sid = "accepted", message.sid
        return message

    async def _refuse(
        self, request: web.Request, record: RequestRecord, step: Step, to: str, from_: str
    ) -> web.Response:
        """Answer a create request with an error or drop step: nothing is sent."""
        if step.delay_s > 0:
            await asyncio.sleep(step.delay_s)
        if step.action == "drop":
            record.outcome = "dropped"
            self._dropped += 1
            return _drop(request)
        text = error_message(step.code, to=to, from_=from_) if step.code else ""
        resp = error_response(step.status, step.code, text, step.headers())
        return self._fail(record, resp, step.code or step.status)

    @staticmethod
    def _validate(
        to: str | None,
        from_: str | None,
        mss: str | None,
        body: str | None,
        callback: str | None = None,
    ) -> int | None:
        if to is None:
            return 21604
        if from_ is None and mss is None:
            return 21603
        if body is None:
            return 21602
        if len(body) > MAX_BODY_CHARS:
            return 21617
        if callback is not None and not _is_callback_url(callback):
            return 21609
        if from_ is not None and from_ in MAGIC_FROM:
            return MAGIC_FROM[from_]
        if to in MAGIC_TO:
            return MAGIC_TO[to]
        return None if _E164.fullmatch(to) else 21211

    def _fail(self, record: RequestRecord, resp: web.Response, code: int) -> web.Response:
        record.status, record.code = resp.status, code
        self._errors[code] += 1
        return resp

    async def _outage_answer(self, request: web.Request) -> web.Response | None:
        """For a read during an outage: its answer, or None to serve the request normally."""
        step = self._outage.hit()
        if step is None:
            return None
        if step.delay_s > 0:
            await asyncio.sleep(step.delay_s)
        if step.action in ("drop", "accept_drop"):
            return _drop(request)
        if step.action == "error":
            return error_response(step.status, step.code, "", step.headers())
        return None

    async def _fetch(self, request: web.Request) -> web.Response:
        refused = await self._outage_answer(request)
        if refused is not None:
            return refused
        if not self._authorized(request):
            return self._auth_error()
        message = self._by_sid.get(request.match_info["sid"])
        if message is None or message.account_sid != request.match_info["account_sid"]:
            return error_response(404, 20404, error_message(20404, path=request.path))
        return web.Response(text=json.dumps(message.resource()), content_type=JSON_TYPE)

    async def _list(self, request: web.Request) -> web.Response:
        refused = await self._outage_answer(request)
        if refused is not None:
            return refused
        if not self._authorized(request):
            return self._auth_error()
        account_sid = request.match_info["account_sid"]
        try:
            page = list_page(self.messages, account_sid, request.path, request.query)
        except ListQueryError as exc:
            return error_response(400, 20001, str(exc))
        return web.Response(text=json.dumps(page), content_type=JSON_TYPE)
