"""`POST /twilio/status-callback`: Twilio's delivery receipts, signed, queued in Redis.

No bearer token (Twilio has none): a valid `X-Twilio-Signature` instead — HMAC-SHA1 with
TWILIO_AUTH_TOKEN over SMSRELAY_TWILIO_STATUS_CALLBACK (the public URL Twilio called, which
behind a proxy is not the one this process sees) and the sorted form fields; 403 otherwise.
A valid callback is queued in Redis (`{ns}:receipts`) and answered 204 at once; the mirror
applies it to Postgres, so a Postgres outage loses nothing. Twilio does not promise to send a
status callback again after an error answer (by default it retries only a connection that
failed), so with Redis away the receipt is applied to Postgres at once, as the mirror would
(its delivery count is what is lost; the trace shows it from `sent_sms`, admin/trace.py);
only with both away is it a 503, and its message may then stay `sent` (README, "Delivery
receipts").

What is no message status callback is refused before anything is stored: not UTF-8 or over
MAX_FORM_FIELDS fields (400, before the signature is computed), over 64 KiB (413), a SID that
is no SID or a status Twilio does not send (400, after it).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, Request, Response
from twilio.request_validator import RequestValidator

from smsrelay import clock
from smsrelay.admin.errors import error_response
from smsrelay.admin.service import AdminService, RedisUnavailable, redis_errors
from smsrelay.logging import get_logger
from smsrelay.schemas.api import ErrorResponse
from smsrelay.schemas.receipts import StatusCallback
from smsrelay.store.db import DatabaseUnavailable
from smsrelay.streams.keys import FleetKeys

log = get_logger("smsrelay.admin")

# Receipts waiting for the mirror, at most (about): a stopped mirror must not fill Redis.
RECEIPTS_CAP = 1_000_000
# Twilio posts about twenty fields; a form of thousands is no callback, and costs the HMAC.
MAX_FORM_FIELDS = 200

twilio = APIRouter(tags=["twilio"])


@twilio.post(
    "/twilio/status-callback",
    status_code=204,
    # Twilio's, not an operator's: SECURITY.md and the README document it.
    include_in_schema=False,
    responses={
        400: {"model": ErrorResponse, "description": "not a message status callback"},
        403: {"model": ErrorResponse, "description": "the signature is missing or wrong"},
        404: {"model": ErrorResponse, "description": "status callbacks are not configured"},
        503: {"model": ErrorResponse, "description": "Redis and Postgres are both unavailable"},
    },
)
async def status_callback(
    request: Request,
    x_twilio_signature: Annotated[str, Header()] = "",
) -> Response:
    """Twilio's message status callback (form-encoded, signed by Twilio)."""
    service: AdminService = request.app.state.service
    settings = service.settings
    if not settings.twilio_status_callback or settings.twilio_auth_token is None:
        return error_response(
            404,
            "status callbacks are not configured here "
            "(SMSRELAY_TWILIO_STATUS_CALLBACK, TWILIO_AUTH_TOKEN)",
        )
    # (the body is at most 64 KiB: GuardMiddleware answered 413 to a larger one)
    try:
        pairs = parse_qsl(
            (await request.body()).decode(),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except UnicodeDecodeError:
        return error_response(400, "the body is not UTF-8 form data (Twilio's never is)")
    except ValueError:
        return error_response(400, f"more than {MAX_FORM_FIELDS} form fields")
    form = dict(pairs)
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    if not x_twilio_signature or not validator.validate(
        settings.twilio_status_callback, form, x_twilio_signature
    ):
        log.warning(
            "receipts.bad_signature",
            client=request.client.host if request.client else None,
            fields=len(form),
        )
        return error_response(403, "invalid or missing X-Twilio-Signature")
    try:
        receipt = StatusCallback.parse(form, clock.now())
    except ValueError as exc:
        log.warning("receipts.refused", error=str(exc))
        return error_response(400, f"not a message status callback: {exc}")
    if receipt is None:  # signed by Twilio, but not a message status: nothing to do
        return Response(status_code=204)
    fields = {
        "MessageSid": receipt.message_sid,
        "MessageStatus": receipt.status,
        "ErrorCode": str(receipt.error_code or ""),
        "received_at": clock.iso(receipt.received_at),
    }
    try:
        with redis_errors():
            await service.redis.xadd(
                FleetKeys(settings.namespace).receipts,
                fields,  # type: ignore[arg-type]
                maxlen=RECEIPTS_CAP,
                approximate=True,
            )
        service.receipt_queued()
    except RedisUnavailable as redis_away:
        try:
            await service.apply_receipt_without_redis(receipt)
        except DatabaseUnavailable:
            raise redis_away from None  # 503: nowhere to keep it
    return Response(status_code=204)
