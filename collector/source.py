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
from collector.metadata import MULTILINE_ANNOTATION, PodMetadata
from collector.metrics import PipelineMetrics
from collector.multiline import RuleSet, rule_set
from collector.record import Record
from collector.tailfile import (
    MultilineSpec,
    Opened,
    TailedFile,
    Truncated,
    identify_fd,
    make_file_info,
    open_identified,
    same_fingerprint,
)

log = logging.getLogger(__name__)

Emit = Callable[[list[Record]], Awaitable[None]]
FINGERPRINT_MEMORY = 24 * 3600.0


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
        on_skip: Callable[[str, int], Awaitable[None]] | None = None,
        metadata: PodMetadata | None = None,
    ) -> None:
        self.cfg = cfg
        self.node = node_name
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.emit = emit
        self.on_close = on_close
        self.on_skip = on_skip  # progress of a file whose lines are excluded (checkpoint still advances)
        self.metadata = metadata
        self.by_path: dict[str, TailedFile] = {}  # active files, by glob-matched path
        self.retiring: list[TailedFile] = []  # rotated away, deleted or copies: read to end, then close
        self._data = asyncio.Event()  # a watched file changed: wake the reader
        self._fs = asyncio.Event()  # a file appeared, moved or vanished: wake discovery
        # first-line hashes of files opened in the last FINGERPRINT_MEMORY seconds: a file beside them
        # with the same first line is a copy (copytruncate) of something already read, never adopted
        self._fingerprints: dict[str, float] = {}
        self._rescan_now = True
        self._observer: Any = None
        self._read_errors: set[str] = set()
        self._bad_annotations: set[str] = set()  # files whose read error was logged (logged once each)

    # -- public ----------------------------------------------------------------------------------------
    def files(self) -> Iterable[TailedFile]:
        yield from self.by_path.values()
        yield from self.retiring

    def lag(self) -> Iterable[tuple[str, int]]:
        for f in self.files():
            if not f.closed:
                yield f.path, max(0, f.size - f.offset)

    def backlog(self) -> dict[str, int]:
        """Unread bytes in open files, by state: active, rotated (still on disk), deleted (held open)."""
        out = {"active": 0, "rotated": 0, "deleted": 0}
        for f in self.files():
            if not f.closed:
                state = "deleted" if f.deleted else "rotated" if f.rotated else "active"
                out[state] += max(0, f.size - f.offset)
        return out

    async def run(self, stop: asyncio.Event) -> None:
        """Tail until ``stop`` is set. Files stay open for :meth:`close` (at shutdown).

        Two loops: the reader (which blocks while the sink is behind) and discovery, which goes on
        meanwhile, so files that appear and rotate during an outage are opened at once and held open:
        the kubelet deleting them then frees nothing we have not read.
        """
        self._recover()
        self._start_watching()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._discover(stop), name="discovery")
                await self._read_loop(stop)
        finally:
            self._stop_watching()

    async def _read_loop(self, stop: asyncio.Event) -> None:
        chunk = self.cfg.read_chunk_bytes
        while not stop.is_set():
            now = self.clock.monotonic()
            progressed = False
            for f in list(self.files()):
                if stop.is_set():
                    break
                if f.closed:
                    continue
                if f.finish_now:
                    await self._finish(f)
                    continue
                try:
                    got = f.read(chunk, now)
                except Truncated:
                    self._handle_truncation(f)
                    continue
                except OSError as e:  # EIO and friends: keep the file, try again next round
                    self._read_error(f, e)
                    continue
                if got is None:
                    continue
                recs, nbytes = got
                progressed = True
                self._count(f, nbytes)
                if self._excluded(f):
                    if recs:
                        self.metrics.excluded.inc(len(recs))
                        if self.on_skip is not None:
                            await self.on_skip(f.key, recs[-1].ckpt)
                    continue
                recs = f.join(recs, now)
                if recs:
                    await self.emit(recs)
            for f in list(self.files()):  # multiline events of quiet containers (only once read up)
                if f.joiners and not f.closed and f.offset >= f.size:
                    recs = f.flush_expired(now)
                    if recs:
                        await self.emit(recs)
            for f in list(self.retiring):  # rotated files read to their end and quiet for rotate_wait
                if not f.closed and f.offset >= f.size and now - f.last_data >= self.cfg.rotate_wait:
                    await self._finish(f)
            if not progressed:
                self._data.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._data.wait(), self.cfg.poll_interval)
            else:
                await asyncio.sleep(0)

    def _excluded(self, f: TailedFile) -> bool:
        """Namespace include/exclude (from the file name), then the pod's and namespace's own say.
        Also where per-file settings that depend on metadata (multiline rules) are refreshed."""
        md = self.metadata
        if f.meta_generation == -1 and md is None:
            f.meta_generation = 0
            f.multiline = self._multiline_for(f, None)
        if md is not None and f.meta_generation != md.generation:
            f.meta_generation = md.generation
            f.excluded_by_metadata = md.apply(f.info, f.base_kubernetes, f.names)
            ns, pod = f.names.get("namespace"), f.names.get("pod")
            annotation = md.pod_annotation(ns, pod, MULTILINE_ANNOTATION) if ns and pod else None
            f.multiline = self._multiline_for(f, annotation)
        ns = f.names.get("namespace")
        if ns is not None:
            if self.cfg.include_namespaces and not any(
                fnmatch.fnmatchcase(ns, g) for g in self.cfg.include_namespaces
            ):
                return True
            if any(fnmatch.fnmatchcase(ns, g) for g in self.cfg.exclude_namespaces):
                return True
        return bool(f.excluded_by_metadata)

    def _multiline_for(self, f: TailedFile, annotation: str | None) -> MultilineSpec | None:
        """The annotation ``kubeobs.io/multiline`` wins; else the first config rule matching the file."""
        names = f.names
        chosen = None
        for rule in self.cfg.multiline:
            if (
                any(fnmatch.fnmatchcase(names.get("namespace", ""), g) for g in rule.namespaces)
                and any(fnmatch.fnmatchcase(names.get("pod", ""), g) for g in rule.pods)
                and any(fnmatch.fnmatchcase(names.get("container", ""), g) for g in rule.containers)
            ):
                chosen = rule
                break
        timeout = chosen.timeout if chosen else 2.0
        max_bytes = chosen.max_bytes if chosen else self.cfg.max_line_bytes
        if annotation is not None:
            name = annotation.strip().lower()
            if name == "none":
                return None
            try:
                return MultilineSpec(rule_set(name), timeout, max_bytes)
            except ValueError as e:
                if f.key not in self._bad_annotations:
                    log.warning("%s: annotation %s ignored: %s", f.path, MULTILINE_ANNOTATION, e)
                    self._bad_annotations.add(f.key)
        if chosen is None or chosen.rules == "none":
            return None
        if chosen.rules == "custom":
            assert chosen.start is not None and chosen.continuation is not None
            rules = RuleSet.custom(chosen.start, chosen.continuation)
        else:
            rules = rule_set(chosen.rules)
        return MultilineSpec(rules, timeout, max_bytes)

    async def _discover(self, stop: asyncio.Event) -> None:
        next_rescan = next_poll = self.clock.monotonic()
        while not stop.is_set():
            now = self.clock.monotonic()
            if self._rescan_now or now >= next_rescan:
                self._rescan_now = False
                self._rescan(now)
                next_rescan = now + self.cfg.rescan_interval
                self._forget_fingerprints(now)
            if now >= next_poll:
                self._poll()
                await self._enforce_deleted_limit()
                next_poll = now + self.cfg.poll_interval
            self._fs.clear()
            timeout = max(0.0, min(next_rescan, next_poll) - self.clock.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fs.wait(), timeout)

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
        self._fingerprints[opened.fp] = now
        if new:
            self.store.set(f.key, Entry(path, opened.real_path, opened.dev, opened.ino, opened.fp, offset))
        self.metrics.files_open.inc()
        return f

    def _recover(self) -> None:
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
        renamed: list[TailedFile] = []
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
                del self.by_path[path]
                self._retire(f, "rename")
                renamed.append(f)
            opened = open_identified(path)
            if opened is None:
                continue  # empty or first line incomplete: try again at the next scan
            if opened.fp in self._fingerprints:
                os.close(opened.fd)  # a file we read (or are reading) came back under the name
                continue
            self.by_path[path] = self._open(path, opened, 0, now, new=True)
            log.debug("tailing %s", path)
        for path in list(self.by_path):
            if path not in current:
                f = self.by_path.pop(path)
                self._retire(f, "rename")
                renamed.append(f)
        for f in renamed:  # after the new files are open, so none of them is taken for a rotated one
            self._adopt_siblings(f)

    def _forget_fingerprints(self, now: float) -> None:
        if len(self._fingerprints) < 1024:
            return
        for f in self.files():
            self._fingerprints[f.fp] = now
        cutoff = now - FINGERPRINT_MEMORY
        self._fingerprints = {fp: t for fp, t in self._fingerprints.items() if t >= cutoff}

    def _retire(self, f: TailedFile, kind: str) -> None:
        f.rotated = True
        self.retiring.append(f)
        self.metrics.rotations.labels(kind).inc()

    def _adopt_siblings(self, old: TailedFile) -> None:
        """Files rotated beside ``old`` that we never opened (several rotations between two scans, or
        while reading was paused): read them from their start. Only files written after we opened
        ``old`` qualify, and none whose first line we have already seen (copies made by copytruncate)."""
        open_inodes = {(f.dev, f.ino) for f in self.files()}
        current = {os.path.realpath(p) for p in self._matches()}
        wall_opened = self.clock.time() - (self.clock.monotonic() - old.opened_at)
        found: list[tuple[float, str]] = []
        for cand in _siblings(old.real_path):
            try:
                st = os.stat(cand)
            except OSError:
                continue
            if (
                (st.st_dev, st.st_ino) in open_inodes
                or st.st_mtime < wall_opened
                or cand in current
                or not os.path.isfile(cand)
            ):
                continue
            found.append((st.st_mtime, cand))
        for _, cand in sorted(found):
            opened = open_identified(cand)
            if opened is None:
                continue
            if opened.fp in self._fingerprints:
                os.close(opened.fd)
                continue
            log.info("reading %s, rotated away before we could open it under %s", cand, old.path)
            f = self._open(old.path, opened, 0, self.clock.monotonic(), new=True)
            f.rotated = True
            self.retiring.append(f)

    def _poll(self) -> None:
        """Check open files for truncation and deletion (finishing them is the reader's job)."""
        for path, f in list(self.by_path.items()):
            try:
                state = f.check()
            except OSError as e:
                log.warning("cannot stat %s: %s", path, e)
                continue
            if state == "truncated":
                self._handle_truncation(f)
            elif state == "deleted":
                del self.by_path[path]
                self._retire(f, "delete")
        for f in self.retiring:
            if not f.closed:
                with contextlib.suppress(OSError):
                    f.check()

    async def _enforce_deleted_limit(self) -> None:
        """Deleted files are held open (their data stays on disk) up to ``max_deleted_files`` files and
        ``max_deleted_bytes`` unread bytes; beyond that the oldest is let go and its unread lines are
        counted as dropped (reason ``deleted_file_limit``) and logged once."""
        held = [f for f in self.retiring if f.deleted and not f.closed]
        unread = sum(max(0, f.size - f.offset) for f in held)
        while held and (len(held) > self.cfg.max_deleted_files or unread > self.cfg.max_deleted_bytes):
            f = held.pop(0)
            rest = max(0, f.size - f.offset)
            unread -= rest
            lines = _count_lines(f.fd, f.offset, f.size)
            log.error(
                "letting go of deleted file %s (inode %d) with %d unread bytes (%d lines): more than "
                "%d deleted files / %d bytes are held (sources[].max_deleted_files / max_deleted_bytes)",
                f.real_path,
                f.ino,
                rest,
                lines,
                self.cfg.max_deleted_files,
                self.cfg.max_deleted_bytes,
            )
            self.metrics.dropped.labels("deleted_file_limit").inc(lines)
            self.retiring.remove(f)
            f.close()
            self.metrics.files_open.dec()
            await self.on_close(f.key, f.size)

    def _handle_truncation(self, f: TailedFile) -> None:
        if self.by_path.get(f.path) is f:
            del self.by_path[f.path]
        self._rescan_now = True
        self._fs.set()
        self.metrics.rotations.labels("truncate").inc()
        rewritten = self._rewritten(f)
        try:
            copy = _find_copy(f)
            if copy is not None:
                log.info("%s was truncated; reading its unread rest from the copy %s", f.path, copy.real_path)
                f.switch_to(copy)
                self.retiring.append(f)
                self._update_entry(f)
                return
            self._truncated_without_copy(f)
        finally:
            if rewritten is not None:
                self._track_rewritten(f.path, rewritten)

    def _rewritten(self, f: TailedFile) -> Opened | None:
        """The truncated inode's new content, through a second descriptor of the inode we hold.

        Taken at once, not left to the next scan: by then the writer may have renamed the file away
        (rotation right after a copytruncate) and the path would lead to the next file, the rewritten
        content never read. None while its first line is incomplete (the scan picks it up later)."""
        try:
            fd = os.dup(f.fd)
        except OSError:
            return None
        try:
            opened = identify_fd(fd, f.real_path)
        except OSError:
            opened = None
        if opened is None or opened.fp in self._fingerprints:
            os.close(fd)
            return None
        return opened

    def _track_rewritten(self, path: str, opened: Opened) -> None:
        nf = self._open(path, opened, 0, self.clock.monotonic(), new=True)
        try:
            st = os.stat(path)
            here = (st.st_dev, st.st_ino) == (opened.dev, opened.ino)
        except OSError:
            here = False
        if here and path not in self.by_path:
            self.by_path[path] = nf
        else:  # renamed or deleted since: read it to its end like any rotated file
            self._retire(nf, "rename")

    def _truncated_without_copy(self, f: TailedFile) -> None:
        if f.size > f.offset:
            log.warning(
                "%s was truncated with %d unread bytes and no copy was found beside it",
                f.path,
                f.size - f.offset,
            )
            self.metrics.dropped.labels("truncated_unread").inc()
        f.rotated = True
        f.finish_now = True  # the old content is gone: close, never read the new content as old
        self.retiring.append(f)

    def _update_entry(self, f: TailedFile) -> None:
        e = self.store.entries.get(f.key)
        if e is not None:
            e.dev, e.ino, e.real_path = f.dev, f.ino, f.real_path
            self.store.dirty = True

    async def _finish(self, f: TailedFile) -> None:
        if f in self.retiring:
            self.retiring.remove(f)
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
            self._fs.set()
        self._data.set()

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


def _count_lines(fd: int, start: int, end: int) -> int:
    n, pos = 0, start
    while pos < end:
        data = os.pread(fd, min(1 << 20, end - pos), pos)
        if not data:
            break
        n += data.count(b"\n")
        pos += len(data)
    return n


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
