"""The peer for bench/worker_bench.py: a quix-streams app running this project's engine.

    BENCH_TOPICS=a,b BENCH_N=60000 BENCH_RESULT=out.json BENCH_RULES=rules/b2b.yaml \\
        .venv-peer/bin/python bench/quix_peer.py

What a user would write with quix-streams 3.28 instead of our worker: the six input
topics concatenated into one dataframe, and per message a stateful apply that decodes
the event, loads the contact's state from quix's RocksDB store, runs ``Engine.apply`` and
stores it back (quix changelogs it and checkpoints every second, as our worker does).
Identity hand-overs across partitions are left out (quix has no place for them): the
peer does less than the worker. Runs in its own virtualenv (``make bench`` creates
``.venv-peer``) because quix-streams pins client versions of its own. Writes the wall
time of the first and the N-th message to ``BENCH_RESULT`` and exits.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from quixstreams import Application, State

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scorestream.engine.events import InvalidEvent, decode_event  # noqa: E402
from scorestream.engine.rules import load_rules  # noqa: E402
from scorestream.engine.scorer import Engine  # noqa: E402
from scorestream.engine.state import ContactState  # noqa: E402

TOPICS = os.environ["BENCH_TOPICS"].split(",")
N = int(os.environ["BENCH_N"])
RESULT = Path(os.environ["BENCH_RESULT"])
ENGINE = Engine(load_rules(os.environ.get("BENCH_RULES", str(ROOT / "rules" / "b2b.yaml"))))
progress: dict[str, Any] = {"n": 0, "first": None}


def score(value: bytes, state: State) -> None:
    if progress["first"] is None:
        progress["first"] = time.time()
    try:
        event = decode_event(value)
    except InvalidEvent:
        pass
    else:
        # quix stores JSON-serialisable values: the state's bytes as latin-1 text.
        raw = state.get("s")
        contact = (
            ContactState.from_bytes(raw.encode("latin-1"))
            if raw is not None
            else ENGINE.new_state(event.key, event.contact_id is None)
        )
        ENGINE.apply(contact, event)
        state.set("s", contact.to_bytes().decode("latin-1"))
    progress["n"] += 1
    if progress["n"] == N:
        RESULT.write_text(json.dumps({"first": progress["first"], "done": time.time(), "n": N}))
        os._exit(0)


def main() -> None:
    app = Application(
        broker_address=os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:9092"),
        consumer_group=os.environ.get("BENCH_APP", f"quix-peer-{os.getpid()}"),
        auto_offset_reset="earliest",
        state_dir=os.environ.get("BENCH_STATE", "/tmp/scorestream-bench-quix"),
        commit_interval=1.0,
    )
    frames = [
        app.dataframe(app.topic(name, key_deserializer="str", value_deserializer="bytes"))
        for name in TOPICS
    ]
    sdf = frames[0]
    for other in frames[1:]:
        sdf = sdf.concat(other)
    sdf.update(score, stateful=True)
    app.run()


if __name__ == "__main__":
    main()
