"""The failed_sms queries: idempotent upserts, newest-first lists, replay bookkeeping."""

from __future__ import annotations

import uuid
from datetime import timedelta

from smsrelay import clock
from smsrelay.schemas.dead_letter import DeadLetter
from smsrelay.schemas.records import RecordStatus
from smsrelay.store import failed_sms as fs
from smsrelay.store.db import Database
from smsrelay.store.failed_sms import Outcome, StreamRef
from tests.store.dlq import dead_letter_fields, unique_phone


def letter(stream_id: str, message_id: str, phone: str, **kwargs: object) -> DeadLetter:
    return DeadLetter.from_stream(stream_id, dead_letter_fields(message_id, phone, **kwargs))  # type: ignore[arg-type]


async def upsert(db: Database, ns: str, dead: DeadLetter, shard: int = 0) -> list[StreamRef]:
    async with db.connection() as conn, conn.transaction():
        return await fs.upsert_dead_letter(conn, dead, ns, shard)


async def test_mirroring_one_dead_letter_twice_changes_nothing(db: Database, ns: str) -> None:
    message_id, phone = str(uuid.uuid4()), unique_phone()
    dead = letter("1700000000000-0", message_id, phone, attempts=3)
    assert await upsert(db, ns, dead) == []
    assert await upsert(db, ns, dead) == []
    async with db.connection() as conn:
        record = await fs.get_record(conn, ns, uuid.UUID(message_id))
    assert record is not None
    assert (record.phone, record.attempts, record.status, record.dead_letter_id) == (
        phone,
        3,
        RecordStatus.FAILED,
        "1700000000000-0",
    )
    assert record.reason == "permanent_error"
    assert record.error is not None and "21610" in record.error


async def test_a_newer_dead_letter_wins_and_the_older_is_superseded(db: Database, ns: str) -> None:
    # Given a record that was replayed
    message_id, phone = str(uuid.uuid4()), unique_phone()
    await upsert(db, ns, letter("1700000000000-0", message_id, phone, attempts=1))
    async with db.connection() as conn:
        await fs.mark_replayed(conn, ns, ids=[uuid.UUID(message_id)])
    # When the replay is dead-lettered again
    superseded = await upsert(
        db,
        ns,
        letter(
            "1700000000500-3",
            message_id,
            phone,
            attempts=2,
            reason="retries_exhausted",
            error="503",
        ),
    )
    # Then the record is failed again, attempts add up, and the old entry is reported
    assert superseded == [StreamRef(0, "1700000000000-0")]
    async with db.connection() as conn:
        record = await fs.get_record(conn, ns, uuid.UUID(message_id))
    assert record is not None
    assert (record.status, record.attempts, record.reason, record.error) == (
        RecordStatus.FAILED,
        3,
        "retries_exhausted",
        "503",
    )
    # and a late copy of the older entry changes nothing and is itself superseded
    assert await upsert(db, ns, letter("1700000000000-0", message_id, phone)) == [
        StreamRef(0, "1700000000000-0")
    ]
    async with db.connection() as conn:
        again = await fs.get_record(conn, ns, uuid.UUID(message_id))
    assert again == record


async def test_an_outcome_resolves_and_a_late_dead_letter_cannot_undo_it(
    db: Database, ns: str
) -> None:
    message_id, phone = str(uuid.uuid4()), unique_phone()
    await upsert(db, ns, letter("1700000000000-0", message_id, phone))
    # When the replay of a newer dead letter is sent before that dead letter is mirrored
    outcome = Outcome(uuid.UUID(message_id), "SM123", clock.now(), "1700000000900-0")
    async with db.connection() as conn, conn.transaction():
        superseded = await fs.apply_outcome(conn, outcome)
    assert superseded == [StreamRef(0, "1700000000000-0")]
    await upsert(db, ns, letter("1700000000900-0", message_id, phone))
    # Then the record stays resolved
    async with db.connection() as conn:
        record = await fs.get_record(conn, ns, uuid.UUID(message_id))
    assert record is not None
    assert (record.status, record.message_sid) == (RecordStatus.RESOLVED, "SM123")


async def test_list_is_newest_first_with_filters_and_total(db: Database, ns: str) -> None:
    phone = unique_phone()
    base = clock.now() - timedelta(days=1)
    ids = []
    for n, reason in enumerate(["permanent_error", "rate_limited", "permanent_error"]):
        message_id = str(uuid.uuid4())
        ids.append(message_id)
        created = clock.iso(base + timedelta(minutes=n))
        await upsert(
            db,
            ns,
            letter(f"1700000000{n}00-0", message_id, phone, reason=reason, created_at=created),
        )
    async with db.connection() as conn:
        page = await fs.list_records(conn, ns, limit=2, offset=0, phone=phone)
        rest = await fs.list_records(conn, ns, limit=2, offset=2, phone=phone)
        limited = await fs.list_records(
            conn, ns, limit=10, offset=0, phone=phone, reason="rate_limited"
        )
        beyond = await fs.list_records(conn, ns, limit=10, offset=50, phone=phone)
        resolved = await fs.list_records(
            conn, ns, limit=10, offset=0, phone=phone, status=RecordStatus.RESOLVED
        )
    assert [str(r.id) for r in page.records] == [ids[2], ids[1]]
    assert (page.total, page.has_more) == (3, True)
    assert [str(r.id) for r in rest.records] == [ids[0]]
    assert not rest.has_more
    assert [str(r.id) for r in limited.records] == [ids[1]]
    assert (beyond.records, beyond.total, beyond.has_more) == ([], 3, False)
    assert (resolved.records, resolved.total) == ([], 0)


async def test_replay_bookkeeping(db: Database, ns: str) -> None:
    phone = unique_phone()
    ok, done, junk = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await upsert(db, ns, letter("1700000000000-0", ok, phone))
    await upsert(db, ns, letter("1700000000001-0", done, phone))
    await upsert(db, ns, letter("1700000000002-0", junk, phone, reason="invalid_payload"))
    async with db.connection() as conn:
        await fs.mark_resolved(conn, uuid.UUID(done), "SMdone", sent_now=True)
        # Resolved records and invalid payloads are never claimed for a replay
        claimed = await fs.mark_replayed(conn, ns, ids=[uuid.UUID(i) for i in (ok, done, junk)])
        assert [str(r.id) for r in claimed] == [ok]
        assert claimed[0].status is RecordStatus.REPLAYED
        # A record whose replay never got queued goes back to failed
        assert await fs.revert_replayed(conn, [uuid.UUID(ok), uuid.UUID(done)]) == 1
        record = await fs.get_record(conn, ns, uuid.UUID(ok))
        counts = await fs.counts_by_status(conn, ns)
    assert record is not None and record.status is RecordStatus.FAILED
    assert counts == {"failed": 2, "replayed": 0, "resolved": 1}


async def test_junk_in_a_dead_letter_is_stored_readably(db: Database, ns: str) -> None:
    # Given a malformed entry: no id, NUL bytes, bytes that are not UTF-8
    raw = {
        b"to": b"+1\x00",
        b"body": b"\xff\xfe\x00",
        b"reason": b"invalid_payload",
        b"source_entry_id": b"1-1",
    }
    dead = DeadLetter.from_stream("1700000000000-7", raw)
    # When mirrored, then it has a stable id derived from its entry, and it is listed
    await upsert(db, ns, dead)
    await upsert(db, ns, DeadLetter.from_stream("1700000000000-7", raw))
    async with db.connection() as conn:
        record = await fs.get_record(conn, ns, uuid.UUID(dead.message_id))
    assert record is not None
    assert record.reason == "invalid_payload"
    assert "\x00" not in record.phone + record.message


async def test_namespaces_sharing_a_database_never_see_each_other(db: Database, ns: str) -> None:
    message_id, phone = str(uuid.uuid4()), unique_phone()
    await upsert(db, ns, letter("1700000000000-0", message_id, phone))
    other = f"t{uuid.uuid4().hex[:10]}"
    async with db.connection() as conn:
        assert await fs.get_record(conn, other, uuid.UUID(message_id)) is None
        assert (await fs.list_records(conn, other, limit=5, offset=0)).total == 0
        assert await fs.delete_record(conn, other, uuid.UUID(message_id)) is None
        assert await fs.mark_replayed(conn, other, reason="permanent_error") == []
        assert await fs.get_record(conn, ns, uuid.UUID(message_id)) is not None
