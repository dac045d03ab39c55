"""Log masking: phone numbers of every E.164 length, wherever a log line can carry one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import structlog

from smsrelay.logging import mask_phone, mask_phones, scrub

# Every length E.164 allows: 7 (Niue, +683 xxxx) to 15 digits.
NUMBERS = {n: "+" + "683701234567890"[:n] for n in range(7, 16)}


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("+14155552671", "+1415***2671"),
        ("+6837012", "+683***2"),
        ("+18761234567", "+1876***4567"),
    ],
)
def test_the_contracts_examples(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


@pytest.mark.parametrize("length", sorted(NUMBERS))
def test_every_length_hides_at_least_three_digits_and_shows_at_most_four_at_each_end(
    length: int,
) -> None:
    masked = mask_phone(NUMBERS[length])
    head, _, tail = masked[1:].partition("***")
    assert masked.startswith("+") and "***" in masked
    assert len(head) <= 4 and len(tail) <= 4
    assert length - len(head) - len(tail) >= 3
    assert NUMBERS[length][1:].startswith(head) and NUMBERS[length].endswith(tail)


@pytest.mark.parametrize("length", sorted(NUMBERS))
def test_numbers_inside_texts_are_masked_at_every_length(length: int) -> None:
    phone = NUMBERS[length]
    text = f"Twilio: The 'To' number {phone} is not a valid phone number."
    assert phone not in mask_phones(text)
    assert mask_phone(phone) in mask_phones(text)


@pytest.mark.parametrize(
    "text",
    [
        "call +1 (415) 555-2671 now",  # as a person typed it, quoted back by a provider
        "GET /api/admin/retry-failed-sms?phone=%2B14155552671 HTTP/1.1",  # an access log line
        "to=+1-415-555-2671",
        "fullwidth \uff0b14155552671",
    ],
)
def test_formatted_and_url_encoded_numbers_are_masked(text: str) -> None:
    masked = mask_phones(text)
    assert "555" not in masked and "+1415***2671" in masked, masked


def test_masking_is_idempotent_and_leaves_other_numbers_alone() -> None:
    once = mask_phones("+6837012 and +14155552671")
    assert mask_phones(once) == once == "+683***2 and +1415***2671"
    for text in (
        "2026-01-01T10:00:00+00:00",
        "attempt 3 of 5",
        "+123456 is too short",
        "shard 12345678",
    ):
        assert mask_phones(text) == text


def test_scrub_masks_nested_values_and_redacts_nested_secrets() -> None:
    nested: dict[str, Any] = {
        "numbers": ["+6837012", ("+14155552671", 3)],
        "request": {"to": "+6837012", "body": "secret text"},
    }
    event = scrub(
        None,
        "warning",
        {
            "event": "sms.failed +6837012",
            "error": "The 'To' number +6837012 is not valid",
            "batch": nested,
            "body": "secret text",
            "auth_token": "tok",
            "count": 7,
        },
    )
    rendered = json.dumps(event)
    assert "6837012" not in rendered and "14155552671" not in rendered, rendered
    assert "secret text" not in rendered
    assert event["body"] == event["auth_token"] == "[redacted]"
    assert event["batch"]["numbers"] == ["+683***2", ("+1415***2671", 3)]
    assert event["batch"]["request"] == {"to": "+683***2", "body": "[redacted]"}
    assert event["count"] == 7
    # the caller's own objects are not changed
    assert nested["numbers"][0] == "+6837012"
    assert nested["request"]["body"] == "secret text"


def test_scrub_survives_a_value_that_contains_itself() -> None:
    loop: list[Any] = ["+6837012"]
    loop.append(loop)
    event = scrub(None, "info", {"event": "x", "loop": loop})
    assert event["loop"][0] == "+683***2"


def test_exception_text_is_masked() -> None:
    try:
        raise ValueError("The 'To' number +6837012 is not a valid phone number")
    except ValueError:
        event = structlog.processors.format_exc_info(
            None, "error", {"event": "sms.failed", "exc_info": True}
        )
    assert "+6837012" in event["exception"]
    assert "6837012" not in scrub(None, "error", event)["exception"]


_PROCESS = """
import logging, sys
from smsrelay.logging import configure, get_logger

def emit(log_format):
    configure(log_format, "info", process=True)
    get_logger("smsrelay.test").warning("sms.failed", to="+6837012",
        error="The 'To' number +6837012 is not valid", numbers=["+14155552671"],
        nested={"to": ("+6837012",)}, body="secret text")
    try:
        raise RuntimeError("provider said +6837012")
    except RuntimeError:
        get_logger("smsrelay.test").exception("sms.crashed")
        logging.getLogger("asyncio").exception("Task failed for %s", "+6837012")
    logging.getLogger("uvicorn.error").warning("bad request from +6837012")
    logging.getLogger("twilio.http_client").warning("POST To=%2B6837012&Body=x")
    logging.getLogger("psycopg").error("row %s", {"phone": "+14155552671"})

emit("json")
print("--console--", file=sys.stderr, flush=True)
emit("console")
"""


def test_a_configured_process_masks_its_own_and_its_libraries_log_lines() -> None:
    # Given a process that configured logging as smsrelay's commands do, in both formats
    done = subprocess.run(
        [sys.executable, "-c", _PROCESS], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    as_json, _, as_console = done.stderr.partition("--console--\n")
    # Then no line holds a whole number, bodies stay redacted, and every line is there once
    for output in (as_json, as_console):
        assert not re.search(r"6837012|14155552671", output), output
        assert "secret text" not in output
        assert "+683***2" in output and "+1415***2671" in output
        for needle, count in (
            ("sms.failed", 1),
            ("sms.crashed", 1),
            ("provider said", 2),
            ("Task failed for", 1),
            ("bad request from", 1),
            ("POST To=", 1),
            ("row ", 1),
        ):
            assert output.count(needle) == count, (needle, output)
    # And the library lines are JSON objects like smsrelay's own
    lines = [json.loads(line) for line in as_json.splitlines() if line.strip()]
    by_logger = {line.get("logger"): line for line in lines}
    assert by_logger["uvicorn.error"]["event"] == "bad request from +683***2"
    assert by_logger["uvicorn.error"]["level"] == "warning"
    assert "RuntimeError: provider said +683***2" in by_logger["asyncio"]["exception"]
