"""A standalone container-log generator for end-to-end tests.

Writes what a kubelet node's ``/var/log/containers`` holds: one file per pod, named
``<pod>_<namespace>_<container>-<64 hex container id>.log``, in CRI (containerd/CRI-O) or docker
json-file format, rotated like the kubelet does, optionally copy-truncated once like logrotate does::

    python -m tests.support.logwriter --dir DIR --pods 4 --lines 100000 --format mixed \\
        --rotate-bytes 10000000 --copytruncate-at-bytes 0 --line-bytes 150 --rate 0 --seed 1

Every message carries ``seq=<pod>:<n>`` (``n`` counts from 0 per pod), padded with filler so each
whole on-disk line is ``--line-bytes`` long; :func:`parse_seq` reads the marker back, so a test can
check that every line arrived exactly once. Timestamps are the wall clock in UTC with 9 fractional
digits (``2026-11-26T19:01:02.123456789Z``); ``--trim-timestamps`` writes CRI timestamps as Go's
RFC3339Nano does (trailing zeros trimmed, as containerd writes them).

- ``--format mixed``: pod 0 CRI, pod 1 docker, pod 2 CRI, ...; one file keeps one format.
- Rotation: when a file has grown past ``--rotate-bytes`` it is renamed to
  ``<name>.<YYYYmmdd-HHMMSS.ffffff>`` (not ending in ``.log``) and a new file is created at the old
  path. Rotated files are kept, or the newest ``--keep N`` of them.
- ``--copytruncate-at-bytes B``: once per pod, when the file passes B bytes it is copied to
  ``<name>.copy.1`` and truncated to 0 in place; writing goes on at offset 0. Lines a tailer has not
  read when the file is truncated exist only in the copy (that is copytruncate's known loss);
  ``--copytruncate-pause S`` waits S seconds between the last write and the copy, so a tailer that
  keeps up gets every line.
- ``--stderr-every K``: every K-th line (n % K == K - 1) goes to stderr.
- ``--partial-every K`` (CRI only): every K-th line is written as two ``P`` pieces and one ``F``.
- Rotation and copytruncate happen between whole lines (never inside a P/P/F group), so each file
  read whole holds whole lines.
- ``--rate R``: R lines per second over all pods (0: as fast as possible).

On exit it prints a JSON summary:
``{"pods": {"app-0": {"lines": N, "file": path, "format": "cri", "rotated": [...], "copies": [...],
"deleted": [...], "bytes": B}, ...}, "seconds": S}``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import string
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

NAMESPACE = "e2e"
CONTAINER = "app"
FLUSH_LINES = 256  # lines buffered per file between writes
_SEQ = re.compile(r"seq=([A-Za-z0-9][A-Za-z0-9.-]*):(\d+)")


def parse_seq(message: str) -> tuple[str, int] | None:
    """The ``(pod, n)`` of the ``seq=<pod>:<n>`` marker in a message, or None."""
    m = _SEQ.search(message)
    return (m.group(1), int(m.group(2))) if m else None


def container_id(seed: int, pod: str) -> str:
    return hashlib.sha256(f"kubeobs-logwriter/{seed}/{pod}".encode()).hexdigest()


def log_file_name(pod: str, namespace: str, container: str, cid: str) -> str:
    return f"{pod}_{namespace}_{container}-{cid}.log"


def iter_messages(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(stream, message)`` of each whole line of a CRI or docker json-file log, partials joined.

    A small independent reader for tests (the collector has its own parser). The trailing newline of
    docker messages is removed.
    """
    pending: dict[str, list[str]] = {}
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # a line still being written
            line = raw[:-1]
            if line.startswith(b"{"):
                obj = orjson.loads(line)
                yield obj["stream"], obj["log"].removesuffix("\n")
                continue
            _ts, stream, tag, msg = line.decode().split(" ", 3)
            pending.setdefault(stream, []).append(msg)
            if tag == "F":
                yield stream, "".join(pending.pop(stream))


class _Clock:
    """Wall-clock RFC 3339 timestamps, formatting the seconds part once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self, *, trim: bool) -> str:
        ns = time.time_ns()
        second, frac = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        digits = f"{frac:09d}"
        if trim:
            digits = digits.rstrip("0")
            return f"{self._prefix}.{digits}Z" if digits else f"{self._prefix}Z"
        return f"{self._prefix}.{digits}Z"


def _every(n: int, k: int) -> bool:
    """Is line ``n`` (from 0) the k-th, 2k-th, ... line? Never when k is 0."""
    return k > 0 and n % k == k - 1


def _cri(ts: str, stream: str, tag: str, message: str) -> bytes:
    return f"{ts} {stream} {tag} {message}\n".encode()


def _docker(ts: str, stream: str, message: str) -> bytes:
    return orjson.dumps({"log": message + "\n", "stream": stream, "time": ts}) + b"\n"


class PodWriter:
    """Writes one pod's log file, with rotation and copytruncate."""

    def __init__(self, directory: Path, pod: str, fmt: str, opts: argparse.Namespace, filler: str) -> None:
        self.pod = pod
        self.fmt = fmt
        self.opts = opts
        self.filler = filler
        cid = container_id(opts.seed, pod)
        self.path = directory / log_file_name(pod, opts.namespace, opts.container, cid)
        self.lines = 0
        self.bytes = 0
        self.rotated: list[str] = []
        self.deleted: list[str] = []
        self.copies: list[str] = []
        self._size = 0  # the current file's size, buffered bytes included
        self._buf: list[bytes] = []
        self._copytruncate_at = opts.copytruncate_at_bytes or None
        # Framing bytes around the message, without the timestamp.
        self._overhead = len(_cri("", "stdout", "F", "")) if fmt == "cri" else len(_docker("", "stdout", ""))
        self.path.unlink(missing_ok=True)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - lives as long as the writer

    def _message(self, n: int, room: int) -> str:
        head = f"seq={self.pod}:{n} "
        pad = max(0, room - len(head))
        start = (n * 7919) % (len(self.filler) - pad)
        return head + self.filler[start : start + pad]

    def write_next(self, clock: _Clock) -> None:
        n = self.lines
        opts = self.opts
        stream = (
            "stderr" if opts.stderr_every and n % opts.stderr_every == opts.stderr_every - 1 else "stdout"
        )
        trim = self.fmt == "cri" and opts.trim_timestamps
        ts = clock.now(trim=trim)
        message = self._message(n, opts.line_bytes - self._overhead - len(ts))
        if self.fmt == "docker":
            data = _docker(ts, stream, message)
        elif _every(n, opts.partial_every):
            a, b = len(message) // 3, 2 * len(message) // 3
            data = (
                _cri(ts, stream, "P", message[:a])
                + _cri(clock.now(trim=trim), stream, "P", message[a:b])
                + _cri(clock.now(trim=trim), stream, "F", message[b:])
            )
        else:
            data = _cri(ts, stream, "F", message)
        self._buf.append(data)
        self._size += len(data)
        self.bytes += len(data)
        self.lines += 1
        if self._copytruncate_at is not None and self._size > self._copytruncate_at:
            self._copytruncate()
        elif self._size > opts.rotate_bytes:
            self._rotate()
        elif len(self._buf) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._fh.write(b"".join(self._buf))
            self._fh.flush()
            self._buf.clear()

    def _rotate(self) -> None:
        self.flush()
        self._fh.close()
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S.%f")
        target, n = f"{self.path}.{stamp}", 0
        while os.path.exists(target):
            n += 1
            target = f"{self.path}.{stamp}-{n}"
        os.rename(self.path, target)
        self.rotated.append(target)
        if self.opts.keep is not None:
            while len(self.rotated) > self.opts.keep:
                oldest = self.rotated.pop(0)
                os.unlink(oldest)
                self.deleted.append(oldest)
        self._fh = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def _copytruncate(self) -> None:
        self.flush()
        if self.opts.copytruncate_pause:
            time.sleep(self.opts.copytruncate_pause)
        copy = f"{self.path}.copy.{len(self.copies) + 1}"
        shutil.copyfile(self.path, copy)
        self._fh.truncate(0)
        self.copies.append(copy)
        self._copytruncate_at = None  # once per pod
        self._size = 0

    def close(self) -> None:
        self.flush()
        self._fh.close()

    def summary(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "file": str(self.path),
            "format": self.fmt,
            "rotated": self.rotated,
            "copies": self.copies,
            "deleted": self.deleted,
            "bytes": self.bytes,
        }


def _filler(seed: int, length: int) -> str:
    # Letters, digits and spaces only: nothing to escape in JSON, and no "=" to fake a marker.
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "    "
    return "".join(rng.choices(alphabet, k=length))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.support.logwriter", description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True, type=Path, help="folder to write the log files into")
    p.add_argument("--pods", type=int, default=1, help="number of pods (files): app-0, app-1, ...")
    p.add_argument("--lines", type=int, default=1000, help="lines per pod")
    p.add_argument("--format", choices=["cri", "docker", "mixed"], default="cri")
    p.add_argument("--rotate-bytes", type=int, default=10_000_000, help="rotate a file past this size")
    p.add_argument("--keep", type=int, default=None, help="keep only the newest N rotated files per pod")
    p.add_argument(
        "--copytruncate-at-bytes", type=int, default=0, help="once per pod, copy+truncate past this size"
    )
    p.add_argument(
        "--copytruncate-pause", type=float, default=0, help="seconds to wait before the copytruncate"
    )
    p.add_argument("--line-bytes", type=int, default=150, help="bytes per on-disk line, newline included")
    p.add_argument("--rate", type=float, default=0, help="lines per second over all pods; 0: no limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stderr-every", type=int, default=0, metavar="K", help="every K-th line to stderr")
    p.add_argument(
        "--partial-every", type=int, default=0, metavar="K", help="CRI: every K-th line as P, P, F pieces"
    )
    p.add_argument("--trim-timestamps", action="store_true", help="CRI: drop trailing zeros (containerd)")
    p.add_argument("--namespace", default=NAMESPACE)
    p.add_argument("--container", default=CONTAINER)
    opts = p.parse_args(argv)
    for name in ("pods", "lines", "rotate_bytes", "line_bytes"):
        if getattr(opts, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("copytruncate_at_bytes", "copytruncate_pause", "rate", "stderr_every", "partial_every"):
        if getattr(opts, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    if opts.keep is not None and opts.keep < 0:
        p.error("--keep must not be negative")
    return opts


def run(opts: argparse.Namespace) -> dict[str, Any]:
    """Write every pod's lines; returns the summary."""
    opts.dir.mkdir(parents=True, exist_ok=True)
    filler = _filler(opts.seed, max(4096, 2 * opts.line_bytes))
    writers = []
    for i in range(opts.pods):
        fmt = opts.format if opts.format != "mixed" else ("cri", "docker")[i % 2]
        writers.append(PodWriter(opts.dir, f"app-{i}", fmt, opts, filler))
    clock = _Clock()
    started = time.monotonic()
    written = 0  # lines, for --rate
    step = 1 if opts.rate else FLUSH_LINES
    try:
        active = list(writers)
        while active:
            for w in active:
                count = min(step, opts.lines - w.lines)
                for _ in range(count):
                    w.write_next(clock)
                if opts.rate:
                    written += count
                    delay = started + written / opts.rate - time.monotonic()
                    if delay > 0:
                        for pending in writers:
                            pending.flush()
                        time.sleep(delay)
            active = [w for w in active if w.lines < opts.lines]
    finally:
        for w in writers:
            w.close()
    return {
        "pods": {w.pod: w.summary() for w in writers},
        "seconds": round(time.monotonic() - started, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    summary = run(parse_args(argv))
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
