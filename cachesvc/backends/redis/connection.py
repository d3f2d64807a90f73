"""The Redis client (one connection pool per process) and the one translation of its errors into cachesvc's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cachesvc.errors import Overloaded, Unavailable

Client = aioredis.Redis | RedisCluster


@dataclass(frozen=True, kw_only=True)
class RedisOptions:
    """How to reach Redis.

    Attributes:
        url: redis://[user:password@]host:port/db, or rediss:// for TLS.
        username, password: credentials when they are not in the URL (the URL's win).
        cluster: speak the Redis Cluster protocol (the URL names any one node).
        timeout: seconds one operation may take, connecting included, before it fails with Unavailable.
        prefix: the first part of every key name; caches under different prefixes share a Redis unseen.
    """

    url: str
    username: str = ""
    password: str = ""
    cluster: bool = False
    timeout: float = 0.5
    prefix: str = "cachesvc"

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in ("redis", "rediss"):
            raise ValueError(f"redis_url must start with redis:// or rediss://, not {redacted_url(self.url)!r}")
        if self.timeout <= 0:
            raise ValueError("redis_timeout must be > 0")
        if not self.prefix or any(c in self.prefix for c in "{}* "):
            raise ValueError("redis_prefix must be non-empty without braces, '*' or spaces")


def redacted_url(url: str) -> str:
    """The URL with its password replaced, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(options: RedisOptions) -> Client:
    """Builds the client and its connection pool; connects lazily, on first use."""
    kwargs: dict[str, Any] = {
        "socket_timeout": options.timeout,
        "socket_connect_timeout": options.timeout,
        # One quick retry on a fresh connection hides a pooled connection that died with a Redis restart; more
        # would only stretch the time a caller waits while Redis is down.
        "retry": Retry(NoBackoff(), 1),
        "decode_responses": False,
        "protocol": 2,
    }
    if options.username:
        kwargs["username"] = options.username
    if options.password:
        kwargs["password"] = options.password
    if options.cluster:
        return RedisCluster.from_url(options.url, **kwargs)
    return aioredis.Redis.from_url(options.url, health_check_interval=30, **kwargs)


# Errors that mean "Redis is not there (now)"; the call may succeed later.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError, rex.TimeoutError, rex.ClusterError, rex.RedisClusterException, TimeoutError, OSError,
)


@contextlib.asynccontextmanager
async def redis_call(timeout: float, what: str) -> AsyncIterator[None]:
    """Bounds one backend operation in time and translates Redis' errors.

    Raises:
        Unavailable: Redis is unreachable, restarting, or did not answer within `timeout`.
        Overloaded: Redis is out of memory and its policy refuses writes (maxmemory with noeviction).
    """
    try:
        async with asyncio.timeout(timeout):
            yield
    except rex.ResponseError as exc:
        message = str(exc)
        if isinstance(exc, rex.OutOfMemoryError) or message.startswith("OOM"):
            raise Overloaded(f"Redis refused to {what}: {message}") from exc
        if message.startswith(("LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN")):
            raise Unavailable(f"Redis cannot {what} now: {message}") from exc
        raise
    except _UNAVAILABLE as exc:
        raise Unavailable(f"Redis did not {what}: {type(exc).__name__}: {exc or 'timed out'}") from exc
