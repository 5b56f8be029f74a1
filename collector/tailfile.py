"""One open log file: its identity, its read position and what to do at rotation.

Identity is ``<dev>:<ino>:<fingerprint>``, the fingerprint being a hash of the file's first line (at most
256 bytes). Device and inode tell files apart; the fingerprint tells a reused inode from the file that
had it before, and a truncated-and-rewritten file from its earlier content.

A file stays open after it was rotated away (renamed, deleted or truncated) until it has been read to
its end and has stayed unchanged for ``rotate_wait`` seconds, so no line written around a rotation is
lost.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from collector.lines import LineAssembler
from collector.multiline import MultilineJoiner, RuleSet
from collector.parse import parse_k8s_filename
from collector.record import FileInfo, Record

FINGERPRINT_BYTES = 256


def fingerprint_of(fd: int) -> tuple[str, int] | None:
    """(hash, length) of the first line (or first 256 bytes), None while the file holds neither."""
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    nl = head.find(b"\n")
    if nl >= 0:
        head = head[: nl + 1]
    elif len(head) < FINGERPRINT_BYTES:
        return None
    return hashlib.blake2b(head, digest_size=8).hexdigest(), len(head)


def same_fingerprint(fd: int, fp: str, length: int) -> bool:
    head = os.pread(fd, length, 0)
    return len(head) == length and hashlib.blake2b(head, digest_size=8).hexdigest() == fp


def file_key(dev: int, ino: int, fp: str) -> str:
    return f"{dev}:{ino}:{fp}"


def file_names(path: str, real_path: str) -> dict[str, str]:
    """Namespace, pod, container (, container id, pod uid) from the path and its symlink target."""
    meta = parse_k8s_filename(path)
    if "pod_uid" not in meta:
        meta.update(
            {k: v for k, v in parse_k8s_filename(real_path).items() if k not in meta or k == "pod_uid"}
        )
    return meta


def make_file_info(key: str, path: str, real_path: str, node: str) -> FileInfo:
    meta = file_names(path, real_path)
    k8s: dict[str, object] = {"node": {"name": node}}
    if meta:
        pod: dict[str, str] = {"name": meta["pod"]}
        if "pod_uid" in meta:
            pod["uid"] = meta["pod_uid"]
        k8s.update({"namespace": meta["namespace"], "pod": pod, "container": {"name": meta["container"]}})
    container: dict[str, object] = {}
    if meta.get("container_id"):
        container["id"] = meta["container_id"]
    prefix = hashlib.blake2b(f"{node}\0{key}".encode(), digest_size=8).hexdigest()
    return FileInfo(key=key, path=path, id_prefix=prefix, kubernetes=k8s, container=container)


@dataclass(frozen=True, slots=True)
class MultilineSpec:
    rules: RuleSet
    timeout: float
    max_bytes: int


class Truncated(Exception):
    """The file was truncated (and maybe rewritten) under the reader."""


@dataclass(slots=True)
class Opened:
    fd: int
    dev: int
    ino: int
    fp: str
    fp_len: int
    real_path: str
    identity: str | None = None  # set when this is a copy read under the original file's identity

    @property
    def key(self) -> str:
        return self.identity or file_key(self.dev, self.ino, self.fp)


def identify_fd(fd: int, real_path: str) -> Opened | None:
    """The identity of an already open descriptor; None while its first line is incomplete (the
    descriptor stays open either way: the caller owns it)."""
    st = os.fstat(fd)
    fp = fingerprint_of(fd)
    if fp is None:
        return None
    return Opened(fd, st.st_dev, st.st_ino, fp[0], fp[1], real_path)


def open_identified(path: str) -> Opened | None:
    """Open a file and compute its identity; None if it vanished or is not yet identifiable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        fp = fingerprint_of(fd)
    except OSError:
        os.close(fd)
        raise
    if fp is None:
        os.close(fd)
        return None
    return Opened(fd, st.st_dev, st.st_ino, fp[0], fp[1], os.path.realpath(path))


class TailedFile:
    def __init__(
        self,
        opened: Opened,
        path: str,
        info: FileInfo,
        offset: int,
        max_line_bytes: int,
        now: float,
        wall_clock: Callable[[], float],
    ) -> None:
        self.fd = opened.fd
        self.path = path
        self.real_path = opened.real_path
        self.dev, self.ino = opened.dev, opened.ino
        self.fp, self.fp_len = opened.fp, opened.fp_len
        self.key = opened.key
        self.info = info
        self.asm = LineAssembler(info, offset, max_line_bytes, wall_clock)
        self.rotated = False  # the path no longer leads here: finish and close
        self.deleted = False  # unlinked: only our descriptor keeps its data on disk
        self.finish_now = False  # nothing more to read (truncated without a copy): finish at once
        self.opened_at = now
        self.last_data = now
        self.size = offset  # last size seen by fstat
        self.closed = False
        self.names = file_names(path, opened.real_path)  # namespace/pod/container from the file name
        self.base_kubernetes = info.kubernetes  # what the file name tells, before any apiserver data
        self.meta_generation = -1  # PodMetadata.generation last applied
        self.excluded_by_metadata: bool | None = None
        self.multiline: MultilineSpec | None = None  # the joining chosen for this file (None: off)
        self.joiners: dict[str, MultilineJoiner] = {}  # per stream

    @property
    def offset(self) -> int:
        return self.asm.read_offset

    def read(self, chunk: int, now: float) -> tuple[list[Record], int] | None:
        """Read and assemble the next chunk. None at end of file.

        Raises :class:`Truncated` when the file no longer holds what was read from it (copytruncate):
        checked before every read, so new content is never read at an offset of the old content.
        """
        if not self.rotated and self.check() == "truncated":
            raise Truncated(self.path)
        data = os.pread(self.fd, chunk, self.asm.read_offset)
        if not data:
            return None
        self.last_data = now
        if self.asm.read_offset + len(data) > self.size:
            self.size = self.asm.read_offset + len(data)
        return self.asm.feed(data), len(data)

    def check(self) -> str | None:
        """fstat the open file: "truncated", "deleted" or None. Updates ``size``."""
        st = os.fstat(self.fd)
        self.size = st.st_size
        if st.st_size < self.asm.read_offset:
            return "truncated"
        if not self.rotated and not same_fingerprint(self.fd, self.fp, self.fp_len):
            return "truncated"  # truncated and rewritten past our offset between two checks
        if st.st_nlink == 0:
            self.deleted = True
            return "deleted"
        return None

    def switch_to(self, opened: Opened) -> None:
        """Continue reading from a copy of this file (copytruncate): same identity, same offsets."""
        os.close(self.fd)
        self.fd = opened.fd
        self.dev, self.ino, self.real_path = opened.dev, opened.ino, opened.real_path
        self.rotated = True

    # -- multiline -------------------------------------------------------------------------------------
    def join(self, recs: list[Record], now: float) -> list[Record]:
        """Pass records through this file's multiline joiners (one per stream); checkpoints held back
        to the first line of any event still being joined."""
        spec = self.multiline
        if spec is None and not self.joiners:
            return recs
        out: list[Record] = []
        for r in recs:
            j = self.joiners.get(r.stream)
            if j is None:
                if spec is None:
                    out.append(r)
                    continue
                j = self.joiners[r.stream] = MultilineJoiner(
                    spec.rules, max_bytes=spec.max_bytes, timeout=spec.timeout
                )
            out.extend(j.push(r, now))
        return self._hold(out)

    def flush_expired(self, now: float) -> list[Record]:
        out: list[Record] = []
        for j in self.joiners.values():
            d = j.deadline()
            if d is not None and d <= now:
                out.extend(j.flush_expired(now))
        return self._hold(out)

    def _hold(self, out: list[Record]) -> list[Record]:
        holds = [o for j in self.joiners.values() if (o := j.pending_offset()) is not None]
        if holds:
            low = min(holds)
            for r in out:
                if r.ckpt > low:
                    r.ckpt = low
        return out

    def finish(self) -> list[Record]:
        """Close the file, returning whatever was held for lack of a newline or an event's end."""
        recs = self.join(self.asm.flush_unterminated(), self.last_data)
        for j in self.joiners.values():
            recs.extend(j.flush())
        self.joiners.clear()
        self.close()
        return recs

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)
