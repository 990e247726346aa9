"""The lifecycle commands as an operator runs them (the real CLI, a process, against a real redis-server):
`experiment apply DIR [--prune] [--dry-run]`, and `status` without a name (the fleet table and its JSON).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from mabrouter.commands import fleet

from support import EXAMPLE, ROOT, RedisServer, apply_experiments, cli, cli_in_process

HOUR_MS = 3_600_000


def document(name: str, **fields: Any) -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc.update(name=name, **fields)
    return doc


def write(directory: Path, *documents: dict[str, Any]) -> Path:
    directory.mkdir(exist_ok=True)
    for doc in documents:
        (directory / f"{doc['name']}.yaml").write_text(yaml.safe_dump(doc))
    return directory


def states(url: str) -> dict[str, tuple[str, str]]:
    """`experiment list` read back: name -> (version, state)."""
    lines = cli("experiment", "list", redis_url=url).stdout.splitlines()
    return {
        name: (version.removeprefix("version "), state)
        for name, version, state in (line.split("\t") for line in lines)
    }


def every_key(server: RedisServer) -> dict[str, bytes]:
    client: redis.Redis = redis.Redis(port=server.port)
    try:
        return {key.decode(): client.dump(key) for key in client.scan_iter()}  # type: ignore[misc]
    finally:
        client.close()


def test_apply_dir_prune_archives_exactly_the_stored_experiments_without_a_file(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    apply_experiments(url, tmp_path, *(document(name) for name in ("alpha", "beta", "gamma", "delta")))
    cli("experiment", "archive", "delta", redis_url=url)
    gitops = write(tmp_path / "gitops", document("alpha", rollout=50), document("epsilon"))

    applied = cli("experiment", "apply", str(gitops), "--prune", "--actor", "ci", redis_url=url).stdout
    assert "~ alpha: changed (version 1 -> 2)\n  ~ rollout: 100.0 -> 50.0\n" in applied
    assert "+ epsilon: created (version 1, 3 arms, reward bernoulli)" in applied
    assert f"- beta: archived (version 2; no file in {gitops})" in applied
    assert applied.endswith(f"applied {gitops}: 1 created, 1 changed, 0 unchanged, 2 archived\n")
    assert states(url) == {
        "alpha": ("2", "live"),
        "beta": ("2", "archived"),
        "gamma": ("2", "archived"),
        "delta": ("2", "archived"),  # archived before: left as it was, not archived again
        "epsilon": ("1", "live"),
    }
    audit = [json.loads(line) for line in cli("audit", "beta", "--json", redis_url=url).stdout.splitlines()]
    assert (audit[-1]["action"], audit[-1]["actor"]) == ("archive", "ci")
    assert audit[-1]["reason"] == f"no file in {gitops} (apply --prune)"

    # The same directory again (a GitOps loop): nothing changes, not even a version.
    before = every_key(redis_server)
    again = cli("experiment", "apply", str(gitops), "--prune", redis_url=url).stdout
    assert again == (
        "= alpha: unchanged (version 2)\n= epsilon: unchanged (version 1)\n"
        f"applied {gitops}: 0 created, 0 changed, 2 unchanged, 0 archived\n"
    )
    assert every_key(redis_server) == before

    # A file for an archived experiment updates its document; the archive is the operator's to lift.
    write(gitops, document("beta", rollout=10))
    kept = cli("experiment", "apply", str(gitops), redis_url=url).stdout
    assert "  beta stays archived: `mabrouter experiment unarchive beta` serves it again" in kept
    assert states(url)["beta"] == ("3", "archived")


def test_one_bad_file_applies_nothing_and_every_problem_is_listed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    apply_experiments(url, tmp_path, document("alpha"))
    gitops = write(tmp_path / "gitops", document("alpha", rollout=50), document("beta"))
    (gitops / "typo.yaml").write_text(yaml.safe_dump(document("gamma", rollout="half")))
    (gitops / "copy.yml").write_text(yaml.safe_dump(document("beta")))
    (gitops / "notes.txt").write_text("not an experiment: ignored")
    before = every_key(redis_server)

    result = cli("experiment", "apply", str(gitops), "--prune", redis_url=url, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert "rollout: Input should be a valid number" in result.stderr
    assert f"{gitops / 'beta.yaml'} and {gitops / 'copy.yml'} both define experiment beta" in result.stderr
    assert f"2 problems in {gitops}: nothing applied" in result.stderr
    assert every_key(redis_server) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = cli("experiment", "apply", str(empty), "--prune", redis_url=url, check=False)
    assert nothing.returncode == 2  # an empty directory must not prune every experiment
    assert "holds no experiment files" in nothing.stderr
    assert every_key(redis_server) == before


def test_dry_run_prints_what_would_change_and_writes_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    apply_experiments(url, tmp_path, document("alpha"), document("beta"))
    gitops = write(tmp_path / "gitops", document("alpha", rollout=50), document("gamma"))
    before = every_key(redis_server)

    planned = cli("experiment", "apply", str(gitops), "--prune", "--dry-run", redis_url=url).stdout
    assert planned.splitlines() == [
        "~ alpha: would be changed (version 1)",
        "  ~ rollout: 100.0 -> 50.0",
        "+ gamma: would be created (3 arms, reward bernoulli)",
        f"- beta: would be archived (no file in {gitops})",
        f"dry run of {gitops}: would be 1 created, 1 changed, 0 unchanged, 1 archived; nothing written",
    ]
    one_file = cli("experiment", "apply", str(gitops / "alpha.yaml"), "--dry-run", redis_url=url).stdout
    assert one_file == (
        "experiment alpha version 1 would change\n  ~ rollout: 100.0 -> 50.0\ndry run: nothing written\n"
    )
    new = cli("experiment", "apply", str(gitops / "gamma.yaml"), "--dry-run", redis_url=url).stdout
    assert new.startswith("experiment gamma would be created\n")
    assert every_key(redis_server) == before


def test_prune_takes_a_directory(redis_server: RedisServer) -> None:
    result = cli("experiment", "apply", str(EXAMPLE), "--prune", redis_url=redis_server.url, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert "--prune takes a directory" in result.stderr


def test_fleet_status_is_one_row_per_experiment_as_a_table_and_as_json(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    apply_experiments(url, tmp_path, document("ranker"), document("search", rollout=25), document("old"))
    cli("kill", "search", "--reason", "incident", redis_url=url)
    cli("experiment", "archive", "old", redis_url=url)
    client = redis_server.client()
    now = int(time.time() * 1000)
    with client.pipeline(transaction=False) as pipe:
        for i in range(3):  # logged two hours ago: not in the last hour
            pipe.xadd("mabrouter:{ranker}:decisions", {"arm": "ranker-v1"}, id=f"{now - 2 * HOUR_MS + i}-0")
        for i in range(25_001):  # more than one page of the count (10,000)
            pipe.xadd("mabrouter:{ranker}:decisions", {"arm": "ranker-v3"}, id=f"{now - 600_000}-{i}")
        for actor in ("guardrail", "ops", "guardrail"):
            pipe.xadd("mabrouter:{ranker}:audit", {"actor": actor, "action": "auto-kill", "ts_ms": now})
        for arm, successes in (("ranker-v1", 100), ("ranker-v2", 100), ("ranker-v3", 600)):
            stats = {f"{arm}:trials": 2000, f"{arm}:count": 2000, f"{arm}:sum": successes}
            pipe.hset("mabrouter:{ranker}:stats", mapping=stats)
        pipe.execute()
    client.close()

    rows = {row["experiment"]: row for row in json.loads(cli("status", "--json", redis_url=url).stdout)}
    assert list(rows) == ["old", "ranker", "search"]
    ranker = rows["ranker"]
    assert ranker["leader"] == "ranker-v3"
    assert ranker["leader_p_best"] > 0.99
    assert {key: ranker[key] for key in ranker if key not in ("leader", "leader_p_best")} == {
        "experiment": "ranker",
        "version": 1,
        "state": "live",
        "rollout": 100.0,
        "decisions_last_hour": 25_001,
        "decisions_last_hour_capped": False,
        "guardrail_actions": 2,
        "archived_at_ms": None,
        "problem": None,
    }
    assert (rows["search"]["state"], rows["search"]["rollout"], rows["search"]["version"]) == (
        "killed",
        25.0,
        2,
    )
    assert rows["old"]["state"] == "archived"
    assert abs(rows["old"]["archived_at_ms"] - now) < 60_000

    table = cli("status", redis_url=url).stdout.splitlines()
    headers = "EXPERIMENT VERSION STATE ROLLOUT LEADER P(BEST) DECISIONS 1H GUARDRAIL ACTIONS"
    assert table[0].split() == headers.split()
    cells = {line.split()[0]: line.split() for line in table[1:]}
    assert cells["ranker"][:5] == ["ranker", "1", "live", "100%", "ranker-v3"]
    assert cells["ranker"][6:] == ["25,001", "2"]
    assert cells["search"][:4] == ["search", "2", "killed", "25%"]
    assert cells["old"][:3] == ["old", "2", "archived"]


def test_fleet_status_counts_decisions_exactly_up_to_its_cap_then_says_so(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = redis_server.url
    apply_experiments(url, tmp_path, document("ranker"))
    client = redis_server.client()
    now = int(time.time() * 1000)
    for i in range(30):
        client.xadd("mabrouter:{ranker}:decisions", {"arm": "ranker-v1"}, id=f"{now - 1000}-{i}")
    client.close()
    for cap, shown, capped in ((25, "25+", True), (30, "30", False)):
        monkeypatch.setattr(fleet, "DECISIONS_CAP", cap)
        (row,) = json.loads(cli_in_process("status", "--json", redis_url=url))
        assert (row["decisions_last_hour"], row["decisions_last_hour_capped"]) == (cap, capped)
        table = cli_in_process("status", redis_url=url).splitlines()
        assert table[1].split()[6] == shown


def documented_operator_rules() -> list[str]:
    """The operator user's rules as docs/reliability.md shows them (password left out)."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("user operator on >OPERATOR_PASSWORD "))
    return line.split()[4:]


def test_the_documented_operator_user_can_read_the_fleet_and_archive_but_not_delete(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Its ACL lets it read logs but not run a read-only script over them: the count is then read page by
    page from the log, the same number. Deleting needs writes to statistics and logs it does not have."""
    apply_experiments(redis_server.url, tmp_path, document("ranker"))
    admin = redis_server.client()
    now = int(time.time() * 1000)
    with admin.pipeline(transaction=False) as pipe:
        for i in range(1_500):  # two pages
            pipe.xadd("mabrouter:{ranker}:decisions", {"arm": "ranker-v1"}, id=f"{now - 1000}-{i}")
        pipe.execute()
    admin.acl_setuser("operator", enabled=True, passwords=["+operator-password-0123456789"])
    admin.execute_command("ACL", "SETUSER", "operator", *documented_operator_rules())
    operator = f"redis://operator:operator-password-0123456789@127.0.0.1:{redis_server.port}/0"
    try:
        (row,) = json.loads(cli("status", "--json", redis_url=operator).stdout)
        assert row["decisions_last_hour"] == 1_500
        cli("experiment", "archive", "ranker", redis_url=operator)
        before = every_key(redis_server)
        refused = cli("experiment", "delete", "ranker", "--yes", redis_url=operator, check=False)
        assert refused.returncode == 3
        assert "Redis refused the command" in refused.stderr
        assert every_key(redis_server) == before
        cli("experiment", "unarchive", "ranker", redis_url=operator)
    finally:
        admin.acl_deluser("operator")
        admin.close()


def test_switches_set_while_archived_are_kept_for_the_unarchive(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    apply_experiments(url, tmp_path, document("ranker"))
    cli("experiment", "archive", "ranker", redis_url=url)
    rollout = cli("rollout", "ranker", "30", redis_url=url)
    assert "warning: ranker is archived: routers do not serve it" in rollout.stderr
    again = cli("experiment", "archive", "ranker", redis_url=url)
    assert again.stdout == "ranker is archived already (no change)\n"
    actions = [
        json.loads(line)["action"]
        for line in cli("audit", "ranker", "--json", redis_url=url).stdout.splitlines()
    ]
    assert actions == ["apply", "archive", "rollout"]  # the repeated archive wrote nothing
    cli("experiment", "unarchive", "ranker", redis_url=url)
    status = json.loads(cli("status", "ranker", "--json", redis_url=url).stdout)
    assert (status["state"], status["rollout"]) == ("live", 30.0)
    unknown = cli("experiment", "archive", "nope", redis_url=url, check=False)
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert "unknown experiment 'nope'" in unknown.stderr


def test_a_delete_stopped_before_its_last_step_is_finished_by_running_it_again(
    redis_server: RedisServer,
) -> None:
    """Its definition gone but still listed (the last step, unlisting, never ran): delete finishes it."""
    client = redis_server.client()
    client.sadd("mabrouter:experiments", "ghost")
    client.xadd("mabrouter:{ghost}:decisions", {"arm": "a"})
    client.set("mabrouter:{ghost}:sticky:salt:user-1", "a", ex=3600)
    try:
        listed = cli("experiment", "delete", "ghost", redis_url=redis_server.url, check=False)
        assert listed.returncode == 2
        assert "would remove 2 keys" in listed.stdout
        cli("experiment", "delete", "ghost", "--yes", redis_url=redis_server.url)
        assert list(client.scan_iter("*ghost*")) == []
        assert client.smembers("mabrouter:experiments") == set()
    finally:
        client.close()
