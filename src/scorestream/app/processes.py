"""``scorestream worker --processes N``: several worker processes on one host.

One Python process runs one event loop on one core, so a host with more cores runs more
workers. They share the partitions like workers on different hosts do, through the
consumer group: nothing here divides work. Each process is a plain ``scorestream
worker`` with two settings of its own, so that they do not collide on the host:

* ``WEB_PORT`` + i: its HTTP API and ``/metrics`` (scrape each; ``/contacts`` on any of
  them answers for every contact, proxying to the owner as across hosts);
* ``STATE_DIR``/w{i}: its RocksDB stores. A partition that moves between two processes
  of the host is recovered from the changelog like one that moves between hosts
  (RocksDB allows one process per database, and a shared folder would race the old
  owner's close against the new owner's open during a rebalance).

This supervisor only starts, watches and stops them: a process that dies is started
again after a back-off (1 s, doubling to 30 s, reset after a minute up), so a crash costs
that process's partitions one session timeout and a recovery, as on a host of its own.
SIGTERM or SIGINT stop every process (SIGTERM, then SIGKILL after ``STOP_GRACE``); an
exit code of 2 (bad rules or settings) stops them all, since a restart cannot fix it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from scorestream.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError
from scorestream.settings import Settings

log = logging.getLogger("scorestream.processes")

#: seconds a stopping process gets to finish its last checkpoint before SIGKILL
STOP_GRACE = 60.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
#: a process up this long counts as healthy again (its back-off starts over)
HEALTHY_AFTER = 60.0


def process_settings(settings: Settings, index: int) -> dict[str, str]:
    """The environment overrides of worker process ``index`` (see the module docstring)."""
    return {
        "SCORESTREAM_WEB_PORT": str(settings.web_port + index),
        "SCORESTREAM_STATE_DIR": str(Path(settings.state_dir) / f"w{index}"),
    }


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    restarts: int = field(default=0)


class Supervisor:
    """Starts N worker processes, restarts the ones that die, stops them all on a signal."""

    def __init__(self, settings: Settings, count: int, config: str | None) -> None:
        if count < 1:
            raise UsageError(f"--processes must be at least 1, not {count}")
        self.settings = settings
        self.config = config
        self.children = [_Child(i) for i in range(count)]
        self.stopping = False

    def command(self, index: int) -> list[str]:
        """The command line of process ``index``."""
        cmd = [sys.executable, "-m", "scorestream"]
        if self.config:
            cmd += ["--config", self.config]
        return [*cmd, "worker", "--process-index", str(index)]

    def start(self, child: _Child) -> None:
        env = {**os.environ, **process_settings(self.settings, child.index)}
        # Its own process group: a terminal's Ctrl-C reaches the supervisor, which then
        # stops the processes in order, rather than every process at once.
        child.proc = subprocess.Popen(self.command(child.index), env=env, start_new_session=True)
        child.started = time.monotonic()
        child.restart_at = None
        log.info(
            "worker process w%d started (pid %d, HTTP port %d)",
            child.index,
            child.proc.pid,
            self.settings.web_port + child.index,
        )

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        """Supervise until a signal or an unrecoverable exit; the exit code to return."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            code = self._watch()
            stopped = self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code if code != EXIT_OK else (EXIT_OK if stopped else EXIT_FAILURE)

    def _watch(self) -> int:
        for child in self.children:
            self.start(child)
        while not self.stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for child in self.children:
                if child.proc is None:
                    if child.restart_at is not None and now >= child.restart_at:
                        self.start(child)
                    continue
                rc = child.proc.poll()
                if rc is None:
                    if now - child.started >= HEALTHY_AFTER:
                        child.backoff = BACKOFF_FIRST
                    continue
                child.proc = None
                if rc == EXIT_USAGE:
                    log.error(
                        "worker process w%d exited with 2 (bad rules or settings)", child.index
                    )
                    return EXIT_USAGE
                child.restarts += 1
                child.restart_at = now + child.backoff
                log.warning(
                    "worker process w%d exited with %s; starting it again in %.0f s",
                    child.index,
                    rc,
                    child.backoff,
                )
                child.backoff = min(BACKOFF_MAX, child.backoff * 2)
        return EXIT_OK

    def stop(self) -> bool:
        """SIGTERM every process, SIGKILL what is left after the grace; True if all ended."""
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        clean = True
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "worker process pid %d did not stop in %.0f s: killed", proc.pid, STOP_GRACE
                )
                proc.kill()
                proc.wait()
                clean = False
        return clean


def supervise(settings: Settings, count: int, config: str | None) -> int:
    """Run ``count`` worker processes (``scorestream worker --processes N``)."""
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log.info("starting %d worker processes", count)
    return Supervisor(settings, count, config).run()
