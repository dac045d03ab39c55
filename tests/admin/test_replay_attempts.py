"""A bulk replay's provider attempts count in the record as an admin retry's do (issue 12).

`failed_sms.attempts` is "provider attempts so far" (the contract). A retry adds its one
attempt whether it fails (`record_retry_failure`) or succeeds (`mark_resolved`). A replay's
attempts are the worker's: when it fails again they are added with the new dead letter (the
mirror); when it is sent, the outcome stream says only `resolved`, so the attempt that sent it
would not be added: the outcome entry carries the replay's attempts, and the mirror adds them.
"""

from __future__ import annotations

from typing import Any

import pytest

from smsrelay.settings import Settings
from tests.admin.conftest import LIST, REPLAY, admin_client, get_record
from tests.admin.test_replay import publish
from tests.store.dlq import unique_phone
from tests.support.wait import wait_until
from tests.support.worker import running_worker

pytestmark = pytest.mark.slow


async def test_a_sent_replay_counts_its_attempt_as_a_sent_retry_does(
    admin_settings: Settings, fake_twilio: Any
) -> None:
    from smsrelay.store.mirror import run_mirror

    settings = admin_settings
    retried, replayed = unique_phone(), unique_phone()
    # The first send to each fails for good; the next one succeeds
    for phone in (retried, replayed):
        fake_twilio.script(phone, [{"status": 400, "code": 21610}])
    mirror = [lambda stop: run_mirror(settings, stop)]
    async with running_worker(settings, upkeep=mirror), admin_client(settings) as api:
        retried_id, replayed_id = publish(settings, retried), publish(settings, replayed)

        async def status_of(phone: str, status: str) -> None:
            async def reached() -> bool:
                data = (await api.get(LIST, params={"phone": phone})).json()["data"]
                return bool(data) and data[0]["status"] == status

            await wait_until(reached, what=f"{phone} {status}")

        await status_of(retried, "failed")
        await status_of(replayed, "failed")
        # When one is retried now and the other replayed, and both are sent
        retry = await api.post(LIST, json={"id": retried_id})
        assert retry.status_code == 200, retry.text
        replay = await api.post(REPLAY, json={"ids": [replayed_id]})
        assert replay.json()["queued"] == 1
        await status_of(replayed, "resolved")
        # Then both records count two provider attempts: the failed one and the one that sent
        assert (await get_record(api, retried))["attempts"] == 2
        assert (await get_record(api, replayed))["attempts"] == 2
