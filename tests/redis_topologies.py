"""Real Redis Cluster and Redis Sentinel topologies for tests: redis-server processes on free ports.

Everything lives in one temp dir (node configs, sentinel configs) and is torn down whatever happens.
Nodes run with persistence off (`--save '' --appendonly no`), so what a test measures under failover is
what replication alone preserves. Every wait has a deadline (support.wait_until).
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis

from mabrouter.core import decision_id
from mabrouter.v1 import router_pb2 as pb
from mabrouter.v1 import router_pb2_grpc

from support import DECISION_SECRET, free_port, redis_binary, redis_server_argv, wait_until

NODE_TIMEOUT_MS = 1000  # cluster-node-timeout and sentinel down-after-milliseconds: failover in seconds
SENTINEL_SERVICE = "mymaster"


def redis_cli_binary() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise RuntimeError("redis-cli is not installed: run `apt-get install -y redis-tools`")
    return binary


@dataclass
class Node:
    """One redis-server (data node or sentinel) that can be killed and started again on its port."""

    port: int
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        client = self.client(socket_timeout=1)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                if not self.alive:
                    raise RuntimeError(
                        f"redis-server on port {self.port} exited:\n{self.log.read_text()[-2000:]}"
                    ) from None
                return False

        try:
            wait_until(ready, 10, what=f"redis-server on port {self.port}")
        finally:
            client.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, socket_timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )

    def call(self, *args: str | int) -> object:
        """Run one command on this node (a fresh connection: safe from any thread)."""
        client = self.client()
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def info(self, section: str) -> dict[str, str]:
        raw = self.call("INFO", section)
        assert isinstance(raw, dict)
        return {str(key): str(value) for key, value in raw.items()}

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last replication, exactly like a crashed host."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _data_node_argv(port: int, directory: Path, *extra: str) -> list[str]:
    # --repl-diskless-sync-delay 0: a replica syncs at once, not 5 s later
    return redis_server_argv(port, directory, "--repl-diskless-sync-delay", "0", *extra)


def _distinct_free_port(taken: set[int]) -> int:
    while (port := free_port()) in taken:
        pass
    taken.add(port)
    return port


# --- Redis Cluster --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str
    link: str
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags or "fail?" in self.flags

    def owns(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slots)


def _parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    views = []
    for line in text.strip().splitlines():
        parts = line.split()
        address = parts[1].split("@", 1)[0]
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # [slot->-node] / [slot-<-node]: a migration in progress
                continue
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        views.append(
            ClusterNodeView(
                node_id=parts[0],
                port=int(address.rsplit(":", 1)[1]),
                flags=frozenset(parts[2].replace("myself,", "").split(",")),
                master_id=parts[3],
                link=parts[7],
                slots=tuple(slots),
            )
        )
    return views


@dataclass
class RedisClusterTopology:
    directory: Path
    nodes: dict[int, Node] = field(default_factory=dict)

    @property
    def ports(self) -> list[int]:
        return list(self.nodes)

    @property
    def url(self) -> str:
        return self.url_starting_with(self.ports[0])

    def url_starting_with(self, port: int) -> str:
        """The redis+cluster:// URL with `port` as the first startup node (the router's pub/sub node)."""
        ordered = [port, *(p for p in self.ports if p != port)]
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ordered)

    def live(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.alive]

    def client(self) -> redis.RedisCluster:
        """A redis-py cluster client over the live nodes (for reading state in assertions)."""
        return redis.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode("127.0.0.1", node.port) for node in self.live()],
            decode_responses=True,
            socket_timeout=2,
        )

    def view(self, port: int | None = None) -> list[ClusterNodeView]:
        """CLUSTER NODES as seen by `port` (default: the first live node)."""
        node = self.nodes[port] if port is not None else self.live()[0]
        return _parse_cluster_nodes(str(node.call("CLUSTER", "NODES")))

    def node_id(self, port: int) -> str:
        return str(self.nodes[port].call("CLUSTER", "MYID"))

    def keyslot(self, key: str) -> int:
        return int(str(self.live()[0].call("CLUSTER", "KEYSLOT", key)))

    def owner_of_slot(self, slot: int) -> int:
        """The port of the master that owns `slot`, as every live node sees it (they must agree)."""
        owners = set()
        for node in self.live():
            masters = [v for v in self.view(node.port) if v.is_master and not v.failed and v.owns(slot)]
            owners.add(masters[0].port if len(masters) == 1 else None)
        if len(owners) != 1 or None in owners:
            raise AssertionError(f"live nodes disagree on the owner of slot {slot}: {owners}")
        return int(owners.pop())  # type: ignore[arg-type]

    def master_for_key(self, key: str) -> int:
        return self.owner_of_slot(self.keyslot(key))

    def masters(self) -> list[int]:
        return sorted(v.port for v in self.view() if v.is_master and not v.failed and v.slots)

    def replicas_of(self, master_port: int) -> list[int]:
        master_id = self.node_id(master_port)
        return sorted(v.port for v in self.view() if v.master_id == master_id and not v.failed)

    def keys_on(self, port: int, match: str) -> list[str]:
        """Every key matching `match` stored on one node (SCAN of that node only)."""
        client = self.nodes[port].client()
        try:
            return sorted(str(key) for key in client.scan_iter(match=match, count=1000))
        finally:
            client.close()

    def healthy(self) -> bool:
        """cluster_state:ok on every live node, all agreeing on a full slot map with live masters."""
        try:
            for node in self.live():
                if "cluster_state:ok" not in str(node.call("CLUSTER", "INFO")):
                    return False
            maps = set()
            for node in self.live():
                owners = tuple(
                    sorted(
                        (low, high, v.port)
                        for v in self.view(node.port)
                        if v.is_master and not v.failed
                        for low, high in v.slots
                    )
                )
                maps.add(owners)
            if len(maps) != 1:
                return False
            live_ports = {node.port for node in self.live()}
            return all(port in live_ports for _, _, port in maps.pop())
        except redis.RedisError:
            return False

    def wait_healthy(self, timeout: float = 30) -> None:
        wait_until(self.healthy, timeout, interval=0.05, what="cluster_state:ok on every live node")

    def replication_up(self) -> bool:
        for node in self.live():
            replication = node.info("replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def kill(self, port: int) -> None:
        self.nodes[port].kill()

    def stop(self, port: int) -> None:
        self.nodes[port].stop()

    def restart(self, port: int) -> None:
        """Start a stopped node again: its nodes-PORT.conf makes it rejoin (as a replica after failover)."""
        self.nodes[port].start()

    def wait_failover(self, slot: int, dead_port: int, timeout: float = 30) -> int:
        """Wait until a live master other than `dead_port` owns `slot` and the cluster is ok; its port."""

        def promoted() -> int | None:
            if not self.healthy():
                return None
            try:
                owner = self.owner_of_slot(slot)
            except (AssertionError, redis.RedisError):  # a node changed its view since healthy()
                return None
            return owner if owner != dead_port else None

        return int(wait_until(promoted, timeout, interval=0.05, what=f"a new owner of slot {slot}"))

    def migrate_slot(self, slot: int, to_port: int, batch: int = 10, pause: float = 0.02) -> int:
        """Move one slot to another master the way `redis-cli --cluster reshard` does, key batch by key
        batch with a pause between batches (so live traffic meets ASK redirections and TRYAGAIN).
        Returns the number of keys moved."""
        from_port = self.owner_of_slot(slot)
        if from_port == to_port:
            raise ValueError(f"slot {slot} is already on {to_port}")
        source, target = self.nodes[from_port], self.nodes[to_port]
        source_id, target_id = self.node_id(from_port), self.node_id(to_port)
        target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        client = source.client(socket_timeout=10)
        try:
            while True:
                keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                client.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                time.sleep(pause)
        finally:
            client.close()
        # The documented order: the target first, then the source, then everyone else.
        target.call("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        source.call("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for port in self.masters():
            if port not in (from_port, to_port):
                self.nodes[port].call("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved


@contextmanager
def running_cluster(masters: int = 3, replicas_per_master: int = 1) -> Iterator[RedisClusterTopology]:
    """A real Redis Cluster on free ports; torn down (every process killed, dir removed) on exit."""
    directory = Path(tempfile.mkdtemp(prefix="mabrouter-cluster-"))
    topology = RedisClusterTopology(directory)
    try:
        taken: set[int] = set()
        for _ in range(masters * (1 + replicas_per_master)):
            port, bus_port = _distinct_free_port(taken), _distinct_free_port(taken)
            argv = _data_node_argv(
                port,
                directory,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / f"nodes-{port}.conf"),
                "--cluster-port",  # explicit: free ports are often above 55535, so port + 10000 won't do
                str(bus_port),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--dbfilename",
                f"dump-{port}.rdb",
            )
            node = Node(port, argv, directory / f"redis-{port}.log")
            topology.nodes[port] = node
            node.start()
        created = subprocess.run(
            [
                redis_cli_binary(),
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in topology.ports),
                "--cluster-replicas",
                str(replicas_per_master),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")

        def formed() -> bool:
            views = [topology.view(port) for port in topology.ports]
            return topology.healthy() and all(
                len(view) == len(topology.ports) and all(v.link == "connected" for v in view)
                for view in views
            )

        wait_until(formed, 30, interval=0.05, what="every node to see the whole cluster, state ok")
        wait_until(topology.replication_up, 30, interval=0.05, what="every replica linked to its master")
        yield topology
    finally:
        for node in topology.nodes.values():
            with suppress(Exception):
                node.kill()
        shutil.rmtree(directory, ignore_errors=True)


# --- Redis Sentinel -------------------------------------------------------------------------------------


@dataclass
class SentinelTopology:
    directory: Path
    data: dict[int, Node] = field(default_factory=dict)
    sentinels: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}"

    def master_port(self) -> int:
        """The master every live sentinel reports (they must agree)."""
        reported = set()
        for sentinel in self.sentinels:
            if sentinel.alive:
                address = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE)
                assert isinstance(address, list), address
                reported.add(int(address[1]))
        if len(reported) != 1:
            raise AssertionError(f"sentinels disagree on the master: {reported}")
        return reported.pop()

    def role(self, port: int) -> str:
        return self.data[port].info("replication").get("role", "")

    def master_client(self) -> redis.Redis:
        return self.data[self.master_port()].client()

    def settled(self) -> bool:
        """Every sentinel knows the master, its replica and the two other sentinels; replication is up."""
        try:
            for sentinel in self.sentinels:
                if not sentinel.alive:
                    continue
                raw = sentinel.call("SENTINEL", "MASTER", SENTINEL_SERVICE)
                state = dict(zip(raw[::2], raw[1::2], strict=True)) if isinstance(raw, list) else raw
                if "s_down" in state["flags"] or "o_down" in state["flags"]:
                    return False
                live_data = sum(1 for node in self.data.values() if node.alive)
                if int(state["num-slaves"]) < live_data - 1:
                    return False
                if int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
            master = self.master_port()
            if self.role(master) != "master":
                return False
            for port, node in self.data.items():
                if port != master and node.alive:
                    replication = node.info("replication")
                    if (
                        replication.get("role") != "slave"
                        or int(replication.get("master_port", 0)) != master
                        or replication.get("master_link_status") != "up"
                    ):
                        return False
            return True
        except (redis.RedisError, AssertionError, KeyError):
            return False

    def wait_settled(self, timeout: float = 30) -> None:
        wait_until(self.settled, timeout, interval=0.1, what="sentinels to agree, replication up")

    def failover(self) -> None:
        """SENTINEL FAILOVER: promote the replica now, without waiting for the master to fail."""
        self.sentinels[0].call("SENTINEL", "FAILOVER", SENTINEL_SERVICE)

    def wait_new_master(self, old_port: int, timeout: float = 30) -> int:
        """Wait until every sentinel names another master and that node says it is one; its port."""

        def promoted() -> int | None:
            try:
                port = self.master_port()
            except (redis.RedisError, AssertionError):
                return None
            return port if port != old_port and self.role(port) == "master" else None

        return int(wait_until(promoted, timeout, interval=0.05, what="sentinels to promote a new master"))

    def replica_ports(self) -> list[int]:
        master = self.master_port()
        return [port for port in self.data if port != master]

    def kill(self, port: int) -> None:
        self.data[port].kill()

    def restart(self, port: int) -> None:
        self.data[port].start()


@contextmanager
def running_sentinel(replicas: int = 1, sentinels: int = 3) -> Iterator[SentinelTopology]:
    """One master, `replicas` replicas and `sentinels` sentinels (quorum 2), on free ports."""
    directory = Path(tempfile.mkdtemp(prefix="mabrouter-sentinel-"))
    topology = SentinelTopology(directory)
    try:
        master_port = free_port()
        master = Node(
            master_port,
            _data_node_argv(master_port, directory, "--dbfilename", f"dump-{master_port}.rdb"),
            directory / f"redis-{master_port}.log",
        )
        topology.data[master_port] = master
        master.start()
        for _ in range(replicas):
            port = free_port()
            replica = Node(
                port,
                _data_node_argv(
                    port,
                    directory,
                    "--dbfilename",
                    f"dump-{port}.rdb",
                    "--replicaof",
                    "127.0.0.1",
                    str(master_port),
                ),
                directory / f"redis-{port}.log",
            )
            topology.data[port] = replica
            replica.start()
        for _ in range(sentinels):
            port = free_port()
            config = directory / f"sentinel-{port}.conf"
            config.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        "protected-mode no",
                        f"dir {directory}",
                        f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 2",
                        f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {NODE_TIMEOUT_MS}",
                        f"sentinel failover-timeout {SENTINEL_SERVICE} 3000",
                        f"sentinel parallel-syncs {SENTINEL_SERVICE} 1",
                        "",
                    ]
                )
            )
            sentinel = Node(
                port, [redis_binary(), str(config), "--sentinel"], directory / f"sentinel-{port}.log"
            )
            topology.sentinels.append(sentinel)
            sentinel.start()
        topology.wait_settled()
        yield topology
    finally:
        for node in [*topology.sentinels, *topology.data.values()]:
            with suppress(Exception):
                node.kill()
        shutil.rmtree(directory, ignore_errors=True)


# --- Live traffic against a router ----------------------------------------------------------------------


def stat_totals(client: redis.Redis | redis.RedisCluster, experiment: str = "ranker") -> dict[str, float]:
    """The experiment's statistics summed over its arms: trials, count (outcomes), sum (rewards). Closes
    `client` (a node's, a cluster's: whichever holds the keys to read)."""
    try:
        raw = client.hgetall(f"mabrouter:{{{experiment}}}:stats")
    finally:
        client.close()
    totals = {"trials": 0.0, "count": 0.0, "sum": 0.0}
    for field_name, value in raw.items():
        stat = field_name.rsplit(":", 1)[1]
        if stat in totals:
            totals[stat] += float(value)
    return totals


def seen_nonces(client: redis.Redis | redis.RedisCluster, experiment: str, acks: Sequence[Ack]) -> set[str]:
    """The nonces among `acks` whose `seen` marker (the proof an outcome was applied) `client` finds.
    Closes `client`."""
    try:
        found: set[str] = set()
        for start in range(0, len(acks), 500):
            chunk = acks[start : start + 500]
            with client.pipeline(transaction=False) as pipe:
                for ack in chunk:
                    pipe.exists(f"mabrouter:{{{experiment}}}:seen:{ack.nonce}")
                found |= {ack.nonce for ack, n in zip(chunk, pipe.execute(), strict=True) if n}
        return found
    finally:
        client.close()


def killed_within(stub: router_pb2_grpc.RouterStub, experiment: str, seconds: float) -> float | None:
    """How long until Route answers KILLED for `experiment` (None if not within `seconds`)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if stub.Route(pb.RouteRequest(experiment=experiment, unit_id="k"), timeout=5).reason == pb.KILLED:
            return time.monotonic() - started
        time.sleep(0.005)
    return None


SECRET = DECISION_SECRET.encode()  # the decision secret support.RouterProcess gives every router
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class Ack:
    """An outcome the router acknowledged (ReportOutcome returned OK)."""

    at: float  # time.monotonic() when the OK arrived
    decision_id: str
    nonce: str
    arm: str
    reward: float
    duplicate: bool
    attempts: int


class Traffic:
    """A caller that never stops. One thread calls Route in a loop (paced); `reporters` threads report an
    outcome for every decision (rewards 1, 0, 1, 0, ...), retrying UNAVAILABLE and DEADLINE_EXCEEDED
    with the same decision id until it is acknowledged (the README's contract: retries are safe).
    Only acknowledged outcomes (OK replies) are counted, each with the time its OK arrived."""

    def __init__(
        self, address: str, experiment: str = "ranker", pace: float = 0.002, reporters: int = 8
    ) -> None:
        self.experiment = experiment
        self.pace = pace
        self.channel = grpc.insecure_channel(address)
        self.stub = router_pb2_grpc.RouterStub(self.channel)
        self.decisions: queue.Queue[tuple[str, float]] = queue.Queue()
        self.lock = threading.Lock()
        self.routes = 0
        self.counted = 0  # SAMPLED / STICKY decisions: each one is a trial
        self.route_times: list[float] = []  # when each counted decision was answered
        self.route_errors: list[str] = []
        self.slowest_route = 0.0  # seconds
        self.acks: list[Ack] = []
        self.retries = 0  # outcome attempts answered UNAVAILABLE / DEADLINE_EXCEEDED
        self.retry_messages: dict[str, int] = {}
        self.outcome_errors: list[str] = []
        self._stop_routing = threading.Event()
        self._stop_reporting = threading.Event()
        self._router = threading.Thread(target=self._route_loop, daemon=True, name="traffic-route")
        self._reporters = [
            threading.Thread(target=self._report_loop, daemon=True, name=f"traffic-report-{n}")
            for n in range(reporters)
        ]

    def start(self) -> Traffic:
        for thread in (self._router, *self._reporters):
            thread.start()
        return self

    def _route_loop(self) -> None:
        i = 0
        while not self._stop_routing.is_set():
            i += 1
            started = time.monotonic()
            try:
                reply = self.stub.Route(
                    pb.RouteRequest(experiment=self.experiment, unit_id=f"unit-{i}"), timeout=2
                )
            except grpc.RpcError as exc:
                with self.lock:
                    self.route_errors.append(f"{exc.code()}: {exc.details()}")
                continue
            now = time.monotonic()
            with self.lock:
                self.slowest_route = max(self.slowest_route, now - started)
                self.routes += 1
                if reply.reason in (pb.SAMPLED, pb.STICKY):
                    self.counted += 1
                    self.route_times.append(now)
            if reply.decision_id:
                self.decisions.put((reply.decision_id, float(i % 2)))
            time.sleep(self.pace)

    def _report_loop(self) -> None:
        while True:
            try:
                raw_id, reward = self.decisions.get(timeout=0.05)
            except queue.Empty:
                if self._stop_reporting.is_set():
                    return
                continue
            token = decision_id.decode(raw_id, [SECRET], int(time.time() * 1000), 86_400_000)
            attempts = 0
            while True:
                attempts += 1
                try:
                    reply = self.stub.ReportOutcome(
                        pb.OutcomeRequest(decision_id=raw_id, reward=reward), timeout=5
                    )
                except grpc.RpcError as exc:
                    if exc.code() in RETRYABLE and attempts < 2000:
                        details = str(exc.details())
                        key = f"{exc.code().name}: {details[-160:]}"
                        with self.lock:
                            self.retries += 1
                            self.retry_messages[key] = self.retry_messages.get(key, 0) + 1
                        time.sleep(0.02)
                        continue
                    with self.lock:
                        self.outcome_errors.append(f"{exc.code()}: {exc.details()}")
                    break
                ack = Ack(time.monotonic(), raw_id, token.nonce, token.arm, reward, reply.duplicate, attempts)
                with self.lock:
                    self.acks.append(ack)
                break

    def acked(self) -> int:
        with self.lock:
            return len(self.acks)

    def wait_acks(self, more: int, timeout: float = 30) -> None:
        """Wait until `more` outcomes beyond those acknowledged so far are acknowledged."""
        target = self.acked() + more
        wait_until(lambda: self.acked() >= target, timeout, interval=0.02, what=f"{more} more acks")

    def stop(self, drain_timeout: float = 60) -> None:
        """Stop routing, then get every decision made so far acknowledged (or recorded as an error)."""
        self._stop_routing.set()
        self._router.join(10)
        self._stop_reporting.set()
        deadline = time.monotonic() + drain_timeout
        for thread in self._reporters:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._reporters):
            raise AssertionError(f"outcomes not all acknowledged within {drain_timeout}s")
        self.channel.close()

    def close(self) -> None:
        """Stop at once, acknowledged or not (teardown after a failure); safe after stop()."""
        self._stop_routing.set()
        self._stop_reporting.set()
        with suppress(queue.Empty):
            while True:
                self.decisions.get_nowait()
        for thread in (self._router, *self._reporters):
            if thread.is_alive():
                thread.join(10)
        self.channel.close()

    def summary(self) -> str:
        return (
            f"{self.routes} routes (slowest {self.slowest_route * 1000:.0f} ms, {len(self.route_errors)} "
            f"failed), {len(self.acks)} outcomes acknowledged after {self.retries} retried attempts"
        )
