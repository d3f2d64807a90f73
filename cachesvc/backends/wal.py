"""The write-ahead log: numbered segment files of framed msgpack records, written by one thread with group
commit.

Appenders queue a record and (unless it is a best-effort record such as a hit count) wait until it is as
durable as the fsync policy promises. The writer takes everything queued in one go, writes it with one
`write` and, under `always`, covers it with one `fsync`: concurrent stores share that fsync, which is what
makes `always` affordable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cachesvc.backends.framing import frame
from cachesvc.errors import CacheError

log = logging.getLogger(__name__)

# Data files are readable by the server's user only: they hold every tenant's prompts and completions.
PRIVATE_FILE_MODE = 0o600
SEGMENT_PREFIX = "wal-"
SEGMENT_SUFFIX = ".log"


class FsyncPolicy(StrEnum):
    ALWAYS = "always"  # fsync before acknowledging: an acknowledged store survives power loss
    EVERYSEC = "everysec"  # written before acknowledging, fsynced once a second: a crash of the machine loses <= 1 s
    NO = "no"  # written before acknowledging, fsynced when the OS decides: survives a process crash only


class StorageError(CacheError):
    """The data directory could not be written or read."""


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{SEGMENT_PREFIX}{number:012d}{SEGMENT_SUFFIX}"


def segment_number(path: Path) -> int:
    return int(path.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)])


def list_segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"), key=segment_number)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Pending:
    frames: list[bytes] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    max_lsn: int = 0


class WalWriter:
    """Single-writer log. All file I/O happens on its own thread; `append` is called from the event loop."""

    def __init__(self, *, directory: Path, segment: int, policy: FsyncPolicy) -> None:
        self._directory = directory
        self._policy = policy
        self._segment = segment
        self._fd = os.open(segment_path(directory, segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
        fsync_directory(directory)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="wal")
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_fsync = time.monotonic()
        self._closed = False
        self._failure: StorageError | None = None  # set once a write or fsync failed: no more writes
        self.segment_max_lsn: dict[int, int] = {}  # which records each segment holds, for safe deletion
        self.bytes_written = 0
        self.fsyncs = 0
        self.batches = 0

    @property
    def segment(self) -> int:
        return self._segment

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="wal-writer")

    async def append(self, payload: bytes, *, lsn: int, wait: bool = True) -> None:
        """Queues a record; with `wait`, returns once it is durable per the policy.

        Raises:
            StorageError: the log could not be written (the record is not durable; do not apply it).
        """
        if self._closed:
            raise StorageError("the write-ahead log is closed")
        if self._failure is not None:
            raise self._failure
        self._pending.frames.append(frame(payload))
        self._pending.max_lsn = max(self._pending.max_lsn, lsn)
        self._wake.set()
        if wait:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending.waiters.append(waiter)
            await waiter

    async def rotate(self) -> int:
        """Flushes what is queued, then starts a new segment; returns the new segment's number."""
        await self.flush()
        loop = asyncio.get_running_loop()
        number = self._segment + 1
        await loop.run_in_executor(self._thread, self._switch_to, number)
        return number

    async def flush(self) -> None:
        """Waits until everything queued so far is written and fsynced (whatever the policy)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.waiters.append(waiter)
        self._wake.set()
        await waiter
        await asyncio.get_running_loop().run_in_executor(self._thread, self._fsync)

    async def aclose(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(StorageError):
            await self.flush()
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._thread.submit(os.close, self._fd).result()
        self._thread.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._policy is FsyncPolicy.EVERYSEC:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            else:
                await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, _Pending()
            try:
                segment = await loop.run_in_executor(self._thread, self._write, b"".join(batch.frames))
                if batch.max_lsn:
                    self.segment_max_lsn[segment] = max(self.segment_max_lsn.get(segment, 0), batch.max_lsn)
            except OSError as exc:
                # Fail-stop: after a failed write or fsync the file's state on disk is unknown, so no later
                # record may be acknowledged on top of it. Stores fail until the server is restarted.
                log.error("write-ahead log write failed; refusing further writes: %s", exc)
                error = StorageError(f"cannot write the write-ahead log: {exc}")
                self._failure = error
                queued, self._pending = self._pending, _Pending()  # never written on top of the failure
                for waiter in [*batch.waiters, *queued.waiters]:
                    if not waiter.done():
                        waiter.set_exception(error)
                continue
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _write(self, data: bytes) -> int:
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            if data:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                self.bytes_written += len(data)
                self.batches += 1
            due = (
                (self._policy is FsyncPolicy.ALWAYS and bool(data))
                or (self._policy is FsyncPolicy.EVERYSEC and time.monotonic() - self._last_fsync >= 1.0)
            )
            if due:
                self._fsync()
        except OSError:
            # Take the unacknowledged batch back out, so that recovery neither replays it nor finds a
            # half-written frame in the middle of the log.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise
        return self._segment

    def _fsync(self) -> None:
        os.fsync(self._fd)
        self._last_fsync = time.monotonic()
        self.fsyncs += 1

    def _switch_to(self, number: int) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = os.open(segment_path(self._directory, number), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                           PRIVATE_FILE_MODE)
        fsync_directory(self._directory)
        self._segment = number
