"""What an unreachable or failing store raises: one tuple, so every `except` agrees on what an outage is.

redis-py does not put all of its failures under RedisError. On a Cluster, when no node answers, it raises
RedisClusterException (RedisClusterUnreachableError, SlotNotCoveredError, ...), which derives from plain
Exception; a handler that caught only RedisError let that escape, killing background tasks and turning
ReportOutcome's UNAVAILABLE into UNKNOWN. Sockets fail with OSError, and asyncio.wait_for's timeout is
TimeoutError (an OSError since Python 3.11, listed anyway because callers bound Redis calls with it).
"""

from __future__ import annotations

from redis.exceptions import RedisClusterException, RedisError

STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError, TimeoutError)
