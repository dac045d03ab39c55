"""smsrelay's pytest plugin, registered by the package (entry point `pytest11`, name
`smsrelay`): installing smsrelay gives an application's tests these fixtures.

- `sms_outbox`: an `SmsOutbox`, a recording `Publisher` (no Redis): hand it to the code under
  test instead of a `Producer`, then assert on `sms_outbox.messages`.
- `async_sms_outbox`: the same outbox as an `AsyncPublisher` (`sms_outbox.aio`), for code
  that takes an `AsyncProducer`; both fixtures of one test record into one list.
- `fake_twilio`: the fake Twilio Messages API on a free local port (`.url`, `.messages`, and
  the control methods of `FakeTwilioThread`); needs the worker extra.

Nothing heavy is imported until a fixture is used: the plugin loads in every pytest run of
an environment where smsrelay is installed. `pytest -p no:smsrelay` turns it off.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from smsrelay.testing.fake_twilio_thread import FakeTwilioThread
    from smsrelay.testing.outbox import AsyncSmsOutbox, SmsOutbox


@pytest.fixture
def sms_outbox() -> SmsOutbox:
    """A recording publisher: `publish(...)` as Producer's, `.messages`, `.clear()`."""
    from smsrelay.testing.outbox import SmsOutbox

    return SmsOutbox()


@pytest.fixture
def async_sms_outbox(sms_outbox: SmsOutbox) -> AsyncSmsOutbox:
    """`sms_outbox` for asyncio code: `await publish(...)`, recording into the same list."""
    return sms_outbox.aio


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilioThread]:
    """The fake Twilio on a free port: point SMSRELAY_TWILIO_BASE_URL at `.url`; what it
    accepted is `.messages` (docs/fake-twilio.md: scripted failures, outages, receipts)."""
    try:
        from smsrelay.testing.fake_twilio_thread import FakeTwilioThread
    except ModuleNotFoundError as exc:
        pytest.fail(
            f"the fake_twilio fixture needs the worker extra ({exc.name} is missing): "
            "pip install 'smsrelay[worker]'",
            pytrace=False,
        )
    with FakeTwilioThread() as fake:
        yield fake
