"""One provider attempt for a begun message, and what its outcome means (rule 15).

- Sent: the marker is written, the breaker hears of it when that matters.
- Failed about this message: the seed's rule (retry with backoff while attempts last, a
  permanent refusal dead-letters at once).
- Failed because the provider or the account is unwell: the breaker counts it; once the
  breaker knows of an outage the message waits without losing the attempt.
- Outcome unknown (a timeout, a connection lost after the request went out, a sender that
  died mid-send): before the next attempt the provider is asked whether it has the message.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from smsrelay import clock
from smsrelay.consumers.breaker import ProviderBreaker
from smsrelay.consumers.metrics import WorkerMetrics
from smsrelay.consumers.providers.base import Provider, SendReceipt
from smsrelay.consumers.retry import RetryPolicy
from smsrelay.consumers.settle import Settler
from smsrelay.errors import ProviderError
from smsrelay.logging import get_logger
from smsrelay.schemas.dead_letter import DeadLetterReason as Reason
from smsrelay.schemas.entry import RequestEntry
from smsrelay.streams.group import Delivery
from smsrelay.streams.queue import Begin

log = get_logger("smsrelay.worker")

CRASHED_DURING_ATTEMPT = "the worker stopped during the last attempt (no provider answer recorded)"


class ProviderAttempt:
    def __init__(
        self,
        settler: Settler,
        provider: Provider,
        breaker: ProviderBreaker,
        policy: RetryPolicy,
        metrics: WorkerMetrics,
    ) -> None:
        self.settler = settler
        self.provider = provider
        self.breaker = breaker
        self.policy = policy
        self.metrics = metrics

    async def run(
        self,
        delivery: Delivery,
        entry: RequestEntry,
        decision: Begin,
        release: Callable[[], None],
        probe: bool = False,
    ) -> None:
        """`release()` frees the send slot once the provider answered."""
        if decision.ambiguous_since:
            try:
                found = await self._find(entry, decision.ambiguous_since)
            except ProviderError as exc:
                release()
                await self.failed(delivery, entry, decision, exc, probe)
                return
            if found is not None:
                release()
                await self._found(delivery, entry, found, decision.attempt, probe)
                return
        started = time.perf_counter()
        try:
            receipt = await self.provider.send(entry.to, entry.body, message_id=entry.message_id)
        except ProviderError as exc:
            release()
            self.metrics.send_duration.observe(time.perf_counter() - started)
            await self.failed(delivery, entry, decision, exc, probe)
            return
        release()
        self.metrics.send_duration.observe(time.perf_counter() - started)
        self.metrics.send_attempts.labels(outcome="success").inc()
        await self.settler.sent(
            delivery, entry, receipt.sid, attempt=decision.attempt, segments=receipt.segments
        )
        if self.breaker.enabled:
            await self.breaker.succeeded(probe)

    async def hold(self, delivery: Delivery, entry: RequestEntry) -> None:
        """The breaker opened as this message was begun: wait in Redis, attempt given back."""
        await self.settler.delay(
            delivery, entry, self.policy.delay_s(1), refund=True, event="held_for_provider"
        )
        log.info("sms.held_for_provider", message_id=entry.message_id, breaker="open")

    async def exhausted(self, delivery: Delivery, entry: RequestEntry, decision: Begin) -> None:
        """No attempt left. If the last one never settled (its sender died mid-send), the
        provider may have the message: ask it before calling the message failed."""
        if decision.ambiguous_since:
            try:
                found = await self._find(entry, decision.ambiguous_since)
            except ProviderError as exc:
                # Cannot tell now: ask again after a backoff, never a second send.
                await self.settler.delay(delivery, entry, self.policy.delay_s(1), str(exc))
                return
            if found is not None:
                await self._found(delivery, entry, found, decision.attempt, probe=False)
                return
        await self.settler.dead(
            delivery,
            entry,
            Reason.RETRIES_EXHAUSTED,
            decision.last_error or CRASHED_DURING_ATTEMPT,
            decision.attempt,
            decision.first_attempt_at,
            decision.last_attempt_at,
            release_slot=True,
        )

    async def failed(
        self,
        delivery: Delivery,
        entry: RequestEntry,
        decision: Begin,
        exc: ProviderError,
        probe: bool = False,
    ) -> None:
        error = str(exc)
        self.metrics.send_attempts.labels(
            outcome="retryable_error" if exc.retryable or exc.systemic else "permanent_error"
        ).inc()
        retryable = exc.retryable
        if exc.systemic and self.breaker.enabled:
            verdict = await self.breaker.failed(delivery.shard, entry.message_id, exc)
            if verdict.outage:
                wait_s = max(exc.retry_after_s or 0.0, self.policy.delay_s(1))
                await self.settler.delay(
                    delivery,
                    entry,
                    wait_s,
                    error,
                    refund=True,
                    ambiguous=exc.ambiguous,
                    event="held_for_provider",
                )
                log.info(
                    "sms.held_for_provider",
                    message_id=entry.message_id,
                    error=error,
                    probe=probe,
                    retry_after_seconds=exc.retry_after_s,
                )
                return
            # The provider, not the message, failed: never dead-letter it as permanent.
            retryable = True
        if not retryable:
            await self.settler.dead(
                delivery,
                entry,
                Reason.PERMANENT_ERROR,
                error,
                decision.attempt,
                decision.first_attempt_at,
                clock.now_iso(),
                release_slot=True,
            )
            return
        if not self.policy.may_retry(decision.attempt):
            await self.settler.dead(
                delivery,
                entry,
                Reason.RETRIES_EXHAUSTED,
                error,
                decision.attempt,
                decision.first_attempt_at,
                clock.now_iso(),
                release_slot=True,
            )
            return
        wait_s = max(self.policy.delay_s(decision.attempt), exc.retry_after_s or 0.0)
        await self.settler.delay(delivery, entry, wait_s, error, ambiguous=exc.ambiguous)
        log.warning(
            "sms.retry_scheduled",
            message_id=entry.message_id,
            to=entry.to,
            attempt=decision.attempt,
            wait_seconds=round(wait_s, 3),
            error=error,
        )

    async def _find(self, entry: RequestEntry, since: str) -> SendReceipt | None:
        try:
            moment = clock.parse_iso(since)
        except ValueError:
            moment = entry.created_at
        return await self.provider.find_sent(entry.to, entry.body, min(moment, clock.now()))

    async def _found(
        self,
        delivery: Delivery,
        entry: RequestEntry,
        receipt: SendReceipt,
        attempt: int,
        probe: bool,
    ) -> None:
        self.metrics.found_at_provider.inc()
        await self.settler.sent(
            delivery,
            entry,
            receipt.sid,
            attempt=attempt,
            segments=receipt.segments,
            event="sms.found_at_provider",
        )
        if self.breaker.enabled:
            await self.breaker.succeeded(probe)
