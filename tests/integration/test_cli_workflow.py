"""The CLI as an operator meets it, as a real process against a real redis-server: one exit-code rule,
quiet closed pipes, --version, helpful messages, and experiment validate / show / diff."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from support import EXAMPLE, RedisServer, cli

UNKNOWN = [
    ("status", "nope"),
    ("status", "nope", "--json"),
    ("audit", "nope"),
    ("audit", "nope", "--json"),
    ("export", "nope"),
    ("report", "nope"),
    ("kill", "nope", "--reason", "x"),
    ("unkill", "nope"),
    ("rollout", "nope", "50"),
    ("experiment", "show", "nope"),
]


def test_every_command_refuses_an_unknown_experiment_on_stderr_with_exit_2(
    applied_ranker: RedisServer,
) -> None:
    """Before: `status nope` printed to stdout and exited 1, `audit nope` printed an empty table, exit 0."""
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda args: cli(*args, redis_url=applied_ranker.url, check=False), UNKNOWN))
    for args, result in zip(UNKNOWN, results, strict=True):
        assert (result.returncode, result.stdout) == (2, ""), (args, result.stdout, result.stderr)
        assert "error: unknown experiment 'nope'" in result.stderr, (args, result.stderr)


@pytest.mark.parametrize("command", [("export", "ranker"), ("audit", "--json")])
def test_a_closed_pipe_ends_quietly(applied_ranker: RedisServer, command: tuple[str, ...]) -> None:
    """Before: "cannot reach Redis: [Errno 32] Broken pipe" (BrokenPipeError is a ConnectionError)."""
    client = applied_ranker.client()
    with client.pipeline(transaction=False) as pipe:  # more output than a pipe buffers (64 KiB)
        for _ in range(3):
            pipe.xadd("mabrouter:{ranker}:audit", {"action": "x" * 30_000})
        for index in range(2000):
            pipe.xadd(
                "mabrouter:{ranker}:decisions", {"d": f"n{index}", "arm": "ranker-v1", "unit": "u" * 50}
            )
        pipe.execute()
    client.close()
    shell = (
        f"{sys.executable} -m mabrouter {' '.join(command)} | head -c 1 > /dev/null; echo ${{PIPESTATUS[0]}}"
    )
    result = subprocess.run(
        ["bash", "-c", shell],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "MABROUTER_REDIS_URL": applied_ranker.url},
    )
    assert result.stdout.strip() in ("0", "141"), result
    assert "Redis" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help_text(redis_server: RedisServer) -> None:
    version = cli("--version", redis_url=redis_server.url)
    assert version.stdout.startswith("mabrouter ")
    assert version.stdout.split()[1][0].isdigit()
    unkill = cli("unkill", "--help", redis_url=redis_server.url).stdout
    assert "undo the kill of this arm" in " ".join(unkill.split())


def test_a_bad_redis_url_scheme_exits_2_naming_the_supported_ones(redis_server: RedisServer) -> None:
    result = cli("experiment", "list", redis_url="http://127.0.0.1:6379", check=False)
    # The CLI's end of it: exit 2 and the parser's message on stderr (which lists every scheme:
    # tests/unit/test_cli_help.py checks the list itself).
    assert result.returncode == 2
    assert "unsupported scheme" in result.stderr
    assert "redis+sentinel://" in result.stderr, result.stderr


# --- experiment validate / show / diff ----------------------------------------------------------------


def _write(path: Path, **changes: object) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_validate_checks_every_file_without_redis(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.yaml")
    bad_type = _write(tmp_path / "bad.yaml", rollout="half")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    nowhere = "redis://127.0.0.1:1/0"  # nothing listens: validate must not need Redis
    ok = cli("experiment", "validate", str(good), redis_url=nowhere)
    assert "good.yaml: ok (experiment ranker, 3 arms" in ok.stdout
    failed = cli(
        "experiment", "validate", str(good), str(bad_type), str(empty), redis_url=nowhere, check=False
    )
    assert failed.returncode == 2
    assert "rollout: Input should be a valid number" in failed.stderr
    assert f"{empty} is empty" in failed.stderr
    assert "2 of 3 files are not valid experiments" in failed.stderr


def test_show_prints_the_stored_document_version_and_who_applied_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cli("experiment", "apply", str(EXAMPLE), "--actor", "alice", redis_url=redis_server.url)
    cli("kill", "ranker", "--arm", "ranker-v3", "--reason", "x", "--actor", "bob", redis_url=redis_server.url)
    shown = cli("experiment", "show", "ranker", redis_url=redis_server.url).stdout
    assert shown.startswith("# experiment ranker, version 2\n# applied by alice at "), shown
    stored = yaml.safe_load(shown)
    assert stored["name"] == "ranker"
    assert [arm["name"] for arm in stored["arms"]] == ["ranker-v1", "ranker-v2", "ranker-v3"]
    # what show prints, apply takes back unchanged
    again = tmp_path / "again.yaml"
    again.write_text(shown)
    assert cli("experiment", "diff", str(again), redis_url=redis_server.url).stdout.endswith("no changes\n")
    client = redis_server.client()
    client.hset("mabrouter:{ranker}:config", "doc", "{not json")
    client.close()
    broken = cli("experiment", "show", "ranker", redis_url=redis_server.url, check=False)
    assert (broken.returncode, broken.stdout) == (1, ""), broken
    assert "document is not JSON" in broken.stderr


def test_diff_shows_what_apply_would_change_field_by_field(
    applied_ranker: RedisServer, tmp_path: Path
) -> None:
    url = applied_ranker.url
    same = cli("experiment", "diff", str(EXAMPLE), redis_url=url)
    assert same.stdout == "experiment ranker version 1: no changes\n"
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["rollout"] = 50
    doc["arms"][2]["prior"] = {"alpha": 2, "beta": 1}
    doc["arms"].append({"name": "ranker-v4"})
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc))
    result = cli("experiment", "diff", str(changed), redis_url=url, check=False)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "experiment ranker version 1: apply would change"
    assert "  ~ rollout: 100.0 -> 50.0" in lines
    assert "  ~ arms[ranker-v3].prior.alpha: 1.0 -> 2.0" in lines
    assert '  + arms[ranker-v4].name: "ranker-v4"' in lines
    assert not any("ranker-v1" in line for line in lines)  # unchanged arms are not listed
    new = _write(tmp_path / "new.yaml", name="fresh")
    created = cli("experiment", "diff", str(new), redis_url=url, check=False)
    assert created.returncode == 1
    assert created.stdout.startswith("experiment fresh is not stored: apply would create it\n")
    assert '  + name: "fresh"' in created.stdout
    assert (
        cli("experiment", "show", "ranker", redis_url=url).stdout.count("ranker-v4") == 0
    )  # diff wrote nothing
