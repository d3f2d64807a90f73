"""HNSW graphs saved beside a snapshot, so that a restart serves from them at once instead of rebuilding.

    snapshot-<lsn>.snap        entries with their vectors (the truth)
    snapshot-<lsn>.graphs      for each scope searched by an HNSW graph: the graph, and the entry id at each of
                               its positions

A graph file is an accelerator, never a source of entries: loading maps each graph position to an entry by its
id (ids are never reused and an entry's vector never changes), positions whose entry is gone become tombstones,
and entries the graph lacks are added to it. Anything wrong with the file (missing, another snapshot's, torn,
a checksum that fails, a graph whose vectors are not the entries') makes the loader ignore it, and the scope is
rebuilt in the background as before.

Layout: `MAGIC`, a framed header {lsn, dimension, scopes}; per scope a framed {scope, count} and its ids in
framed blocks, then `length (8) | crc32 (4)` and the graph as FAISS writes it (streamed, so a large graph is
never copied in memory); a framed trailer {scopes}. The file is written to a temporary name, fsynced and
renamed, so it is either whole or absent.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import msgpack
import numpy as np

from cachesvc.backends.framing import HEADER_SIZE, Damage, frame
from cachesvc.backends.framing import _check_at as check_frame_at
from cachesvc.backends.wal import PRIVATE_FILE_MODE, fsync_directory

MAGIC = b"cachesvc-graphs/1\n"
SUFFIX = ".graphs"
_BLOB = struct.Struct(">QI")  # graph length, graph crc32
IDS_PER_FRAME = 200_000  # ~7 MB of ids a frame, well under the frame limit


class GraphFileError(Exception):
    """A graph file that must not be trusted (the reason is the message)."""


@dataclass(frozen=True)
class SavedGraph:
    """One scope's graph to write: the HNSW index (not changed while it is written) and the entry id at each of
    its positions ("" for a position whose entry is already gone)."""

    scope: str
    entry_ids: list[str]
    index: Any  # faiss.IndexIDMap2 over an IndexHNSWFlat


@dataclass(frozen=True)
class LoadedGraph:
    scope: str
    entry_ids: list[str]
    index: Any  # faiss.IndexIDMap2 over an IndexHNSWFlat (its ids are the saving process's labels)


def graph_path(snapshot: Path) -> Path:
    """Where the graphs of `snapshot` live."""
    return snapshot.with_suffix(SUFFIX)


def write_graphs(path: Path, *, lsn: int, dimension: int, graphs: list[SavedGraph]) -> int:
    """Writes `graphs` atomically to `path`; returns the bytes written."""
    tmp = path.with_name(path.name + ".tmp")
    # Private like every other data file: the graph holds no text, but its vectors are the prompts' embeddings.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE), "wb", buffering=1 << 20) as f:
        f.write(MAGIC)
        f.write(frame(msgpack.packb({"lsn": lsn, "dimension": dimension, "scopes": len(graphs)})))
        for graph in graphs:
            f.write(frame(msgpack.packb({"scope": graph.scope, "count": len(graph.entry_ids)})))
            for start in range(0, len(graph.entry_ids), IDS_PER_FRAME):
                f.write(frame(msgpack.packb(graph.entry_ids[start:start + IDS_PER_FRAME])))
            _write_blob(f, graph.index)
        f.write(frame(msgpack.packb({"end": len(graphs)})))
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
    tmp.replace(path)
    fsync_directory(path.parent)
    return size


def _write_blob(f: Any, index: Any) -> None:
    """The graph as FAISS writes it, streamed, behind its length and checksum (patched in afterwards)."""
    at = f.tell()
    f.write(_BLOB.pack(0, 0))
    length, crc = 0, 0

    def sink(chunk: bytes) -> int:
        nonlocal length, crc
        f.write(chunk)
        length += len(chunk)
        crc = zlib.crc32(chunk, crc)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(sink)  # type: ignore[attr-defined]
    faiss.write_index(index, writer)
    del writer  # flushes its buffer into `sink`
    end = f.tell()
    f.seek(at)
    f.write(_BLOB.pack(length, crc))
    f.seek(end)


def read_graphs(path: Path, *, lsn: int, dimension: int) -> Iterator[LoadedGraph]:
    """The graphs saved with the snapshot at `lsn`, each checked before FAISS reads it.

    Raises:
        GraphFileError: the file is missing, belongs to another snapshot or model, or is damaged. Graphs
            yielded before the error are sound; the caller decides whether to use them.
    """
    try:
        f = path.open("rb")
    except OSError as exc:
        raise GraphFileError(f"{path}: cannot open: {exc}") from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < len(MAGIC):
            raise GraphFileError(f"{path}: too short to be a graph file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                yield from _parse(view, path, lsn=lsn, dimension=dimension)
            finally:
                view.release()


def _parse(view: memoryview, path: Path, *, lsn: int, dimension: int) -> Iterator[LoadedGraph]:
    if bytes(view[:len(MAGIC)]) != MAGIC:
        raise GraphFileError(f"{path}: not a graph file")
    offset = len(MAGIC)

    def next_frame() -> Any:
        nonlocal offset
        length, damage = check_frame_at(view, offset)
        if length is None or damage is not Damage.NONE:
            raise GraphFileError(f"{path}: damaged at byte offset {offset} ({damage.value})")
        payload = view[offset + HEADER_SIZE:offset + length]
        offset += length
        return msgpack.unpackb(payload, use_list=True)

    header = next_frame()
    if not isinstance(header, dict) or header.get("lsn") != lsn or header.get("dimension") != dimension:
        raise GraphFileError(f"{path}: written for another snapshot or model ({header!r})")
    for _ in range(int(header["scopes"])):
        meta = next_frame()
        entry_ids: list[str] = []
        while len(entry_ids) < int(meta["count"]):
            entry_ids.extend(next_frame())
        if offset + _BLOB.size > len(view):
            raise GraphFileError(f"{path}: cut short at byte offset {offset}")
        length, crc = _BLOB.unpack_from(view, offset)
        start = offset + _BLOB.size
        if start + length > len(view) or zlib.crc32(view[start:start + length]) != crc:
            raise GraphFileError(f"{path}: graph of scope {meta['scope']} fails its checksum")
        # Checked before FAISS reads it: a damaged graph could point a search outside its arrays.
        index = faiss.deserialize_index(np.frombuffer(view[start:start + length], dtype=np.uint8))
        offset = start + length
        if int(index.ntotal) != len(entry_ids) or int(index.d) != dimension:
            raise GraphFileError(f"{path}: graph of scope {meta['scope']} has {index.ntotal} vectors of dimension "
                                 f"{index.d}, its ids say {len(entry_ids)}")
        yield LoadedGraph(scope=str(meta["scope"]), entry_ids=entry_ids, index=index)
    trailer = next_frame()
    if trailer != {"end": int(header["scopes"])}:
        raise GraphFileError(f"{path}: bad trailer")
