"""POST /api/admin/dead-letters/replay: back onto the request stream, then resolved or failed."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import redis.asyncio as aioredis

from smsrelay.admin.service import open_service
from smsrelay.producers.publish import Producer
from smsrelay.schemas.dead_letter import DeadLetterReason
from smsrelay.settings import Settings
from smsrelay.store.mirror import run_mirror
from smsrelay.streams.keys import ShardKeys
from tests.admin.conftest import LIST, REPLAY, admin_client, get_record, seed
from tests.store.dlq import unique_phone
from tests.support.wait import wait_until
from tests.support.worker import entries, running_worker


async def requests_of(
    client: aioredis.Redis, settings: Settings
) -> list[tuple[str, dict[str, str]]]:
    found = entries(await client.xrange(ShardKeys(settings.namespace).requests))
    return [(e.decode(), {k.decode(): v.decode() for k, v in f.items()}) for e, f in found]


async def test_replay_puts_the_original_entry_back_once(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    # Given a failed record (no worker runs in this test)
    message_id, entry_id, phone = await seed(
        admin_settings, rclient, kind="booking", meta='{"booking": 42}'
    )
    # When replayed
    response = await api.post(REPLAY, json={"ids": [message_id, str(uuid.uuid4())]})
    # Then it is accepted, the record shows `replayed`, and the original entry is back
    assert response.status_code == 202, response.text
    assert response.json() == {"success": True, "queued": 1, "skipped": 1}
    assert (await get_record(api, phone))["status"] == "replayed"

    async def queued() -> bool:
        return bool(await requests_of(rclient, admin_settings))

    await wait_until(queued, what="the entry back on the request stream")
    [(_, fields)] = await requests_of(rclient, admin_settings)
    assert fields["id"] == message_id and fields["to"] == phone
    assert (fields["kind"], fields["meta"], fields["v"]) == ("booking", '{"booking": 42}', "1")
    assert fields["replay_of"] == entry_id
    assert not {"reason", "error", "attempts", "source_entry_id"} & set(fields)
    # and a second click queues nothing more (the replay's idempotency key)
    async with open_service(admin_settings) as service:
        plan = await service.plan_replay(ids=[uuid.UUID(message_id)])
        assert len(plan.records) == 1
        await service.run_replay(plan)
    assert len(await requests_of(rclient, admin_settings)) == 1


async def test_replay_is_paced_at_the_replay_rate(
    admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    settings = admin_settings.model_copy(update={"replay_rate": 10.0})
    for _ in range(6):
        await seed(settings, rclient, reason="poison")
    async with open_service(settings) as service:
        plan = await service.plan_replay(reason=DeadLetterReason.POISON, limit=6)
        progress: list[tuple[int, int]] = []
        assert await service.run_replay(plan, progress=lambda *p: progress.append(p)) == 6
    ids = [int(e.split("-")[0]) for e, _ in await requests_of(rclient, settings)]
    assert len(ids) == 6
    # 6 entries at 10/s: the last is put back at least 0.5 s after the first
    assert ids[-1] - ids[0] >= 450
    assert progress == [(n, 6) for n in range(1, 7)]


async def test_a_replay_cut_short_puts_unqueued_records_back_to_failed(
    admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    settings = admin_settings.model_copy(update={"replay_rate": 1.0})
    phone = unique_phone()
    for _ in range(3):
        await seed(settings, rclient, phone=phone, reason="retries_exhausted")
    async with open_service(settings) as service:
        plan = await service.plan_replay(reason=DeadLetterReason.RETRIES_EXHAUSTED, limit=3)
        service.start_replay(plan)

        async def first_queued() -> bool:
            return bool(await requests_of(rclient, settings))

        await wait_until(first_queued, what="the first entry")
        # When the service stops before the replay is done
        await service.aclose(grace_s=0.2)
        page = await service.list_records(limit=10, offset=0, phone=phone)
    # Then the queued one stays `replayed`, the others are `failed` again
    assert sorted(r.status.value for r in page.records) == ["failed", "failed", "replayed"]
    assert len(await requests_of(rclient, settings)) == 1


def publish(settings: Settings, phone: str) -> str:
    with Producer(settings) as producer:
        result = producer.publish(phone, "your table is booked")
    assert result.status == "queued"
    return str(result.message_id)


async def test_replay_end_to_end_through_a_worker(
    admin_settings: Settings, fake_twilio: Any
) -> None:
    settings = admin_settings
    healed, broken = unique_phone(), unique_phone()
    # The first send to each fails for good; later ones to `healed` succeed
    fake_twilio.script(healed, [{"status": 400, "code": 21610}])
    fake_twilio.script(broken, [], default={"status": 400, "code": 21610})
    mirror = [lambda stop: run_mirror(settings, stop)]
    async with running_worker(settings, upkeep=mirror), admin_client(settings) as api:
        healed_id, broken_id = publish(settings, healed), publish(settings, broken)

        async def wait_status(phone: str, status: str, attempts: int | None = None) -> None:
            async def reached() -> bool:
                data = (await api.get(LIST, params={"phone": phone})).json()["data"]
                return (
                    bool(data)
                    and data[0]["status"] == status
                    and (attempts is None or data[0]["attempts"] == attempts)
                )

            await wait_until(reached, what=f"{phone} {status}")

        # Given both dead-lettered and mirrored
        await wait_status(healed, "failed")
        await wait_status(broken, "failed")
        # When both are replayed
        response = await api.post(REPLAY, json={"ids": [healed_id, broken_id]})
        assert response.json() == {"success": True, "queued": 2, "skipped": 0}
        # Then the healed one is resolved with Twilio's SID, sent exactly once
        await wait_status(healed, "resolved")
        record = await get_record(api, healed)
        [sent] = fake_twilio.messages_to(healed)
        assert (record["messageSid"], record["id"]) == (sent.sid, healed_id)
        # and the broken one is failed again, its attempts added up, one dead entry left
        await wait_status(broken, "failed", attempts=2)
        record = await get_record(api, broken)
        assert (record["reason"], record["id"]) == ("permanent_error", broken_id)
        assert fake_twilio.messages_to(broken) == []
    client = aioredis.Redis.from_url(settings.redis_url)
    dead = entries(await client.xrange(ShardKeys(settings.namespace).dead))
    await client.aclose()
    assert [f[b"id"].decode() for _, f in dead].count(broken_id) == 1
    assert [f[b"id"].decode() for _, f in dead].count(healed_id) == 1  # until deleted
