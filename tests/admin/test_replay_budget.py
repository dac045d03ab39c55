"""SMSRELAY_REPLAY_RATE is one budget for the namespace (issue 10, defect 4): concurrent
replays and several admin processes share it."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from smsrelay.settings import Settings
from smsrelay.streams.clients import text
from smsrelay.streams.keys import ShardKeys
from tests.admin.conftest import REPLAY, admin_client
from tests.store.dlq import add_dead_letter, mirror_now
from tests.support.wait import wait_until
from tests.support.worker import entries

RATE = 10


async def test_five_replays_on_two_admins_share_one_rate(
    admin_settings: Settings, rclient: aioredis.Redis, fake_twilio: Any
) -> None:
    settings = admin_settings.model_copy(update={"replay_rate": RATE})
    ids = [(await add_dead_letter(rclient, settings))[0] for _ in range(30)]
    await mirror_now(settings)
    requests = ShardKeys(settings.namespace).requests
    # When five replays of 6 ids each are asked at once, from two admin processes
    async with admin_client(settings) as one, admin_client(settings) as two:
        answers = await asyncio.gather(
            *(
                (one if n % 2 else two).post(REPLAY, json={"ids": ids[6 * n : 6 * n + 6]})
                for n in range(5)
            )
        )
        assert [a.json()["queued"] for a in answers] == [6] * 5

        async def all_queued() -> bool:
            return int(await rclient.xlen(requests)) == 30

        await wait_until(all_queued, timeout=15, what="30 replays on the stream")
    # Then the entries went out at the rate, not five (or two) times it: their stream ids are
    # the server's clock at each XADD
    stamps = sorted(
        int(text(entry_id).split("-")[0]) for entry_id, _ in entries(await rclient.xrange(requests))
    )
    span_s = (stamps[-1] - stamps[0]) / 1000
    assert span_s >= (30 - 1) / RATE - 0.2, span_s
    for start in stamps:
        in_one_second = sum(1 for s in stamps if start <= s < start + 1000)
        assert in_one_second <= RATE + 1, (start, in_one_second)
