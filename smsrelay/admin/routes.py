"""The contract's routes: thin translations between HTTP and `AdminService`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import AfterValidator

from smsrelay.admin import metrics
from smsrelay.admin.service import AdminService
from smsrelay.errors import StorageError
from smsrelay.outage import write_refusal
from smsrelay.schemas.api import (
    DEFAULT_REPLAY_LIMIT,
    MAX_LIST_LIMIT,
    MAX_OFFSET,
    AuditListResponse,
    AuditRecord,
    DeleteResponse,
    ErrorResponse,
    FailedSms,
    HealthResponse,
    ListResponse,
    MessageId,
    MessageListResponse,
    MessageResponse,
    Pagination,
    RateLimitedResponse,
    ReadyResponse,
    ReplayRequest,
    ReplayResponse,
    RetryRequest,
    RetryResponse,
    normalize_phone_filter,
)
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.records import RecordStatus
from smsrelay.store import audit

# Documented only; the validator says what is wrong in its own words. The `+` may arrive as
# a space (unencoded in a query string).
PHONE_FILTER = r"^[ +]?[1-9][0-9]{6,14}$"


def get_service(request: Request) -> AdminService:
    service: AdminService = request.app.state.service
    return service


Service = Annotated[AdminService, Depends(get_service)]


def get_actor(request: Request) -> str:
    """Who calls: the token's name, put there by the guard (the audit trail's `actor`)."""
    return str(getattr(request.state, "actor", "unknown"))


Actor = Annotated[str, Depends(get_actor)]

# The guard middleware checks the token and the role before any route runs; this scheme only
# documents it in the OpenAPI description (so /docs has an "Authorize" button).
bearer = HTTPBearer(
    auto_error=False,
    description=(
        "SMSRELAY_ADMIN_TOKEN (the operator `admin`) or a token of SMSRELAY_ADMIN_TOKENS; a "
        "viewer's token reads only (403 on every change). Too many failed attempts from one "
        "address: 429 with Retry-After."
    ),
)


def _errors(*statuses: int, changes: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error answers of an /api/ route: `changes` adds the viewer's 403."""
    described: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse} for status in (400, 401, 503, *statuses)
    }
    if changes:
        described[403] = {
            "model": ErrorResponse,
            "description": "The token is a viewer's: it cannot change anything",
        }
    # Any /api/ call: the failed-authentication limit; the retry: the phone's rate limit too.
    described[429] = {
        "model": RateLimitedResponse,
        "headers": {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        },
    }
    if changes:  # (a body over the guard's limit, before any parsing)
        described[413] = {"model": ErrorResponse, "description": "The body is over 64 KiB"}
    return described


api = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Security(bearer)])
ops = APIRouter(tags=["operations"])


@api.get("/retry-failed-sms", response_model=ListResponse, responses=_errors())
async def list_failed_sms(
    service: Service,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    status: RecordStatus | None = None,
    reason: DeadLetterReason | None = None,
    phone: Annotated[
        str | None,
        Query(
            max_length=40,
            json_schema_extra={"pattern": PHONE_FILTER},
            description="E.164, e.g. +14155552671",
        ),
        AfterValidator(normalize_phone_filter),
    ] = None,
) -> ListResponse:
    """Failed SMS records, newest first."""
    page = await service.list_records(
        limit=limit,
        offset=offset,
        status=status,
        reason=reason.value if reason else None,
        phone=phone,
    )
    return ListResponse(
        data=[FailedSms.of(r) for r in page.records],
        pagination=Pagination(total=page.total, limit=limit, offset=offset, has_more=page.has_more),
    )


@api.post(
    "/retry-failed-sms",
    response_model=RetryResponse,
    responses=_errors(404, 409, 502, changes=True),
)
async def retry_failed_sms(body: RetryRequest, service: Service, actor: Actor) -> RetryResponse:
    """Send one now, through the rate limiter unless `force`."""
    result = await service.retry(body.id, force=body.force, actor=actor)
    return RetryResponse(message_sid=result.message_sid)


@api.delete(
    "/retry-failed-sms", response_model=DeleteResponse, responses=_errors(404, changes=True)
)
async def delete_failed_sms(
    id: Annotated[MessageId, Query()],  # the contract names it `id`
    service: Service,
    actor: Actor,
) -> DeleteResponse:
    """Delete the record and its dead-letter stream entry."""
    await service.delete(id, actor=actor)
    return DeleteResponse()


@api.post(
    "/dead-letters/replay",
    status_code=202,
    response_model=ReplayResponse,
    responses=_errors(changes=True),
)
async def replay_dead_letters(
    body: ReplayRequest, service: Service, actor: Actor
) -> ReplayResponse:
    """Put dead letters back on the request stream, at SMSRELAY_REPLAY_RATE per second."""
    plan = await service.plan_replay(
        ids=body.ids, reason=body.reason, limit=body.limit or DEFAULT_REPLAY_LIMIT, actor=actor
    )
    service.start_replay(plan)
    return ReplayResponse(queued=len(plan.records), skipped=plan.skipped)


@api.get("/messages", response_model=MessageListResponse, responses=_errors())
async def messages_of_a_phone(
    service: Service,
    phone: Annotated[
        str,
        Query(
            max_length=40,
            json_schema_extra={"pattern": PHONE_FILTER},
            description="E.164, e.g. +14155552671",
        ),
        AfterValidator(normalize_phone_filter),
    ],
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 20,
) -> MessageListResponse:
    """A phone's recent messages (sent and failed), newest first."""
    assert phone is not None  # (normalize_phone_filter keeps a given value)
    return MessageListResponse(data=await service.messages_for_phone(phone, limit))


@api.get("/messages/{message_id}", response_model=MessageResponse, responses=_errors(404))
async def message_trace(message_id: MessageId, service: Service) -> MessageResponse:
    """A message's status and trace: published, attempts, waits, sent, receipts, dead letter."""
    return MessageResponse(data=await service.message(message_id))


@api.get("/audit", response_model=AuditListResponse, responses=_errors())
async def list_audit(
    service: Service,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AuditListResponse:
    """The audit trail of changes (API, CLI, console), newest first."""
    async with service.db.connection() as conn:
        page = await audit.list_entries(conn, service.namespace, limit=limit, offset=offset)
    return AuditListResponse(
        data=[AuditRecord.of(e) for e in page.entries],
        pagination=Pagination(total=page.total, limit=limit, offset=offset, has_more=page.has_more),
    )


@ops.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is alive (no dependency is checked)."""
    return HealthResponse()


@ops.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(service: Service) -> JSONResponse:
    """Redis and Postgres both answer, and Redis accepts writes."""
    checks = {"redis": "ok", "postgres": "ok"}
    try:
        await service.check_redis_writable()
    except Exception as exc:  # any failure means "not ready"; the cause is in the answer
        refusal = write_refusal(exc)
        checks["redis"] = (
            f"refuses writes ({refusal})" if refusal else f"unavailable ({type(exc).__name__})"
        )
    try:
        await service.db.ping()
    except StorageError:
        checks["postgres"] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    body = ReadyResponse(status="ready" if ready else "unavailable", **checks)
    return JSONResponse(body.model_dump(by_alias=True), status_code=200 if ready else 503)


@ops.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}}},
)
async def prometheus_metrics(service: Service, request: Request) -> PlainTextResponse:
    """Prometheus text format, read from Redis and Postgres at scrape time."""
    snapshot = await metrics.gather(service, request.app.state.unread)
    return PlainTextResponse(metrics.render(snapshot), media_type=CONTENT_TYPE_PLAIN_0_0_4)
