"""The lifecycle states shared by components that start and close (batcher, backend, cache service)."""

from __future__ import annotations

from enum import Enum


class State(Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"
