"""GET /api/admin/retry-failed-sms: the seed's shape, newest first, filters and paging."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import redis.asyncio as aioredis

from smsrelay import clock
from smsrelay.settings import Settings
from tests.admin.conftest import LIST, seed
from tests.store.dlq import unique_phone

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_records_come_in_the_seed_shape(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    # Given a dead letter mirrored into Postgres
    message_id, _, phone = await seed(
        admin_settings, rclient, attempts=3, reason="retries_exhausted", error="Twilio 503"
    )
    # When listing its phone's records
    body = (await api.get(LIST, params={"phone": phone})).json()
    # Then the body is the seed's, with the extra fields, camelCase and ISO 8601 UTC
    assert body["success"] is True
    assert body["pagination"] == {"total": 1, "limit": 50, "offset": 0, "hasMore": False}
    [record] = body["data"]
    assert set(record) == {
        "id",
        "phone",
        "message",
        "error",
        "attempts",
        "createdAt",
        "lastAttemptAt",
        "reason",
        "status",
        "messageSid",
        "resolvedAt",
    }
    assert record["id"] == message_id
    assert (record["phone"], record["attempts"], record["error"]) == (phone, 3, "Twilio 503")
    assert record["message"] == "Hi, your booking is in"
    assert (record["reason"], record["status"]) == ("retries_exhausted", "failed")
    assert record["messageSid"] is None and record["resolvedAt"] is None
    assert ISO_UTC.match(record["createdAt"]) and ISO_UTC.match(record["lastAttemptAt"])


async def test_newest_first_with_filters_and_pages(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    phone = unique_phone()
    start = clock.now() - timedelta(hours=1)
    ids = []
    for n, reason in enumerate(
        ["rate_limited", "permanent_error", "rate_limited", "poison", "rate_limited"]
    ):
        message_id, _, _ = await seed(
            admin_settings,
            rclient,
            phone=phone,
            reason=reason,
            created_at=clock.iso(start + timedelta(minutes=n)),
        )
        ids.append(message_id)
    newest_first = ids[::-1]

    async def page(**params: str | int) -> tuple[list[str], dict[str, object]]:
        response = await api.get(LIST, params={"phone": phone, **params})
        assert response.status_code == 200, response.text
        body = response.json()
        return [r["id"] for r in body["data"]], body["pagination"]

    assert await page() == (newest_first, {"total": 5, "limit": 50, "offset": 0, "hasMore": False})
    assert await page(limit=2) == (
        newest_first[:2],
        {"total": 5, "limit": 2, "offset": 0, "hasMore": True},
    )
    assert await page(limit=2, offset=4) == (
        newest_first[4:],
        {"total": 5, "limit": 2, "offset": 4, "hasMore": False},
    )
    assert await page(offset=5) == ([], {"total": 5, "limit": 50, "offset": 5, "hasMore": False})
    limited, meta = await page(reason="rate_limited")
    assert limited == [ids[4], ids[2], ids[0]] and meta["total"] == 3
    assert (await page(status="resolved"))[0] == []
    assert (await page(status="failed", reason="poison"))[0] == [ids[3]]


async def test_a_phone_filter_with_an_unencoded_plus_works(
    api: httpx.AsyncClient, admin_settings: Settings, rclient: aioredis.Redis
) -> None:
    message_id, _, phone = await seed(admin_settings, rclient)
    # `?phone=+1415...` typed into a shell: the `+` arrives as a space
    response = await api.get(f"{LIST}?phone={phone}")
    assert [r["id"] for r in response.json()["data"]] == [message_id]
