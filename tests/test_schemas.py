"""Pure logic: the wire schema, segments, phone numbers, masking, backoff."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from smsrelay.consumers.providers.classify import is_retryable
from smsrelay.consumers.retry import RetryPolicy
from smsrelay.logging import mask_phone, scrub
from smsrelay.schemas import InvalidEntry, entry_json_schema, parse_entry, segment_info
from smsrelay.schemas.entry import MessageRequest, describe_errors
from smsrelay.schemas.meta import MAX_META_BYTES, MAX_META_DEPTH, walk_meta
from smsrelay.schemas.phone import _is_valid as phone_validity_shortcut
from smsrelay.schemas.phone import _parse_and_check as full_phone_check
from smsrelay.schemas.phone import normalize_e164, plain_e164_if_valid

SCHEMA_FILE = Path(__file__).parent.parent / "smsrelay" / "schemas" / "request_entry.schema.json"


def test_the_published_json_schema_equals_the_model() -> None:
    on_disk = json.loads(SCHEMA_FILE.read_text())
    assert on_disk == entry_json_schema(), (
        "regenerate with: smsrelay schema > smsrelay/schemas/request_entry.schema.json"
    )


def test_an_entry_valid_by_the_json_schema_parses() -> None:
    schema = entry_json_schema()
    fields = {
        "v": "1",
        "id": "c42b55dd-b849-4bbf-a4ce-5ccad843c8b1",
        "to": "+14155552671",
        "body": "hello",
        "created_at": "2026-11-29T10:00:00.000Z",
        "kind": "booking",
        "meta": '{"a": 1}',
    }
    assert set(schema["required"]) <= set(fields)
    entry = parse_entry(fields)
    assert entry.meta == {"a": 1}
    assert entry.to_fields()["created_at"] == "2026-11-29T10:00:00.000Z"


@pytest.mark.parametrize(
    "fields",
    [
        {"v": "1"},
        {
            "v": "1",
            "id": "c42b55dd-b849-4bbf-a4ce-5ccad843c8b1",
            "to": "+14155552671",
            "body": "x",
            "created_at": "2026-11-29T10:00:00Z",
            "meta": "[1, 2]",
        },
        {
            "v": "1",
            "id": "c42b55dd-b849-4bbf-a4ce-5ccad843c8b1",
            "to": "+14155552671",
            "body": "x",
            "created_at": "2026-11-29T10:00:00Z",
            "meta": "{not json",
        },
        {b"v": b"1", b"id": b"\xff"},
    ],
)
def test_malformed_entries_raise_invalid_entry(fields: dict[Any, Any]) -> None:
    with pytest.raises(InvalidEntry):
        parse_entry(fields)


@pytest.mark.parametrize(
    ("body", "encoding", "segments"),
    [
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
    ],
)
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
                numbers.add(
                    phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
                )
    return numbers


def test_the_fast_phone_path_agrees_with_libphonenumbers_parse_on_every_example_number() -> None:
    numbers = _example_numbers()
    fast = {n: plain_e164_if_valid(n) for n in numbers}
    assert len(numbers) > 900 and sum(v is not None for v in fast.values()) > 0.9 * len(numbers)
    disagree = [n for n, v in fast.items() if v is not None and v != _full_path(n)]
    assert disagree == []


@pytest.mark.slow
@pytest.mark.timeout(180)  # 3,000 examples: about 15 s alone, much more on a busy machine
@settings(max_examples=3000, deadline=None)
@given(st.from_regex(r"\+[1-9][0-9]{1,16}", fullmatch=True))
def test_the_fast_phone_path_never_accepts_what_the_full_path_would_not(text: str) -> None:
    fast = plain_e164_if_valid(text)
    if fast is not None:
        assert fast == _full_path(text)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from([1, 7, 44, 61, 262, 590, 599]), st.integers(10**5, 10**11))
def test_the_validity_shortcut_agrees_with_is_valid_number(
    country_code: int, national: int
) -> None:
    # Country codes shared by several regions, where the shortcut skips a pass.
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=national)
    assert phone_validity_shortcut(number) == phonenumbers.is_valid_number(number)


def test_the_validity_shortcut_agrees_on_every_example_number() -> None:
    numbers = [phonenumbers.parse(n) for n in _example_numbers()]
    assert [phone_validity_shortcut(n) for n in numbers] == [
        phonenumbers.is_valid_number(n) for n in numbers
    ]


def test_logs_mask_phones_and_drop_bodies_and_tokens() -> None:
    assert mask_phone("+18761234567") == "+1876***4567"
    event = scrub(
        None,
        "info",
        {
            "event": "sms.sent",
            "to": "+18761234567",
            "error": "The 'To' number +14155552671 is not valid",
            "body": "secret text",
            "auth_token": "tok",
        },
    )
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


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (429, 20429, True),
        (503, None, True),
        (500, None, True),
        (400, 21611, True),
        (None, None, True),
        (401, 20003, False),
        (400, 21211, False),
        (400, 21610, False),
        (400, 21617, False),
        (400, 99999, False),
        (404, None, False),
    ],
)
def test_error_classification_table(status: int | None, code: int | None, retryable: bool) -> None:
    assert is_retryable(status, code) is retryable


# --- Hostile input (issue 10): letters, extensions, formatted wire numbers, controls, meta ---

ENTRY = {
    "v": "1",
    "id": "c42b55dd-b849-4bbf-a4ce-5ccad843c8b1",
    "to": "+14155558001",
    "body": "hello",
    "created_at": "2026-11-29T10:00:00Z",
}


def _entry_problem(**changes: str) -> str | None:
    try:
        parse_entry({**ENTRY, **changes})
    except InvalidEntry as exc:
        return str(exc)
    return None


def _request_problem(**args: Any) -> str | None:
    try:
        MessageRequest(**{"to": "+14155552671", "body": "hi", **args})
    except ValidationError as exc:
        return describe_errors(exc)
    return None


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("+1-800-FLOWERS", "letters"),
        ("+1 800 FLOWERS", "letters"),
        ("+1 415 555 2671 ext. 5", "extension"),
        ("+1 415 555 2671 ext 5", "extension"),
        ("+14155552671;ext=5", "extension"),
        ("+1 415 555 2671 x5", "extension"),
        ("+1 415 555 2671#5", "extension"),
        ("+1/415/555/2671", "'/'"),
    ],
)
def test_letters_and_extensions_are_refused_not_converted(to: str, expected: str) -> None:
    problem = _request_problem(to=to)
    assert problem is not None, f"{to!r} was accepted"
    assert problem.startswith("to: ") and expected in problem and "\n" not in problem


@pytest.mark.parametrize(
    "to",
    [
        "+1 (415) 555-2671",
        "+1.415.555.2671",
        "+1-415-555-2671",
        "+1 415\u00a0555 2671",
        "\t+14155552671 ",
        "+\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff12\uff16\uff17\uff11",
    ],
)
def test_publish_still_normalises_spaced_dashed_dotted_and_bracketed_numbers(to: str) -> None:
    assert MessageRequest(to=to, body="hi").to == "+14155552671"


@pytest.mark.parametrize(
    "to",
    [
        "+1 (415) 555-8001",  # written by another language's publisher, not normalised
        "+1-415-555-8001",
        " +14155558001",
        "+14155558001 ",
        "14155558001",
        "+\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff18\uff10\uff10\uff11",  # fullwidth digits
        "+1-800-FLOWERS",
        "+14155558001;ext=5",
        "+460253544476",  # E.164-shaped, but libphonenumber reads it as +46253544476
        "+18761234567",  # plain but not a valid number
    ],
)
def test_the_wire_takes_only_plain_valid_canonical_e164(to: str) -> None:
    problem = _entry_problem(to=to)
    assert problem is not None, f"{to!r} was accepted on the wire"
    assert problem.startswith("to: ") and "\n" not in problem


def test_the_wire_takes_plain_e164_numbers() -> None:
    for number in ("+14155558001", "+447911123456", "+6837012"):
        assert _entry_problem(to=number) is None, number
        assert parse_entry({**ENTRY, "to": number}).to == number


CONTROLS = [
    "\x00",
    "\x1b[31m",
    "\x07",
    "\x08",
    "\x0b",
    "\x0c",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9b",
    "\x9f",
]


@pytest.mark.parametrize("control", CONTROLS)
def test_control_characters_in_a_body_are_refused_at_publish_and_on_the_wire(control: str) -> None:
    body = f"Your code is 1234{control} thanks"
    for problem in (_request_problem(body=body), _entry_problem(body=body)):
        assert problem is not None and problem.startswith("body: ")
        assert "control character" in problem and "\n" not in problem
        assert control not in problem


def test_newlines_and_tabs_stay_allowed_in_a_body() -> None:
    body = "Line one\nLine two\r\n\tindented"
    assert MessageRequest(to="+14155552671", body=body).body == body
    assert parse_entry({**ENTRY, "body": body}).body == body


def test_the_json_schema_states_the_plain_e164_and_body_rules() -> None:
    properties = entry_json_schema()["properties"]
    to_pattern, body_pattern = properties["to"]["pattern"], properties["body"]["pattern"]
    # (JSON Schema patterns are ECMA-262; these use only what Python's re reads the same way)
    samples = {
        "to": [
            "+14155558001",
            "+6837012",
            "+1 (415) 555-8001",
            "+1415555800a",
            "+01415555800",
            "+1234567890123456",
            "+123456",
        ],
        "body": ["hi", "a\nb\r\n\tc", "a\x00", "\x1b[0m", "x\x7f", "x\x85", "é😀"],
    }
    for text in samples["to"]:
        assert bool(re.search(to_pattern, text)) == (
            re.fullmatch(r"\+[1-9][0-9]{6,14}", text) is not None
        ), text
    for text in samples["body"]:
        assert bool(re.search(body_pattern, text)) == (_entry_problem(body=text) is None), text


@pytest.mark.parametrize("odd", ["\u2028", "\x85", "\x1c", "\n", "\x00"])
def test_an_error_quoting_a_character_stays_one_line(odd: str) -> None:
    problem = _request_problem(to=f"+1 415{odd}555 2671")
    assert problem is not None and problem.startswith("to: ")
    assert len(problem.splitlines()) == 1 and odd not in problem, problem


# meta: bounded before it is encoded


def test_meta_is_measured_as_compact_json_up_to_4096_bytes() -> None:
    assert MAX_META_BYTES == 4096
    # {"k":"xxx..."}: 8 bytes of structure
    exact = {"k": "x" * (4096 - 8)}
    assert len(json.dumps(exact, separators=(",", ":"))) == 4096
    assert _request_problem(meta=exact) is None
    spaced = {f"k{i}": i for i in range(370)}  # fits compact, not with ", " and ": "
    assert len(json.dumps(spaced)) > 4096 >= len(json.dumps(spaced, separators=(",", ":")))
    assert _request_problem(meta=spaced) is None
    problem = _request_problem(meta={"k": "x" * (4096 - 7)})
    assert problem is not None and problem.startswith("meta: ") and "4096" in problem


BIG_METAS: dict[str, Callable[[], Any]] = {  # built in the test: ~200 MB held otherwise
    "5M-item list": lambda: {"k": list(range(5_000_000))},
    "1M keys": lambda: {f"k{i}": i for i in range(1_000_000)},
    "10k x 10k lists": lambda: {"k": [[0] * 10_000] * 10_000},
    "50 MB string": lambda: {"k": "x" * 50_000_000},
    "169,000-digit int": lambda: {"k": 7**200_000},
}


@pytest.mark.parametrize("name", sorted(BIG_METAS))
def test_a_big_meta_is_refused_after_a_few_nodes_without_encoding_it(name: str) -> None:
    meta = BIG_METAS[name]()
    walk = walk_meta(meta)
    assert walk.problem is not None and "4096" in walk.problem
    assert walk.visited <= 3  # the walk stops at the first container over budget
    problem = _request_problem(meta=meta)
    assert problem is not None and problem.startswith("meta: ") and "\n" not in problem


def test_a_deep_meta_is_refused_at_the_depth_limit() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    walk = walk_meta({"deep": deep})
    assert walk.problem is not None and "levels" in walk.problem
    assert walk.visited <= MAX_META_DEPTH + 1
    assert "levels" in (_request_problem(meta={"deep": deep}) or "")


def test_the_wire_bounds_meta_as_publish_does() -> None:
    assert _entry_problem(meta=json.dumps({"k": list(range(3000))})) == (
        "meta: must encode to at most 4096 bytes of compact JSON: keep ids and short "
        "labels in it, not documents"
    )
    deep = '{"k": ' + "[" * 40 + "]" * 40 + "}"
    assert "levels" in (_entry_problem(meta=deep) or "")
    pretty = json.dumps({f"k{i}": i for i in range(370)}, indent=4)  # > 4096, not compact
    assert len(pretty) > 4096 and _entry_problem(meta=pretty) is None


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**200), 2**200),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(st.characters(codec=None, exclude_categories=[]), max_size=30),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=6), inner, max_size=6),
    ),
    max_leaves=25,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_the_walks_size_is_a_lower_bound_of_the_encoding(meta: dict[str, Any]) -> None:
    encoded = json.dumps(meta, separators=(",", ":"))
    walk = walk_meta(meta, max_bytes=10**9, max_nodes=10**9, max_depth=10**9)
    assert walk.problem is None
    assert walk.min_bytes <= len(encoded)
    assert walk.nodes <= (len(encoded) + 1) // 2  # why a node budget of 2048 is exact
    # and the model refuses exactly what encodes to more than 4096 bytes or nests too deep
    fits = len(encoded) <= MAX_META_BYTES and _depth(meta) <= MAX_META_DEPTH
    assert (_request_problem(meta=meta) is None) == fits


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max(map(_depth, value), default=0)
    return 1
