"""The CLI's own text: every option says what it does, and a bad Redis URL names every scheme there is."""

from __future__ import annotations

import argparse

import pytest

from mabrouter.cli import build_parser
from mabrouter.store.connect import parse_target

from support import cli_commands


def test_every_argument_of_every_command_has_help_text() -> None:
    missing = [
        f"{name} {action.dest}"
        for name, parser in cli_commands(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction) and not action.help
    ]
    assert missing == []


def test_unkill_says_what_it_does_for_an_arm() -> None:
    commands = dict(cli_commands(build_parser()))
    arm = next(action for action in commands["mabrouter unkill"]._actions if action.dest == "arm")
    assert arm.help is not None
    assert arm.help.startswith("undo the kill of this arm")


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis-cluster://h:1", "localhost:6379"])
def test_a_bad_scheme_lists_every_supported_one(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported scheme") as caught:
        parse_target(url)
    for scheme in (
        "redis://",
        "rediss://",
        "unix://",
        "redis+cluster://",
        "rediss+cluster://",
        "redis+sentinel://",
    ):
        assert scheme in str(caught.value)


def test_supported_schemes_still_parse() -> None:
    assert parse_target("redis://127.0.0.1:6379/0").kind == "single"
    assert parse_target("unix:///run/redis.sock").kind == "single"
    assert parse_target("redis+cluster://a:1,b:2").kind == "cluster"
    assert parse_target("redis+sentinel://a:1/main").kind == "sentinel"
