"""The locked API: token checks, the bind rule, and no contact data in metric labels."""

from __future__ import annotations

import dataclasses

import pytest

from scorestream import access, metrics
from scorestream.cli import main
from scorestream.errors import UsageError
from scorestream.settings import Settings


def test_without_a_token_every_request_may_read() -> None:
    assert access.bearer_ok(None, "")
    assert access.cookie_ok(None, "")


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret-token", True),
        ("bearer s3cret-token", True),  # the scheme is case-insensitive (RFC 6750)
        ("Bearer  s3cret-token ", True),
        ("Bearer s3cret-tokeN", False),
        ("Bearer s3cret", False),
        ("Bearer s3cret-token-and-more", False),
        ("Basic czNjcmV0LXRva2Vu", False),
        ("s3cret-token", False),
        ("", False),
        (None, False),
    ],
)
def test_a_token_is_required_exactly(header: str | None, ok: bool) -> None:
    assert access.bearer_ok(header, "s3cret-token") is ok


def test_the_board_cookie_is_a_keyed_hash_not_the_token() -> None:
    value = access.session_value("s3cret-token")
    assert "s3cret" not in value
    assert access.cookie_ok(value, "s3cret-token")
    assert not access.cookie_ok(value, "another-token")
    assert not access.cookie_ok("s3cret-token", "s3cret-token")
    assert not access.cookie_ok(None, "s3cret-token")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("192.168.0.10", False),
        ("no-such-host.invalid", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert access.is_loopback(host) is loopback


def test_binding_beyond_loopback_needs_a_token_or_an_explicit_override() -> None:
    plain = Settings()
    access.check_bind("127.0.0.1", plain, "worker")
    with pytest.raises(UsageError, match=r"worker: refusing to listen on '0\.0\.0\.0'"):
        access.check_bind("0.0.0.0", plain, "worker")
    access.check_bind("0.0.0.0", dataclasses.replace(plain, api_token="t"), "worker")
    access.check_bind("0.0.0.0", dataclasses.replace(plain, allow_insecure_bind=True), "worker")


@pytest.mark.parametrize(
    ("command", "host_variable"),
    [("worker", "SCORESTREAM_WEB_HOST"), ("board", "SCORESTREAM_BOARD_HOST")],
)
def test_the_commands_refuse_an_open_bind_with_exit_code_2(
    command: str,
    host_variable: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Nothing is reachable on this bootstrap: the refusal comes before any Kafka call.
    monkeypatch.setenv("SCORESTREAM_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv(host_variable, "0.0.0.0")
    monkeypatch.delenv("SCORESTREAM_API_TOKEN", raising=False)
    monkeypatch.delenv("SCORESTREAM_ALLOW_INSECURE_BIND", raising=False)
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert f"{command}: refusing to listen on '0.0.0.0' (beyond loopback)" in err
    assert "SCORESTREAM_API_TOKEN" in err


def test_the_token_never_shows_in_the_settings_repr() -> None:
    settings = Settings.load(environ={"SCORESTREAM_API_TOKEN": "s3cret-token"})
    assert settings.api_token == "s3cret-token"
    assert "s3cret-token" not in repr(settings)


def test_no_metric_is_labelled_by_contact() -> None:
    """Labels are bounded sets (topics, partitions, outcomes, plan names), never ids."""
    allowed = {"topic", "partition", "outcome", "model", "threshold", "direction", "result"}
    # A plan's version (a hash of its text: one per published plan) and whether a plan
    # switch came late (true/false).
    allowed |= {"version", "late"}
    # The garbage collector's generation (0, 1 or 2); why the merge waited (four reasons).
    allowed |= {"generation", "reason"}
    labels: dict[str, tuple[str, ...]] = {}
    for value in metrics.create():
        names = getattr(value, "_labelnames", None)
        if names is not None:
            labels[getattr(value, "_name")] = tuple(names)  # noqa: B009 (private, untyped)
    assert labels["scorestream_events"] == ("topic", "outcome")
    used = {name for names in labels.values() for name in names}
    assert used <= allowed, used - allowed
