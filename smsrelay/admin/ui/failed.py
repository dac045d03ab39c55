"""The console's failed-SMS pages: the list with its filters, and Retry, Delete and Replay.

Each change calls `AdminService` as the API does, with the session's actor for the audit
trail, then sends the browser back to the list it came from (post/redirect/get) with the
outcome as a message: the new message SID, or the error as the API states it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from smsrelay.admin.ui.common import (
    changing,
    current,
    failure_text,
    first,
    log,
    message_page,
    see_other,
    service_of,
    to_sign_in,
)
from smsrelay.admin.ui.render import render, ui_root
from smsrelay.admin.ui.sessions import Session
from smsrelay.errors import SmsRelayError
from smsrelay.schemas.api import (
    MAX_OFFSET,
    MAX_REPLAY_LIMIT,
    REPLAYABLE_REASONS,
    normalize_phone_filter,
)
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.records import RecordStatus

router = APIRouter(prefix="/ui/failed", include_in_schema=False)

PAGE_SIZES = (25, 50, 100)
FILTERS = ("reason", "status", "phone", "offset", "limit")
REASONS = [r.value for r in DeadLetterReason]
STATUSES = [s.value for s in RecordStatus]


@dataclass(frozen=True)
class Filters:
    reason: str | None = None
    status: str | None = None
    phone: str | None = None
    offset: int = 0
    limit: int = 50

    def query(self, **changes: object) -> str:
        values = {**self.__dict__, **changes}
        if values["offset"] == 0:
            values.pop("offset")
        if values["limit"] == 50:
            values.pop("limit")
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def parse_filters(params: dict[str, str]) -> tuple[Filters, list[str]]:
    """The list's filters from a query string; each wrong one is a line in the errors."""
    errors: list[str] = []
    reason = params.get("reason") or None
    if reason is not None and reason not in REASONS:
        errors.append(f"Reason: must be one of {', '.join(REASONS)}")
        reason = None
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        errors.append(f"Status: must be one of {', '.join(STATUSES)}")
        status = None
    phone = params.get("phone") or None
    try:
        phone = normalize_phone_filter(phone)
    except ValueError as exc:
        errors.append(f"Phone: {exc}")
        phone = None
    offset = 0
    raw = params.get("offset") or "0"
    if raw.isdigit() and int(raw) <= MAX_OFFSET:
        offset = int(raw)
    else:
        errors.append(f"Offset: must be a whole number (got {raw[:20]!r})")
    limit = 50
    raw = params.get("limit") or "50"
    if raw in {str(size) for size in PAGE_SIZES}:
        limit = int(raw)
    else:
        errors.append(f"Per page: must be one of {', '.join(map(str, PAGE_SIZES))}")
    return Filters(reason, status, phone, offset, limit), errors


def _list_url(request: Request, form: dict[str, list[str]]) -> str:
    """Where a change returns to: the list with the filters it was posted from (`back`).

    Rebuilt from the known filters only, so a form cannot send the browser elsewhere.
    """
    given = dict(parse_qsl(first(form, "back") or "", keep_blank_values=False))
    filters, _ = parse_filters({k: v for k, v in given.items() if k in FILTERS})
    query = filters.query()
    return ui_root(request) + "/failed" + ("?" + query if query else "")


def _message_id(session: Session, raw: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID((raw or "").strip())
    except ValueError:
        session.flash("error", f"Refused (400): not a message id: {(raw or '')[:40]!r}")
        return None


@router.get("")
async def failed_page(request: Request) -> Response:
    session = current(request)
    if session is None:
        return to_sign_in(request)
    filters, errors = parse_filters(dict(request.query_params))
    service = service_of(request)
    page = None
    if not errors:
        try:
            page = await service.list_records(
                limit=filters.limit,
                offset=filters.offset,
                status=RecordStatus(filters.status) if filters.status else None,
                reason=filters.reason,
                phone=filters.phone,
            )
        except SmsRelayError as exc:
            errors.append(f"Unavailable: {exc}")
    return render(
        request,
        "failed.html",
        session=session,
        status=503 if _unavailable(errors) else 400 if errors else 200,
        title="Failed SMS",
        page="failed",
        filters=filters,
        errors=errors,
        records=page.records if page else [],
        total=page.total if page else 0,
        has_more=page.has_more if page else False,
        reasons=REASONS,
        statuses=STATUSES,
        replayable=REPLAYABLE_REASONS,
        page_sizes=PAGE_SIZES,
    )


def _unavailable(errors: list[str]) -> bool:
    return any(e.startswith("Unavailable") for e in errors)


@router.post("/retry")
async def retry(request: Request) -> Response:
    checked = await changing(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    back = _list_url(request, form)
    message_id = _message_id(session, first(form, "id"))
    if message_id is None:
        return see_other(back)
    force = first(form, "force") == "1"
    try:
        result = await service_of(request).retry(message_id, force=force, actor=session.actor)
    except SmsRelayError as exc:
        status, text = _failure(exc)
        session.flash("error", text, force_id=str(message_id) if status == 429 else None)
    else:
        note = "" if result.sent_now else " (it had been sent before: no new SMS)"
        session.flash("ok", f"Sent {message_id}: message SID {result.message_sid}{note}")
    return see_other(back)


@router.get("/delete")
async def delete_confirm(request: Request) -> Response:
    """Delete asks first: this page names the record and offers Delete or Cancel."""
    session = current(request)
    if session is None:
        return to_sign_in(request)
    if not session.operator:
        return message_page(request, session, 403, "Refused", "A viewer cannot delete records.")
    form = {k: request.query_params.getlist(k) for k in request.query_params}
    back = _list_url(request, form)
    message_id = _message_id(session, first(form, "id"))
    if message_id is None:
        return see_other(back)
    try:
        record = await service_of(request).get(message_id)
    except SmsRelayError as exc:
        session.flash("error", _failure(exc)[1])
        return see_other(back)
    return render(
        request,
        "confirm_delete.html",
        session=session,
        title="Delete a failed SMS",
        page="failed",
        record=record,
        back=first(form, "back") or "",
        cancel=back,
    )


@router.post("/delete")
async def delete(request: Request) -> Response:
    checked = await changing(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    back = _list_url(request, form)
    message_id = _message_id(session, first(form, "id"))
    if message_id is None:
        return see_other(back)
    try:
        record = await service_of(request).delete(message_id, actor=session.actor)
    except SmsRelayError as exc:
        session.flash("error", _failure(exc)[1])
    else:
        session.flash("ok", f"Deleted {message_id} ({record.phone}, {record.reason})")
    return see_other(back)


@router.post("/replay")
async def replay_selected(request: Request) -> Response:
    checked = await changing(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    back = _list_url(request, form)
    ids: list[uuid.UUID] = []
    for raw in form.get("ids", []):
        message_id = _message_id(session, raw)
        if message_id is None:
            return see_other(back)
        ids.append(message_id)
    if not ids:
        session.flash("error", "Select at least one record to replay.")
        return see_other(back)
    await _replay(request, session, ids=ids)
    return see_other(back)


@router.get("/replay-reason")
async def replay_reason_confirm(request: Request) -> Response:
    """Replaying a whole reason shows the count first."""
    session = current(request)
    if session is None:
        return to_sign_in(request)
    if not session.operator:
        return message_page(request, session, 403, "Refused", "A viewer cannot replay records.")
    reason = request.query_params.get("reason", "")
    if reason not in REPLAYABLE_REASONS:
        return message_page(
            request,
            session,
            400,
            "Replay",
            f"Reason: must be one of {', '.join(REPLAYABLE_REASONS)}",
        )
    try:
        page = await service_of(request).list_records(
            limit=1, offset=0, status=RecordStatus.FAILED, reason=reason
        )
    except SmsRelayError as exc:
        return message_page(request, session, 503, "Replay", f"Unavailable: {exc}")
    return render(
        request,
        "confirm_replay.html",
        session=session,
        title="Replay a reason",
        page="failed",
        reason=reason,
        count=page.total,
        limit=min(page.total, MAX_REPLAY_LIMIT),
        max_limit=MAX_REPLAY_LIMIT,
    )


@router.post("/replay-reason")
async def replay_reason(request: Request) -> Response:
    checked = await changing(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    back = ui_root(request) + "/failed?" + urlencode({"reason": first(form, "reason") or ""})
    reason = first(form, "reason") or ""
    raw_limit = first(form, "limit") or ""
    if reason not in REPLAYABLE_REASONS:
        session.flash("error", f"Refused (400): not a replayable reason: {reason[:40]!r}")
        return see_other(ui_root(request) + "/failed")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_REPLAY_LIMIT:
        session.flash("error", "Nothing to replay.")
        return see_other(back)
    await _replay(request, session, reason=DeadLetterReason(reason), limit=int(raw_limit))
    return see_other(back)


async def _replay(
    request: Request,
    session: Session,
    *,
    ids: list[uuid.UUID] | None = None,
    reason: DeadLetterReason | None = None,
    limit: int = 100,
) -> None:
    service = service_of(request)
    try:
        plan = await service.plan_replay(ids=ids, reason=reason, limit=limit, actor=session.actor)
    except SmsRelayError as exc:
        session.flash("error", _failure(exc)[1])
        return
    service.start_replay(plan)
    skipped = (
        f"; skipped {plan.skipped} (unknown, resolved or invalid payload)" if plan.skipped else ""
    )
    session.flash("ok", f"Queued {len(plan.records)} for replay{skipped}")


def _failure(exc: SmsRelayError) -> tuple[int, str]:
    status, text = failure_text(exc)
    log.info("admin.console_change_failed", status=status)
    return status, text
