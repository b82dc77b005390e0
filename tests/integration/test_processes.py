"""``scorestream worker --processes N``: several worker processes on one host.

The processes share the partitions through the consumer group; each serves HTTP on its
own port and keeps its own stores. One is killed with -9 in the middle of a backlog:
the supervisor starts it again, and the result is still exactly ``scorestream score``'s.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

from support import WorkerProc, processed
from test_live_equals_offline import (
    PLAN,
    assert_live_equals_offline,
    publish_across_workers,
    settle,
)


def two_free_ports() -> int:
    """A port p with p + 1 free as well (the second process's)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port: int = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two consecutive free ports")


def child_pid(log: Path, index: int) -> int:
    """The pid of the newest start of process ``index``, from the supervisor's log."""
    starts = re.findall(rf"worker process w{index} started \(pid (\d+)", log.read_text())
    assert starts, log.read_text()[-2000:]
    return int(starts[-1])


def test_two_processes_share_the_partitions_and_survive_a_kill_9(
    kafka_bootstrap: str, topic_prefix: str, kafka_topics: Any, tmp_path: Path
) -> None:
    raws, bad, total = publish_across_workers(kafka_bootstrap, topic_prefix, 31, 83)
    port = two_free_ports()
    state = tmp_path / "state"
    sup = WorkerProc("sup", kafka_bootstrap, topic_prefix, state, PLAN, port=port)
    sup.args = ["--processes", "2"]
    sup.start()
    # Views of the two processes (their ports); they check the supervisor is alive.
    views = [
        WorkerProc(f"w{i}", kafka_bootstrap, topic_prefix, state, PLAN, port=port + i)
        for i in range(2)
    ]
    for view in views:
        view.proc = sup.proc
    try:
        for view in views:
            view.wait_ready()
        deadline = time.monotonic() + 60
        owned = shared_partitions(views, deadline)
        assert not owned[0] & owned[1], owned
        assert sorted(owned[0] | owned[1]) == [str(p) for p in range(6)], owned
        assert {p.name for p in state.iterdir()} == {"w0", "w1"}

        while sum(processed(views).values()) < total * 0.4:
            assert time.monotonic() < deadline + 60, sup.tail()
            time.sleep(0.01)
        victim = child_pid(sup.log_path, 1)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while child_pid(sup.log_path, 1) == victim:
            assert time.monotonic() < deadline, sup.tail()
            time.sleep(0.2)
        assert "worker process w1 exited with -9" in sup.log_path.read_text()
        views[1].wait_ready()
        settle(views, kafka_bootstrap, topic_prefix)
        assert_live_equals_offline(views, kafka_bootstrap, topic_prefix, raws, bad)
    finally:
        assert sup.proc is not None
        if sup.proc.poll() is None:
            sup.proc.send_signal(signal.SIGTERM)  # the supervisor alone: it stops the rest
            code = sup.proc.wait(90)
            assert code == 0, sup.tail()
    for index in range(2):  # no process outlives the supervisor
        assert not alive(child_pid(sup.log_path, index))


def shared_partitions(views: list[WorkerProc], deadline: float) -> list[set[str]]:
    """The processes' partitions once both hold some and the split has stood for 1 s.

    The two ``/status`` answers are read one after the other and a rebalance can move a
    partition between the two reads (CI once saw partitions 0-4 only), so one reading
    proves nothing; a split that stayed the same for a second, covering all six, is the
    settled one. Returns the last readings at ``deadline`` if none settles.
    """
    since = time.monotonic()
    last: list[set[str]] = []
    while time.monotonic() < deadline:
        owned = [set(v.status()["partitions"]) for v in views]
        if owned != last:
            last, since = owned, time.monotonic()
        elif all(owned) and len(owned[0] | owned[1]) == 6 and time.monotonic() - since >= 1:
            return owned
        time.sleep(0.1)
    return last


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status
