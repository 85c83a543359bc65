"""Published events: decisions and alerts as CloudEvents, read back from the real Redis Stream
(``XRANGE``) and a real NATS JetStream consumer, through the outbox dispatcher.

Each test uses its own Redis key prefix and its own JetStream stream and subjects, and deletes
them afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
import redis.asyncio as aioredis

from riskguard.adapters.sql.migrate import upgrade
from riskguard.adapters.sql.outbox import (
    ALERT_OPENED,
    ALERT_UPDATED,
    OutboxMessage,
    decision_message,
    outbox_messages,
)
from riskguard.adapters.streams.jetstream import JetStreamPublisher
from riskguard.adapters.streams.redis_streams import RedisStreamPublisher
from riskguard.adapters.webhooks.dispatcher import Dispatcher, RetryPolicy
from riskguard.adapters.webhooks.sealing import SecretBox
from riskguard.adapters.webhooks.store import WebhookStore
from tests.integration.test_webhooks import FAST, _tenant, put, record, rows

pytestmark = pytest.mark.integration

NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(url, tenant id) of a migrated database."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'riskguard.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    upgrade(url)
    return url, asyncio.run(_tenant(url, "acme"))


@asynccontextmanager
async def jetstream(name: str, subjects: list[str]) -> AsyncIterator[Any]:
    """A JetStream stream of our own for the test, deleted afterwards."""
    nc = await nats.connect(NATS_URL, connect_timeout=5)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=subjects, duplicate_window=120)
    try:
        yield js
    finally:
        await js.delete_stream(name)
        await nc.close()


async def read_stream(client: aioredis.Redis, key: str) -> list[dict[str, Any]]:
    entries = await client.xrange(key)
    out = []
    for _entry_id, fields in entries:
        decoded = {k.decode(): v for k, v in fields.items()}
        event = orjson.loads(decoded["event"])
        assert decoded["id"].decode() == event["id"]
        assert decoded["type"].decode() == event["type"]
        assert decoded["tenant"].decode() == event["tenantid"]
        out.append(event)
    return out


def check_event(event: dict[str, Any], message: OutboxMessage) -> None:
    """The CloudEvents 1.0 structured-mode shape of one outbox message."""
    assert event["specversion"] == "1.0"
    assert event["id"] == message.id
    assert event["source"] == f"/riskguard/tenants/{message.tenant_id}"
    assert event["type"] == "io.riskguard." + message.topic
    assert event["subject"] == message.subject
    assert datetime.fromisoformat(event["time"]) == message.created_at
    assert event["time"].endswith("Z")
    assert event["datacontenttype"] == "application/json"
    assert event["tenantid"] == message.tenant_id
    assert event["data"] == orjson.loads(orjson.dumps(dict(message.payload)))


def test_decisions_and_alerts_are_published_to_redis_and_jetstream(
    database: tuple[str, str], redis_url: str, redis_prefix: str
) -> None:
    url, tenant = database
    key_prefix = f"{redis_prefix}:{uuid.uuid4().hex[:8]}:"
    subject_prefix = f"rgtest{uuid.uuid4().hex[:10]}"
    stream_name = subject_prefix.upper()

    async def scenario() -> None:
        review = decision_message(record(tenant, "review"))
        allow = decision_message(record(tenant, "allow"))
        opened = OutboxMessage.new(tenant, ALERT_OPENED, "alr_1", {"alert_id": "alr_1"})
        updated = OutboxMessage.new(
            tenant, ALERT_UPDATED, "alr_1", {"alert_id": "alr_1", "status": "acknowledged"}
        )
        messages = [review, allow, opened, updated]
        await put(url, messages)
        client = aioredis.Redis.from_url(redis_url)
        store = WebhookStore.from_url(url)
        publishers = [
            RedisStreamPublisher(redis_url, key_prefix=key_prefix, maxlen=1000),
            JetStreamPublisher(NATS_URL, subject_prefix=subject_prefix),
        ]
        try:
            async with jetstream(stream_name, [f"{subject_prefix}.>"]) as js:
                dispatcher = Dispatcher(
                    store, SecretBox(b"k" * 32), config=FAST, publishers=publishers
                )
                assert await dispatcher.dispatch_messages() == 4
                await dispatcher.close()
                assert dispatcher.published == 8

                decisions = await read_stream(client, key_prefix + "riskguard.decisions")
                alerts = await read_stream(client, key_prefix + "riskguard.alerts")
                assert [e["id"] for e in decisions] == [review.id, allow.id]
                assert [e["id"] for e in alerts] == [opened.id, updated.id]
                for event, message in zip(decisions + alerts, messages, strict=True):
                    check_event(event, message)
                assert decisions[0]["data"]["outcome"] == "review"
                assert decisions[0]["subject"].startswith("dec_")

                consumer = await js.pull_subscribe(f"{subject_prefix}.>", stream=stream_name)
                got = await consumer.fetch(10, timeout=5)
                for msg in got:
                    await msg.ack()
                assert [m.subject for m in got] == [
                    f"{subject_prefix}.decisions.{tenant}",
                    f"{subject_prefix}.decisions.{tenant}",
                    f"{subject_prefix}.alerts.{tenant}",
                    f"{subject_prefix}.alerts.{tenant}",
                ]
                for msg, message in zip(got, messages, strict=True):
                    assert msg.headers is not None
                    assert msg.headers["Nats-Msg-Id"] == message.id
                    assert msg.headers["Content-Type"] == "application/cloudevents+json"
                    check_event(orjson.loads(msg.data), message)

                # a dispatcher that crashed after publishing publishes again: JetStream keeps
                # one copy (Nats-Msg-Id), Redis consumers drop the copy by the event id
                again = JetStreamPublisher(NATS_URL, subject_prefix=subject_prefix)
                await again.publish([orjson.loads(m.data) for m in got])
                await again.close()
                info = await js.stream_info(stream_name)
                assert info.state.messages == 4
            # dispatched at their first attempt, with no webhook delivery: gone from the queue
            assert await rows(url, outbox_messages) == []
        finally:
            await client.delete(key_prefix + "riskguard.decisions", key_prefix + "riskguard.alerts")
            await client.aclose()
            await store.close()

    asyncio.run(scenario())


def test_a_failing_stream_is_retried_without_repeating_the_others(
    database: tuple[str, str], redis_url: str, redis_prefix: str
) -> None:
    """NATS has no stream for the subjects yet: the message stays undispatched with Redis
    recorded as done; once the stream exists the retry publishes to NATS only."""
    url, tenant = database
    key_prefix = f"{redis_prefix}:{uuid.uuid4().hex[:8]}:"
    subject_prefix = f"rgtest{uuid.uuid4().hex[:10]}"
    config = replace(FAST, publish_retry=RetryPolicy(max_attempts=0, base_s=0.05, cap_s=0.1))

    async def scenario() -> None:
        message = decision_message(record(tenant, "block"))
        await put(url, [message])
        client = aioredis.Redis.from_url(redis_url)
        store = WebhookStore.from_url(url)
        dispatcher = Dispatcher(
            store,
            SecretBox(b"k" * 32),
            config=replace(config, publish_timeout_s=2.0),
            publishers=[
                RedisStreamPublisher(redis_url, key_prefix=key_prefix),
                JetStreamPublisher(NATS_URL, subject_prefix=subject_prefix, timeout_s=1.0),
            ],
        )
        key = key_prefix + "riskguard.decisions"
        try:
            assert await dispatcher.dispatch_messages() == 1
            (row,) = await rows(url, outbox_messages)
            assert row.dispatched_at is None
            assert row.sinks_done == "redis"
            assert row.last_error.startswith("nats: ")
            assert dispatcher.publish_failures == 1

            async with jetstream(subject_prefix.upper(), [f"{subject_prefix}.>"]) as js:
                await asyncio.sleep(0.15)  # past the back-off
                assert await dispatcher.dispatch_messages() == 1
                (row,) = await rows(url, outbox_messages)
                assert row.dispatched_at is not None
                assert row.sinks_done == "nats,redis"
                assert row.attempts == 2
                info = await js.stream_info(subject_prefix.upper())
                assert info.state.messages == 1
            assert [e["id"] for e in await read_stream(client, key)] == [message.id]  # once
            assert await dispatcher.dispatch_messages() == 0
        finally:
            await dispatcher.close()
            await client.delete(key)
            await client.aclose()
            await store.close()

    asyncio.run(scenario())


def claimed_events(indexes: range, payload: Callable[[int], dict[str, Any]]) -> list[Any]:
    """Events of ``decision.created`` messages as a claim hands them over (each with its
    payload's JSON text): ids ``evt_00000``, ``evt_00001``, ..."""
    from riskguard.adapters.streams.cloudevents import to_cloudevent
    from riskguard.adapters.webhooks.models import ClaimedMessage

    events = []
    for i in indexes:
        data = payload(i)
        message = ClaimedMessage(
            f"evt_{i:05d}",
            "t_acme",
            "decision.created",
            f"dec_{i}",
            data,
            datetime.now(UTC),
            1,
            frozenset(),
        )
        events.append(to_cloudevent(message, payload_json=orjson.dumps(data).decode()))
    return events


@asynccontextmanager
async def decision_stream(redis_url: str) -> AsyncIterator[tuple[Any, aioredis.Redis, str]]:
    """A publisher under a key prefix of its own, a client and the decisions stream's key;
    the stream is deleted afterwards."""
    key_prefix = f"test-{uuid.uuid4().hex[:8]}:"
    publisher = RedisStreamPublisher(redis_url, key_prefix=key_prefix)
    client = aioredis.Redis.from_url(redis_url)
    key = key_prefix + "riskguard.decisions"
    try:
        yield publisher, client, key
    finally:
        await publisher.close()
        await client.delete(key)
        await client.aclose()


def test_a_batch_larger_than_one_script_call_is_published_whole_and_in_order(
    redis_url: str,
) -> None:
    """More events than ``EVENTS_PER_CALL`` go out in several script calls: every one of them,
    once, in the batch's order, with its JSON as the event says."""
    from riskguard.adapters.streams import redis_streams

    count = 2 * redis_streams.EVENTS_PER_CALL + 7
    events = claimed_events(
        range(count),
        lambda i: {"decision_id": f"dec_{i}", "outcome": "allow", "score": i / 3},
    )

    async def scenario() -> None:
        async with decision_stream(redis_url) as (publisher, client, key):
            await publisher.publish(events)
            got = await read_stream(client, key)
            assert [e["id"] for e in got] == [e["id"] for e in events]
            assert got == [orjson.loads(orjson.dumps(dict(e))) for e in events]

    asyncio.run(scenario())


def test_a_server_that_lost_the_script_gets_it_again(redis_url: str) -> None:
    """The publisher calls its script by digest; a server without it (restarted, or its
    script cache flushed) answers NOSCRIPT, and the call is made again with the script's text:
    nothing is lost and nothing fails."""

    def events(first: int) -> list[Any]:
        return claimed_events(range(first, first + 3), lambda i: {"decision_id": f"dec_{i}"})

    async def scenario() -> None:
        async with decision_stream(redis_url) as (publisher, client, key):
            await publisher.publish(events(0))
            await client.script_flush()
            await publisher.publish(events(3))
            got = await read_stream(client, key)
            assert [e["id"] for e in got] == [f"evt_{i:05d}" for i in range(6)]

    asyncio.run(scenario())
