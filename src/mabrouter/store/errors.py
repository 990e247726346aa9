"""How the store's failures leave it: as one domain error, `StoreUnavailableError`, never a Redis one.

redis-py does not put all of its failures under RedisError. On a Cluster, when no node answers, it raises
RedisClusterException (RedisClusterUnreachableError, SlotNotCoveredError, ...), which derives from plain
Exception; a handler that caught only RedisError let that escape, killing background tasks and turning
ReportOutcome's UNAVAILABLE into UNKNOWN. Sockets fail with OSError, and asyncio.wait_for's timeout is
TimeoutError (an OSError since Python 3.11, listed anyway because the adapters bound calls with it).
`STORE_ERRORS` lists them all, for the adapters only: `translated` turns each into a
StoreUnavailableError chained from it, so callers outside the store catch one domain error.

The message says which kind of failure it was, because an operator acts differently on each: Redis
could not be reached (network, auth, timeout), the cluster could not be reached, or Redis answered and
refused the command (an ACL without a needed command, a Lua script error, a key of the wrong type).
"""

from __future__ import annotations

from types import TracebackType

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mabrouter.errors import StoreUnavailableError

STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError, TimeoutError)


def unavailable(exc: BaseException) -> StoreUnavailableError:
    """The domain error for a store failure (raise it `from exc`); its message names the kind."""
    detail = str(exc) or type(exc).__name__  # asyncio's TimeoutError has no message
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return StoreUnavailableError(f"cannot reach Redis: {detail}")
    if isinstance(exc, RedisClusterException):  # not a RedisError: e.g. no cluster node reachable
        return StoreUnavailableError(f"cannot reach the Redis cluster: {detail}")
    return StoreUnavailableError(f"Redis refused the command: {detail}")


class _Translated:
    """`with translated:` re-raises a store failure as StoreUnavailableError (chained from it).

    A stateless class rather than @contextmanager: entering it costs a method call, not a generator."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is not None and isinstance(exc, STORE_ERRORS):
            raise unavailable(exc) from exc


translated = _Translated()
