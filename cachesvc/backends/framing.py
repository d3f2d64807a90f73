"""Checksummed record framing shared by the write-ahead log and snapshots.

A frame is `magic (2) | length (4) | payload crc32 (4) | header crc32 (4) | payload`. The header has its own
checksum so that a corrupted length is caught as corruption instead of being read as a short tail.

Reading tells a torn tail (what a crash mid-append leaves: a prefix of the last frame, or zeros where the
filesystem had not written yet) from corruption in the middle (a bad frame with valid data after it).
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

MAGIC = b"\xca\xc5"
_HEADER = struct.Struct(">2sII")  # magic, length, payload crc
HEADER_SIZE = _HEADER.size + 4  # + header crc
MAX_FRAME = 64 << 20


def frame(payload: bytes) -> bytes:
    header = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload))
    return header + struct.pack(">I", zlib.crc32(header)) + payload


class Damage(Enum):
    NONE = "none"
    TORN_TAIL = "torn tail"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class ReadResult:
    # (offset, payload) of every good frame, in order; payloads are views into the data read (no copies)
    payloads: list[tuple[int, memoryview]]
    damage: Damage
    damage_offset: int  # where the first bad frame starts (file size when there is none)
    resynced: int  # good frames found after corruption (only when reading with resync)


class CorruptFile(Exception):
    def __init__(self, path: Path, offset: int, why: str) -> None:
        super().__init__(f"{path}: corrupt record at byte offset {offset} ({why})")
        self.path = path
        self.offset = offset


def _check_at(data: memoryview, offset: int) -> tuple[int | None, Damage]:
    """Returns (frame length, NONE) for a good frame at `offset`, else (None, what the bad frame looks like)."""
    remaining = len(data) - offset
    if remaining < HEADER_SIZE:
        # A partial header is what a crash mid-append leaves, unless it is not at the end (then it is not partial).
        return None, Damage.TORN_TAIL
    magic, length, payload_crc = _HEADER.unpack_from(data, offset)
    (header_crc,) = struct.unpack_from(">I", data, offset + _HEADER.size)
    if magic != MAGIC or zlib.crc32(data[offset:offset + _HEADER.size]) != header_crc:
        # Zeros to the end are blocks the filesystem had allocated but not yet written.
        return None, Damage.CORRUPT if any(data[offset:]) else Damage.TORN_TAIL
    if length > MAX_FRAME:
        return None, Damage.CORRUPT
    if length > remaining - HEADER_SIZE:
        return None, Damage.TORN_TAIL  # a good header whose payload was cut short
    start = offset + HEADER_SIZE
    if zlib.crc32(data[start:start + length]) != payload_crc:
        # A complete frame that fails its checksum is torn only when nothing follows it.
        return None, Damage.TORN_TAIL if start + length == len(data) else Damage.CORRUPT
    return HEADER_SIZE + length, Damage.NONE


class FrameReader:
    """Iterates the good frames of `data` as `(offset, payload)`, checking each before it is yielded, so a large
    file (a memory-mapped snapshot) is parsed while it is paged in rather than after. Once iteration ends,
    `damage`, `damage_offset` and `resynced` say what ended it.

    Args:
        path: the file the data came from (for messages).
        resync: after corruption, scan on for later good frames (the `--repair` reading) instead of stopping.
    """

    def __init__(self, data: bytes | memoryview | mmap.mmap, *, path: Path, resync: bool = False) -> None:
        self.path = path
        self._view = memoryview(data)
        self._resync = resync
        self.damage = Damage.NONE
        self.damage_offset = len(self._view)
        self.resynced = 0

    def __iter__(self) -> Iterator[tuple[int, memoryview]]:
        view = self._view
        offset = 0
        while offset < len(view):
            length, damage = _check_at(view, offset)
            if length is None:
                self.damage, self.damage_offset = damage, offset
                if self._resync and damage is Damage.CORRUPT:
                    for found in _resync(view, offset + 1):
                        self.resynced += 1
                        yield found
                return
            yield offset, view[offset + HEADER_SIZE:offset + length]
            offset += length


def read_frames(data: bytes | memoryview, *, path: Path, resync: bool = False) -> ReadResult:
    """Parses all frames of `data` (see `FrameReader`).

    Returns:
        Every good frame before the first bad one (and after it, with resync) and what the damage was.
    """
    reader = FrameReader(data, path=path, resync=resync)
    payloads = list(reader)
    return ReadResult(payloads, reader.damage, reader.damage_offset, reader.resynced)


def _resync(view: memoryview, start: int) -> Iterator[tuple[int, memoryview]]:
    """The good frames after a corrupt one, found by their magic and checksums."""
    raw = view.tobytes()  # repair only: a copy is fine, and bytes.find is fast
    offset = raw.find(MAGIC, start)
    while 0 <= offset < len(raw):
        length, _ = _check_at(view, offset)
        if length is None:
            offset = raw.find(MAGIC, offset + 1)
            continue
        yield offset, view[offset + HEADER_SIZE:offset + length]
        offset += length
