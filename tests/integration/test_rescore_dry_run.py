"""``scorestream rescore --dry-run`` against the real broker.

Simulated traffic (with invalid messages among it) is published to the input topics as
the input contract keys it; rescore's rebuilt scores must equal ``scorestream score``
of the same file under the same plan, contact for contact. A second test publishes the
scores of one plan as live workers would (``contacts.scores``), rescores under another
plan and checks the ``rules_changed`` records against the two ``score`` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import producer

from scorestream.pipeline.routing import topic_for

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "rules" / "b2b.yaml"
START = "2026-03-01T00:00:00Z"
#: tiers of the b2b plan, lowest first (the order the second plan keeps)
ORDER = {"engagement": ["mql", "sales_ready"], "fit": ["good_fit"]}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scorestream", *args],
        check=False,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
    )


def simulated(tmp: Path, events: int, seed: int) -> Path:
    path = tmp / "events.jsonl"
    done = cli(
        {},
        *("simulate", "--dry-run", "--out", str(path), "--events", str(events)),
        *("--seed", str(seed), "--contacts", "300", "--bad-ratio", "0.01", "--start", START),
    )
    assert done.returncode == 0, done.stderr
    return path


def publish_file(bootstrap: str, prefix: str, path: Path) -> tuple[int, int]:
    """Produce every line: events keyed by contact (or anonymous) id to their topic,
    anything else as it is to events.custom. Returns (lines, lines that are not JSON events).
    """
    p = producer(bootstrap)
    lines = bad = 0
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        lines += 1
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("type"), str):
            key = (doc.get("contact_id") or doc.get("anonymous_id") or "").encode()
            p.produce(prefix + topic_for(doc["type"]), raw, key if key else None)
        else:
            bad += 1
            p.produce(prefix + "events.custom", raw, None)
        if lines % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    return lines, bad


def score(plan: Path, events: Path, rejects: Path) -> dict[str, dict[str, Any]]:
    done = cli({}, "score", "--rules", str(plan), "--rejects", str(rejects), str(events))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    return {row["contact_id"]: row for row in rows}


def env_for(bootstrap: str, prefix: str) -> dict[str, str]:
    return {
        "SCORESTREAM_BOOTSTRAP": bootstrap,
        "SCORESTREAM_TOPIC_PREFIX": prefix,
        "SCORESTREAM_APP_ID": f"{prefix}app",
    }


def rescore(env: dict[str, str], plan: Path, tmp: Path) -> tuple[list[Any], list[Any], str]:
    scores, out = tmp / "rescored.jsonl", tmp / "changes.jsonl"
    done = cli(
        env,
        *("rescore", "--dry-run", "--rules", str(plan)),
        *("--scores", str(scores), "--out", str(out)),
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return rows, records, done.stdout


def test_rescore_equals_score_on_the_same_events(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    events = simulated(tmp_path, 4000, seed=11)
    lines, _ = publish_file(kafka_bootstrap, topic_prefix, events)
    expected = score(PLAN, events, tmp_path / "rejects.jsonl")
    rejected = len((tmp_path / "rejects.jsonl").read_text().splitlines())
    assert rejected > 0  # the test covers invalid messages among the events

    rows, records, stdout = rescore(env_for(kafka_bootstrap, topic_prefix), PLAN, tmp_path)

    # Same contacts, same order, same scores and tiers, exactly.
    assert [r["contact_id"] for r in rows] == sorted(expected)
    assert {r["contact_id"]: r for r in rows} == expected
    assert f"read {lines:,} messages ({rejected:,} invalid)" in stdout
    # Nothing published on contacts.scores: every contact holding a tier is a change
    # from no tier, and nothing else is.
    want = {
        (key, model)
        for key, row in expected.items()
        for model, tier in row["tiers"].items()
        if tier is not None
    }
    assert {(r["contact_id"], r["model"]) for r in records} == want
    assert want, "the traffic should bring some contacts into a tier"
    assert all(r["direction"] == "up" and r["previous_tier"] is None for r in records)


def test_rules_changed_records_match_two_score_runs(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    events = simulated(tmp_path, 4000, seed=12)
    publish_file(kafka_bootstrap, topic_prefix, events)
    # The second plan: mql harder to reach, sales_ready and good_fit easier.
    text = PLAN.read_text()
    changed = (
        text.replace("{name: mql, enter: 50, exit: 40}", "{name: mql, enter: 65, exit: 60}")
        .replace("{name: sales_ready, enter: 100, exit: 80}", "{name: sales_ready, enter: 75}")
        .replace("{name: good_fit, enter: 40}", "{name: good_fit, enter: 25}")
    )
    assert changed.count("enter: 65") == 1 and changed.count("enter: 25") == 1
    new_plan = tmp_path / "new.yaml"
    new_plan.write_text(changed)

    old = score(PLAN, events, tmp_path / "r1.jsonl")
    new = score(new_plan, events, tmp_path / "r2.jsonl")
    # What live workers under the old plan published (the compacted contacts.scores).
    p = producer(kafka_bootstrap)
    for key, row in old.items():
        value = {**row, "updated_at": START, "rules_version": "sha256:old", "anonymous": False}
        p.produce(topic_prefix + "contacts.scores", json.dumps(value).encode(), key.encode())
    assert p.flush(30) == 0

    rows, records, stdout = rescore(env_for(kafka_bootstrap, topic_prefix), new_plan, tmp_path)
    assert {r["contact_id"]: r for r in rows} == new

    expected = set()
    for key, row in new.items():
        for model, tier in row["tiers"].items():
            before = old[key]["tiers"][model]
            if before == tier:
                continue
            rank = {name: i for i, name in enumerate(ORDER[model])}
            up = rank.get(tier, -1) > rank.get(before, -1)
            expected.add(
                (
                    key,
                    model,
                    before,
                    tier,
                    "up" if up else "down",
                    tier if up else before,
                    row["scores"][model],
                    old[key]["scores"][model],
                )
            )
    got = {
        (
            r["contact_id"],
            r["model"],
            r["previous_tier"],
            r["tier"],
            r["direction"],
            r["threshold"],
            r["score"],
            r["previous_score"],
        )
        for r in records
    }
    assert got == expected
    directions = {e[4] for e in expected}
    assert directions == {"up", "down"}, "the second plan should move contacts both ways"
    assert len(records) == len(got)  # one record per contact and model
    assert all(
        r["reason"] == "rules_changed" and r["previous_rules_version"] == "sha256:old"
        for r in records
    )
    assert f"tier changes (rules_changed): {len(expected):,}" in stdout
