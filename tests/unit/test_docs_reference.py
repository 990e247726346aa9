"""docs/configuration.md and docs/cli.md stay in step with the code (no I/O beyond reading the docs).

Every setting of `mabrouter.config.Settings` has a row in the configuration table with its variable, its
default and its `serve` flag; every command and option of the parser `mabrouter.cli.build_parser` builds
has a row in the CLI reference; and a row for a setting, command or option that no longer exists fails.
The checks are functions of (code, text), so the tests at the end can show that each one catches drift.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import Any

from mabrouter.cli import build_parser
from mabrouter.config import Settings

from support import ROOT, cli_commands

DOCS = ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text(encoding="utf-8")
CLI = (DOCS / "cli.md").read_text(encoding="utf-8")
ENV_PREFIX = "MABROUTER_"
UNSET = object()  # a setting whose default is None


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row (an escaped pipe, as in `@SEG\\|ARM`, stays inside its cell)."""
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _code(cell: str) -> str | None:
    found = re.search(r"`([^`]*)`", cell)
    return found.group(1) if found else None


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


# Configuration


def settings_rows(text: str) -> dict[str, list[str]]:
    """setting name -> its row's cells (setting, env var, flag, default, meaning) in '## Settings'."""
    rows = {}
    for line in _section(text, "## Settings").splitlines():
        cells = _cells(line) if line.startswith("| `") else []
        if len(cells) == 5 and (name := _code(cells[0])):
            rows[name] = cells
    return rows


def _documented_default(cell: str) -> object:
    if cell.startswith("unset"):
        return UNSET
    value = _code(cell)
    assert value is not None, f"default {cell!r} is neither `value` nor 'unset'"
    return value


def _default_matches(default: Any, documented: object) -> bool:
    if documented is UNSET or default is None:
        return documented is UNSET and default is None
    assert isinstance(documented, str)
    if isinstance(default, bool):
        return documented == str(default).lower()
    if isinstance(default, int | float):
        return float(documented.replace(",", "")) == float(default)
    return documented == ("''" if default == "" else str(default))


def configuration_problems(fields: Mapping[str, Any], serve_flags: Mapping[str, str], text: str) -> list[str]:
    """What is wrong with the configuration page for settings `fields` (name -> default) and the `serve`
    flags (setting name -> flag) of the code."""
    rows = settings_rows(text)
    problems = [f"setting {name} has no row in docs/configuration.md" for name in fields if name not in rows]
    problems += [
        f"docs/configuration.md documents {name}, which is no setting" for name in rows if name not in fields
    ]
    for name, (_, env_cell, flag_cell, default_cell, meaning) in rows.items():
        if name not in fields:
            continue
        if _code(env_cell) != ENV_PREFIX + name.upper():
            problems.append(f"{name}: env var {env_cell!r}, expected `{ENV_PREFIX}{name.upper()}`")
        if (_code(flag_cell) or "") != serve_flags.get(name, ""):
            problems.append(f"{name}: flag {flag_cell!r}, `serve` has {serve_flags.get(name) or 'none'}")
        if not _default_matches(fields[name], _documented_default(default_cell)):
            problems.append(f"{name}: documented default {default_cell!r}, the code's is {fields[name]!r}")
        if not meaning:
            problems.append(f"{name}: no meaning given")
    variables = {ENV_PREFIX + name.upper() for name in fields}
    stale = sorted(set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]*[A-Z0-9]\b", text)) - variables)
    problems += [f"docs/configuration.md names {variable}, which is no setting" for variable in stale]
    return problems


def code_settings() -> dict[str, Any]:
    return {name: field.default for name, field in Settings.model_fields.items()}


def code_serve_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """setting name -> `serve` flag, for the flags that set a setting (--workers sets none)."""
    serve = dict(cli_commands(parser))["mabrouter serve"]
    return {
        action.dest: action.option_strings[-1]
        for action in serve._actions
        if action.option_strings and action.dest in Settings.model_fields
    }


# CLI


def arguments(parser: argparse.ArgumentParser) -> set[str]:
    """Each option by its long name (as `--name`), each positional by its metavar (or NAME)."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            found.add(action.option_strings[-1])
        else:
            found.add(str(action.metavar or action.dest.upper()))
    return found


def cli_sections(text: str) -> dict[str, set[str]]:
    """'mabrouter ...' heading -> the arguments its table rows name (a row's first code span, up to the
    first space: `--since SINCE` names --since)."""
    sections: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in text.splitlines():
        heading = re.fullmatch(r"## `(mabrouter[^`]*)`", line)
        if heading:
            current = sections.setdefault(heading.group(1), set())
        elif current is not None and line.startswith("| `"):
            span = _code(_cells(line)[0])
            if span:
                current.add(span.replace("\\|", "|").split(" ")[0].split(",")[0])
    return sections


def cli_problems(parser: argparse.ArgumentParser, text: str) -> list[str]:
    documented = cli_sections(text)
    code = {name: arguments(sub) for name, sub in cli_commands(parser)}
    problems = [f"`{name}` has no section in docs/cli.md" for name in code if name not in documented]
    problems += [
        f"docs/cli.md documents `{name}`, which is no command" for name in documented if name not in code
    ]
    for name, args in code.items():
        rows = documented.get(name, set())
        if name in documented:
            problems += [f"`{name} {arg}` has no row in docs/cli.md" for arg in sorted(args - rows)]
        problems += [
            f"docs/cli.md documents `{name} {arg}`, which it does not take" for arg in sorted(rows - args)
        ]
    return problems


# The pages as they are


def test_every_setting_is_documented_with_its_variable_default_and_flag_and_nothing_stale() -> None:
    assert configuration_problems(code_settings(), code_serve_flags(build_parser()), CONFIGURATION) == []


def test_every_command_and_option_is_in_the_cli_reference_and_nothing_stale() -> None:
    assert cli_problems(build_parser(), CLI) == []


def test_the_log_level_is_documented() -> None:
    """Issue 14 names it: a setting the README's old table left out."""
    assert "log_level" in settings_rows(CONFIGURATION)


# The checks catch drift


def test_a_new_setting_missing_from_the_page_fails() -> None:
    fields = {**code_settings(), "warp_factor": 9}
    assert configuration_problems(fields, code_serve_flags(build_parser()), CONFIGURATION) == [
        "setting warp_factor has no row in docs/configuration.md"
    ]


def test_a_documented_setting_that_no_longer_exists_fails() -> None:
    fields = code_settings()
    del fields["log_level"]
    problems = configuration_problems(fields, code_serve_flags(build_parser()), CONFIGURATION)
    assert "docs/configuration.md documents log_level, which is no setting" in problems
    assert "docs/configuration.md names MABROUTER_LOG_LEVEL, which is no setting" in problems


def test_a_changed_default_or_a_lost_flag_fails() -> None:
    fields = {**code_settings(), "refresh_interval_ms": 250}
    flags = code_serve_flags(build_parser())
    del flags["listen"]
    problems = configuration_problems(fields, flags, CONFIGURATION)
    assert any(p.startswith("refresh_interval_ms: documented default") for p in problems), problems
    assert any(p.startswith("listen: flag") for p in problems), problems


def test_a_stray_variable_in_the_prose_fails() -> None:
    text = CONFIGURATION + "\nSet `MABROUTER_TURBO=1` for speed.\n"
    problems = configuration_problems(code_settings(), code_serve_flags(build_parser()), text)
    assert problems == ["docs/configuration.md names MABROUTER_TURBO, which is no setting"]


def _parser_with_changes() -> argparse.ArgumentParser:
    parser = build_parser()
    serve = dict(cli_commands(parser))["mabrouter serve"]
    serve.add_argument("--turbo", action="store_true", help="new")
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subcommands.add_parser("frobnicate", help="new")
    return parser


def test_a_new_option_or_command_missing_from_the_reference_fails() -> None:
    assert cli_problems(_parser_with_changes(), CLI) == [
        "`mabrouter frobnicate` has no section in docs/cli.md",
        "`mabrouter serve --turbo` has no row in docs/cli.md",
    ]


def test_a_documented_option_or_command_that_no_longer_exists_fails() -> None:
    text = (
        CLI.replace("| `--workers WORKERS` |", "| `--threads N` | | gone |\n| `--workers WORKERS` |")
        + "\n## `mabrouter teleport`\n\n| argument | default | meaning |\n| --- | --- | --- |\n"
    )
    assert cli_problems(build_parser(), text) == [
        "docs/cli.md documents `mabrouter teleport`, which is no command",
        "docs/cli.md documents `mabrouter serve --threads`, which it does not take",
    ]
