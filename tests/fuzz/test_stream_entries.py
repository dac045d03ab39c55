"""Arbitrary stream entries (a wire format: anyone may XADD anything) against a real worker.

Random field maps, binary and non-UTF-8 values, huge values, thousands of fields, valid
entries with one thing wrong: each is dead-lettered as `invalid_payload` (or sent, when it
happens to be a valid request), at its first delivery, and the worker lives on.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from smsrelay.schemas.entry import InvalidEntry, parse_entry
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.conftest import make_settings
from tests.faults.support import Pipeline, Processes, publish_all, record_figure, start_worker
from tests.fuzz.strategies import any_text, fuzz_settings
from tests.support.clients import redis_client
from tests.support.wait import wait_for, wait_until
from tests.support.worker import dead_letters, running_worker

pytestmark = [pytest.mark.faults, pytest.mark.slow]

Fields = dict[bytes, bytes]
NAMES = [
    b"v",
    b"id",
    b"to",
    b"body",
    b"created_at",
    b"kind",
    b"idempotency_key",
    b"meta",
    b"reason",
    b"error",
    b"attempts",
    b"replay_of",
    b"orig.v",
    b"",
]
PLAUSIBLE = [
    b"1",
    b"2",
    b"",
    b"+14155552671",
    b"+1",
    b"2026-01-01T00:00:00Z",
    b"yesterday",
    b"+1 (415) 555-8001",
    b"+1-800-FLOWERS",
    b"+460253544476",
    b"hi \x1b[31m",
    b"{}",
    b"[]",
    b"null",
    b'{"a": NaN}',
    b"[" * 300,
    b"\x00",
    b"\xff\xfe",
    str(uuid.uuid4()).encode(),
]
# Any Unicode text as its bytes, lone surrogates too (which makes invalid UTF-8).
text_bytes = any_text.map(lambda t: t.encode("utf-8", "surrogatepass"))
values = st.one_of(
    st.binary(max_size=40),
    text_bytes,
    st.sampled_from(PLAUSIBLE),
    st.integers(1599, 1602).map(lambda n: b"x" * n),
)
huge = st.sampled_from([1 << 20, 4 << 20]).map(lambda n: b"y" * n)


def _valid() -> Fields:
    return {
        b"v": b"1",
        b"id": str(uuid.uuid4()).encode(),
        b"to": b"+14155552671",
        b"body": b"a request",
        b"created_at": b"2026-01-01T00:00:00Z",
    }


@st.composite
def one_thing_wrong(draw: st.DrawFn) -> Fields:
    """A valid request with one field dropped, replaced or added."""
    fields = _valid()
    name = draw(st.sampled_from(NAMES))
    change = draw(st.sampled_from(["drop", "replace", "replace-huge", "add"]))
    if change == "drop":
        fields.pop(name, None)
    elif change == "replace-huge":
        fields[name] = draw(huge)
    elif change == "replace":
        fields[name] = draw(values)
    else:
        fields[draw(st.one_of(st.binary(min_size=1, max_size=10), text_bytes))] = draw(values)
    return fields


entries = st.one_of(
    st.dictionaries(
        st.one_of(st.sampled_from(NAMES), st.binary(max_size=12), text_bytes),
        values,
        min_size=1,
        max_size=8,
    ),
    one_thing_wrong(),
    one_thing_wrong(),
    st.integers(500, 3000).map(lambda n: {f"f{i}".encode(): b"v" for i in range(n)}),
    huge.map(lambda blob: {blob[:300_000]: blob}),
)


def _parses(fields: Fields) -> bool:
    try:
        parse_entry(fields)
    except InvalidEntry:
        return False
    return True


def test_arbitrary_entries_are_dead_lettered_and_the_worker_lives_on(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any, procs: Processes
) -> None:
    settings = make_settings(
        redis_url, namespace, tmp_path, fake_twilio.url, rate_limit_max=1_000_000
    )
    client = redis_client(redis_url)
    pipeline = Pipeline(client, namespace)
    worker = start_worker(procs, settings, "worker")
    seen = ["0-0"]  # the last dead letter read
    outcomes: dict[str, int] = {"valid": 0, "invalid": 0}

    @fuzz_settings(80)
    @given(batch=st.lists(entries, min_size=1, max_size=5))
    def check(batch: list[Fields]) -> None:
        # Given arbitrary entries on the request stream
        ids = [pipeline.add(fields) for fields in batch]
        # When the worker has had them
        wait_for(pipeline.drained, 30, "the worker to settle every entry")
        assert worker.alive(), worker.tail()
        dead = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            client.xrange(pipeline.keys.dead, min=f"({seen[0]}", max="+"),
        )
        if dead:
            seen[0] = dead[-1][0].decode()
        reasons = {
            fields[b"source_entry_id"].decode(): fields[b"reason"].decode() for _, fields in dead
        }
        # Then each is dead-lettered as invalid_payload, unless it is a valid request
        for entry_id, fields in zip(ids, batch, strict=True):
            valid = _parses(fields)
            event("valid" if valid else "invalid")
            outcomes["valid" if valid else "invalid"] += 1
            if valid:
                assert entry_id not in reasons, (entry_id, reasons.get(entry_id))
            else:
                assert reasons.get(entry_id) == "invalid_payload", (entry_id, fields.keys())

    try:
        check()
        # And the worker still sends, never needed the poison path, never crashed
        publish_all(settings, [("+14155552690", "after the junk")])
        wait_for(
            lambda: any(m.body == "after the junk" for m in fake_twilio.messages),
            20,
            "the message after the junk",
        )
        events = worker.event_names()
    finally:
        client.close()
    record_figure(
        "fuzz-entries",
        "arbitrary entries: invalid (dead-lettered) / valid (sent)",
        f"{outcomes['invalid']} / {outcomes['valid']}",
    )
    assert worker.alive(), worker.tail()
    assert outcomes["invalid"] > 0
    assert events["sms.processing_failed"] == 0
    assert events["worker.claimed"] == 0


async def test_entries_another_publisher_did_not_normalise_are_dead_lettered(
    settings: Settings, fake_twilio: Any
) -> None:
    # Given entries a publisher in another language wrote with a formatted number, a number
    # libphonenumber reads as another one, and a body with an escape sequence
    client = redis_client(settings.redis_url)
    stream = ShardKeys(settings.namespace).requests
    bad = {
        "+1 (415) 555-8001": "to: must be plain E.164",
        "+460253544476": "to: must be the number's canonical E.164 form",
        "+14155558002": "body: must not contain control characters",
    }
    entries: list[Fields] = [
        {
            **_valid(),
            b"to": to.encode(),
            b"body": b"red \x1b[31malert" if to == "+14155558002" else b"formatted",
        }
        for to in bad
    ]
    for fields in [*entries, {**_valid(), b"to": b"+14155558001", b"body": b"plain"}]:
        client.xadd(stream, cast(Any, fields))
    # When a worker reads them
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.messages) == 1, what="the plain entry sent")
        await wait_until(lambda: len(dead_letters(settings)) == len(bad), what="dead letters")
    # Then only the plain one is sent, the others are invalid payloads saying what to fix
    assert [(m.to, m.body) for m in fake_twilio.messages] == [("+14155558001", "plain")]
    dead = dead_letters(settings)
    assert {d["reason"] for d in dead} == {"invalid_payload"}
    errors = sorted(d["error"] for d in dead)
    assert all(any(e.startswith(want) for e in errors) for want in bad.values()), errors
