"""Checkpoints: per-file resume offsets in ``state_dir``, written atomically.

One JSON document, ``<state_dir>/checkpoints.json``, keyed by file identity
(``<dev>:<ino>:<fingerprint>``). An entry's ``offset`` only ever covers lines the sink acknowledged
(see :class:`collector.acks.AckTracker`): after a crash the collector resumes there and re-sends at
most what was in flight, which the deterministic ``_id`` makes harmless.

Writes go to a temporary file, are fsynced, renamed over the old file, and the directory is fsynced.
A failed write (full or read-only disk) raises ``OSError``; the caller keeps the entries in memory,
counts the failure and tries again at the next interval.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

FILE_NAME = "checkpoints.json"
VERSION = 1


@dataclass(slots=True)
class Entry:
    path: str  # path as matched by the glob
    real_path: str  # symlinks resolved: where rotated siblings are searched for
    dev: int
    ino: int
    fingerprint: str  # hex of the file's first bytes' hash
    offset: int  # acknowledged resume offset


class CheckpointStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / FILE_NAME
        self.entries: dict[str, Entry] = {}
        self.dirty = False

    def load(self) -> dict[str, Entry]:
        """Read the checkpoint file; a missing file is an empty store, a corrupt one is moved aside."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self.entries
        try:
            data = orjson.loads(raw)
            files = data["files"]
            self.entries = {k: Entry(**v) for k, v in files.items()}
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            aside = self.path.with_suffix(".corrupt")
            os.replace(self.path, aside)
            log.error(
                "checkpoint file %s is unreadable (%s); moved to %s, starting fresh", self.path, e, aside
            )
            self.entries = {}
        return self.entries

    def set(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry
        self.dirty = True

    def advance(self, key: str, offset: int) -> None:
        e = self.entries.get(key)
        if e is not None and offset > e.offset:
            e.offset = offset
            self.dirty = True

    def remove(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self.dirty = True

    def save(self) -> bool:
        """Write if anything changed. Returns True if a write happened. Raises OSError on failure."""
        if not self.dirty:
            return False
        body = orjson.dumps(
            {"version": VERSION, "files": {k: asdict(v) for k, v in self.entries.items()}},
            option=orjson.OPT_INDENT_2,
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILE_NAME}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(body)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.dirty = False
        return True
