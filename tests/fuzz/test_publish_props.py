"""Property tests of the schemas and the producer: any input is queued or `rejected` with a
clear error, `publish` never raises, and what it queues (or spools) a worker can read."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from pydantic import ValidationError

from smsrelay import AsyncProducer, InvalidMessageError, Producer
from smsrelay.producers.publish import PublishResult
from smsrelay.producers.spool import Spool, SpoolOwner
from smsrelay.schemas.entry import (
    InvalidEntry,
    MessageRequest,
    describe_errors,
    new_entry_fields,
    parse_entry,
)
from smsrelay.schemas.meta import MAX_META_BYTES
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from tests.conftest import make_settings
from tests.fuzz.strategies import (
    BODY_CONTROLS,
    any_text,
    fuzz_settings,
    publish_args,
    strict_json,
)
from tests.support.clients import redis_client

pytestmark = [pytest.mark.faults, pytest.mark.slow]

DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
WIRE_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


@fuzz_settings(1500)
@given(args=publish_args())
def test_a_request_is_valid_or_refused_with_a_validation_error(args: dict[str, Any]) -> None:
    # Given any input, When it is validated, Then it is a request or a ValidationError
    try:
        request = MessageRequest(**args)
    except ValidationError as exc:
        line = describe_errors(exc)
        assert line and len(line.splitlines()) == 1, line
        return
    # And what it accepts is what the wire takes: plain E.164, no controls, small meta
    fields = new_entry_fields(request)
    assert WIRE_E164.fullmatch(fields["to"]), fields["to"]
    assert parse_entry(fields).to == request.to
    to, body = args["to"], args["body"]
    assert not (isinstance(to, str) and any(ch.isalpha() for ch in to)), to
    assert not (isinstance(body, str) and BODY_CONTROLS & set(body)), body
    assert len(fields.get("meta", "")) <= MAX_META_BYTES


@fuzz_settings(1500)
@given(
    fields=st.dictionaries(
        st.one_of(
            st.sampled_from(
                ["v", "id", "to", "body", "created_at", "kind", "idempotency_key", "meta"]
            ),
            any_text,
        ),
        st.one_of(
            any_text,
            st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
            st.sampled_from(
                [
                    "1",
                    "c42b55dd-b849-4bbf-a4ce-5ccad843c8b1",
                    "+14155552671",
                    "+1 (415) 555-2671",
                    "+1-800-FLOWERS",
                    "+460253544476",
                    "hi\x1b[0m",
                    "2026-01-01T00:00:00Z",
                    "{}",
                    "[]",
                    "NaN",
                    '{"a": NaN}',
                ]
            ),
        ),
        max_size=9,
    )
)
def test_parse_entry_reads_a_request_or_raises_invalid_entry(fields: dict[str, str]) -> None:
    # Given any map of string fields, When the worker parses it, Then only InvalidEntry
    try:
        entry = parse_entry(fields)
    except InvalidEntry as exc:
        problem = str(exc)
    else:
        # a parsed entry's number is plain E.164 as written, its body free of controls
        assert entry.to == fields["to"] and WIRE_E164.fullmatch(entry.to)
        assert not BODY_CONTROLS & set(entry.body)
        return
    assert problem and len(problem.splitlines()) == 1, problem


@pytest.fixture
def producer(settings: Settings) -> Iterator[Producer]:
    with Producer(settings) as p:
        yield p


def _latest_entry(settings: Settings) -> dict[str, str]:
    client = redis_client(settings.redis_url, decode_responses=True)
    try:
        [(_, fields)] = cast(
            list[tuple[str, dict[str, str]]],
            client.xrevrange(ShardKeys(settings.namespace).requests, count=1),
        )
    finally:
        client.close()
    return fields


def _check_readable(fields: dict[str, str], result: PublishResult, body: Any, meta: Any) -> None:
    """What was queued parses as the worker parses it, with the caller's body and meta."""
    entry = parse_entry(fields)
    assert str(entry.id) == result.message_id
    # (bytes are taken as UTF-8 text, as pydantic does for a str field)
    assert entry.body == (body.decode() if isinstance(body, bytes) else body)
    if meta is None:
        assert "meta" not in fields
    else:
        # `meta` is a JSON object for services in any language: strict JSON, same content
        assert strict_json(fields["meta"]) == json.loads(json.dumps(meta))


def _check_refused(result: PublishResult) -> None:
    assert result.message_id is None, result
    assert result.error and "\n" not in result.error


@fuzz_settings(600)
@given(args=publish_args())
def test_publish_never_raises_and_queues_only_what_a_worker_reads(
    producer: Producer, settings: Settings, args: dict[str, Any]
) -> None:
    # Given any input, When it is published, Then publish returns (never raises)
    result = producer.publish(**args)
    event(f"status={result.status}")
    assert result.status in ("queued", "duplicate", "rejected"), result
    if result.status == "rejected":
        _check_refused(result)
        # and strict=True raises the package's error, nothing else
        with pytest.raises(InvalidMessageError):
            producer.publish(**args, strict=True)
    elif result.status == "queued":
        _check_readable(_latest_entry(settings), result, args["body"], args["meta"])


@fuzz_settings(200)
@given(args=publish_args())
def test_async_publish_never_raises(settings: Settings, args: dict[str, Any]) -> None:
    async def publish() -> PublishResult:
        async with AsyncProducer(settings) as producer:
            return await producer.publish(**args)

    # Given any input, When the asyncio producer publishes it, Then it returns
    result = asyncio.run(publish())
    event(f"status={result.status}")
    assert result.status in ("queued", "duplicate", "rejected"), result
    if result.status == "rejected":
        _check_refused(result)
    elif result.status == "queued":
        _check_readable(_latest_entry(settings), result, args["body"], args["meta"])


@fuzz_settings(200)
@given(args=publish_args())
def test_publish_with_redis_away_spools_only_what_a_worker_reads(
    tmp_path: Path, namespace: str, args: dict[str, Any]
) -> None:
    spool_dir = tmp_path / "spool"
    down = make_settings(DOWN_URL, namespace, tmp_path, "http://127.0.0.1:9")
    for old in Spool(spool_dir, SpoolOwner.of(namespace, DOWN_URL)).pending():
        old.unlink()
    # Given Redis is unreachable, When anything is published
    with Producer(down) as producer:
        result = producer.publish(**args)
    event(f"status={result.status}")
    # Then it is spooled (and the spooled fields parse) or rejected, never raised
    assert result.status in ("spooled", "rejected"), result
    if result.status == "rejected":
        _check_refused(result)
        return
    # (read without the spool's lock: the producer's flusher may be holding it)
    [path] = Spool(spool_dir, SpoolOwner.of(namespace, DOWN_URL)).pending()
    spooled = json.loads(path.read_text())
    _check_readable(spooled["fields"], result, args["body"], args["meta"])
