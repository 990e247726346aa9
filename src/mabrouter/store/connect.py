"""Redis clients from one URL, for a single server, a Cluster or a Sentinel-managed primary.

  redis://[user:password@]host:port/db    rediss://...  (TLS)    unix:///path/to/redis.sock
  redis+cluster://[user:password@]host:port[,host:port...]       rediss+cluster://... (TLS)
  redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db]   (password is the data nodes')

On a Cluster every key of an experiment shares one hash slot ({experiment}), so the Lua scripts stay
legal; change notices use PUBLISH, which a cluster broadcasts to every node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEME = "redis+sentinel"


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
    if parts.scheme not in (*CLUSTER_SCHEMES, SENTINEL_SCHEME):
        return RedisTarget("single", url)
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
        return AsyncRedisCluster(
            startup_nodes=nodes, ssl=target.tls, username=target.username, password=target.password, **options
        )
    # redis-py's Sentinel constructors are untyped
    sentinel = AsyncSentinel(list(target.hosts), socket_timeout=options.get("socket_timeout"))  # type: ignore[no-untyped-call,unused-ignore]
    primary: aioredis.Redis = sentinel.master_for(
        target.service, db=target.db, username=target.username, password=target.password, **options
    )
    return primary


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


def async_pubsub_client(url: str, **options: Any) -> aioredis.Redis:
    """A client for SUBSCRIBE. On a cluster, a plain connection to one startup node: PUBLISH reaches
    every node, and redis-py's cluster pub/sub is less robust than a node connection."""
    target = parse_target(url)
    if target.kind != "cluster":
        client = async_client(url, **options)
        assert isinstance(client, aioredis.Redis)
        return client
    host, port = target.hosts[0]
    return aioredis.Redis(
        host=host, port=port, ssl=target.tls, username=target.username, password=target.password, **options
    )
