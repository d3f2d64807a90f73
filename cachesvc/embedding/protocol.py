"""The two embedding seams: a synchronous batch `Embedder` and the asyncio-facing `TextEncoder`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]
"""A 1-D float32 embedding, L2-normalised (so inner product = cosine)."""

Matrix = NDArray[np.float32]
"""An (n, dimension) float32 array of L2-normalised embeddings."""


@dataclass(frozen=True, slots=True, eq=False)
class Timed:
    """A vector and how long its text waited in the queue for a model worker (0 when no model ran for it, as on a
    memo hit), so that a lookup can tell its queueing from its own model run."""

    vector: Vector
    queue_seconds: float = 0.0
    # When its model run started, on the encoder's monotonic clock (None when no model ran for it): a caller that
    # joins an embedding under way waited only from its own arrival, not from the first caller's.
    run_started: float | None = None


class Embedder(Protocol):
    """Blocking, thread-safe batch embedding. Called from worker threads, never from the event loop."""

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Matrix:
        """Embeds `texts` in order.

        Returns:
            float32 array of shape (len(texts), dimension), each row L2-normalised.

        Raises:
            InvalidRequest: a text is empty or too long.
            ModelError: the model failed to run.
        """
        ...


class TextEncoder(Protocol):
    """What core needs: one text in, one vector out, without blocking the event loop."""

    @property
    def dimension(self) -> int: ...

    async def encode(self, text: str, *, deadline: float | None = None) -> Vector:
        """Args:
            deadline: when the caller gives up, on the `time.monotonic()` clock; work that cannot finish by
                then is shed with `Overloaded` instead of being done for nobody.
        """
        ...

    async def encode_timed(self, text: str, *, deadline: float | None = None) -> Timed:
        """`encode`, with the time the text queued for the model."""
        ...


class PartitionedEncoder(Protocol):
    """A `TextEncoder` whose shared state (a memo, joined in-flight work) is kept apart per partition (tenant)."""

    @property
    def dimension(self) -> int: ...

    async def encode(self, text: str, *, partition: str = "", deadline: float | None = None) -> Vector: ...

    async def encode_timed(self, text: str, *, partition: str = "", deadline: float | None = None) -> Timed: ...
