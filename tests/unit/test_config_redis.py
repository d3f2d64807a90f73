"""Settings of the redis backend: their spellings, environment twins, and what is refused with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachesvc.config import BackendKind, Settings, load_settings, parse_argv


def test_flags_and_environment_twins_select_redis() -> None:
    s = parse_argv(["--backend", "redis", "--redis-url", "rediss://u:pw@cache.internal:6380/2", "--redis-cluster"])
    assert (s.backend, s.redis_url, s.redis_cluster) == (BackendKind.REDIS, "rediss://u:pw@cache.internal:6380/2",
                                                         True)
    env = load_settings(environ={"CACHESVC_BACKEND": "redis", "CACHESVC_REDIS_URL": "redis://h:6379/0",
                                 "CACHESVC_REDIS_PASSWORD": "s3cret", "CACHESVC_REDIS_CLUSTER": "false"})
    assert (env.backend, env.redis_url, env.redis_password, env.redis_cluster) == (
        BackendKind.REDIS, "redis://h:6379/0", "s3cret", False)
    assert Settings().backend is BackendKind.EMBEDDED


def test_passwords_never_reach_the_startup_line() -> None:
    shown = Settings(backend=BackendKind.REDIS, redis_url="redis://app:hunter2@h:6379/0",
                     redis_password="x").redacted()
    assert shown["redis_url"] == "redis://app:***@h:6379/0"
    assert "hunter2" not in str(shown) and shown["redis_password"] == "<1 redacted>"


@pytest.mark.parametrize("setting", [{"max_bytes": 1 << 20}, {"max_entries": 10}, {"data_dir": Path("/tmp/x")},
                                     {"repair": True}, {"snapshot_interval": 5.0}])
def test_embedded_only_settings_are_refused_with_redis(setting: dict[str, object]) -> None:
    [name] = setting
    with pytest.raises(ValueError, match=rf"{name} has no meaning with backend redis.*maxmemory"):
        Settings(backend=BackendKind.REDIS, redis_url="redis://h:6379/0", **setting)  # type: ignore[arg-type]
    Settings(**setting)  # type: ignore[arg-type]  # fine with the embedded backend


def test_redis_needs_a_redis_url() -> None:
    with pytest.raises(ValueError, match="needs redis_url"):
        Settings(backend=BackendKind.REDIS)
    with pytest.raises(ValueError, match="redis:// or rediss://"):
        Settings(backend=BackendKind.REDIS, redis_url="http://h:6379")
