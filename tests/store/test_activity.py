"""Sends and failures per minute (the console's overview): every minute of the window present,
sends by `sent_at`, each failed record once, in the minute it last failed."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from smsrelay.schemas.dead_letter import DeadLetter
from smsrelay.store import activity, sent_sms
from smsrelay.store import failed_sms as fs
from smsrelay.store.activity import Minute
from smsrelay.store.db import Database
from smsrelay.store.sent_sms import SentRow
from tests.store.dlq import dead_letter_fields, unique_phone


async def server_now(db: Database) -> datetime:
    async with db.connection() as conn:
        cur = await conn.execute("SELECT now() AS now")
        row = await cur.fetchone()
    assert row is not None
    moment: datetime = row["now"]
    return moment.astimezone(UTC)


def minute_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def by_minute(minutes: list[Minute]) -> dict[datetime, Minute]:
    return {m.start.astimezone(UTC): m for m in minutes}


async def sent(db: Database, ns: str, *moments: datetime) -> None:
    rows = [
        SentRow(uuid.uuid4(), unique_phone(), f"SM{uuid.uuid4().hex}", None, 1, at)
        for at in moments
    ]
    async with db.connection() as conn, conn.transaction():
        await sent_sms.upsert_sent(conn, ns, rows)


async def dead_lettered(
    db: Database, ns: str, at: datetime, *, created: datetime, last_attempt: datetime | None
) -> uuid.UUID:
    """A record mirrored from a dead letter XADDed at `at` (its stream id says so)."""
    message_id = str(uuid.uuid4())
    fields = dead_letter_fields(
        message_id,
        unique_phone(),
        created_at=created.isoformat(),
        last_attempt_at=last_attempt.isoformat() if last_attempt else "",
    )
    letter = DeadLetter.from_stream(f"{round(at.timestamp() * 1000)}-0", fields)
    async with db.connection() as conn, conn.transaction():
        await fs.upsert_dead_letter(conn, letter, ns, 0)
    return uuid.UUID(message_id)


async def test_every_minute_of_the_window_with_sends_by_sent_at(db: Database, ns: str) -> None:
    now = await server_now(db)
    two_ago, five_ago = now - timedelta(minutes=2), now - timedelta(minutes=5)
    await sent(db, ns, two_ago, two_ago, five_ago, now - timedelta(minutes=40))
    await sent(db, "another-" + ns, two_ago)
    async with db.connection() as conn:
        minutes = await activity.per_minute(conn, ns)
    assert len(minutes) == 15
    starts = [m.start for m in minutes]
    assert starts == sorted(starts)
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(starts))
    assert minutes[-1].start.astimezone(UTC) >= minute_of(now)  # the current minute, so far
    counted = by_minute(minutes)
    assert counted[minute_of(two_ago)].sent == 2
    assert counted[minute_of(five_ago)].sent == 1
    assert sum(m.sent for m in minutes) == 3  # not the other namespace's, not 40 min ago
    assert sum(m.failed for m in minutes) == 0


async def test_a_failure_counts_once_in_the_minute_it_last_failed(db: Database, ns: str) -> None:
    now = await server_now(db)
    hour_ago = now - timedelta(hours=1)
    # Published an hour ago, never attempted, dead-lettered 3 minutes ago (expired, say)
    three_ago = now - timedelta(minutes=3)
    await dead_lettered(db, ns, three_ago, created=hour_ago, last_attempt=None)
    # Dead-lettered 4 minutes ago, then retried by an admin to a new SID now: the failure
    # stays 4 minutes ago; the resolving attempt is not a failure
    four_ago = now - timedelta(minutes=4)
    resolved = await dead_lettered(db, ns, four_ago, created=hour_ago, last_attempt=four_ago)
    # Dead-lettered 6 minutes ago, then an admin's retry failed again now: counted now
    six_ago = now - timedelta(minutes=6)
    retried = await dead_lettered(db, ns, six_ago, created=hour_ago, last_attempt=six_ago)
    # Accepted 7 minutes ago and reported undelivered: the record's time is the send
    seven_ago = now - timedelta(minutes=7)
    # Dead-lettered long ago: outside the window
    await dead_lettered(db, ns, now - timedelta(minutes=50), created=hour_ago, last_attempt=None)
    async with db.connection() as conn, conn.transaction():
        await fs.mark_resolved(conn, resolved, "SMnew", sent_now=True)
        await fs.record_retry_failure(conn, retried, "Twilio 21610")
        await fs.record_undelivered(
            conn,
            ns,
            message_id=uuid.uuid4(),
            phone=unique_phone(),
            body="",
            message_sid="SMundelivered",
            error="Twilio error 30003: Unreachable destination handset",
            attempts=1,
            sent_at=seven_ago,
            shard=0,
        )
    async with db.connection() as conn:
        minutes = await activity.per_minute(conn, ns)
        after = await server_now(db)
    counted = by_minute(minutes)
    for moment in (three_ago, four_ago, seven_ago):
        assert counted[minute_of(moment)].failed >= 1, moment
    retried_minutes = {minute_of(now), minute_of(after)}  # the retry ran between the two reads
    assert sum(counted[m].failed for m in retried_minutes if m in counted) >= 1
    assert sum(m.failed for m in minutes) == 4
    assert counted[minute_of(six_ago)].failed == 0  # moved to the retry's minute
    assert sum(m.sent for m in minutes) == 0  # failed_sms resolutions are not sends here


async def test_a_record_without_a_dead_letter_time_falls_back_to_when_it_was_created(
    db: Database, ns: str
) -> None:
    now = await server_now(db)
    message_id, phone = uuid.uuid4(), unique_phone()
    created = now - timedelta(minutes=2)
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO public.failed_sms (id, phone, message, namespace, created_at, "
            "dead_letter_id) VALUES (%s, %s, '', %s, %s, 'not-a-stream-id')",
            [message_id, phone, ns, created],
        )
        minutes = await activity.per_minute(conn, ns, minutes=5)
    assert len(minutes) == 5
    assert by_minute(minutes)[minute_of(created)].failed == 1


@pytest.mark.parametrize("minutes", [0, -1, activity.MAX_MINUTES + 1])
async def test_the_window_is_checked(db: Database, ns: str, minutes: int) -> None:
    async with db.connection() as conn:
        with pytest.raises(ValueError, match="minutes: must be 1-1440"):
            await activity.per_minute(conn, ns, minutes=minutes)


async def test_the_failures_are_read_through_the_failed_at_index(db: Database, ns: str) -> None:
    # Given a namespace with 20,000 records that failed a day ago
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO public.failed_sms (id, phone, message, namespace, created_at) "
            "SELECT gen_random_uuid(), '+1415555' || lpad(n::text, 4, '0'), '', %s, "
            "now() - interval '1 day' FROM generate_series(1, 20000) AS n",
            [ns],
        )
        await conn.execute("ANALYZE public.failed_sms")
        # When the console asks for the last 15 minutes, Then Postgres reads the window's
        # records through the generated column's index (migration 5), not all 20,000
        cur = await conn.execute(
            "EXPLAIN " + activity.PER_MINUTE_QUERY, {"namespace": ns, "minutes": 15}
        )
        plan = "\n".join(str(next(iter(row.values()))) for row in await cur.fetchall())
        await conn.execute("DELETE FROM public.failed_sms WHERE namespace = %s", [ns])
    assert "failed_sms_failed_at_idx" in plan, plan
