"""Redis clients from one URL, for a single server, a Cluster or a Sentinel-managed primary.

  redis://[user:password@]host:port/db    rediss://...  (TLS)    unix:///path/to/redis.sock
  redis+cluster://[user:password@]host:port[,host:port...]       rediss+cluster://... (TLS)
  redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db]   (password is the data nodes')

On a Cluster every key of an experiment shares one hash slot ({experiment}), so the Lua scripts stay
legal; change notices use PUBLISH, which a cluster broadcasts to every node.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from mabrouter.store.errors import STORE_ERRORS

log = logging.getLogger(__name__)

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEME = "redis+sentinel"
SINGLE_SCHEMES = ("redis", "rediss", "unix")
# How soon after a failed command a cluster client may re-read the slot map. redis-py versions that
# throttle these refreshes default to 1 s, so after a failover every read and write kept going to the
# dead master for up to a second more (kills obeyed late, outcomes refused). CLUSTER SLOTS is cheap,
# and only errors trigger it. Older versions refresh at once and have no such argument.
CLUSTER_TOPOLOGY_REFRESH_SECONDS = 0.2
_THROTTLES_TOPOLOGY_REFRESH = (
    "topology_refresh_min_interval" in inspect.signature(AsyncRedisCluster.__init__).parameters
)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    kind: str  # "single", "cluster" or "sentinel"
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    tls: bool = False
    service: str = ""
    db: int = 0


def parse_target(url: str) -> RedisTarget:
    parts = urlsplit(url)
    if parts.scheme in SINGLE_SCHEMES:
        return RedisTarget("single", url)
    if parts.scheme not in (*CLUSTER_SCHEMES, SENTINEL_SCHEME):
        # said here rather than by redis-py, whose message lists only the single-server schemes
        supported = ", ".join(
            f"{scheme}://" for scheme in (*SINGLE_SCHEMES, *CLUSTER_SCHEMES, SENTINEL_SCHEME)
        )
        raise ValueError(f"redis URL {redact(url)!r}: unsupported scheme; use one of {supported}")
    netloc = parts.netloc.rsplit("@", 1)
    credentials, hostlist = (netloc[0], netloc[1]) if len(netloc) == 2 else ("", netloc[0])
    username, _, password = credentials.partition(":")
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"redis URL {redact(url)!r}: expected host:port entries, got {item!r}")
        hosts.append((host.strip("[]"), int(port)))
    path = [segment for segment in parts.path.split("/") if segment]
    if parts.scheme == SENTINEL_SCHEME and not path:
        raise ValueError(
            f"redis URL {redact(url)!r}: name the Sentinel service, e.g. redis+sentinel://h:26379/mymaster"
        )
    return RedisTarget(
        kind="sentinel" if parts.scheme == SENTINEL_SCHEME else "cluster",
        url=url,
        hosts=tuple(hosts),
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=parts.scheme.startswith("rediss"),
        service=path[0] if parts.scheme == SENTINEL_SCHEME else "",
        db=int(path[1]) if parts.scheme == SENTINEL_SCHEME and len(path) > 1 else 0,
    )


def redact(url: str) -> str:
    """Hide a password in a Redis URL before it reaches a log or an error message."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"


def async_client(url: str, **options: Any) -> aioredis.Redis | AsyncRedisCluster:
    target = parse_target(url)
    if target.kind == "single":
        return aioredis.Redis.from_url(url, **options)
    if target.kind == "cluster":
        nodes = [AsyncClusterNode(host, port) for host, port in target.hosts]
        if _THROTTLES_TOPOLOGY_REFRESH:
            options.setdefault("topology_refresh_min_interval", CLUSTER_TOPOLOGY_REFRESH_SECONDS)
        return AsyncRedisCluster(
            startup_nodes=nodes, ssl=target.tls, username=target.username, password=target.password, **options
        )
    # redis-py's Sentinel constructors are untyped
    sentinel = AsyncSentinel(list(target.hosts), socket_timeout=options.get("socket_timeout"))  # type: ignore[no-untyped-call,unused-ignore]
    primary: aioredis.Redis = sentinel.master_for(
        target.service,
        connection_pool_class=MasterFollowingPool,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
    return primary


class MasterFollowingPool(AsyncSentinelConnectionPool):
    """A Sentinel pool that moves to a new master as soon as `follow_master()` sees Sentinel name it.

    redis-py asks Sentinel for the master only when it opens a connection or a write gets READONLY.
    After SENTINEL FAILOVER the demoted master stays writable until Sentinel reconfigures it (~10 s):
    meanwhile writes went to it and were acknowledged, and its resync as a replica then discarded them.
    So the router asks Sentinel on every refresh (`follow_master`), and this pool never hands out a
    connection opened to any other address than the master Sentinel last named: idle ones are closed
    by redis-py when the address changes, and ones that were in use then are reopened here.
    """

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        if self.master_address is not None and (connection.host, connection.port) != self.master_address:
            try:
                await connection.disconnect()
                await connection.connect()  # asks Sentinel for the master again
            except BaseException:
                await self.release(connection)
                raise
        return connection

    async def follow_master(self) -> None:
        """Ask Sentinel for the master now; when it moved, later commands go to the new one."""
        before = self.master_address
        if before is None:
            return  # nothing connected yet: the first connection asks Sentinel anyway
        try:
            # Records the new address and closes idle connections to the old one when it changed.
            after = await self.get_master_address()  # type: ignore[no-untyped-call]  # untyped in redis-py
        except STORE_ERRORS as exc:
            # No Sentinel answers: keep the master we have (if it is gone too, commands fail anyway).
            log.debug("could not ask Sentinel for the master of %s: %r", self.service_name, exc)
            return
        if after != before:
            log.warning(
                "Sentinel names a new master for %s: %s:%s (was %s:%s)", self.service_name, *after, *before
            )


async def follow_sentinel_master(client: Any) -> None:
    """For a client of a Sentinel URL, move to the master Sentinel names now; otherwise nothing."""
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, MasterFollowingPool):
        await pool.follow_master()


def sync_client(url: str, **options: Any) -> redis.Redis | RedisCluster:
    target = parse_target(url)
    if target.kind == "single":
        return redis.Redis.from_url(url, **options)
    if target.kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in target.hosts]  # type: ignore[no-untyped-call,unused-ignore]
        return RedisCluster(
            startup_nodes=nodes, ssl=target.tls, username=target.username, password=target.password, **options
        )
    sentinel = Sentinel(list(target.hosts), socket_timeout=options.get("socket_timeout"))  # type: ignore[no-untyped-call,unused-ignore]
    primary: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        target.service, db=target.db, username=target.username, password=target.password, **options
    )
    return primary


Address = tuple[str, int]


class _RotatingConnection(aioredis.Connection):
    """A connection that opens each socket to the next of several addresses.

    A cluster's change feed must not depend on one node: when the node it listens on dies, the
    reconnect (redis-py's own retry, or the router's resubscribe) goes to the next node instead.
    `_connection_arguments` is where redis-py reads host and port for every socket it opens.
    """

    def __init__(self, *, addresses: Callable[[], list[Address]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._addresses = addresses
        self._next = 0

    def _connection_arguments(self) -> Mapping[str, Any]:
        candidates = self._addresses()
        self.host, self.port = candidates[self._next % len(candidates)]
        self._next += 1
        return super()._connection_arguments()


class _RotatingSSLConnection(_RotatingConnection, aioredis.SSLConnection):
    pass


def _node_addresses(hosts: Iterable[Address], cluster: AsyncRedisCluster | None) -> list[Address]:
    """The URL's hosts first, then every node the cluster client has learnt of (failovers, new nodes)."""
    found = dict.fromkeys(hosts)
    if cluster is not None:
        found.update(dict.fromkeys((node.host, int(node.port)) for node in cluster.get_nodes()))
    return list(found)


def async_pubsub_client(url: str, cluster: AsyncRedisCluster | None = None, **options: Any) -> aioredis.Redis:
    """A client for SUBSCRIBE. On a cluster, a plain node connection (PUBLISH reaches every node, and
    redis-py's cluster pub/sub is less robust than a node connection), which moves to the next node
    on every reconnect: the URL's hosts, then the nodes `cluster` (the data client) knows of."""
    target = parse_target(url)
    if target.kind != "cluster":
        client = async_client(url, **options)
        assert isinstance(client, aioredis.Redis)
        return client
    host, port = target.hosts[0]
    pool = aioredis.ConnectionPool(
        connection_class=_RotatingSSLConnection if target.tls else _RotatingConnection,
        addresses=lambda: _node_addresses(target.hosts, cluster),
        host=host,
        port=port,
        username=target.username,
        password=target.password,
        **options,
    )
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool it was given, too
    return client
