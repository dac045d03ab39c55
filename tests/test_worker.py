"""The worker against real Redis and the fake Twilio spoken to by the real SDK."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from smsrelay.producers.publish import Producer
from smsrelay.settings import Settings
from smsrelay.streams.keys import ShardKeys
from smsrelay.streams.queue import BeginCall, Queue, Sender
from tests.conftest import make_settings
from tests.support.clients import redis_client
from tests.support.wait import wait_until
from tests.support.worker import dead_letters, running_worker, stream_state


def _publish(settings: Settings, *messages: tuple[str, str]) -> list[str]:
    with Producer(settings) as producer:
        results = [producer.publish(to, body) for to, body in messages]
    assert all(r.status == "queued" for r in results), results
    return [str(r.message_id) for r in results]


async def test_messages_are_sent_acked_and_deleted(settings: Settings, fake_twilio: Any) -> None:
    # Given three published messages
    ids = _publish(
        settings, ("+14155552671", "one"), ("+14155552672", "two"), ("+447911123456", "three")
    )
    # When a worker runs
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.messages) == 3, what="3 sends")
        await wait_until(lambda: stream_state(settings) == (0, 0), what="empty stream")
    # Then each was sent once, with its body, and marked sent with Twilio's SID
    sent = {(m.to, m.body) for m in fake_twilio.messages}
    assert sent == {("+14155552671", "one"), ("+14155552672", "two"), ("+447911123456", "three")}
    client = redis_client(settings.redis_url, decode_responses=True)
    sids = {m.sid for m in fake_twilio.messages}
    for message_id in ids:
        assert client.get(ShardKeys(settings.namespace).sent(message_id)) in sids
    assert dead_letters(settings) == []


async def test_rate_limit_dead_letters_the_sixth(settings: Settings, fake_twilio: Any) -> None:
    _publish(settings, *[("+14155550123", f"m{i}") for i in range(7)])
    async with running_worker(settings):
        await wait_until(lambda: len(dead_letters(settings)) == 2, what="2 dead letters")
        await wait_until(lambda: stream_state(settings) == (0, 0), what="drain")
    assert len(fake_twilio.messages) == 5
    for dead in dead_letters(settings):
        assert dead["reason"] == "rate_limited"
        assert dead["error"] == "Rate limit exceeded"
        assert dead["attempts"] == "0"
        assert dead["to"] == "+14155550123"


async def test_rate_limit_is_exact_across_three_workers(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    settings = make_settings(
        redis_url, namespace, tmp_path, fake_twilio.url, worker_concurrency=8, worker_batch_size=2
    )
    phones = [f"+1415555{n:04d}" for n in range(100, 104)]
    _publish(settings, *[(phone, f"{phone}-{i}") for phone in phones for i in range(12)])
    async with running_worker(settings), running_worker(settings), running_worker(settings):
        await wait_until(
            lambda: len(dead_letters(settings)) == 4 * 7, timeout=20, what="28 dead letters"
        )
        await wait_until(lambda: stream_state(settings) == (0, 0), what="drain")
    for phone in phones:
        assert len(fake_twilio.fake.messages_to(phone)) == 5, phone
    assert sum(fake_twilio.fake.duplicates().values()) == 0


async def test_transient_errors_retry_with_backoff(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    settings = make_settings(
        redis_url, namespace, tmp_path, fake_twilio.url, backoff_base_seconds=0.3, backoff_jitter=0
    )
    phone = "+14155552680"
    fake_twilio.script(phone, [{"status": 503}, {"status": 429, "code": 20429}])
    _publish(settings, (phone, "try again"))
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.messages) == 1, what="the third attempt")
        await wait_until(lambda: stream_state(settings) == (0, 0), what="drain")
    times = [r.at for r in fake_twilio.requests if r.to == phone]
    assert len(times) == 3
    first_wait, second_wait = times[1] - times[0], times[2] - times[1]
    # base * 2^(n-1): 0.3 s then 0.6 s (poll granularity adds a little, never less)
    assert 0.3 <= first_wait < 0.55, first_wait
    assert 0.6 <= second_wait < 0.9, second_wait
    assert dead_letters(settings) == []


async def test_exhausted_retries_are_dead_lettered(settings: Settings, fake_twilio: Any) -> None:
    phone = "+14155552681"
    fake_twilio.script(phone, [], default={"status": 503})
    [message_id] = _publish(settings, (phone, "never"))
    async with running_worker(settings):
        await wait_until(lambda: len(dead_letters(settings)) == 1, what="dead letter")
    [dead] = dead_letters(settings)
    assert dead["reason"] == "retries_exhausted"
    assert dead["attempts"] == "3"
    assert dead["id"] == message_id
    assert "503" in dead["error"]
    assert dead["first_attempt_at"] and dead["last_attempt_at"]
    assert len([r for r in fake_twilio.requests if r.to == phone]) == 3
    # the slot of a message the provider never accepted is given back
    client = redis_client(settings.redis_url)
    assert client.zcard(ShardKeys(settings.namespace).rate_limit(phone)) == 0


async def test_permanent_error_dead_letters_at_once(settings: Settings, fake_twilio: Any) -> None:
    _publish(settings, ("+15005550001", "invalid number"))  # Twilio's magic number: 21211
    async with running_worker(settings):
        await wait_until(lambda: len(dead_letters(settings)) == 1, what="dead letter")
    [dead] = dead_letters(settings)
    assert dead["reason"] == "permanent_error"
    assert "21211" in dead["error"]
    assert dead["attempts"] == "1"
    assert len(fake_twilio.requests) == 1


async def test_dropped_connection_and_timeout_are_retried(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    settings = make_settings(
        redis_url, namespace, tmp_path, fake_twilio.url, twilio_timeout_seconds=0.3
    )
    phone = "+14155552682"
    fake_twilio.script(phone, ["drop", {"delay": 1.0}])
    _publish(settings, (phone, "eventually"))
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.fake.messages_to(phone)) >= 1, what="send")
        await wait_until(lambda: stream_state(settings) == (0, 0), what="drain")
    assert dead_letters(settings) == []


async def test_malformed_entries_are_dead_lettered_and_the_worker_lives_on(
    settings: Settings, fake_twilio: Any
) -> None:
    client = redis_client(settings.redis_url)
    stream = ShardKeys(settings.namespace).requests
    junk: list[dict[Any, Any]] = [
        {
            "v": "1",
            "id": "not-a-uuid",
            "to": "+14155552671",
            "body": "x",
            "created_at": "2026-01-01T00:00:00Z",
        },
        {"v": "1"},
        {"v": "2", "id": "c42b55dd-b849-4bbf-a4ce-5ccad843c8b1"},
        {
            "v": "1",
            "id": "c42b55dd-b849-4bbf-a4ce-5ccad843c8b1",
            "to": "12345",
            "body": "x",
            "created_at": "2026-01-01T00:00:00Z",
        },
        {b"\xff\xfe": b"\x00\x9f binary"},
        {
            "v": "1",
            "id": "c42b55dd-b849-4bbf-a4ce-5ccad843c8b2",
            "to": "+14155552671",
            "body": "",
            "created_at": "yesterday",
        },
    ]
    for fields in junk:
        client.xadd(stream, fields)
    _publish(settings, ("+14155552690", "after the junk"))
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.messages) == 1, what="the good message")
        await wait_until(lambda: len(dead_letters(settings)) == len(junk), what="junk dead")
    reasons = {d["reason"] for d in dead_letters(settings)}
    assert reasons == {"invalid_payload"}
    errors = [d["error"] for d in dead_letters(settings)]
    assert any("schema version" in e for e in errors)
    assert any("UTF-8" in e for e in errors)
    assert any("to:" in e for e in errors)


async def test_redelivered_message_already_sent_is_not_sent_again(
    settings: Settings, fake_twilio: Any
) -> None:
    # Given a message whose sent marker exists (a worker died after Twilio accepted it)
    [message_id] = _publish(settings, ("+14155552691", "once"))
    client = redis_client(settings.redis_url)
    client.set(ShardKeys(settings.namespace).sent(message_id), "SMalreadysent")
    # When it is delivered again
    async with running_worker(settings):
        await wait_until(lambda: stream_state(settings) == (0, 0), what="ack")
    # Then it is acknowledged and not sent
    assert fake_twilio.messages == []


async def test_defer_waits_for_the_window_instead_of_dead_lettering(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        on_rate_limit="defer",
        rate_limit_max=1,
        rate_limit_window_seconds=1,
    )
    phone = "+14155552692"
    _publish(settings, (phone, "first"), (phone, "second"))
    started = time.monotonic()
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.messages) == 2, what="both sent")
    assert time.monotonic() - started >= 0.9
    assert dead_letters(settings) == []


async def test_poison_entry_is_dead_lettered_and_others_flow(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    from smsrelay.consumers.providers.base import SendReceipt
    from smsrelay.consumers.providers.twilio import TwilioProvider

    settings = make_settings(
        redis_url, namespace, tmp_path, fake_twilio.url, claim_idle_seconds=0.2, max_deliveries=3
    )

    class BuggyProvider:
        """Crashes (not a provider error: a bug) on one number, every time."""

        def __init__(self, s: Settings) -> None:
            self.real = TwilioProvider(s)

        async def send(self, to: str, body: str, *, message_id: str) -> SendReceipt:
            if to == "+14155552693":
                raise RuntimeError("bug")
            return await self.real.send(to, body, message_id=message_id)

        async def aclose(self) -> None:
            await self.real.aclose()

    _publish(settings, ("+14155552693", "poison"), ("+14155552694", "fine"))
    async with running_worker(settings, provider_factory=BuggyProvider):
        await wait_until(lambda: len(dead_letters(settings)) == 1, what="poison dead letter")
    [dead] = dead_letters(settings)
    assert dead["reason"] == "poison"
    assert dead["to"] == "+14155552693"
    assert [m.to for m in fake_twilio.messages] == ["+14155552694"]


async def test_slow_provider_is_not_taken_over(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    # The send takes 4x the claim idle time; the owner keeps its claim fresh.
    settings = make_settings(
        redis_url,
        namespace,
        tmp_path,
        fake_twilio.url,
        claim_idle_seconds=0.3,
        twilio_timeout_seconds=3,
    )
    phone = "+14155552695"
    fake_twilio.script(phone, [{"delay": 1.2}])
    _publish(settings, (phone, "slow"))
    async with running_worker(settings) as first:
        await wait_until(lambda: len(fake_twilio.requests) == 1, what="first request")
        async with running_worker(settings) as second:
            await wait_until(lambda: stream_state(settings) == (0, 0), what="done")
            assert first.name != second.name
    assert len(fake_twilio.requests) == 1
    assert len(fake_twilio.messages) == 1


async def test_a_crash_grants_no_extra_attempt(settings: Settings, fake_twilio: Any) -> None:
    # Given a message whose last allowed attempt started before its worker died
    [message_id] = _publish(settings, ("+14155552696", "third time"))
    client = redis_client(settings.redis_url)
    client.hset(
        ShardKeys(settings.namespace).state(message_id),
        mapping={"attempts": 3, "first_attempt_at": "2026-01-01T00:00:00.000Z"},
    )
    # When it is delivered again
    async with running_worker(settings):
        await wait_until(lambda: len(dead_letters(settings)) == 1, what="dead letter")
    # Then it is not sent a fourth time but dead-lettered as exhausted
    [dead] = dead_letters(settings)
    assert dead["reason"] == "retries_exhausted"
    assert dead["attempts"] == "3"
    assert "stopped during the last attempt" in dead["error"]
    assert fake_twilio.requests == []


async def test_a_scheduled_retry_survives_its_worker(
    redis_url: str, namespace: str, tmp_path: Path, fake_twilio: Any
) -> None:
    settings = make_settings(
        redis_url, namespace, tmp_path, fake_twilio.url, backoff_base_seconds=1.0
    )
    phone = "+14155552697"
    fake_twilio.script(phone, [{"status": 503}])
    _publish(settings, (phone, "later"))
    keys = ShardKeys(settings.namespace)
    client = redis_client(settings.redis_url)
    # Given a worker that scheduled a retry and then went away
    async with running_worker(settings):
        await wait_until(lambda: client.zcard(keys.delayed) == 1, what="retry scheduled")
    assert fake_twilio.messages == []
    assert stream_state(settings) == (0, 0)
    # When another worker starts, Then the message is sent on its second attempt
    async with running_worker(settings):
        await wait_until(lambda: len(fake_twilio.messages) == 1, what="retried send")
    assert client.zcard(keys.delayed) == 0


async def test_a_read_batchs_decisions_equal_one_call_each(settings: Settings) -> None:
    # begin.lua for a batch in one pipeline must decide exactly as calls one by one would.
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        batched, single = Queue(settings, client), Queue(settings, client)
        batch = [(f"1-{i}", f"msg-{i}", "+14155550199") for i in range(7)]
        batch += [("2-0", "msg-0", "+14155550199"), ("1-0", "msg-0", "+14155550199")]
        _, decided = await batched.begin_many([BeginCall(0, Sender(e), m, p) for e, m, p in batch])
        # the same deliveries again one at a time, under other message ids and phone
        again = [
            await single.begin(
                BeginCall(
                    0,
                    Sender(e.replace("1-", "3-").replace("2-", "4-")),
                    m.replace("msg", "other"),
                    "+14155550198",
                )
            )
            for e, m, _ in batch
        ]
    finally:
        await client.aclose()
    verdicts = [d.verdict if d else None for d in decided]
    assert verdicts == ["go"] * 5 + ["limited"] * 2 + ["busy", "go"]
    assert verdicts == [d.verdict for d in again]
    assert [d.attempt for d in decided if d] == [d.attempt for d in again]
