"""The command tree: every command has --help (exit 0); bad usage exits 2."""

from __future__ import annotations

import argparse

import pytest

from scorestream import cli


def command_paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """Every command path of the tree, e.g. ('topics', 'apply')."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, (*prefix, name))
    return paths


PATHS = command_paths(cli.build_parser())


def test_the_tree_has_the_documented_commands() -> None:
    leaves = {" ".join(p) for p in PATHS}
    for expected in (
        "worker",
        "score",
        "rules check",
        "topics apply",
        "simulate",
        "leads",
        "broker fetch",
        "broker start",
        "broker stop",
        "broker status",
    ):
        assert expected in leaves


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "scorestream" for p in PATHS])
def test_help_exits_0(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*path, "--help"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith(f"usage: scorestream {' '.join(path)}".rstrip())


def test_top_level_help_lists_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "SCORESTREAM_BOOTSTRAP" in out
    assert "SCORESTREAM_BROKER_DIR" in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["score"],
        ["score", "events.jsonl"],
        ["rules"],
        ["rules", "check"],
        ["topics"],
        ["topics", "apply", "--force"],
        ["broker"],
        ["broker", "explode"],
        ["leads", "--max", "many"],
        ["leads", "--timeout", "soon"],
        ["simulate", "--rate", "fast"],
        ["--config"],
    ],
    ids=lambda argv: " ".join(argv) or "(nothing)",
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    assert "usage: scorestream" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["leads", "--max", "-1"], "--max: must be >= 0"),
        (["leads", "--timeout", "-2"], "--timeout: must be >= 0"),
    ],
)
def test_invalid_values_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_a_bad_setting_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCORESTREAM_BROKER_PORT", "ninety")
    assert cli.main(["broker", "status"]) == cli.EXIT_USAGE
    assert "SCORESTREAM_BROKER_PORT: expected an integer" in capsys.readouterr().err
