"""A local single-node Apache Kafka (KRaft) for development and tests.

The broker is built from the official jars on Maven Central: a tiny POM in the cache
folder and ``mvn dependency:copy-dependencies`` bring ``kafka_2.13`` and a logging
backend into ``<cache>/kafka-<version>/libs`` once. ``start`` writes
``server.properties`` under the broker folder (default ``var/kafka``), formats the
storage once and runs ``kafka.Kafka`` detached, in its own session, with a pid file.

One combined broker + controller listens on ``127.0.0.1:<port>`` (controller on
``<port + 1>``). The settings ``SCORESTREAM_BROKER_DIR``, ``SCORESTREAM_BROKER_PORT``
and ``SCORESTREAM_KAFKA_CACHE`` move it, so that tests can run a second one.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scorestream.errors import ScorestreamError
from scorestream.settings import Settings

KAFKA_VERSION = "3.9.2"
SCALA_VERSION = "2.13"
# kafka_2.13's POM brings only slf4j-api: add a backend. reload4j is pinned above the
# 1.2.19 that slf4j-reload4j would pull in.
LOGGING_JARS = (
    ("org.slf4j", "slf4j-reload4j", "1.7.36"),
    ("ch.qos.reload4j", "reload4j", "1.2.25"),
)
MAVEN_DEPENDENCY_PLUGIN = "3.8.1"
HOST = "127.0.0.1"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
JVM_OPTIONS = ("-Xms256m", "-Xmx1g", "-Djava.awt.headless=true")

_log = logging.getLogger(__name__)
# librdkafka logs every refused connection; while we probe a broker that is not up
# yet, that is expected noise, so its log lines go here and nowhere else by default.
_kafka_log = logging.getLogger("scorestream.broker.librdkafka")
_kafka_log.addHandler(logging.NullHandler())
_kafka_log.propagate = False

# Brokers started by this process: kept so that ``stop`` can reap them (no zombie,
# no "subprocess still running" warning).
_children: dict[int, subprocess.Popen[bytes]] = {}

Report = Callable[[str], None]


def _silent(_: str) -> None:
    pass


class BrokerError(ScorestreamError):
    """The local broker cannot be fetched, started or stopped; the message says why."""


@dataclass(frozen=True)
class BrokerConfig:
    """Where the local broker lives and which ports it uses."""

    home: Path
    port: int = 9092
    cache_root: Path = Path("~/.cache/scorestream")
    version: str = KAFKA_VERSION

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerConfig:
        """The broker described by ``broker_dir``, ``broker_port`` and ``kafka_cache``."""
        return cls(
            home=Path(settings.broker_dir).expanduser().absolute(),
            port=settings.broker_port,
            cache_root=Path(settings.kafka_cache).expanduser().absolute(),
        )

    @property
    def controller_port(self) -> int:
        """The KRaft controller listener's port."""
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{HOST}:{self.port}"

    @property
    def dist_dir(self) -> Path:
        """The cache folder of this Kafka version (POM and ``libs/``)."""
        return self.cache_root / f"kafka-{self.version}"

    @property
    def libs_dir(self) -> Path:
        """The folder of jars on the broker's class path."""
        return self.dist_dir / "libs"

    @property
    def data_dir(self) -> Path:
        """``log.dirs``: the topic data and the KRaft metadata log."""
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        """The broker's own log files (``server.log``, ``kafka.out``)."""
        return self.home / "logs"

    @property
    def properties_file(self) -> Path:
        """The broker's ``server.properties``."""
        return self.home / "server.properties"

    @property
    def log4j_file(self) -> Path:
        """The broker's ``log4j.properties``."""
        return self.home / "log4j.properties"

    @property
    def pid_file(self) -> Path:
        """The pid of the running broker."""
        return self.home / "kafka.pid"


# ---------------------------------------------------------------------------- fetch


def _pom(version: str) -> str:
    deps = [("org.apache.kafka", f"kafka_{SCALA_VERSION}", version), *LOGGING_JARS]
    dep_xml = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by scorestream.broker: the jars of Apache Kafka {version} (KRaft broker). -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.scorestream</groupId>
  <artifactId>kafka-libs</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{MAVEN_DEPENDENCY_PLUGIN}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def is_fetched(config: BrokerConfig) -> bool:
    """Whether the jars of ``config.version`` are in the cache."""
    return (config.libs_dir / f"kafka_{SCALA_VERSION}-{config.version}.jar").is_file()


def fetch(config: BrokerConfig, report: Report = _silent) -> Path:
    """Download the Kafka jars into the cache once; return the ``libs`` folder.

    The jars land in a temporary folder that is renamed at the end, so an interrupted
    download is never mistaken for a complete one.
    """
    if is_fetched(config):
        return config.libs_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not on PATH: it is needed once to fetch the Kafka jars")
    config.dist_dir.mkdir(parents=True, exist_ok=True)
    pom = config.dist_dir / "pom.xml"
    pom.write_text(_pom(config.version), encoding="utf-8")
    partial = config.dist_dir / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    report(f"fetching Apache Kafka {config.version} jars from Maven Central into {config.libs_dir}")
    cmd = [
        mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom),
        "dependency:copy-dependencies", f"-DoutputDirectory={partial}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise BrokerError(f"mvn dependency:copy-dependencies failed ({proc.returncode}):\n{tail}")
    shutil.rmtree(config.libs_dir, ignore_errors=True)
    partial.rename(config.libs_dir)
    if not is_fetched(config):
        raise BrokerError(f"{config.libs_dir}: kafka_{SCALA_VERSION}-{config.version}.jar missing")
    return config.libs_dir


# ------------------------------------------------------------------ configuration


def server_properties(config: BrokerConfig) -> dict[str, str]:
    """The broker's settings: one combined broker + controller, tuned for one node."""
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{config.controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{config.port},CONTROLLER://{HOST}:{config.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{config.port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(config.data_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "3",
        "group.initial.rebalance.delay.ms": "0",
    }


_LOG4J = """\
# Written by scorestream.broker.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=${kafka.logs.dir}/server.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""


def write_config(config: BrokerConfig) -> None:
    """Write ``server.properties`` and ``log4j.properties`` into the broker folder."""
    for folder in (config.home, config.data_dir, config.logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by scorestream.broker; rewritten by every start."]
    lines += [f"{key}={value}" for key, value in server_properties(config).items()]
    config.properties_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config.log4j_file.write_text(_LOG4J, encoding="utf-8")


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java is not on PATH (Kafka needs Java 11 or later)")
    return java


def _java_command(config: BrokerConfig, main_class: str, *args: str) -> list[str]:
    return [
        _java(),
        *JVM_OPTIONS,
        "-cp",
        f"{config.libs_dir}/*",
        f"-Dlog4j.configuration=file:{config.log4j_file}",
        f"-Dkafka.logs.dir={config.logs_dir}",
        main_class,
        *args,
    ]


def is_formatted(config: BrokerConfig) -> bool:
    """Whether the storage folder has been formatted (``meta.properties`` exists)."""
    return (config.data_dir / "meta.properties").is_file()


def format_storage(config: BrokerConfig) -> str | None:
    """Format the KRaft storage once with a new cluster id; return it (None if done before)."""
    if is_formatted(config):
        return None
    tool = "kafka.tools.StorageTool"
    out = _run_tool(config, tool, "random-uuid")
    cluster_id = out.strip().splitlines()[-1].strip()
    _run_tool(config, tool, "format", "-t", cluster_id, "-c", str(config.properties_file))
    return cluster_id


def _run_tool(config: BrokerConfig, main_class: str, *args: str) -> str:
    cmd = _java_command(config, main_class, *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise BrokerError(
            f"{main_class} {' '.join(args)} failed ({proc.returncode}):\n"
            + (proc.stdout + proc.stderr).strip()
        )
    return proc.stdout


# --------------------------------------------------------------------- processes


def _is_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as dead; ours get reaped)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        # "pid (comm) S ...": the state letter follows the last ')'.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _is_our_broker(pid: int, config: BrokerConfig) -> bool:
    """Whether ``pid`` is a ``kafka.Kafka`` process using this broker's properties file."""
    if not _is_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to look at: trust the pid file
    return b"kafka.Kafka" in argv and str(config.properties_file).encode() in argv


def running_pid(config: BrokerConfig) -> int | None:
    """The pid of this folder's broker if it runs, else None."""
    try:
        pid = int(config.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_our_broker(pid, config) else None


def is_running(config: BrokerConfig) -> bool:
    """Whether this folder's broker process runs (reachable or not)."""
    return running_pid(config) is not None


def _port_open(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_reachable(bootstrap: str, timeout: float = 5.0) -> bool:
    """Whether a (plaintext) Kafka at ``bootstrap`` answers a metadata request with a broker."""
    from confluent_kafka import KafkaException  # noqa: PLC0415 (slow import, CLI start-up)
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _kafka_log}
    try:
        metadata = AdminClient(conf).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


@contextlib.contextmanager
def _locked(config: BrokerConfig) -> Iterator[None]:
    """Serialise start/stop of one broker folder between processes."""
    config.home.mkdir(parents=True, exist_ok=True)
    with (config.home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(config: BrokerConfig, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not _is_alive(pid):
            out = config.logs_dir / "kafka.out"
            raise BrokerError(
                f"the broker (pid {pid}) exited during start-up; end of {out}:\n{_tail(out)}"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrokerError(
                f"the broker (pid {pid}) did not answer on {config.bootstrap} within "
                f"{timeout:.0f} s; see {config.logs_dir / 'server.log'} (it keeps running; "
                "`scorestream broker stop` stops it)"
            )
        if _port_open(config.port) and is_reachable(config.bootstrap, timeout=min(5.0, left)):
            return
        time.sleep(0.5)


def ensure_running(
    config: BrokerConfig, timeout: float = START_TIMEOUT, report: Report = _silent
) -> str:
    """Make sure the local broker runs and answers; return its bootstrap address.

    Fetches the jars and formats the storage the first time. If the broker already
    runs, only waits for it to answer. Raises :class:`BrokerError` on failure.
    """
    with _locked(config):
        pid = running_pid(config)
        if pid is not None:
            if is_reachable(config.bootstrap, timeout=2.0):
                report(f"broker already running (pid {pid}) at {config.bootstrap}")
                return config.bootstrap
            report(f"broker running (pid {pid}); waiting until it answers on {config.bootstrap}")
            _wait_ready(config, pid, timeout)
            return config.bootstrap
        for port in (config.port, config.controller_port):
            if _port_open(port):
                raise BrokerError(
                    f"port {HOST}:{port} is in use by another process (not the broker of "
                    f"{config.home}); stop it or choose SCORESTREAM_BROKER_PORT"
                )
        fetch(config, report)
        write_config(config)
        cluster_id = format_storage(config)
        if cluster_id is not None:
            report(f"formatted {config.data_dir} (cluster id {cluster_id})")
        cmd = _java_command(config, "kafka.Kafka", str(config.properties_file))
        with (config.logs_dir / "kafka.out").open("ab") as out:
            proc = subprocess.Popen(  # the broker outlives this process on purpose
                cmd,
                cwd=config.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _children[proc.pid] = proc
        config.pid_file.write_text(f"{proc.pid}\n", encoding="utf-8")
        report(f"started Kafka {config.version} (pid {proc.pid}); waiting for {config.bootstrap}")
        started = time.monotonic()
        _wait_ready(config, proc.pid, timeout)
        report(f"broker ready at {config.bootstrap} after {time.monotonic() - started:.1f} s")
        return config.bootstrap


def stop(config: BrokerConfig, timeout: float = STOP_TIMEOUT, report: Report = _silent) -> bool:
    """Stop the local broker: SIGTERM, then SIGKILL after ``timeout`` s.

    Returns whether a broker was running. Stopping a stopped broker does nothing.
    """
    with _locked(config):
        pid = running_pid(config)
        if pid is None:
            config.pid_file.unlink(missing_ok=True)
            return False
        report(f"stopping the broker (pid {pid})")
        _signal(pid, signal.SIGTERM)
        if not _wait_exit(pid, timeout):
            report(f"the broker did not stop within {timeout:.0f} s: killing it")
            _signal(pid, signal.SIGKILL)
            if not _wait_exit(pid, 10.0):
                raise BrokerError(f"the broker (pid {pid}) survived SIGKILL")
        _children.pop(pid, None)
        config.pid_file.unlink(missing_ok=True)
        return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


# ----------------------------------------------------------------------- commands


def _config(args: argparse.Namespace) -> BrokerConfig:
    return BrokerConfig.from_settings(Settings.load(config_file=getattr(args, "config", None)))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fetch_command(args: argparse.Namespace) -> int:
    """``scorestream broker fetch``: download the Kafka jars into the cache (once)."""
    config = _config(args)
    try:
        already = is_fetched(config)
        libs = fetch(config, _stderr)
    except BrokerError as exc:
        _stderr(f"scorestream: {exc}")
        return 1
    jars = len(list(libs.glob("*.jar")))
    state = "already in" if already else "fetched into"
    print(f"Kafka {config.version}: {jars} jars {state} {libs}")
    return 0


def start_command(args: argparse.Namespace) -> int:
    """``scorestream broker start``: start the local broker and wait until it answers."""
    config = _config(args)
    try:
        bootstrap = ensure_running(config, report=_stderr)
    except BrokerError as exc:
        _stderr(f"scorestream: {exc}")
        return 1
    print(f"Kafka {config.version} is up at {bootstrap} (folder {config.home})")
    return 0


def stop_command(args: argparse.Namespace) -> int:
    """``scorestream broker stop``: stop the local broker (nothing to do if it is stopped)."""
    config = _config(args)
    try:
        was_running = stop(config, report=_stderr)
    except BrokerError as exc:
        _stderr(f"scorestream: {exc}")
        return 1
    print("broker stopped" if was_running else f"no broker running from {config.home}")
    return 0


def status_command(args: argparse.Namespace) -> int:
    """``scorestream broker status``: exit 0 if the local broker runs and answers, else 1."""
    config = _config(args)
    pid = running_pid(config)
    reachable = _port_open(config.port) and is_reachable(config.bootstrap, timeout=5.0)
    if pid is not None and reachable:
        print(f"running (pid {pid}) and reachable at {config.bootstrap} (folder {config.home})")
        return 0
    if pid is not None:
        print(f"running (pid {pid}) but not answering at {config.bootstrap} (folder {config.home})")
    elif reachable:
        print(f"not running from {config.home}, but another Kafka answers at {config.bootstrap}")
    else:
        print(f"not running (folder {config.home}, port {config.port})")
    return 1
