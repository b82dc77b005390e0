"""The collector's HTTP answers over a stand-in for Kafka (the real one: integration tests).

The stand-in records what would be produced and answers per record as told, so every
mapping from Kafka's answer to HTTP is checked: acknowledged (200), partly invalid
(400), not acknowledged or no room (503 + Retry-After), refused for good by Kafka.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from scorestream import cli, clients
from scorestream.collector.app import CONFIG_PLACEHOLDER, Collector, build_app, tracker_source
from scorestream.collector.keys import parse_sites
from scorestream.collector.metrics import create
from scorestream.collector.producer import OK, Outcome
from scorestream.settings import Settings

KEY = "wk_test_0123456789"
ORIGIN = "http://shop.example:8000"
SITES = parse_sites(
    {
        "sites": [
            {
                "name": "shop",
                "write_key": KEY,
                "origins": [ORIGIN],
                "rate_limit": {"events_per_second": 1, "burst": 30},
                "email_field": "email",
            },
            {
                "name": "consenting",
                "write_key": "wk_consent_0123456",
                "origins": ["https://c.example"],
                "consent_required": True,
            },
        ]
    },
    "test",
)
SETTINGS = Settings(topic_prefix="t-1-", collector_max_in_flight=100, collector_retry_after=7)


def page(i: int, **over: Any) -> dict[str, Any]:
    return {
        "event_id": f"e-{i}",
        "type": "page_view",
        "anonymous_id": f"a-{i}",
        "occurred_at": "2026-03-01T10:15:00Z",
        "properties": {"url": "/pricing"},
        **over,
    }


@dataclass
class FakeSender:
    """Answers each record with the next outcome of ``script`` (OK when it runs out)."""

    writable: bool = True
    in_flight: int = 0
    script: list[Outcome] = field(default_factory=list)
    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    async def send(self, records: Sequence[tuple[str, bytes, bytes]]) -> list[Outcome]:
        self.sent.extend(records)
        return [self.script.pop(0) if self.script else OK for _ in records]


Scenario = Callable[[TestClient[Any, Any], FakeSender, CollectorRegistry], Awaitable[None]]


def run(scenario: Scenario, sender: FakeSender | None = None, **settings: Any) -> None:
    fake = sender if sender is not None else FakeSender()
    metrics = create()
    collector = Collector(
        replace(SETTINGS, **settings), SITES, fake, metrics, clock=lambda: 1_772_360_100.0
    )

    async def main() -> None:
        async with TestClient(TestServer(build_app(collector))) as client:
            await scenario(client, fake, metrics.registry)

    asyncio.run(main())


def post(client: TestClient[Any, Any], body: Any, **kw: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = kw.pop("headers", {"Content-Type": "text/plain"})
    return client.post(f"/v1/events?key={kw.pop('key', KEY)}", data=data, headers=headers, **kw)


def test_a_batch_is_answered_200_after_every_event_is_acknowledged() -> None:
    async def scenario(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        resp = await post(client, [page(1), page(2, contact_id="c-2")])
        assert resp.status == 200
        body = await resp.json()
        assert body["accepted"] == 2 and body["invalid"] == 0 and body["retry"] == 0
        assert [r["status"] for r in body["results"]] == ["ok", "ok"]
        assert [(t, k) for t, k, _ in fake.sent] == [
            ("t-1-events.page_view", b"a-1"),
            ("t-1-events.page_view", b"c-2"),
        ]
        assert json.loads(fake.sent[0][2])["received_at"] == "2026-03-01T10:15:00Z"
        assert reg.get_sample_value("scorestream_collector_accepted_total", {"site": "shop"}) == 2
        assert reg.get_sample_value("scorestream_collector_requests_total", {"code": "200"}) == 1

    run(scenario)


def test_invalid_events_answer_400_and_the_valid_ones_are_still_taken() -> None:
    async def scenario(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        bad = page(2, properties={})
        resp = await post(client, [page(1), bad, "x"])
        assert resp.status == 400
        body = await resp.json()
        assert body["results"] == [
            {"index": 0, "status": "ok", "event_id": "e-1"},
            {
                "index": 1,
                "status": "invalid",
                "event_id": "e-2",
                "error": "properties.url: required",
            },
            {"index": 2, "status": "invalid", "error": "not a JSON object"},
        ]
        assert len(fake.sent) == 1
        assert (
            reg.get_sample_value("scorestream_collector_rejected_total", {"reason": "invalid"}) == 2
        )

    run(scenario)


def test_events_kafka_did_not_acknowledge_answer_503_with_retry_after() -> None:
    fake = FakeSender(script=[OK, Outcome(False, "Local: Message timed out")])

    async def scenario(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        resp = await post(client, [page(1), page(2)])
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "7"
        body = await resp.json()
        assert [r["status"] for r in body["results"]] == ["ok", "retry"]
        assert "Message timed out" in body["results"][1]["error"]
        labels = {"reason": "unavailable"}
        assert reg.get_sample_value("scorestream_collector_rejected_total", labels) == 1

    run(scenario, fake)


def test_a_permanent_kafka_refusal_is_an_invalid_event_not_a_retry() -> None:
    fake = FakeSender(script=[Outcome(False, "Broker: Message size too large", permanent=True)])

    async def scenario(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        resp = await post(client, page(1))
        assert resp.status == 400
        (result,) = (await resp.json())["results"]
        assert result["status"] == "invalid"
        assert result["error"].startswith("Kafka refused it:")

    run(scenario, fake)


def test_503_without_producing_while_kafka_cannot_take_writes_or_too_much_is_in_flight() -> None:
    async def scenario(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        fake.writable = False
        resp = await post(client, [page(1)])
        assert resp.status == 503 and resp.headers["Retry-After"] == "7"
        assert (await client.get("/healthz")).status == 503
        fake.writable = True
        fake.in_flight = 99  # bound 100: two more do not fit
        resp = await post(client, [page(2), page(3)])
        assert resp.status == 503
        assert (await resp.json())["results"][0]["error"] == "too many events wait for Kafka"
        assert fake.sent == []
        resp = await post(client, [page(4)])
        assert resp.status == 200
        assert reg.get_sample_value("scorestream_collector_rejected_total", {"reason": "busy"}) == 2
        assert reg.get_sample_value("scorestream_collector_in_flight_events") == 99
        assert (await client.get("/healthz")).status == 200

    run(scenario)


def test_keys_origins_and_cors() -> None:
    async def scenario(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        resp = await post(client, page(1), key="wk_unknown_000000")
        assert resp.status == 401
        resp = await post(client, page(1), headers={"Origin": "https://evil.example"})
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
        # a key of another site does not open this site's origin
        resp = await post(client, page(1), key="wk_consent_0123456", headers={"Origin": ORIGIN})
        assert resp.status == 403
        resp = await post(client, page(1), headers={"Origin": ORIGIN})
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert resp.headers["Access-Control-Expose-Headers"] == "Retry-After"
        assert resp.headers["Vary"] == "Origin"
        # the key in a header works as well (server-side senders, no Origin)
        resp = await client.post("/v1/events", json=page(2), headers={"X-Scorestream-Key": KEY})
        assert resp.status == 200
        # preflight: the key's origins only
        pre = await client.options(f"/v1/events?key={KEY}", headers={"Origin": ORIGIN})
        assert pre.status == 204
        assert pre.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "POST" in pre.headers["Access-Control-Allow-Methods"]
        pre = await client.options(f"/v1/events?key={KEY}", headers={"Origin": "https://c.example"})
        assert pre.status == 403
        assert len(fake.sent) == 2

    run(scenario)


def test_size_limits_answer_413() -> None:
    async def body(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        resp = await post(client, [page(1, properties={"url": "/", "x": "y" * 3000})])
        assert resp.status == 413
        assert (await resp.json())["error"] == "body larger than 2000 bytes"
        assert fake.sent == []

    async def batch(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        resp = await post(client, [page(i) for i in range(501)])
        assert resp.status == 413
        assert "at most 500" in (await resp.json())["error"]
        assert (await post(client, [page(i) for i in range(500)])).status == 200
        assert len(fake.sent) == 500

    run(body, collector_max_body_bytes=2000)
    run(batch)


def test_over_the_rate_limit_answers_429_with_retry_after() -> None:
    async def scenario(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        assert (await post(client, [page(i) for i in range(30)])).status == 200
        resp = await post(client, [page(31), page(32)])
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"  # 2 events at 1/s
        labels = {"reason": "rate_limited"}
        assert reg.get_sample_value("scorestream_collector_rejected_total", labels) == 2
        assert len(fake.sent) == 30

    run(scenario)


def test_client_addresses_are_kept_only_when_configured() -> None:
    async def without(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        assert (await post(client, page(1))).status == 200
        assert "client_address" not in json.loads(fake.sent[0][2])

    async def with_it(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        headers = {"X-Forwarded-For": "198.51.100.4, 10.0.0.1"}
        assert (await post(client, page(1), headers=headers)).status == 200
        assert json.loads(fake.sent[0][2])["client_address"] == "198.51.100.4"

    run(without)
    run(with_it, collector_store_client_address=True, collector_trust_forwarded=True)


def test_tracker_js_carries_the_sites_settings_and_is_gzipped() -> None:
    async def scenario(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        resp = await client.get(f"/tracker.js?key={KEY}", headers={"Accept-Encoding": "gzip"})
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/javascript")
        assert resp.headers["Content-Encoding"] == "gzip"
        text = await resp.text()
        assert CONFIG_PLACEHOLDER not in text
        assert '{"key": "wk_test_0123456789", "consent": false, "emailField": "email"}' in text
        resp = await client.get("/tracker.js?key=wk_consent_0123456")
        assert '"consent": true' in await resp.text()
        assert (await client.get("/tracker.js")).status == 404

    run(scenario)


def test_metrics_are_served_in_prometheus_format() -> None:
    async def scenario(client: Any, fake: FakeSender, reg: CollectorRegistry) -> None:
        await post(client, page(1))
        text = await (await client.get("/metrics")).text()
        assert 'scorestream_collector_accepted_total{site="shop"} 1.0' in text
        assert 'scorestream_collector_rejected_total{reason="busy"} 0.0' in text
        assert "scorestream_collector_produce_seconds_count 1.0" in text
        assert "scorestream_collector_kafka_writable 1.0" in text

    run(scenario)


def test_the_tracker_stays_small() -> None:
    source = tracker_source().encode()
    assert CONFIG_PLACEHOLDER.encode() in source
    # unminified, comments included; minified it is about half (README)
    assert len(gzip.compress(source, 9)) < 4500


def test_the_collectors_producer_waits_for_every_replica_and_partitions_like_java() -> None:
    conf = clients.collector_producer(Settings(collector_produce_timeout=2.5, sasl_password="pw"))
    assert conf["acks"] == "all"
    assert conf["enable.idempotence"] is True
    assert conf["partitioner"] == "murmur2_random"
    assert conf["message.timeout.ms"] == 2500
    assert conf["queue.buffering.max.messages"] >= 2 * Settings().collector_max_in_flight
    assert conf["sasl.password"] == "pw"  # security reaches this client too


@pytest.mark.parametrize(
    ("sites_yaml", "expected"),
    [
        (None, "SCORESTREAM_COLLECTOR_SITES is not set"),
        ("sites: []\n", "(sites): List should have at least 1 item"),
        (
            "sites:\n  - {name: shop, write_key: wk_shop_0123456789, origins: [shop.example]}\n",
            "site 'shop' (sites[0].origins): origins[0]: 'shop.example' is not an origin",
        ),
    ],
)
def test_collect_exits_2_naming_what_is_wrong_in_the_sites_file(
    sites_yaml: str | None,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("SCORESTREAM_COLLECTOR_SITES", raising=False)
    monkeypatch.delenv("SCORESTREAM_CONFIG", raising=False)
    if sites_yaml is not None:
        path = tmp_path / "sites.yaml"
        path.write_text(sites_yaml, encoding="utf-8")
        monkeypatch.setenv("SCORESTREAM_COLLECTOR_SITES", str(path))
    assert cli.main(["collect"]) == 2
    err = capsys.readouterr().err
    assert expected in err
    if sites_yaml is not None:
        assert f"{tmp_path / 'sites.yaml'}: " in err
