"""The fake Twilio's `/_fake/` control routes: script failures, outages, latency and receipts,
and read what was sent, requested and called back. Bad input is a 400 `{"error": "..."}`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from smsrelay.testing.fake_twilio_callbacks import Receipts
from smsrelay.testing.fake_twilio_outage import Outage
from smsrelay.testing.fake_twilio_script import Script

if TYPE_CHECKING:
    from smsrelay.testing.fake_twilio_server import FakeTwilio

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# (method, path, what it does): the list `smsrelay fake-twilio --help` and the docs show.
CONTROL_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("POST", "/_fake/script", "script one number's next answers"),
    ("POST", "/_fake/latency", "add latency to every send"),
    ("GET", "/_fake/outage", "the current or last outage and its request count"),
    ("POST", "/_fake/outage", "fail every Messages API request, for some seconds or until ended"),
    ("DELETE", "/_fake/outage", "end the outage"),
    ("POST", "/_fake/receipts", "status callbacks for one number, or for every number"),
    ("GET", "/_fake/callbacks", "status callbacks attempted, with the receiver's HTTP status"),
    ("POST", "/_fake/callbacks/wait", "wait until every scheduled callback was attempted"),
    ("GET", "/_fake/messages", "accepted messages (?to=)"),
    ("GET", "/_fake/requests", "every create request and its outcome (?to=)"),
    ("GET", "/_fake/stats", "counters"),
    ("POST", "/_fake/reset", "forget everything"),
)


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _json(request: web.Request, empty: object = None) -> object:
    """The JSON body (`empty` when there is none); ValueError when it is not JSON."""
    raw = await request.read()
    if not raw.strip():
        return empty
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not JSON ({exc})") from None


def add_control_routes(app: web.Application, fake: FakeTwilio) -> None:
    routes: dict[tuple[str, str], Handler] = {}

    def route(method: str, path: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            routes[(method, path)] = handler
            return handler

        return register

    @route("POST", "/_fake/script")
    async def script(request: web.Request) -> web.Response:
        try:
            to, parsed = Script.from_json(await _json(request))
        except ValueError as exc:
            return _bad(str(exc))
        fake.set_script(to, parsed)
        return web.json_response({"ok": True, "to": to, "steps": parsed.remaining})

    @route("POST", "/_fake/latency")
    async def latency(request: web.Request) -> web.Response:
        try:
            data = await _json(request)
            seconds = data["seconds"] if isinstance(data, dict) else None
            if not isinstance(seconds, int | float) or isinstance(seconds, bool):
                raise ValueError('expected {"seconds": <number>}')
            fake.set_latency(float(seconds))
        except (KeyError, ValueError) as exc:
            return _bad(str(exc))
        return web.json_response({"ok": True, "latency_s": fake.latency_s})

    @route("GET", "/_fake/outage")
    async def outage(request: web.Request) -> web.Response:
        return web.json_response(fake.outage())

    @route("POST", "/_fake/outage")
    async def start_outage(request: web.Request) -> web.Response:
        try:
            step, seconds = Outage.parse(await _json(request))
        except ValueError as exc:
            return _bad(str(exc))
        fake.start_outage(step, seconds)
        return web.json_response({"ok": True, **fake.outage()})

    @route("DELETE", "/_fake/outage")
    async def end_outage(request: web.Request) -> web.Response:
        fake.end_outage()
        return web.json_response({"ok": True, **fake.outage()})

    @route("POST", "/_fake/receipts")
    async def receipts(request: web.Request) -> web.Response:
        try:
            to, plan = Receipts.from_json(await _json(request))
        except ValueError as exc:
            return _bad(str(exc))
        fake.script_receipts(to, plan)
        return web.json_response({"ok": True, "to": to, **plan.to_json()})

    @route("GET", "/_fake/callbacks")
    async def callbacks(request: web.Request) -> web.Response:
        found = fake.callbacks(sid=request.query.get("sid"), to=request.query.get("to"))
        return web.json_response([r.to_json() for r in found])

    @route("POST", "/_fake/callbacks/wait")
    async def wait_callbacks(request: web.Request) -> web.Response:
        try:
            data = await _json(request, {})
            timeout = data.get("timeout", 10.0) if isinstance(data, dict) else None
            if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
                raise ValueError('expected {"timeout": <seconds > 0>}')
        except ValueError as exc:
            return _bad(str(exc))
        try:
            await fake.wait_for_callbacks(float(timeout))
        except TimeoutError:
            summary = fake.callback_summary()
            message = f"{summary['pending']} callbacks still pending after {timeout:g} s"
            return web.json_response({"error": message, **summary}, status=504)
        return web.json_response({"ok": True, **fake.callback_summary()})

    @route("POST", "/_fake/reset")
    async def reset(request: web.Request) -> web.Response:
        fake.reset()
        return web.json_response({"ok": True})

    @route("GET", "/_fake/messages")
    async def messages(request: web.Request) -> web.Response:
        to = request.query.get("to")
        items = fake.messages if to is None else fake.messages_to(to)
        return web.json_response([m.to_json() for m in items])

    @route("GET", "/_fake/requests")
    async def requests(request: web.Request) -> web.Response:
        to = request.query.get("to")
        return web.json_response([r.to_json() for r in fake.requests if to in (None, r.to)])

    @route("GET", "/_fake/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(fake.stats())

    assert {(m, p) for m, p, _ in CONTROL_ROUTES} == set(routes)  # the documented list is whole
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
