"""Shared helpers for the process-level benchmarks (bench_grpc, bench_outcomes, regret).

Everything here starts real processes: a private redis-server (tests/support.py), real `mabrouter serve`
routers with the DEFAULT refresh and flush intervals, the floor server, and h2load. Nothing is mocked.
Process CPU time and RSS are read from /proc, so these scripts need Linux.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mabrouter.core.hashing import bucket_of, in_rollout
from mabrouter.schema import experiment_to_json, parse_experiment
from mabrouter.store.admin_store import AdminStore
from mabrouter.store.records import Change

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT / "tests"))
from support import free_port, running_redis, wait_until  # noqa: E402

__all__ = [
    "RESULTS_DIR",
    "ROOT",
    "FloorServer",
    "H2Result",
    "RouterServer",
    "apply_experiments",
    "command_stats",
    "cpu_seconds",
    "experiment_doc",
    "free_port",
    "grpc_frame",
    "machine_info",
    "percentile",
    "redis_command_costs",
    "redis_cpu",
    "rss_kib",
    "run_h2load",
    "running_redis",
    "unit_in_rollout",
    "wait_until",
    "write_report",
]

SECRET = "bench-decision-secret-0123456789abcdef"  # >= 32 bytes, or routers refuse it
CLK_TCK = os.sysconf("SC_CLK_TCK")
RULE_ATTRIBUTES: dict[str, Any] = {
    "country": "US",
    "app_version": "2.5.1",
    "tier": "premium",
    "internal": False,
}


# ---------------------------------------------------------------------------------------------- machine


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _command_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info(**extra: Any) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "redis_py": _version("redis"),
        "numpy": _version("numpy"),
        "mabrouter": _version("mabrouter"),
        "redis_server": _command_version(["redis-server", "--version"]),
        "h2load": _command_version(["h2load", "--version"]),
        "loadavg_1m": os.getloadavg()[0],
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }


# ------------------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's JSON report (creating benchmarks/results/, which git ignores) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=list) + "\n", encoding="utf-8")
    elapsed = f" ({report['elapsed_s']:.0f} s)" if "elapsed_s" in report else ""
    print(f"wrote {path}{elapsed}")


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# ------------------------------------------------------------------------------------------ experiments


def experiment_doc(name: str, arms: int = 10, *, rules: bool = True) -> dict[str, Any]:
    """A Bernoulli experiment with `arms` arms; with rules: targeting, rollout 90, allow- and deny-lists."""
    doc: dict[str, Any] = {
        "name": name,
        "reward": "bernoulli",
        "control": "arm-0",
        "arms": [
            {"name": f"arm-{i}", "payload": {"endpoint": f"http://model-{i}.svc:8080"}} for i in range(arms)
        ],
    }
    if rules:
        doc.update(
            rollout=90,
            targeting={
                "all": [
                    {"attribute": "country", "op": "in", "value": ["US", "CA", "GB", "DE"]},
                    {
                        "any": [
                            {"attribute": "app_version", "op": "semver_gte", "value": "2.3.0"},
                            {"attribute": "tier", "op": "eq", "value": "premium"},
                        ]
                    },
                    {"not": {"attribute": "internal", "op": "eq", "value": True}},
                ]
            },
            allow={"arm-3": ["qa-alice", "qa-bob"], "arm-5": ["qa-carol"]},
            deny=["vip-customer-1", "vip-customer-2"],
            segments=["country"],
        )
    return doc


def apply_experiments(redis_url: str, docs: Iterable[dict[str, Any]]) -> int:
    """Validate and store each document the way `mabrouter experiment apply` does; return how many."""
    store = AdminStore.from_url(redis_url)
    count = 0
    try:
        for data in docs:
            doc = parse_experiment(data, f"benchmark experiment {data['name']}")
            change = Change(actor="bench", action="apply", reason="benchmark", now_ms=int(time.time() * 1000))
            store.apply(doc.name, experiment_to_json(doc), change)
            count += 1
    finally:
        store.close()
    return count


def unit_in_rollout(salt: str, rollout: float, prefix: str = "user-", want: bool = True) -> str:
    """The first unit id `prefix<n>` that is (or, with want=False, is not) inside the rollout."""
    for n in range(100_000):
        unit = f"{prefix}{n}"
        if in_rollout(bucket_of(salt, unit), rollout) == want:
            return unit
    raise RuntimeError("no unit found")


# ------------------------------------------------------------------------------------------------- redis


def command_stats(client: redis.Redis) -> dict[str, int]:
    info: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


def redis_cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def redis_command_costs(client: Any) -> dict[str, dict[str, float]]:
    """redis-server's own accounting (INFO commandstats): calls and microseconds per call, per command.

    For EVALSHA the time includes every command the script runs; for a pipeline, each command's own
    execution only (no network, no parsing of other commands)."""
    info: dict[str, Any] = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): {"calls": int(v["calls"]), "usec_per_call": float(v["usec_per_call"])}
        for name, v in info.items()
    }


# ------------------------------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return found


# ------------------------------------------------------------------------------------------------ servers


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class _Process:
    address: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        log = tempfile.NamedTemporaryFile(prefix="mabrouter-bench-", suffix=".log", delete=False)  # noqa: SIM115
        self.logs.append(log)
        self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))

    def output(self) -> str:
        return "\n".join(Path(log.name).read_text(errors="replace") for log in self.logs)

    def wait_serving(self, timeout: float = 30) -> None:
        def ready() -> bool:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited early ({process.returncode}):\n{self.output()}")
            return _serving(self.address)

        wait_until(ready, timeout, interval=0.05, what=f"server on {self.address}")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for log in self.logs:
            log.close()
            Path(log.name).unlink(missing_ok=True)


class RouterServer(_Process):
    """`mabrouter serve` (optionally --workers N) with the DEFAULT refresh and flush intervals."""

    def __init__(
        self,
        redis_url: str,
        workers: int = 1,
        launcher: Sequence[str] = ("-m", "mabrouter"),
        **env_overrides: str,
    ) -> None:
        """`launcher`: what follows the interpreter instead of `-m mabrouter` (a script that patches the
        router, then runs its command line: bench_handler_parts.py)."""
        super().__init__(f"127.0.0.1:{free_port()}")
        self.workers = workers
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"MABROUTER_REFRESH_INTERVAL_MS", "MABROUTER_FLUSH_INTERVAL_MS"}
        }
        env.update(
            MABROUTER_REDIS_URL=redis_url,
            MABROUTER_DECISION_SECRET=SECRET,
            MABROUTER_METRICS_LISTEN="127.0.0.1:0",  # the default port 9464 is one per host
            **env_overrides,
        )
        argv = [sys.executable, *launcher, "serve", "--listen", self.address]
        if workers > 1:
            argv += ["--workers", str(workers)]
        self._spawn(argv, env)

    def wait_serving(self, timeout: float = 30) -> None:
        super().wait_serving(timeout)
        if self.workers > 1:  # every worker must be up, not just the first to bind
            wait_until(lambda: len(self.worker_pids()) == self.workers, timeout, what="all workers")
            for _ in range(4 * self.workers):
                _serving(self.address)

    def worker_pids(self) -> list[int]:
        """The processes that serve (the supervisor's children with --workers, else the process)."""
        if self.workers == 1:
            return [self.processes[0].pid]
        return children(self.processes[0].pid)


class FloorServer(_Process):
    """`benchmarks/floor_server.py`, `copies` processes sharing one port through SO_REUSEPORT."""

    def __init__(self, copies: int = 1) -> None:
        super().__init__(f"127.0.0.1:{free_port()}")
        script = Path(__file__).resolve().parent / "floor_server.py"
        argv = [sys.executable, str(script), "--listen", self.address]
        if copies > 1:
            argv.append("--reuse-port")
        for _ in range(copies):
            self._spawn(argv, dict(os.environ))

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.processes]


# ------------------------------------------------------------------------------------------------ h2load


def grpc_frame(message: Any) -> bytes:
    """A gRPC length-prefixed message: 0x00 (not compressed), 4-byte big-endian length, the bytes."""
    payload: bytes = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


@dataclass
class H2Result:
    requests_per_s: float
    done: int
    succeeded: int
    failed: int
    errored: int
    status_2xx: int
    h2load_cpu_s: float
    elapsed_s: float
    server_cpu_s: float = 0.0
    server_cpu_per_process_s: list[float] = field(default_factory=list)
    latencies_us: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "latencies_us"}
        if self.latencies_us:
            out.update(
                latency_samples=len(self.latencies_us),
                p50_us=percentile(self.latencies_us, 50),
                p90_us=percentile(self.latencies_us, 90),
                p99_us=percentile(self.latencies_us, 99),
                mean_us=statistics.fmean(self.latencies_us),
                max_us=max(self.latencies_us),
            )
        return out


_FINISHED = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx")


def run_h2load(
    address: str,
    path: str,
    frame: Path,
    *,
    clients: int,
    streams: int,
    threads: int = 1,
    duration: float | None = None,
    warmup: float = 0.5,
    requests: int | None = None,
    log_latency: bool = False,
    server_pids: Sequence[int] = (),
) -> H2Result:
    """Drive `path` with h2load (h2c prior knowledge) posting the pre-encoded gRPC frame.

    Either `duration` seconds after `warmup` seconds (timing-based), or `requests` requests. The CPU
    time h2load itself used comes from wait4's rusage; the servers' from /proc deltas over the run.
    """
    h2load = shutil.which("h2load")
    if h2load is None:
        raise RuntimeError("h2load is not installed: apt-get install -y nghttp2-client")
    argv = [
        h2load,
        "-c",
        str(clients),
        "-m",
        str(streams),
        "-t",
        str(threads),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-d",
        str(frame),
    ]
    if duration is not None:
        argv += ["-D", f"{round(duration * 1000)}ms", "--warm-up-time", f"{round(warmup * 1000)}ms"]
    else:
        argv += ["-n", str(requests)]
    log = None
    if log_latency:
        log = tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log", delete=False)  # noqa: SIM115
        log.close()
        argv += ["--log-file", log.name]
    argv.append(f"http://{address}{path}")
    server_before = [cpu_seconds(pid) for pid in server_pids]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    per_process = [cpu_seconds(pid) - cpu0 for pid, cpu0 in zip(server_pids, server_before, strict=True)]
    server_cpu = sum(per_process)
    if process.returncode != 0:
        raise RuntimeError(f"h2load failed ({process.returncode}): {' '.join(argv)}\n{text}")
    finished = _FINISHED.search(text)
    counts = _REQUESTS.search(text)
    status_2xx = _STATUS.search(text)
    if finished is None or counts is None or status_2xx is None:
        raise RuntimeError(f"cannot parse h2load output:\n{text}")
    latencies: list[float] = []
    if log is not None:
        for line in Path(log.name).read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                latencies.append(float(parts[2]))
        Path(log.name).unlink(missing_ok=True)
    return H2Result(
        requests_per_s=float(finished.group(1)),
        done=int(counts.group(3)),
        succeeded=int(counts.group(4)),
        failed=int(counts.group(5)),
        errored=int(counts.group(6)),
        status_2xx=int(status_2xx.group(1)),
        h2load_cpu_s=usage.ru_utime + usage.ru_stime,
        elapsed_s=elapsed,
        server_cpu_s=server_cpu,
        server_cpu_per_process_s=per_process,
        latencies_us=latencies,
    )
