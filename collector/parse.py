"""Pure parsing of container runtime log lines. No I/O.

Two formats, detected per line:

- CRI (containerd, CRI-O): ``<RFC3339Nano timestamp> <stdout|stderr> <tags> <message>``, where the first
  tag is ``F`` (full line) or ``P`` (partial: the runtime split a long line; join until the ``F``).
- docker json-file: ``{"log": "...\\n", "stream": "stdout", "time": "..."}``; a ``log`` value without
  a trailing newline is a partial (docker splits lines at 16 KiB).

:func:`parse_line` never raises: a line it cannot read comes back with ``error`` set and the raw bytes
as the message, so the caller ships it flagged instead of dropping it.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import orjson

STDOUT = "stdout"
STDERR = "stderr"
_STREAMS = {b"stdout": STDOUT, b"stderr": STDERR}


class Parsed(NamedTuple):
    timestamp: str  # as the runtime wrote it ("" when unknown)
    stream: str  # "stdout" / "stderr" ("stdout" when unknown)
    partial: bool  # True: more of this line follows in the same stream
    message: bytes  # payload without the trailing newline
    error: str | None  # why the line could not be parsed (message then holds the raw line)


def _looks_like_timestamp(ts: bytes) -> bool:
    # cheap shape check: 2024-01-02T03:04:05[.frac](Z|+hh:mm); the sink validates the calendar
    return len(ts) >= 20 and ts[4] == 45 and ts[7] == 45 and ts[10] == 84 and ts[13] == 58


def parse_cri(line: bytes) -> Parsed:
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return Parsed("", STDOUT, False, line, "cri: expected '<time> <stream> <tag> <message>'")
    ts, stream_b, tag = parts[0], parts[1], parts[2]
    stream = _STREAMS.get(stream_b)
    if stream is None:
        return Parsed("", STDOUT, False, line, f"cri: unknown stream {stream_b[:20]!r}")
    if not _looks_like_timestamp(ts):
        return Parsed("", stream, False, line, f"cri: bad timestamp {ts[:40]!r}")
    if tag == b"F":
        partial = False
    elif tag == b"P":
        partial = True
    else:
        first = tag.split(b":", 1)[0]
        if first not in (b"F", b"P"):
            return Parsed("", stream, False, line, f"cri: unknown tag {tag[:20]!r}")
        partial = first == b"P"
    return Parsed(ts.decode("ascii"), stream, partial, parts[3] if len(parts) == 4 else b"", None)


def parse_docker(line: bytes) -> Parsed:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        return Parsed("", STDOUT, False, line, f"docker: invalid JSON: {e}")
    if not isinstance(obj, dict):
        return Parsed("", STDOUT, False, line, "docker: expected a JSON object")
    log, stream, ts = obj.get("log"), obj.get("stream", "stdout"), obj.get("time")
    if not isinstance(log, str) or not isinstance(ts, str) or stream not in (STDOUT, STDERR):
        return Parsed("", STDOUT, False, line, "docker: expected string fields log, stream, time")
    if not _looks_like_timestamp(ts.encode("ascii", "replace")):
        return Parsed("", stream, False, line, f"docker: bad timestamp {ts[:40]!r}")
    partial = not log.endswith("\n")
    msg = (log if partial else log[:-1]).encode("utf-8", "surrogatepass")
    return Parsed(ts, stream, partial, msg, None)


def parse_line(line: bytes) -> Parsed:
    """Parse one physical line (without its trailing newline), detecting the format."""
    if line[:1] == b"{":
        return parse_docker(line)
    return parse_cri(line)


def cri_header_length(line: bytes) -> int:
    """Length of a valid CRI header (``<ts> <stream> <tag> ``) at the start of ``line``, or 0."""
    parts = line[:128].split(b" ", 3)
    if len(parts) < 4 or parts[1] not in _STREAMS or not _looks_like_timestamp(parts[0]):
        return 0
    if parts[2].split(b":", 1)[0] not in (b"F", b"P"):
        return 0
    return len(parts[0]) + len(parts[1]) + len(parts[2]) + 3


def decode_message(raw: bytes) -> tuple[str, bool]:
    """Decode UTF-8; invalid sequences become U+FFFD. Returns (text, was_valid)."""
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), False


def utf8_cut(data: bytes, limit: int) -> int:
    """The largest cut point <= limit that does not split a UTF-8 sequence (never 0 for limit > 3)."""
    if limit >= len(data):
        return len(data)
    cut = limit
    # step back over continuation bytes (10xxxxxx), at most 3
    while cut > limit - 3 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 else limit


def parse_k8s_filename(path: str) -> dict[str, str]:
    """Namespace, pod, container (and container id, pod uid) from kubelet log paths.

    ``/var/log/containers/<pod>_<namespace>_<container>-<container id>.log`` and
    ``/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log``. Unknown layouts give ``{}``.
    """
    parts = path.rstrip("/").split("/")
    name = parts[-1]
    out: dict[str, str] = {}
    if name.endswith(".log") and name.count("_") >= 2:
        pod, ns, rest = name[:-4].split("_", 2)
        container, sep, cid = rest.rpartition("-")
        if sep and container and pod and ns:
            out = {"pod": pod, "namespace": ns, "container": container, "container_id": cid}
    if len(parts) >= 3 and parts[-1].split(".", 1)[0].isdigit() and parts[-3].count("_") >= 2:
        ns, pod, uid = parts[-3].split("_", 2)
        out.setdefault("pod", pod)
        out.setdefault("namespace", ns)
        out.setdefault("container", parts[-2])
        out["pod_uid"] = uid
    return out


def rfc3339_nano(epoch_seconds: float) -> str:
    """``2026-11-26T19:01:02.123456789Z`` for a UNIX time (used when a line carries no timestamp)."""
    ns = int(epoch_seconds * 1e9)
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"
