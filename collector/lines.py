"""Turning the bytes of one file into records: line splitting, partial joining, size caps. No I/O.

:class:`LineAssembler` is fed consecutive chunks of a file (with the file offset of each chunk's first
byte) and returns complete :class:`~collector.record.Record` objects. It keeps, per stream, the CRI/docker
partial pieces not yet closed by a full line, and the bytes of an unfinished last line.

Offsets and checkpoints: every record carries ``ckpt``, the offset from which a restarted reader would
re-create every record not yet emitted: the end of the record's line, or, while partial pieces of an
earlier line are still pending (in any stream), the first byte of the oldest pending piece. Records
re-created after a restart get the same offset and so the same ``_id``.

A line without a usable timestamp (a parse error) gets the time it was read, from ``now``.

Size cap: a joined line longer than ``max_line_bytes`` is emitted in parts of at most that size (cut on a
UTF-8 boundary), numbered from 1, the last one marked; nothing is dropped. A physical line longer than
the cap (no newline yet) is handled the same way: a CRI line is streamed as partial pieces, anything else
is emitted raw, flagged as a parse error, in parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.parse import STDOUT, cri_header_length, decode_message, parse_line, rfc3339_nano, utf8_cut
from collector.record import FileInfo, Record

TAG_INVALID_UTF8 = "invalid_utf8"
TAG_PARSE_ERROR = "parse_error"
TAG_SPLIT = "split"


@dataclass(slots=True)
class _Pending:
    offset: int  # file offset of the first piece
    timestamp: str
    pieces: list[bytes] = field(default_factory=list)
    size: int = 0  # message bytes held
    disk: int = 0  # bytes on disk consumed so far
    parts_emitted: int = 0
    raw: bool = False  # an unparseable oversize line being emitted raw
    stream: str = STDOUT  # the stream records are emitted on
    continues: bool = False  # oversize CRI line tagged P: the joined line goes on after its newline


@dataclass(slots=True)
class Stats:
    lines: int = 0
    parse_errors: int = 0
    invalid_utf8: int = 0
    split_parts: int = 0


class LineAssembler:
    def __init__(
        self, info: FileInfo, start_offset: int, max_line_bytes: int, now: Callable[[], float] = time.time
    ) -> None:
        self.info = info
        self.now = now
        self.max_line = max_line_bytes
        self.buf = b""  # bytes of an unfinished physical line
        self.buf_offset = start_offset  # file offset of buf[0]
        self.pending: dict[str, _Pending] = {}  # stream -> partial line being joined
        # an oversize physical line being streamed: (stream, pending key) or None
        self._oversize: str | None = None
        self.stats = Stats()

    # -- positions ---------------------------------------------------------------------------------
    def safe_offset(self) -> int:
        """Where a restarted reader must begin to lose nothing that has not been emitted."""
        low = self.buf_offset
        for p in self.pending.values():
            if p.offset < low:
                low = p.offset
        return low

    @property
    def read_offset(self) -> int:
        return self.buf_offset + len(self.buf)

    # -- feeding -----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Record]:
        """Consume the next bytes of the file (which start at ``read_offset``)."""
        out: list[Record] = []
        if self._oversize is not None:
            data = self._continue_oversize(data, out)
            if not data:
                return out
        buf = self.buf + data if self.buf else data
        lines = buf.split(b"\n")
        rest = lines.pop()
        pos = self.buf_offset
        info = self.info
        pending = self.pending
        stats = self.stats
        for line in lines:
            end = pos + len(line) + 1
            if pending or line[:1] == b"{":
                self._slow_line(line, pos, end, out)
            else:
                # fast path: a full CRI line with nothing pending
                parts = line.split(b" ", 3)
                if (
                    len(parts) == 4
                    and parts[2] == b"F"
                    and (parts[1] == b"stdout" or parts[1] == b"stderr")
                    and len(parts[0]) >= 20
                    and parts[0][10] == 84
                    and len(parts[3]) <= self.max_line
                ):
                    try:
                        msg = parts[3].decode("utf-8")
                        tags: tuple[str, ...] = ()
                    except UnicodeDecodeError:
                        msg = parts[3].decode("utf-8", "replace")
                        tags = (TAG_INVALID_UTF8,)
                        stats.invalid_utf8 += 1
                    out.append(
                        Record(
                            info,
                            pos,
                            end,
                            parts[0].decode("ascii"),
                            "stdout" if parts[1] == b"stdout" else "stderr",
                            msg,
                            end - pos,
                            0,
                            True,
                            None,
                            tags,
                        )
                    )
                else:
                    self._slow_line(line, pos, end, out)
            pos = end
        stats.lines += len(lines)
        self.buf = rest
        self.buf_offset = pos
        if len(rest) > self.max_line + 4096:
            self._start_oversize(out)
        return out

    def flush_unterminated(self) -> list[Record]:
        """The file is finished (rotated away or deleted): emit what is held, even without a newline."""
        out: list[Record] = []
        if self._oversize is not None:
            self._oversize = None
        if self.buf:
            line, pos = self.buf, self.buf_offset
            self.buf = b""
            self.buf_offset = pos + len(line)
            self._slow_line(line, pos, self.buf_offset, out)
        for key in list(self.pending):
            p = self.pending.pop(key)
            self._emit(p, p.stream, out, last=True, error="raw oversize line" if p.raw else None)
        return out

    # -- internals ---------------------------------------------------------------------------------
    def _ckpt(self, end: int) -> int:
        low = end
        for p in self.pending.values():
            if p.offset < low:
                low = p.offset
        return low

    def _record(
        self,
        offset: int,
        ts: str,
        stream: str,
        raw: bytes,
        size: int,
        end: int,
        part: int = 0,
        last: bool = True,
        error: str | None = None,
    ) -> Record:
        msg, valid = decode_message(raw)
        if not ts:
            ts = rfc3339_nano(self.now())
        tags: list[str] = []
        if not valid:
            tags.append(TAG_INVALID_UTF8)
            self.stats.invalid_utf8 += 1
        if error is not None:
            tags.append(TAG_PARSE_ERROR)
        if part:
            tags.append(TAG_SPLIT)
            self.stats.split_parts += 1
        return Record(
            self.info, offset, self._ckpt(end), ts, stream, msg, size, part, last, error, tuple(tags)
        )

    def _slow_line(self, line: bytes, pos: int, end: int, out: list[Record]) -> None:
        p = parse_line(line)
        if p.error is not None:
            self.stats.parse_errors += 1
            self._emit_whole(pos, "", p.stream, line, end, out, error=p.error)
            return
        pend = self.pending.get(p.stream)
        if pend is None and not p.partial:
            self._emit_whole(pos, p.timestamp, p.stream, p.message, end, out)
            return
        if pend is None:
            pend = self.pending[p.stream] = _Pending(pos, p.timestamp, stream=p.stream)
        pend.pieces.append(p.message)
        pend.size += len(p.message)
        pend.disk += end - pos
        while pend.size > self.max_line:
            self._emit_part(pend, p.stream, out)
        if not p.partial:
            del self.pending[p.stream]
            self._emit(pend, p.stream, out, last=True, end=end)

    def _emit_whole(
        self,
        pos: int,
        ts: str,
        stream: str,
        msg: bytes,
        end: int,
        out: list[Record],
        error: str | None = None,
    ) -> None:
        if len(msg) <= self.max_line:
            out.append(self._record(pos, ts, stream, msg, end - pos, end, error=error))
            return
        p = _Pending(pos, ts, [msg], len(msg), end - pos, raw=error is not None, stream=stream)
        while p.size > self.max_line:
            self._emit_part(p, stream, out, error=error)
        self._emit(p, stream, out, last=True, end=end, error=error)

    def _emit_part(self, p: _Pending, stream: str, out: list[Record], error: str | None = None) -> None:
        data = b"".join(p.pieces)
        cut = utf8_cut(data, self.max_line)
        p.parts_emitted += 1
        # a part does not end the line: its checkpoint stays at (or before) the line's first byte
        rec = self._record(
            p.offset, p.timestamp, stream, data[:cut], 0, p.offset, p.parts_emitted, False, error
        )
        out.append(rec)
        p.pieces = [data[cut:]]
        p.size = len(data) - cut

    def _emit(
        self,
        p: _Pending,
        stream: str,
        out: list[Record],
        *,
        last: bool,
        end: int | None = None,
        error: str | None = None,
    ) -> None:
        data = b"".join(p.pieces)
        stop = end if end is not None else p.offset + p.disk
        part = p.parts_emitted + 1 if p.parts_emitted else 0
        out.append(
            self._record(
                p.offset,
                p.timestamp,
                stream,
                data,
                p.disk,
                stop,
                part=part,
                last=last,
                error=error if error is not None else ("raw oversize line" if p.raw else None),
            )
        )

    def _start_oversize(self, out: list[Record]) -> None:
        """The unfinished line in ``buf`` passed the cap: start streaming it in parts."""
        line, pos = self.buf, self.buf_offset
        hdr = cri_header_length(line)
        if hdr:
            parsed = parse_line(line[:hdr] + b"x")
            stream = parsed.stream
            if stream in self.pending:  # an oversize continuation of an earlier partial of this stream
                p = self.pending[stream]
            else:
                p = self.pending[stream] = _Pending(pos, parsed.timestamp, stream=stream)
            p.continues = parsed.partial
            body = line[hdr:]
        else:
            stream = "raw"
            p = self.pending[stream] = _Pending(pos, "", raw=True)
            body = line
        p.pieces.append(body)
        p.size += len(body)
        p.disk += len(line)
        self._oversize = stream
        self.buf = b""
        self.buf_offset = pos + len(line)
        err = "raw oversize line" if p.raw else None
        while p.size > self.max_line:
            self._emit_part(p, p.stream, out, error=err)

    def _continue_oversize(self, data: bytes, out: list[Record]) -> bytes:
        """Append bytes to the oversize line until its newline; return the bytes after it."""
        assert self._oversize is not None
        stream = self._oversize
        p = self.pending[stream]
        nl = data.find(b"\n")
        body = data if nl == -1 else data[:nl]
        p.pieces.append(body)
        p.size += len(body)
        consumed = len(data) if nl == -1 else nl + 1
        p.disk += consumed
        self.buf_offset += consumed
        err = "raw oversize line" if p.raw else None
        while p.size > self.max_line:
            self._emit_part(p, p.stream, out, error=err)
        if nl == -1:
            return b""
        self._oversize = None
        if not p.continues:  # a CRI P line goes on being joined with the next lines of its stream
            del self.pending[stream]
            self._emit(p, p.stream, out, last=True, end=self.buf_offset, error=err)
        return data[nl + 1 :]
