"""Text -> vector: the Embedder seam, the ONNX embedder, micro-batching and the memo in front of it."""

from cachesvc.embedding.protocol import Embedder, TextEncoder, Timed, Vector

__all__ = ["Embedder", "TextEncoder", "Timed", "Vector"]
