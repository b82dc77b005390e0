"""The locked API on real workers: the token, the proxy passing it on, the bind rule,
and no contact ids in logs (default level) or metrics."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support import ROOT, WorkerProc, produce, wait_processed

from scorestream.pipeline.routing import partition_for
from traffic import journeys

PLAN = ROOT / "rules" / "b2b.yaml"
TOKEN = "it-token-5b8e0c1d"
BAD_MESSAGES = [b"not json", b'{"event_id": "x", "type": "page_view"}', b"[1, 2]"]


def request(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        with exc:  # closes the response: no unclosed socket left for the GC to warn about
            return exc.code, dict(exc.headers), exc.read()


def ids_of(raws: list[dict[str, Any]]) -> set[str]:
    return {raw[k] for raw in raws for k in ("contact_id", "anonymous_id") if raw.get(k)}


def test_the_api_needs_the_token_the_proxy_passes_it_on_and_no_id_reaches_a_log(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    env = {"SCORESTREAM_API_TOKEN": TOKEN}
    first = WorkerProc("a", kafka_bootstrap, topic_prefix, tmp_path / "a", PLAN, extra_env=env)
    second = WorkerProc("b", kafka_bootstrap, topic_prefix, tmp_path / "b", PLAN, extra_env=env)
    raws = journeys(150, seed=31, late_share=0.0)
    try:
        first.start()
        first.wait_ready()
        second.start()
        second.wait_ready()
        deadline = time.monotonic() + 60
        while not (first.status()["partitions"] and second.status()["partitions"]):
            assert time.monotonic() < deadline, "the partitions were not shared"
            time.sleep(0.1)
        produce(kafka_bootstrap, topic_prefix, raws)
        produce_bad(kafka_bootstrap, topic_prefix + "events.page_view")
        wait_processed(kafka_bootstrap, topic_prefix, [first, second])

        # Probes and metrics stay open; the data needs the token.
        for worker in (first, second):
            assert request(worker.url("/healthz"))[0] == 200
            assert request(worker.url("/metrics"))[0] == 200
            for path in ("/status", "/contacts/anything"):
                for token in (None, "wrong", TOKEN + "x"):
                    code, headers, body = request(worker.url(path), token)
                    assert code == 401, (path, token)
                    assert headers["WWW-Authenticate"] == 'Bearer realm="scorestream"'
                    assert json.loads(body) == {"error": "missing or wrong bearer token"}
            assert request(worker.url("/status"), TOKEN)[0] == 200
            # Faust's own pages would answer without the token: they are off.
            assert request(worker.url("/router/"))[0] == 404

        # A contact owned by the second worker, asked of the first: proxied with the token.
        owned = set(second.status()["partitions"])
        contact = next(
            raw["contact_id"]
            for raw in raws
            if raw.get("contact_id") and str(partition_for(raw["contact_id"], 6)) in owned
        )
        assert str(partition_for(contact, 6)) not in first.status()["partitions"]
        code, _, body = request(first.url(f"/contacts/{contact}"), TOKEN)
        assert code == 200, body
        assert json.loads(body)["contact_id"] == contact
        assert request(first.url(f"/contacts/{contact}"))[0] == 401

        metrics_text = "\n".join(request(w.url("/metrics"))[2].decode() for w in (first, second))
    finally:
        first.stop()
        second.stop()
    ids = ids_of(raws)
    assert len(ids) > 150
    assert [i for i in ids if i in metrics_text] == []
    for worker in (first, second):
        log = worker.log_path.read_text(errors="replace")
        assert "ready: partitions" in log  # the log is there, at the default level
        assert [i for i in ids if i in log] == [], worker.name
        assert TOKEN not in log


def produce_bad(bootstrap: str, topic: str) -> None:
    from support import producer  # noqa: PLC0415

    p = producer(bootstrap)
    for value in BAD_MESSAGES:
        p.produce(topic, value, None)
    assert p.flush(30) == 0


def test_a_worker_listens_beyond_loopback_only_with_a_token_or_when_told(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    refused = WorkerProc(
        "open",
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "open",
        PLAN,
        extra_env={"SCORESTREAM_WEB_HOST": "0.0.0.0", "SCORESTREAM_API_TOKEN": ""},
    ).start()
    assert refused.proc is not None
    try:
        assert refused.proc.wait(60) == 2
    except subprocess.TimeoutExpired:
        refused.stop()
        raise
    assert "refusing to listen on '0.0.0.0' (beyond loopback)" in refused.tail()

    told = WorkerProc(
        "told",
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "told",
        PLAN,
        extra_env={
            "SCORESTREAM_WEB_HOST": "0.0.0.0",
            "SCORESTREAM_API_TOKEN": "",
            "SCORESTREAM_ALLOW_INSECURE_BIND": "true",
        },
    ).start()
    try:
        told.wait_ready()
        assert request(told.url("/status"))[0] == 200  # no token set: open, as told
    finally:
        told.stop()
