"""`smsrelay status`: backlog, pending, consumers, delayed and dead letters, per shard."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from smsrelay.schemas.entry import PRIORITIES
from smsrelay.settings import Settings
from smsrelay.streams import stats
from smsrelay.streams.clients import admin_client


def collect_status(settings: Settings) -> stats.PipelineStats:
    async def read() -> stats.PipelineStats:
        client = admin_client(settings)
        try:
            return await stats.collect(client, settings)
        finally:
            await client.aclose()

    return asyncio.run(read())


def status_json(report: stats.PipelineStats) -> dict[str, Any]:
    """The report for `--json`: current lengths under `now`, lifetime counts under `lifetime`."""
    shards = []
    for shard in report.shards:
        shards.append(
            {
                "shard": shard.shard,
                "requestStream": shard.request_stream,
                "deadLetterStream": shard.dead_stream,
                "now": {
                    "backlog": shard.backlog,
                    "pending": shard.pending,
                    "delayed": shard.delayed,
                    "deadLetters": shard.dead_letters,
                    "deadLettersNotMirrored": shard.unmirrored,
                    "backlogByPriority": shard.backlog_by_priority,
                    "pendingByPriority": shard.pending_by_priority,
                },
                "lifetime": {
                    "deadLettersByReason": shard.dead_by_reason,
                    "adminRetriesByOutcome": shard.admin_retries,
                },
                "consumers": [
                    {"name": c.name, "pending": c.pending, "idleMs": c.idle_ms}
                    for c in shard.consumers
                ],
            }
        )
    return {
        "namespace": report.namespace,
        "now": {
            name: report.total(attr)
            for name, attr in (
                ("backlog", "backlog"),
                ("pending", "pending"),
                ("delayed", "delayed"),
                ("deadLetters", "dead_letters"),
                ("deadLettersNotMirrored", "unmirrored"),
            )
        },
        "backlogByPriority": _by_priority(report, "backlog_by_priority"),
        "pendingByPriority": _by_priority(report, "pending_by_priority"),
        "shards": shards,
        "unreadStreams": [asdict(u) for u in report.unread or []],
        "providerBreaker": {
            "state": report.breaker.state,
            "consecutiveFailures": report.breaker.failures,
            "openedTotal": report.breaker.opened_total,
            "lastError": report.breaker.last_error,
        },
    }


def _by_priority(report: stats.PipelineStats, attr: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for shard in report.shards:
        for priority, value in getattr(shard, attr).items():
            total[priority] = total.get(priority, 0) + value
    return total


def _lanes(backlog: dict[str, int], pending: dict[str, int]) -> str:
    """`high 0/0, normal 12/3, bulk 20000/64` (backlog/pending per lane)."""
    return ", ".join(f"{p} {backlog.get(p, 0)}/{pending.get(p, 0)}" for p in PRIORITIES)


def render_status(report: stats.PipelineStats) -> str:
    lines = [
        f"namespace {report.namespace}, now: backlog {report.total('backlog')}, pending "
        f"{report.total('pending')}, delayed (waiting to retry) {report.total('delayed')}, "
        f"dead letters {report.total('dead_letters')} "
        f"({report.total('unmirrored')} not yet in Postgres)",
        "  by lane (backlog/pending): "
        + _lanes(
            _by_priority(report, "backlog_by_priority"),
            _by_priority(report, "pending_by_priority"),
        ),
    ]
    for shard in report.shards:
        lines.append(
            f"  shard {shard.shard}  {shard.request_stream} (+ :high, :bulk), now: backlog "
            f"{shard.backlog}, pending {shard.pending}, delayed {shard.delayed}; "
            + _lanes(shard.backlog_by_priority, shard.pending_by_priority)
        )
        if not shard.consumers:
            lines.append("    consumers: none (start one with `smsrelay worker`)")
        for consumer in shard.consumers:
            lines.append(
                f"    consumer {consumer.name}: pending {consumer.pending}, "
                f"idle {consumer.idle_ms / 1000:.1f} s"
            )
        lines.append(
            f"    dead letters now {shard.dead_letters} in {shard.dead_stream}"
            + (f", {shard.unmirrored} not yet in Postgres" if shard.unmirrored else "")
        )
        if shard.dead_by_reason:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(shard.dead_by_reason.items()))
            lines.append(f"    dead-lettered since the start (lifetime): {reasons}")
    for unread in report.unread or []:
        lines.append(
            f"  NOT READ BY ANY WORKER: {unread.key} holds {unread.length} "
            f"entr{'y' if unread.length == 1 else 'ies'} (shards are 0.."
            f"{len(report.shards) - 1}: crc32(to) % SMSRELAY_SHARDS, unsigned)"
        )
    return "\n".join(lines)
