"""Shared fixtures: a real Kafka broker for the integration tests, unique topic names.

Everything under ``tests/integration/`` is marked ``integration`` and gets a timeout.
The broker is the one named by ``SCORESTREAM_TEST_BOOTSTRAP`` if set, else the local
development broker (``scorestream broker``), started here if it is not running and
then stopped at the end of the session.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scorestream import broker
from scorestream.settings import Settings
from scorestream.topics import TopicDecl, apply, delete_prefixed, load_declarations

ROOT = Path(__file__).resolve().parents[1]
TOPICS_DIR = ROOT / "topics"
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
# Covers the session fixture that may start the broker (up to 90 s) plus the test.
INTEGRATION_TIMEOUT = 180


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration as ``integration`` with a timeout."""
    for item in items:
        if INTEGRATION_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(INTEGRATION_TIMEOUT))


def local_broker_config() -> broker.BrokerConfig:
    """The local broker of the settings, its folder anchored at the repository root."""
    settings = Settings.load()
    home = Path(settings.broker_dir).expanduser()
    if not home.is_absolute():
        settings = dataclasses.replace(settings, broker_dir=str(ROOT / home))
    return broker.BrokerConfig.from_settings(settings)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a running Kafka: SCORESTREAM_TEST_BOOTSTRAP or the local one."""
    given = os.environ.get("SCORESTREAM_TEST_BOOTSTRAP")
    if given:
        yield given
        return
    config = local_broker_config()
    started_here = not broker.is_running(config)
    try:
        bootstrap = broker.ensure_running(config)
    except broker.BrokerError as exc:
        pytest.fail(f"no Kafka for the integration tests: {exc}", pytrace=False)
    yield bootstrap
    if started_here:
        broker.stop(config)


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique topic-name prefix per test (``t-<8 hex>-``).

    If the test uses Kafka, its topics with this prefix are deleted afterwards.
    """
    prefix = f"t-{uuid.uuid4().hex[:8]}-"
    yield prefix
    if "kafka_bootstrap" in request.fixturenames:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        delete_prefixed(Settings(bootstrap=bootstrap, topic_prefix=prefix))


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, topic_prefix: str) -> Settings:
    """Settings for the test broker with this test's topic prefix."""
    return Settings(
        bootstrap=kafka_bootstrap, topic_prefix=topic_prefix, topics_dir=str(TOPICS_DIR)
    )


@pytest.fixture
def kafka_topics(kafka_settings: Settings) -> list[TopicDecl]:
    """The topics of ``topics/`` created with this test's prefix; returns the declarations."""
    decls = load_declarations(TOPICS_DIR)
    lines = apply(decls, kafka_settings)
    assert all(line.startswith("created ") for line in lines), lines
    return decls
