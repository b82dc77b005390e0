"""The supervisor of ``scorestream worker --processes N``, with stand-in processes."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from scorestream.app import processes
from scorestream.app.processes import Supervisor, process_settings
from scorestream.errors import UsageError
from scorestream.settings import Settings


class Scripted(Supervisor):
    """Runs a small Python script per process instead of a worker."""

    def __init__(self, script: str, count: int) -> None:
        super().__init__(Settings(), count, None)
        self.script = script

    def command(self, index: int) -> list[str]:
        return [sys.executable, "-c", self.script, str(index)]


def test_each_process_gets_its_own_port_and_state_folder() -> None:
    settings = Settings(web_port=7000, state_dir="/srv/state")
    assert process_settings(settings, 0) == {
        "SCORESTREAM_WEB_PORT": "7000",
        "SCORESTREAM_STATE_DIR": "/srv/state/w0",
    }
    assert process_settings(settings, 2)["SCORESTREAM_WEB_PORT"] == "7002"
    assert process_settings(settings, 2)["SCORESTREAM_STATE_DIR"] == "/srv/state/w2"


def test_a_count_below_one_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="at least 1"):
        Supervisor(Settings(), 0, None)


def test_exit_code_2_stops_every_process_and_is_returned() -> None:
    # Process 1 has bad settings; process 0 would run forever.
    script = "import sys, time\nif sys.argv[1] == '1': sys.exit(2)\ntime.sleep(60)"
    sup = Scripted(script, 2)
    started = time.monotonic()
    assert sup.run() == 2
    assert time.monotonic() - started < 20
    assert all(c.proc is None or c.proc.poll() is not None for c in sup.children)


def test_a_process_that_dies_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "BACKOFF_FIRST", 0.1)
    runs = tmp_path / "runs"
    # Each start appends a line; the first start of process 0 crashes (exit 1).
    script = (
        "import sys, time\n"
        f"p = {str(runs)!r} + sys.argv[1]\n"
        "open(p, 'a').write('x')\n"
        "if sys.argv[1] == '0' and open(p).read() == 'x': sys.exit(1)\n"
        "time.sleep(60)"
    )
    sup = Scripted(script, 2)
    sup.children = [processes._Child(i, backoff=0.1) for i in range(2)]

    def stop_when_restarted() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if Path(f"{runs}0").exists() and Path(f"{runs}0").read_text() == "xx":
                break
            time.sleep(0.05)
        time.sleep(0.5)
        sup.stopping = True

    watcher = threading.Thread(target=stop_when_restarted)
    watcher.start()
    code = sup.run()
    watcher.join()
    assert code == 0  # stopped on request, every process ended in time
    assert Path(f"{runs}0").read_text() == "xx"
    assert Path(f"{runs}1").read_text() == "x"
    assert sup.children[0].restarts == 1 and sup.children[1].restarts == 0
