"""Source ``container_logs``: discovers, tails and follows container log files through rotation.

Config (``sources[]``): ``paths``, ``exclude_paths``, ``read_from``, ``max_line_bytes``,
``read_chunk_bytes``, ``rescan_interval``, ``poll_interval``, ``rotate_wait`` (see collector.config).

Lifecycle and concurrency: one task runs :meth:`ContainerLogsSource.run`. It reads one chunk per file per
round and hands the records to ``emit``, an awaitable that blocks while the sink is behind: that is the
backpressure, reading simply pauses and nothing is dropped. New files are found by a glob rescan every
``rescan_interval`` seconds and at once on an inotify event (watchdog) in the watched folders.

Rotation:
- rename-and-create (kubelet): the path now leads to another inode; the old file is read to its end and
  closed after ``rotate_wait`` seconds without new bytes; the new one is read from its start.
- copytruncate: the file's size fell below our offset (or its first line changed); if a copy with the
  same first line is found beside it (``<name>.1``, ``<name>-<date>``, ...) the unread rest is read from
  the copy under the original identity; the truncated file is then read again from its start.
- deleted: read to the end through the open descriptor, then closed.
- while stopped: a checkpointed file found renamed beside its old path is read from its checkpoint.

Files are handed to the pipeline through ``on_open`` (a new checkpoint entry) and ``on_close`` (the file
is finished; its entry is removed once everything before its final offset is acknowledged).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import glob
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from collector.checkpoint import CheckpointStore, Entry
from collector.clock import Clock
from collector.config import ContainerLogsSource as SourceConfig
from collector.metrics import PipelineMetrics
from collector.record import Record
from collector.tailfile import (
    Opened,
    TailedFile,
    Truncated,
    make_file_info,
    open_identified,
    same_fingerprint,
)

log = logging.getLogger(__name__)

Emit = Callable[[list[Record]], Awaitable[None]]


class ContainerLogsSource:
    def __init__(
        self,
        cfg: SourceConfig,
        *,
        node_name: str,
        store: CheckpointStore,
        metrics: PipelineMetrics,
        clock: Clock,
        emit: Emit,
        on_close: Callable[[str, int], Awaitable[None]],
    ) -> None:
        self.cfg = cfg
        self.node = node_name
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.emit = emit
        self.on_close = on_close
        self.by_path: dict[str, TailedFile] = {}  # active files, by glob-matched path
        self.retiring: list[TailedFile] = []  # rotated away, deleted or copies: read to end, then close
        self._wake = asyncio.Event()
        self._rescan_now = True
        self._observer: Any = None
        self._read_errors: set[str] = set()  # files whose read error was logged (logged once each)

    # -- public ----------------------------------------------------------------------------------------
    def files(self) -> Iterable[TailedFile]:
        yield from self.by_path.values()
        yield from self.retiring

    def lag(self) -> Iterable[tuple[str, int]]:
        for f in self.files():
            yield f.path, max(0, f.size - f.offset)

    async def run(self, stop: asyncio.Event) -> None:
        """Tail until ``stop`` is set. Files stay open for :meth:`close` (at shutdown)."""
        await self._recover()
        self._start_watching()
        try:
            next_rescan = next_poll = self.clock.monotonic()
            chunk = self.cfg.read_chunk_bytes
            while not stop.is_set():
                now = self.clock.monotonic()
                if self._rescan_now or now >= next_rescan:
                    self._rescan_now = False
                    self._rescan(now)
                    next_rescan = now + self.cfg.rescan_interval
                if now >= next_poll:
                    await self._poll(now)
                    next_poll = now + self.cfg.poll_interval
                progressed = False
                for f in list(self.files()):
                    if stop.is_set():
                        break
                    try:
                        got = f.read(chunk, now)
                    except Truncated:
                        self.by_path.pop(f.path, None)
                        await self._handle_truncation(f)
                        self._rescan_now = True
                        continue
                    except OSError as e:  # EIO and friends: keep the file, try again next round
                        self._read_error(f, e)
                        continue
                    if got is None:
                        continue
                    recs, nbytes = got
                    progressed = True
                    self._count(f, nbytes)
                    if recs:
                        await self.emit(recs)
                if not progressed:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.cfg.poll_interval)
                else:
                    await asyncio.sleep(0)
        finally:
            self._stop_watching()

    def close(self) -> None:
        for f in list(self.files()):
            f.close()
        self.by_path.clear()
        self.retiring.clear()
        self.metrics.files_open.set(0)

    # -- discovery -------------------------------------------------------------------------------------
    def _matches(self) -> list[str]:
        found: list[str] = []
        seen: set[str] = set()
        for pattern in self.cfg.paths:
            for p in sorted(glob.glob(pattern, recursive="**" in pattern)):
                if p in seen or any(fnmatch.fnmatch(p, x) for x in self.cfg.exclude_paths):
                    continue
                seen.add(p)
                if os.path.isfile(p):
                    found.append(p)
        return found

    def _open(self, path: str, opened: Opened, offset: int, now: float, *, new: bool) -> TailedFile:
        info = make_file_info(opened.key, path, opened.real_path, self.node)
        f = TailedFile(opened, path, info, offset, self.cfg.max_line_bytes, now, self.clock.time)
        if new:
            self.store.set(f.key, Entry(path, opened.real_path, opened.dev, opened.ino, opened.fp, offset))
        self.metrics.files_open.inc()
        return f

    async def _recover(self) -> None:
        """First scan: resume checkpointed files, find the ones rotated while we were stopped."""
        now = self.clock.monotonic()
        entries = dict(self.store.load())
        matched: set[str] = set()
        for path in self._matches():
            opened = open_identified(path)
            if opened is None:
                continue
            entry = entries.get(opened.key)
            if entry is not None:
                offset, new = entry.offset, False
                matched.add(opened.key)
            elif self.cfg.read_from == "tail":
                offset, new = os.fstat(opened.fd).st_size, True
            else:
                offset, new = 0, True
            self.by_path[path] = self._open(path, opened, offset, now, new=new)
        for key, entry in entries.items():
            if key in matched:
                continue
            opened = _find_moved(entry, key)
            if opened is None:
                log.warning(
                    "file %s (checkpoint at byte %d) is gone; lines after that offset, if any, were lost",
                    entry.real_path,
                    entry.offset,
                )
                self.metrics.files_lost.inc()
                self.store.remove(key)
                continue
            log.info(
                "resuming %s, rotated to %s while stopped, at byte %d",
                entry.path,
                opened.real_path,
                entry.offset,
            )
            f = self._open(entry.path, opened, entry.offset, now, new=False)
            f.rotated = True
            self.retiring.append(f)
            self._update_entry(f)

    def _rescan(self, now: float) -> None:
        current = set()
        for path in self._matches():
            current.add(path)
            f = self.by_path.get(path)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if f is not None:
                if (st.st_dev, st.st_ino) == (f.dev, f.ino):
                    continue
                self._retire(f, "rename")
                del self.by_path[path]
            opened = open_identified(path)
            if opened is None:
                continue  # empty or first line incomplete: try again at the next scan
            if any(r.key == opened.key for r in self.retiring):
                os.close(opened.fd)  # a retiring file came back under its name: nothing new
                continue
            self.by_path[path] = self._open(path, opened, 0, now, new=True)
            log.debug("tailing %s", path)
        for path in list(self.by_path):
            if path not in current:
                f = self.by_path.pop(path)
                self._retire(f, "rename")

    def _retire(self, f: TailedFile, kind: str) -> None:
        f.rotated = True
        self.retiring.append(f)
        self.metrics.rotations.labels(kind).inc()

    async def _poll(self, now: float) -> None:
        """Check open files for truncation and deletion; close retiring files that are done."""
        for path, f in list(self.by_path.items()):
            try:
                state = f.check()
            except OSError as e:
                log.warning("cannot stat %s: %s", path, e)
                continue
            if state == "truncated":
                del self.by_path[path]
                await self._handle_truncation(f)
                self._rescan_now = True
            elif state == "deleted":
                del self.by_path[path]
                self._retire(f, "delete")
        for f in list(self.retiring):
            with contextlib.suppress(OSError):
                f.check()
            idle = now - f.last_data
            if f.offset >= f.size and idle >= self.cfg.rotate_wait:
                self.retiring.remove(f)
                await self._finish(f)

    async def _handle_truncation(self, f: TailedFile) -> None:
        self.metrics.rotations.labels("truncate").inc()
        copy = _find_copy(f)
        if copy is not None:
            log.info("%s was truncated; reading its unread rest from the copy %s", f.path, copy.real_path)
            f.switch_to(copy)
            self.retiring.append(f)
            self._update_entry(f)
            return
        if f.size > f.offset:
            log.warning(
                "%s was truncated with %d unread bytes and no copy was found beside it",
                f.path,
                f.size - f.offset,
            )
            self.metrics.dropped.labels("truncated_unread").inc()
        f.rotated = True
        await self._finish(f)  # the old content is gone: close now, never read the new content as old

    def _update_entry(self, f: TailedFile) -> None:
        e = self.store.entries.get(f.key)
        if e is not None:
            e.dev, e.ino, e.real_path = f.dev, f.ino, f.real_path
            self.store.dirty = True

    async def _finish(self, f: TailedFile) -> None:
        recs = f.finish()
        self.metrics.files_open.dec()
        if recs:
            await self.emit(recs)
        await self.on_close(f.key, f.offset)

    def _read_error(self, f: TailedFile, e: OSError) -> None:
        if f.key not in self._read_errors:
            log.error("cannot read %s: %s (will keep trying)", f.path, e)
            self._read_errors.add(f.key)
        self.metrics.read_errors.inc()

    def _count(self, f: TailedFile, nbytes: int) -> None:
        m, s = self.metrics, f.asm.stats
        m.bytes_read.inc(nbytes)
        if s.lines:
            m.lines_read.inc(s.lines)
            s.lines = 0
        if s.parse_errors:
            m.parse_errors.inc(s.parse_errors)
            s.parse_errors = 0
        if s.invalid_utf8:
            m.invalid_utf8.inc(s.invalid_utf8)
            s.invalid_utf8 = 0
        if s.split_parts:
            m.split_parts.inc(s.split_parts)
            s.split_parts = 0

    # -- inotify ---------------------------------------------------------------------------------------
    def _start_watching(self) -> None:
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency; rescans still work
            return
        loop = asyncio.get_running_loop()
        source = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                loop.call_soon_threadsafe(source._on_fs_event, event.event_type)

        observer = Observer()
        dirs = {_static_dir(p) for p in self.cfg.paths}
        try:
            for d in dirs:
                if os.path.isdir(d):
                    observer.schedule(Handler(), d, recursive=False)
            observer.daemon = True
            observer.start()
        except OSError as e:  # e.g. inotify watch limit reached: the periodic rescan still finds files
            log.warning(
                "cannot watch %s for new files (%s); relying on rescans every %.1fs",
                ", ".join(sorted(dirs)),
                e,
                self.cfg.rescan_interval,
            )
            return
        self._observer = observer

    def _on_fs_event(self, kind: str) -> None:
        if kind in ("created", "moved", "deleted"):
            self._rescan_now = True
        self._wake.set()

    def _stop_watching(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None


def _static_dir(pattern: str) -> str:
    parts = Path(pattern).parts
    out: list[str] = []
    for p in parts:
        if any(c in p for c in "*?["):
            break
        out.append(p)
    d = str(Path(*out)) if out else "."
    return d if os.path.isdir(d) else os.path.dirname(d)


def _siblings(real_path: str) -> list[str]:
    d, base = os.path.split(real_path)
    try:
        names = os.listdir(d or ".")
    except OSError:
        return []
    return [os.path.join(d, n) for n in names if n.startswith(base)]


def _find_moved(entry: Entry, key: str) -> Opened | None:
    """A checkpointed file found beside its old path: renamed (same device, inode and first line) or
    copied before a copytruncate (same first line, at least as long as the checkpoint)."""
    candidates = _siblings(entry.real_path)
    for by_inode in (True, False):
        for cand in candidates:
            try:
                st = os.stat(cand)
            except OSError:
                continue
            if by_inode != ((st.st_dev, st.st_ino) == (entry.dev, entry.ino)) or st.st_size < entry.offset:
                continue
            opened = open_identified(cand)
            if opened is None:
                continue
            if opened.fp == entry.fingerprint:
                opened.identity = key
                return opened
            os.close(opened.fd)
    return None


def _find_copy(f: TailedFile) -> Opened | None:
    """A copy of a truncated file (copytruncate): same first line, at least as long as what we read."""
    for cand in _siblings(f.real_path):
        if cand == f.real_path:
            continue
        try:
            st = os.stat(cand)
            if st.st_size < f.offset or (st.st_dev, st.st_ino) == (f.dev, f.ino):
                continue
            fd = os.open(cand, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        if same_fingerprint(fd, f.fp, f.fp_len):
            return Opened(fd, st.st_dev, st.st_ino, f.fp, f.fp_len, os.path.realpath(cand), f.key)
        os.close(fd)
    return None
