"""The admin operations, written once: the HTTP routes and `smsrelay dlq` both call these.

Errors are the package's own (NotFoundError, ConflictError, RateLimitedError, ProviderError,
StorageError, ...); `smsrelay.admin.errors` maps them to HTTP statuses, the CLI prints them.

A record is changed under its row lock (`FOR UPDATE NOWAIT`), held through a "retry now" to
its end: a delete or a second retry of the same record meanwhile is a conflict (409), never
a lost record of a send. The send itself goes through the worker's scripts (rule 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
from pydantic import ValidationError

from smsrelay.admin.audit import UNNAMED_ACTOR, AuditTrail, Change
from smsrelay.admin.replay import ReplayPlan, publish_replay
from smsrelay.admin.trace import message_trace, recent_for_phone
from smsrelay.consumers.direct import DirectResult, DirectSender
from smsrelay.consumers.providers.base import Provider
from smsrelay.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    SmsRelayError,
    StorageError,
)
from smsrelay.logging import get_logger
from smsrelay.outage import Outages, is_outage
from smsrelay.schemas.api import MessageSummary, MessageTrace
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.entry import MessageRequest, describe_errors
from smsrelay.schemas.receipts import StatusCallback
from smsrelay.schemas.records import FailedSmsRecord, RecordPage, RecordStatus
from smsrelay.settings import Settings
from smsrelay.store import failed_sms
from smsrelay.store.db import Connection, Database, DatabaseUnavailable
from smsrelay.store.receipts import BodyFetcher, apply_receipts
from smsrelay.streams.clients import admin_client
from smsrelay.streams.keys import shard_of
from smsrelay.streams.queue import Queue

log = get_logger("smsrelay.admin")

# An undelivered message's body, asked of Twilio while Twilio waits for our answer.
RECEIPT_BODY_TIMEOUT_S = 3.0

RETRY_OUTCOMES = ("success", "rate_limited", "provider_error", "conflict", "not_found")


class RedisUnavailable(StorageError):
    """Redis cannot be reached or refuses writes; `str()` is one line."""


class SenderNotConfigured(SmsRelayError):
    """Retry-now needs Twilio settings that this process does not have."""

    audit_outcome = "unavailable"


class InvalidRequestError(SmsRelayError):
    """A request that is well-formed but asks for something impossible."""

    audit_outcome = "invalid"


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Redis being away becomes RedisUnavailable (503); anything else is a bug, raised as is."""
    try:
        yield
    except Exception as exc:
        if not is_outage(exc):
            raise
        raise RedisUnavailable(f"Redis unavailable ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class RetryResult:
    message_sid: str
    sent_now: bool  # False: the message had already been sent (its sent marker existed)
    record: FailedSmsRecord | None


Progress = Callable[[int, int], None]


class AdminService:
    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        db: Database,
        provider: Provider | None = None,
        sender_problem: str | None = None,
        outages: Outages | None = None,
        fetch_body: BodyFetcher | None = None,
    ) -> None:
        """`fetch_body`: an undelivered message's body from the provider, for its record."""
        self.settings = settings
        self.redis = redis
        self.db = db
        self.outages = outages or Outages()
        self.queue = Queue(settings, redis)
        self.audit = AuditTrail(db, settings.namespace)
        self._sender = (
            DirectSender(self.queue, settings, provider, self.outages) if provider else None
        )
        self._sender_problem = sender_problem or "no SMS provider configured"
        self._fetch_body = fetch_body
        self._receipts_without_redis = 0  # since Redis last took one: said once per outage
        self._replays: set[asyncio.Task[int]] = set()
        self._stopping = asyncio.Event()

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    async def check_redis_writable(self) -> None:
        """Raise the Redis error when Redis cannot be reached or refuses writes (OOM, ...)."""
        await self.redis.set(self.queue.fleet.readiness_probe, "1", px=5000)

    # -- receipts --------------------------------------------------------------------------
    async def apply_receipt_without_redis(self, receipt: StatusCallback) -> None:
        """Redis is away when Twilio posts a receipt: apply it to Postgres now, as the mirror
        would (Twilio does not post it again after an error answer). Its delivery count is not
        written, nor its trace event (the trace shows the verdict from `sent_sms` instead).
        DatabaseUnavailable when Postgres is away too."""
        fetch_body = self._fetch_body

        async def bounded_fetch(sid: str) -> str | None:
            assert fetch_body is not None
            # Twilio waits 15 s for this answer; without the body the record says so
            async with asyncio.timeout(RECEIPT_BODY_TIMEOUT_S):
                return await fetch_body(sid)

        async with self.db.connection() as conn, conn.transaction():
            await apply_receipts(
                conn,
                self.namespace,
                self.settings.shards,
                [receipt],
                bounded_fetch if fetch_body else None,
            )
        self._receipts_without_redis += 1
        if self._receipts_without_redis == 1:
            log.warning(
                "receipts.applied_without_redis",
                sid=receipt.message_sid,
                status=receipt.status,
                effect="Redis is away: receipts go to Postgres directly until it is back; "
                "they are not counted in smsrelay_delivery_status_total",
            )

    def receipt_queued(self) -> None:
        """Redis took a receipt again: say how many went to Postgres directly meanwhile."""
        if self._receipts_without_redis:
            log.info("receipts.redis_back", applied_without_redis=self._receipts_without_redis)
            self._receipts_without_redis = 0

    # -- list ------------------------------------------------------------------------------
    async def list_records(
        self,
        *,
        limit: int,
        offset: int,
        status: RecordStatus | None = None,
        reason: str | None = None,
        phone: str | None = None,
    ) -> RecordPage:
        async with self.db.connection() as conn:
            return await failed_sms.list_records(
                conn,
                self.namespace,
                limit=limit,
                offset=offset,
                status=status,
                reason=reason,
                phone=phone,
            )

    async def get(self, message_id: uuid.UUID) -> FailedSmsRecord:
        async with self.db.connection() as conn:
            record = await failed_sms.get_record(conn, self.namespace, message_id)
        if record is None:
            raise NotFoundError(f"no failed SMS with id {message_id}")
        return record

    async def _locked(self, conn: Connection, message_id: uuid.UUID, doing: str) -> FailedSmsRecord:
        """The record under its row lock; ConflictError when another change holds it."""
        try:
            record = await failed_sms.lock_record(conn, self.namespace, message_id)
        except failed_sms.RecordBusy:
            raise ConflictError(
                f"cannot {doing}: a retry of this message is in progress; "
                "its record shows the outcome soon"
            ) from None
        if record is None:
            raise NotFoundError(f"no failed SMS with id {message_id}")
        return record

    # -- trace -----------------------------------------------------------------------------
    async def message(self, message_id: uuid.UUID) -> MessageTrace:
        """A message's trace; from Redis alone when Postgres is away."""
        try:
            async with self.db.connection() as conn:
                with redis_errors():
                    return await message_trace(self.queue, conn, self.namespace, message_id)
        except DatabaseUnavailable:
            with redis_errors():
                return await message_trace(self.queue, None, self.namespace, message_id)

    async def messages_for_phone(self, phone: str, limit: int) -> list[MessageSummary]:
        async with self.db.connection() as conn:
            return await recent_for_phone(conn, self.namespace, phone, limit)

    # -- retry now -------------------------------------------------------------------------
    async def retry(
        self, message_id: uuid.UUID, *, force: bool = False, actor: str = UNNAMED_ACTOR
    ) -> RetryResult:
        """One provider attempt through the worker's scripts (rate limit unless forced).

        The record stays locked until the outcome is written. If Postgres fails after the
        send, the sent marker and the outcome stream still resolve the record (the mirror),
        and another retry finds the marker: no second SMS. `actor` goes to the audit trail.
        """
        action = "retry_forced" if force else "retry"
        async with self.audit.change(actor, action, str(message_id)) as change:
            return await self._retry(message_id, force, change)

    async def _retry(self, message_id: uuid.UUID, force: bool, change: Change) -> RetryResult:
        outcome = "conflict"
        phone: str | None = None
        failure: ProviderError | None = None
        try:
            async with self.db.connection() as conn, conn.transaction():
                record = await self._locked(conn, message_id, "retry")
                phone = record.phone
                self._check_sendable(record)
                try:
                    with redis_errors():
                        result = await self._sender_or_fail().send(
                            str(message_id),
                            record.phone,
                            record.message,
                            force=force,
                            resolves=record.dead_letter_id,
                            # an undelivered message was sent: its marker must not stop a new SMS
                            resend_of=record.message_sid or ""
                            if record.reason == DeadLetterReason.UNDELIVERED.value
                            else "",
                        )
                except ProviderError as exc:
                    outcome = "provider_error"
                    log.warning(
                        "admin.retry_failed",
                        message_id=str(message_id),
                        to=record.phone,
                        error=str(exc),
                    )
                    await failed_sms.record_retry_failure(conn, record.id, str(exc))
                    await change.write_in(conn, exc)
                    failure = exc
                else:
                    updated = await failed_sms.mark_resolved(
                        conn, message_id, result.receipt.sid, sent_now=result.sent_now
                    )
                    await change.write_in(conn, detail=_sent_detail(result))
                    outcome = "success"
                    self._log_sent(message_id, record, result, force)
                    return RetryResult(result.receipt.sid, result.sent_now, updated)
            assert failure is not None
            raise failure  # after the commit that recorded the failed attempt
        except NotFoundError:
            outcome = "not_found"
            raise
        except RateLimitedError:
            outcome = "rate_limited"
            raise
        finally:
            await self._count_retry(outcome, phone)

    def _sender_or_fail(self) -> DirectSender:
        if self._sender is None:
            raise SenderNotConfigured(f"retry is unavailable: {self._sender_problem}")
        return self._sender

    @staticmethod
    def _check_sendable(record: FailedSmsRecord) -> None:
        if record.status is not RecordStatus.FAILED:
            raise ConflictError(
                f"already resolved (message SID {record.message_sid})"
                if record.status is RecordStatus.RESOLVED
                else "a replay of this message is queued; the record shows its outcome soon"
            )
        if record.reason == DeadLetterReason.INVALID_PAYLOAD.value:
            raise ConflictError(
                "an invalid_payload dead letter cannot be sent: its entry did "
                "not parse; fix the publisher, then delete the record"
            )
        try:
            MessageRequest(to=record.phone, body=record.message)
        except ValidationError as exc:
            raise ConflictError(
                f"the message cannot be sent as stored ({describe_errors(exc)})"
            ) from None

    @staticmethod
    def _log_sent(
        message_id: uuid.UUID, record: FailedSmsRecord, result: DirectResult, force: bool
    ) -> None:
        log.info(
            "admin.retry_sent",
            message_id=str(message_id),
            to=record.phone,
            sid=result.receipt.sid,
            forced=force,
            sent_now=result.sent_now,
        )

    async def _count_retry(self, outcome: str, phone: str | None) -> None:
        shard = shard_of(phone, self.settings.shards) if phone else 0
        with contextlib.suppress(aioredis.RedisError, OSError):
            await self.redis.hincrby(self.queue.keys(shard).admin_retry_counts, outcome, 1)

    # -- delete ----------------------------------------------------------------------------
    async def delete(self, message_id: uuid.UUID, *, actor: str = UNNAMED_ACTOR) -> FailedSmsRecord:
        """Remove the row and its dead-letter entry; both or (on an outage) neither.

        Refused (409) while the message is being sent (a retry holds the row, or a replay
        entry is in a worker's hands): its outcome would otherwise find no record.
        """
        async with self.audit.change(actor, "delete", str(message_id)) as change:
            return await self._delete(message_id, change)

    async def _delete(self, message_id: uuid.UUID, change: Change) -> FailedSmsRecord:
        async with self.db.connection() as conn, conn.transaction():
            record = await self._locked(conn, message_id, "delete")
            if record.status is RecordStatus.REPLAYED:
                raise ConflictError(
                    "cannot delete: a replay of this message is queued; its "
                    "record shows the outcome soon, delete it then"
                )
            with redis_errors():
                state_shard = shard_of(record.phone, self.settings.shards)
                if await self.queue.sender_of(state_shard, str(message_id)):
                    raise ConflictError("cannot delete: this message is being sent right now")
                await failed_sms.delete_record(conn, self.namespace, message_id)
                await change.write_in(conn, detail=f"{record.reason}, {record.status.value}")
                if record.dead_letter_id:
                    await self.redis.xdel(self.queue.keys(record.shard).dead, record.dead_letter_id)
        log.info("admin.deleted", message_id=str(message_id), to=record.phone)
        return record

    # -- replay ----------------------------------------------------------------------------
    async def plan_replay(
        self,
        *,
        ids: list[uuid.UUID] | None = None,
        reason: DeadLetterReason | None = None,
        limit: int = 100,
        actor: str = UNNAMED_ACTOR,
    ) -> ReplayPlan:
        """Mark the chosen records `replayed`; `run_replay` then queues them."""
        if ids is not None:
            target = ",".join(str(i) for i in dict.fromkeys(ids))
        else:
            target = f"reason:{reason.value if reason else ''}"
        async with self.audit.change(actor, "replay", target) as change:
            return await self._plan_replay(ids, reason, limit, change)

    async def _plan_replay(
        self,
        ids: list[uuid.UUID] | None,
        reason: DeadLetterReason | None,
        limit: int,
        change: Change,
    ) -> ReplayPlan:
        if reason is DeadLetterReason.INVALID_PAYLOAD:
            raise InvalidRequestError(
                "invalid_payload dead letters cannot be replayed: their "
                "entries do not parse; fix the publisher, then delete them"
            )
        unique = list(dict.fromkeys(ids)) if ids is not None else None
        async with self.db.connection() as conn, conn.transaction():
            records = await failed_sms.mark_replayed(
                conn,
                self.namespace,
                ids=unique,
                reason=reason.value if reason else None,
                limit=len(unique) if unique is not None else limit,
            )
            skipped = len(unique) - len(records) if unique is not None else 0
            await change.write_in(
                conn, detail=f"{len(records)} queued for replay, {skipped} skipped"
            )
        log.info(
            "admin.replay_planned",
            records=len(records),
            skipped=skipped,
            reason=reason.value if reason else None,
        )
        return ReplayPlan(records, skipped)

    def start_replay(self, plan: ReplayPlan) -> None:
        """Queue the plan in the background (the HTTP route answers 202 at once)."""
        if not plan.records:
            return
        task = asyncio.create_task(self.run_replay(plan), name="replay")
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def run_replay(self, plan: ReplayPlan, progress: Progress | None = None) -> int:
        """Put each record's original entry back on its request stream, within the
        namespace's replay budget (SMSRELAY_REPLAY_RATE, shared by every admin process).

        Records that were not queued (a shutdown, a bug) go back to `failed`, so none is left
        showing `replayed` with nothing on the way.
        """
        queued: set[uuid.UUID] = set()
        try:
            await publish_replay(
                self.queue, self.outages, plan.records, queued, self._stopping, progress
            )
        finally:
            left = [r.id for r in plan.records if r.id not in queued]
            if left:
                with contextlib.suppress(StorageError):
                    async with self.db.connection() as conn:
                        await failed_sms.revert_replayed(conn, left)
                log.warning("admin.replay_incomplete", queued=len(queued), reverted=len(left))
        log.info("admin.replay_done", queued=len(queued))
        return len(queued)

    # -- lifecycle -------------------------------------------------------------------------
    async def aclose(self, grace_s: float = 5.0) -> None:
        """Let background replays finish for `grace_s`, then cut them short."""
        self._stopping.set()
        if self._replays:
            _, pending = await asyncio.wait(set(self._replays), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _sent_detail(result: DirectResult) -> str:
    sent = "" if result.sent_now else " (sent earlier: no new SMS)"
    return f"message SID {result.receipt.sid}{sent}"


@asynccontextmanager
async def open_service(
    settings: Settings, *, pooled: bool = False, with_sender: bool = False, log_outages: bool = True
) -> AsyncIterator[AdminService]:
    """The service with its clients; `with_sender` builds the Twilio provider (needs a loop).

    The admin service pools its Postgres connections; a CLI command opens one per operation
    and reports an outage as its error line (`log_outages=False`) rather than a log entry.
    """
    provider: Provider | None = None
    fetch_body: BodyFetcher | None = None
    problem: str | None = None
    if with_sender:
        from smsrelay.consumers.providers.twilio import TwilioProvider

        try:
            twilio = TwilioProvider(settings, pool_size=8)
            provider, fetch_body = twilio, twilio.fetch_body
        except ConfigError as exc:
            problem = str(exc)
    outages = Outages()
    client = admin_client(settings)
    db = Database(
        settings.database_url,
        pooled=pooled,
        log_outages=log_outages,
        outage=outages.postgres if log_outages else None,
    )
    service = AdminService(
        settings,
        client,
        db,
        provider,
        problem,
        outages,
        fetch_body=fetch_body,
    )
    try:
        await db.open()
        yield service
    finally:
        await service.aclose()
        if provider is not None:
            await provider.aclose()
        await db.close()
        await client.aclose()
