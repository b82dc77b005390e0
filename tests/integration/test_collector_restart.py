"""Nothing acknowledged is lost: the broker restarts while a client sends to the collector.

Every event answered 200 is in Kafka afterwards, and an event answered 200 at the first
try is there exactly once (the idempotent producer retries without duplicating). The
others were answered 503 with ``Retry-After`` and are taken when sent again. An event
whose earlier try ended in 503 may have been written by that try as well (Kafka wrote
it, the acknowledgement was lost): it may then be there twice, with the same
``event_id``, which the worker scores once; the test reports how many.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from collector_support import CollectorProc, events_in, site, write_sites

from conftest import local_broker_config
from scorestream import broker
from scorestream.settings import Settings
from scorestream.topics import TopicDecl

BATCH = 5


class Client:
    """Sends batches of new page views, one request after the other, and keeps every answer."""

    def __init__(self, collector: CollectorProc) -> None:
        self.collector = collector
        self.answers: dict[str, list[int]] = collections.defaultdict(list)
        self.retry_after: list[str] = []
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def batch(self) -> list[dict[str, Any]]:
        out = []
        for _ in range(BATCH):
            self.sent += 1
            out.append(
                {
                    "event_id": f"r-{self.sent:06d}",
                    "type": "page_view",
                    "anonymous_id": f"v-{self.sent % 50}",
                    "properties": {"url": "/pricing"},
                }
            )
        return out

    def send(self, events: list[dict[str, Any]]) -> None:
        try:
            status, body, headers = self.collector.post(events)
        except OSError:
            status, body, headers = 0, {}, {}
        results = body.get("results") or [{"status": "none"}] * len(events)
        for event, result in zip(events, results, strict=True):
            ok = status in {200, 503} and result["status"] == "ok"
            self.answers[event["event_id"]].append(200 if ok else status)
        if status == 503:
            self.retry_after.append(headers.get("Retry-After", ""))

    def run(self) -> None:
        while not self.stop.is_set():
            self.send(self.batch())
            time.sleep(0.02)

    def unanswered(self) -> list[str]:
        return [eid for eid, codes in self.answers.items() if 200 not in codes]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_every_acknowledged_event_survives_a_broker_restart(
    kafka_settings: Settings, kafka_topics: list[TopicDecl], tmp_path: Path
) -> None:
    if os.environ.get("SCORESTREAM_TEST_BOOTSTRAP"):
        pytest.skip("restarts the local broker; SCORESTREAM_TEST_BOOTSTRAP names another one")
    config = local_broker_config()
    sites = write_sites(tmp_path / "sites.yaml", [site(["http://127.0.0.1"])])
    collector = CollectorProc(
        kafka_settings.bootstrap, kafka_settings.topic_prefix, sites, tmp_path / "collector.log"
    ).start()
    client = Client(collector)
    try:
        collector.wait_ready()
        client.thread.start()
        time.sleep(2.0)
        before = client.sent
        assert broker.stop(config), "the local broker was not running"
        time.sleep(2.0)
        broker.ensure_running(config)
        restarted_at = client.sent
        # keep sending until the collector takes writes again, and a while after
        deadline = time.monotonic() + 60
        while collector.metric("scorestream_collector_kafka_writable") != 1.0:
            assert time.monotonic() < deadline, collector.tail()
            time.sleep(0.2)
        time.sleep(3.0)
        client.stop.set()
        client.thread.join(60)
        # send again what was not acknowledged, as the tracker does
        deadline = time.monotonic() + 60
        while client.unanswered() and time.monotonic() < deadline:
            ids = set(client.unanswered())
            retry = [e for e in _events(client.sent) if e["event_id"] in ids]
            for i in range(0, len(retry), 100):
                client.send(retry[i : i + 100])
            time.sleep(1.0)
        assert client.unanswered() == [], "events still refused after the restart"
    finally:
        client.stop.set()
        broker.ensure_running(config)  # other tests share the broker
        assert collector.stop() == 0, collector.tail()

    codes = [c for cs in client.answers.values() for c in cs]
    assert before > 0 and restarted_at > before, "the client did not send around the restart"
    assert codes.count(503) > 0, f"no 503 during the restart: {collections.Counter(codes)}"
    assert all(v == "2" for v in client.retry_after), client.retry_after  # the default
    counts = collections.Counter(
        v["event_id"]
        for _, v, _ in events_in(kafka_settings.bootstrap, kafka_settings.topic("events.page_view"))
    )
    first_try = [eid for eid, cs in client.answers.items() if cs[0] == 200]
    retried = [eid for eid, cs in client.answers.items() if cs[0] != 200]
    assert len(first_try) + len(retried) == client.sent
    assert retried, "no event needed a second try"
    not_once = {eid: counts[eid] for eid in first_try if counts[eid] != 1}
    assert not_once == {}, f"acknowledged at the first try but not exactly once: {not_once}"
    assert all(counts[eid] >= 1 for eid in retried)
    assert set(counts) == set(client.answers), "an event in Kafka that was never sent"
    twice = sum(1 for eid in retried if counts[eid] > 1)
    print(
        f"\nsent {client.sent} events, {len(retried)} answered 503 first "
        f"({twice} of those written twice, same event_id); answers {collections.Counter(codes)}"
    )


def _events(count: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"r-{n:06d}",
            "type": "page_view",
            "anonymous_id": f"v-{n % 50}",
            "properties": {"url": "/pricing"},
        }
        for n in range(1, count + 1)
    ]
