"""The admin operations, written once: the HTTP routes and `smsrelay dlq` both call these.

Errors are the package's own (NotFoundError, ConflictError, RateLimitedError, ProviderError,
StorageError, ...); `smsrelay.admin.errors` maps them to HTTP statuses, the CLI prints them.
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
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from smsrelay.consumers.direct import DirectSender
from smsrelay.consumers.outage import TRANSIENT_REDIS_ERRORS
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
from smsrelay.keys import ShardKeys, shard_of
from smsrelay.logging import get_logger
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.schemas.entry import MessageRequest, describe_errors
from smsrelay.schemas.records import FailedSmsRecord, RecordPage, RecordStatus
from smsrelay.settings import Settings
from smsrelay.store import failed_sms
from smsrelay.store.db import Database

log = get_logger("smsrelay.admin")

RETRY_OUTCOMES = ("success", "rate_limited", "provider_error", "conflict", "not_found")
_REDIS_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_REDIS_ERRORS, aioredis.RedisError)


class RedisUnavailable(StorageError):
    """Redis cannot be reached; `str()` is one line."""


class SenderNotConfigured(SmsRelayError):
    """Retry-now needs Twilio settings that this process does not have."""


class InvalidRequestError(SmsRelayError):
    """A request that is well-formed but asks for something impossible."""


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Redis being away becomes RedisUnavailable (503); anything else is a bug, raised as is."""
    try:
        yield
    except TRANSIENT_REDIS_ERRORS as exc:
        raise RedisUnavailable(f"Redis unreachable ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class RetryResult:
    message_sid: str
    sent_now: bool  # False: the message had already been sent (its sent marker existed)
    record: FailedSmsRecord | None


@dataclass(frozen=True)
class ReplayPlan:
    records: list[FailedSmsRecord]
    skipped: int


Progress = Callable[[int, int], None]


class AdminService:
    def __init__(self, settings: Settings, redis: aioredis.Redis, db: Database,
                 provider: Provider | None = None, sender_problem: str | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.db = db
        self._sender = DirectSender(redis, settings, provider) if provider else None
        self._sender_problem = sender_problem or "no SMS provider configured"
        self._replays: set[asyncio.Task[int]] = set()
        self._stopping = asyncio.Event()

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def keys(self, shard: int) -> ShardKeys:
        return ShardKeys(self.namespace, shard)

    # -- list ------------------------------------------------------------------------------
    async def list_records(self, *, limit: int, offset: int,
                           status: RecordStatus | None = None, reason: str | None = None,
                           phone: str | None = None) -> RecordPage:
        async with self.db.connection() as conn:
            return await failed_sms.list_records(conn, self.namespace, limit=limit,
                                                 offset=offset, status=status, reason=reason,
                                                 phone=phone)

    async def get(self, message_id: uuid.UUID) -> FailedSmsRecord:
        async with self.db.connection() as conn:
            record = await failed_sms.get_record(conn, self.namespace, message_id)
        if record is None:
            raise NotFoundError(f"no failed SMS with id {message_id}")
        return record

    # -- retry now -------------------------------------------------------------------------
    async def retry(self, message_id: uuid.UUID, *, force: bool = False) -> RetryResult:
        """One provider attempt through the worker's sending code (rate limit unless forced).

        Two concurrent retries of one id send at most one SMS: DirectSender holds a lock and
        checks the sent marker. If Postgres fails after the send, the record stays `failed`;
        retrying again finds the sent marker and resolves it without a second SMS.
        """
        try:
            record = await self.get(message_id)
        except NotFoundError:
            await self._count_retry("not_found", None)
            raise
        if record.status is not RecordStatus.FAILED:
            await self._count_retry("conflict", record.phone)
            raise ConflictError(
                f"already resolved (message SID {record.message_sid})"
                if record.status is RecordStatus.RESOLVED else
                "a replay of this message is queued; the record shows its outcome soon")
        if self._sender is None:
            raise SenderNotConfigured(f"retry is unavailable: {self._sender_problem}")
        try:
            MessageRequest(to=record.phone, body=record.message)
        except ValidationError as exc:
            await self._count_retry("conflict", None)
            raise ConflictError(f"the message cannot be sent as stored ({describe_errors(exc)})"
                                ) from None
        try:
            with redis_errors():
                receipt, sent_now = await self._sender.send(
                    str(message_id), record.phone, record.message, force=force)
        except (ConflictError, RateLimitedError, ProviderError) as exc:
            await self._retry_failed(record, exc)
            raise
        async with self.db.connection() as conn:
            updated = await failed_sms.mark_resolved(conn, message_id, receipt.sid,
                                                     sent_now=sent_now)
        await self._count_retry("success", record.phone)
        log.info("admin.retry_sent", message_id=str(message_id), to=record.phone,
                 sid=receipt.sid, forced=force, sent_now=sent_now)
        return RetryResult(receipt.sid, sent_now, updated)

    async def _retry_failed(self, record: FailedSmsRecord, exc: SmsRelayError) -> None:
        if isinstance(exc, ProviderError):
            await self._count_retry("provider_error", record.phone)
            log.warning("admin.retry_failed", message_id=str(record.id), to=record.phone,
                        error=str(exc))
            # Bookkeeping only: if Postgres is away the operator still learns of the 502.
            with contextlib.suppress(StorageError):
                async with self.db.connection() as conn:
                    await failed_sms.record_retry_failure(conn, record.id, str(exc))
        elif isinstance(exc, RateLimitedError):
            await self._count_retry("rate_limited", record.phone)
        else:
            await self._count_retry("conflict", record.phone)

    async def _count_retry(self, outcome: str, phone: str | None) -> None:
        shard = shard_of(phone, self.settings.shards) if phone else 0
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.redis.hincrby(  # type: ignore[misc]  # redis-py types sync|async as one
                self.keys(shard).admin_retry_counts, outcome, 1)

    # -- delete ----------------------------------------------------------------------------
    async def delete(self, message_id: uuid.UUID) -> FailedSmsRecord:
        """Remove the row and its dead-letter entry; both or (on an outage) neither."""
        async with self.db.connection() as conn, conn.transaction():
            record = await failed_sms.delete_record(conn, self.namespace, message_id)
            if record is None:
                raise NotFoundError(f"no failed SMS with id {message_id}")
            if record.dead_letter_id:
                with redis_errors():
                    await self.redis.xdel(self.keys(record.shard).dead, record.dead_letter_id)
        log.info("admin.deleted", message_id=str(message_id), to=record.phone)
        return record

    # -- replay ----------------------------------------------------------------------------
    async def plan_replay(self, *, ids: list[uuid.UUID] | None = None,
                          reason: DeadLetterReason | None = None,
                          limit: int = 100) -> ReplayPlan:
        """Mark the chosen records `replayed`; `run_replay` then queues them."""
        if reason is DeadLetterReason.INVALID_PAYLOAD:
            raise InvalidRequestError("invalid_payload dead letters cannot be replayed: their "
                                      "entries do not parse; fix the publisher, then delete them")
        unique = list(dict.fromkeys(ids)) if ids is not None else None
        async with self.db.connection() as conn:
            records = await failed_sms.mark_replayed(
                conn, self.namespace, ids=unique, reason=reason.value if reason else None,
                limit=len(unique) if unique is not None else limit)
        skipped = len(unique) - len(records) if unique is not None else 0
        log.info("admin.replay_planned", records=len(records), skipped=skipped,
                 reason=reason.value if reason else None)
        return ReplayPlan(records, skipped)

    def start_replay(self, plan: ReplayPlan) -> None:
        """Queue the plan in the background (the HTTP route answers 202 at once)."""
        if not plan.records:
            return
        task = asyncio.create_task(self.run_replay(plan), name="replay")
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def run_replay(self, plan: ReplayPlan, progress: Progress | None = None) -> int:
        """Put each record's original entry back on its request stream, at the replay rate.

        Records that were not queued (a shutdown, a bug) go back to `failed`, so none is left
        showing `replayed` with nothing on the way.
        """
        from smsrelay.admin.replay import publish_replay  # the stream-writing half

        queued: set[uuid.UUID] = set()
        try:
            await publish_replay(self, plan.records, queued, self._stopping, progress)
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


def admin_redis(url: str) -> aioredis.Redis:
    """Short timeouts: an HTTP request should fail fast with 503 rather than hang."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url, socket_timeout=5.0, socket_connect_timeout=3.0,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1), decode_responses=False)
    return client


@asynccontextmanager
async def open_service(settings: Settings, *, pooled: bool = False, with_sender: bool = False,
                       log_outages: bool = True) -> AsyncIterator[AdminService]:
    """The service with its clients; `with_sender` builds the Twilio provider (needs a loop).

    The admin service pools its Postgres connections; a CLI command opens one per operation
    and reports an outage as its error line (`log_outages=False`) rather than a log entry.
    """
    provider: Provider | None = None
    problem: str | None = None
    if with_sender:
        from smsrelay.consumers.providers.twilio import TwilioProvider

        try:
            provider = TwilioProvider(settings, pool_size=8)
        except ConfigError as exc:
            problem = str(exc)
    client = admin_redis(settings.redis_url)
    db = Database(settings.database_url, pooled=pooled, log_outages=log_outages)
    service = AdminService(settings, client, db, provider, problem)
    try:
        await db.open()
        yield service
    finally:
        await service.aclose()
        if provider is not None:
            await provider.aclose()
        await db.close()
        await client.aclose()
