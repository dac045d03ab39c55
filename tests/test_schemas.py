"""Pure logic: the wire schema, segments, phone numbers, masking, backoff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsrelay.consumers.providers.classify import is_retryable
from smsrelay.consumers.retry import RetryPolicy
from smsrelay.logging import mask_phone, scrub
from smsrelay.schemas import InvalidEntry, entry_json_schema, parse_entry, segment_info
from smsrelay.schemas.phone import _is_valid as phone_validity_shortcut
from smsrelay.schemas.phone import _parse_and_check as full_phone_check
from smsrelay.schemas.phone import normalize_e164, plain_e164_if_valid

SCHEMA_FILE = Path(__file__).parent.parent / "smsrelay" / "schemas" / "request_entry.schema.json"


def test_the_published_json_schema_equals_the_model() -> None:
    on_disk = json.loads(SCHEMA_FILE.read_text())
    assert on_disk == entry_json_schema(), (
        "regenerate with: smsrelay schema > smsrelay/schemas/request_entry.schema.json")


def test_an_entry_valid_by_the_json_schema_parses() -> None:
    schema = entry_json_schema()
    fields = {"v": "1", "id": "c42b55dd-b849-4bbf-a4ce-5ccad843c8b1", "to": "+14155552671",
              "body": "hello", "created_at": "2026-11-29T10:00:00.000Z", "kind": "booking",
              "meta": '{"a": 1}'}
    assert set(schema["required"]) <= set(fields)
    entry = parse_entry(fields)
    assert entry.meta == {"a": 1}
    assert entry.to_fields()["created_at"] == "2026-11-29T10:00:00.000Z"


@pytest.mark.parametrize("fields", [
    {"v": "1"},
    {"v": "1", "id": "c42b55dd-b849-4bbf-a4ce-5ccad843c8b1", "to": "+14155552671",
     "body": "x", "created_at": "2026-11-29T10:00:00Z", "meta": "[1, 2]"},
    {"v": "1", "id": "c42b55dd-b849-4bbf-a4ce-5ccad843c8b1", "to": "+14155552671",
     "body": "x", "created_at": "2026-11-29T10:00:00Z", "meta": "{not json"},
    {b"v": b"1", b"id": b"\xff"},
])
def test_malformed_entries_raise_invalid_entry(fields: dict[Any, Any]) -> None:
    with pytest.raises(InvalidEntry):
        parse_entry(fields)


@pytest.mark.parametrize(("body", "encoding", "segments"), [
    ("a" * 160, "GSM-7", 1),
    ("a" * 161, "GSM-7", 2),
    ("a" * 306, "GSM-7", 2),
    ("a" * 307, "GSM-7", 3),
    ("€" * 80, "GSM-7", 1),  # extension characters cost two septets
    ("€" * 81, "GSM-7", 2),
    ("é" * 160, "GSM-7", 1),  # é is in the GSM-7 basic table
    ("ä" * 10 + "ą", "UCS-2", 1),
    ("ą" * 70, "UCS-2", 1),
    ("ą" * 71, "UCS-2", 2),
    ("😀" * 35, "UCS-2", 1),  # surrogate pairs: two UTF-16 units each
    ("😀" * 36, "UCS-2", 2),
])
def test_segments_as_twilio_counts_them(body: str, encoding: str, segments: int) -> None:
    info = segment_info(body)
    assert (info.encoding, info.segments) == (encoding, segments)


def test_phone_numbers_are_validated_by_libphonenumber() -> None:
    assert normalize_e164("+44 7911 123456") == "+447911123456"
    for bad in ("+18761234567", "+1", "0044791112345", "+99912345678"):
        with pytest.raises(ValueError, match="phone number"):
            normalize_e164(bad)


def _full_path(text: str) -> str | None:
    try:
        return full_phone_check(text)
    except ValueError:
        return None


def _example_numbers() -> set[str]:
    numbers = set()
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for number_type in range(12):  # every PhoneNumberType but UNKNOWN
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is not None:
                numbers.add(phonenumbers.format_number(example,
                                                       phonenumbers.PhoneNumberFormat.E164))
    return numbers


def test_the_fast_phone_path_agrees_with_libphonenumbers_parse_on_every_example_number() -> None:
    numbers = _example_numbers()
    fast = {n: plain_e164_if_valid(n) for n in numbers}
    assert len(numbers) > 900 and sum(v is not None for v in fast.values()) > 0.9 * len(numbers)
    disagree = [n for n, v in fast.items() if v is not None and v != _full_path(n)]
    assert disagree == []


@settings(max_examples=3000, deadline=None)
@given(st.from_regex(r"\+[1-9][0-9]{1,16}", fullmatch=True))
def test_the_fast_phone_path_never_accepts_what_the_full_path_would_not(text: str) -> None:
    fast = plain_e164_if_valid(text)
    if fast is not None:
        assert fast == _full_path(text)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from([1, 7, 44, 61, 262, 590, 599]), st.integers(10**5, 10**11))
def test_the_validity_shortcut_agrees_with_is_valid_number(country_code: int,
                                                            national: int) -> None:
    # Country codes shared by several regions, where the shortcut skips a pass.
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=national)
    assert phone_validity_shortcut(number) == phonenumbers.is_valid_number(number)


def test_the_validity_shortcut_agrees_on_every_example_number() -> None:
    numbers = [phonenumbers.parse(n) for n in _example_numbers()]
    assert [phone_validity_shortcut(n) for n in numbers] == [
        phonenumbers.is_valid_number(n) for n in numbers]


def test_logs_mask_phones_and_drop_bodies_and_tokens() -> None:
    assert mask_phone("+18761234567") == "+1876***4567"
    event = scrub(None, "info", {"event": "sms.sent", "to": "+18761234567",
                                 "error": "The 'To' number +14155552671 is not valid",
                                 "body": "secret text", "auth_token": "tok"})
    assert event["to"] == "+1876***4567"
    assert "+14155552671" not in event["error"]
    assert event["body"] == "[redacted]"
    assert event["auth_token"] == "[redacted]"


def test_backoff_doubles_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_attempts=3, base_s=1, max_s=3, jitter=0.1)
    assert [policy.delay_s(n, rand=lambda: 0.5) for n in (1, 2, 3)] == [1, 2, 3]
    assert policy.delay_s(1, rand=lambda: 0.0) == pytest.approx(0.9)
    assert policy.delay_s(2, rand=lambda: 1.0) == pytest.approx(2.2)
    assert policy.may_retry(2)
    assert not policy.may_retry(3)


@pytest.mark.parametrize(("status", "code", "retryable"), [
    (429, 20429, True), (503, None, True), (500, None, True), (400, 21611, True),
    (None, None, True), (401, 20003, False), (400, 21211, False), (400, 21610, False),
    (400, 21617, False), (400, 99999, False), (404, None, False),
])
def test_error_classification_table(status: int | None, code: int | None,
                                    retryable: bool) -> None:
    assert is_retryable(status, code) is retryable
