"""The console's message pages: a message's trace (`/ui/messages/<id>`) and a phone's recent
messages (`/ui/messages?phone=`), read through `AdminService` as the API's
`GET /api/admin/messages/...` routes are. They change nothing: a viewer sees them too.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from smsrelay.admin.ui.common import current, failure_text, see_other, service_of, to_sign_in
from smsrelay.admin.ui.render import render, ui_root
from smsrelay.admin.ui.sessions import Session
from smsrelay.errors import NotFoundError, SmsRelayError, StorageError
from smsrelay.schemas.api import MessageSummary, MessageTrace, normalize_phone_filter

router = APIRouter(prefix="/ui/messages", include_in_schema=False)

PHONE_LIMIT = 50
# A page waits this long for Redis and Postgres, then says so (a hung store is not a hung tab).
READ_TIMEOUT_S = 5.0
# The trace events a page marks as trouble (a row class; the text says it anyway).
TROUBLE = frozenset({"retry_scheduled", "dead_lettered", "expired", "undelivered", "failed"})


def parse_message_id(raw: str | None) -> uuid.UUID | str:
    """The id, or the one-line reason it is not one."""
    text = (raw or "").strip()
    if not text:
        return "Message id: enter a message id"
    try:
        return uuid.UUID(text)
    except ValueError:
        return f"Message id: not a message id (a UUID): {text[:40]!r}"


def _unavailable(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, TimeoutError):
        return 503, "Unavailable: Redis or Postgres did not answer in time"
    if isinstance(exc, NotFoundError):
        return 404, f"Not found: {exc}"
    if isinstance(exc, StorageError):
        return 503, f"Unavailable: {exc}"
    assert isinstance(exc, SmsRelayError)
    return failure_text(exc)


def _lookup(
    request: Request,
    session: Session,
    *,
    status: int = 200,
    error: str | None = None,
    given_id: str = "",
    given_phone: str = "",
    phone: str | None = None,
    messages: list[MessageSummary] | None = None,
) -> Response:
    return render(
        request,
        "messages.html",
        session=session,
        status=status,
        title="Messages" if phone is None else f"Messages to {phone}",
        page="messages",
        error=error,
        given_id=given_id,
        given_phone=given_phone or phone or "",
        phone=phone,
        messages=messages,
        limit=PHONE_LIMIT,
    )


@router.get("")
async def lookup(request: Request) -> Response:
    """The two look-ups: `id` goes to that message's trace, `phone` lists its messages."""
    session = current(request)
    if session is None:
        return to_sign_in(request)
    params = request.query_params
    if "id" in params:
        found = parse_message_id(params.get("id"))
        if isinstance(found, str):
            return _lookup(request, session, status=400, error=found, given_id=params["id"][:80])
        return see_other(f"{ui_root(request)}/messages/{found}")
    if "phone" not in params:
        return _lookup(request, session)
    raw = params.get("phone", "")
    try:
        phone = normalize_phone_filter(raw.strip() or None)
    except ValueError as exc:
        return _lookup(request, session, status=400, error=f"Phone: {exc}", given_phone=raw[:40])
    if phone is None:
        return _lookup(request, session, status=400, error="Phone: enter a phone number")
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            messages = await service_of(request).messages_for_phone(phone, PHONE_LIMIT)
    except (SmsRelayError, TimeoutError) as exc:
        status, text = _unavailable(exc)
        return _lookup(request, session, status=status, error=text, given_phone=phone)
    return _lookup(request, session, phone=phone, messages=messages)


@router.get("/{raw_id}")
async def trace_page(request: Request, raw_id: str) -> Response:
    session = current(request)
    if session is None:
        return to_sign_in(request)
    found = parse_message_id(raw_id)
    if isinstance(found, str):
        return _lookup(request, session, status=400, error=found, given_id=raw_id[:80])
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            trace = await service_of(request).message(found)
    except (SmsRelayError, TimeoutError) as exc:
        status, text = _unavailable(exc)
        return _lookup(request, session, status=status, error=text, given_id=str(found))
    return render(
        request,
        "trace.html",
        session=session,
        title=f"Message {found}",
        page="messages",
        trace=trace,
        events=_events(trace),
    )


def _events(trace: MessageTrace) -> list[dict[str, Any]]:
    """The trace's events, newest last as the API gives them, each marked when trouble."""
    return [
        {"at": e.at, "event": e.event, "detail": e.detail, "trouble": e.event in TROUBLE}
        for e in trace.events
    ]
