"""LineAssembler: splitting, CRI/docker parsing, partial joining, caps, offsets and checkpoints."""

from __future__ import annotations

import orjson
import pytest

from collector.lines import TAG_INVALID_UTF8, TAG_PARSE_ERROR, TAG_SPLIT, LineAssembler
from collector.parse import parse_k8s_filename, parse_line, utf8_cut
from collector.record import FileInfo, Record

TS = "2026-11-26T19:01:02.123456789Z"


def info() -> FileInfo:
    return FileInfo(key="1:2:ab", path="/x/p_ns_c-0123.log", id_prefix="pfx")


def cri(msg: str | bytes, stream: str = "stdout", tag: str = "F", ts: str = TS) -> bytes:
    m = msg.encode() if isinstance(msg, str) else msg
    return f"{ts} {stream} {tag} ".encode() + m + b"\n"


def docker(log: str, stream: str = "stdout", ts: str = TS) -> bytes:
    return orjson.dumps({"log": log, "stream": stream, "time": ts}) + b"\n"


def feed_all(data: bytes, chunk: int = 7, max_line: int = 1024 * 1024) -> tuple[list[Record], LineAssembler]:
    asm = LineAssembler(info(), 0, max_line)
    out: list[Record] = []
    for i in range(0, len(data), chunk):
        out.extend(asm.feed(data[i : i + chunk]))
    return out, asm


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_cri_and_docker_lines_with_offsets(chunk: int) -> None:
    lines = [cri("hello"), docker("world\n", "stderr"), cri("", "stderr"), cri("a b  c")]
    data = b"".join(lines)
    recs, asm = feed_all(data, chunk)
    assert [r.message for r in recs] == ["hello", "world", "", "a b  c"]
    assert [r.stream for r in recs] == ["stdout", "stderr", "stderr", "stdout"]
    offsets = [0]
    for ln in lines[:-1]:
        offsets.append(offsets[-1] + len(ln))
    assert [r.offset for r in recs] == offsets
    assert [r.ckpt for r in recs] == [o + len(ln) for o, ln in zip(offsets, lines, strict=True)]
    assert all(r.timestamp == TS for r in recs)
    assert asm.safe_offset() == len(data)
    assert recs[0].id == "pfx-0"


def test_unterminated_line_waits_for_newline() -> None:
    asm = LineAssembler(info(), 100, 1 << 20)
    assert asm.feed(cri("abc")[:-1]) == []
    assert asm.safe_offset() == 100
    (r,) = asm.feed(b"\n")
    assert r.message == "abc" and r.offset == 100


def test_cri_partials_joined_per_stream_and_checkpoint_held_back() -> None:
    data = (
        cri("out-1 ", tag="P")
        + cri("err-1 ", "stderr", tag="P")
        + cri("out-2", tag="F")
        + cri("err-2", "stderr", tag="F")
    )
    recs, _ = feed_all(data)
    assert [(r.stream, r.message) for r in recs] == [("stdout", "out-1 out-2"), ("stderr", "err-1 err-2")]
    # the stdout record completes while the stderr partial (which began earlier than its end) is pending
    stderr_start = len(cri("out-1 ", tag="P"))
    assert recs[0].offset == 0 and recs[0].ckpt == stderr_start
    assert recs[1].offset == stderr_start and recs[1].ckpt == len(data)


def test_docker_partials_joined() -> None:
    data = docker("part one, ") + docker("part two\n")
    recs, _ = feed_all(data)
    assert [r.message for r in recs] == ["part one, part two"]


def test_50kb_line_from_16kb_partials_is_one_record() -> None:
    body = ("x" * 1000 + "\n")[:1000] * 50
    pieces = [body[i : i + 16384] for i in range(0, len(body), 16384)]
    data = b"".join(cri(p, tag="P") for p in pieces[:-1]) + cri(pieces[-1])
    recs, _ = feed_all(data, 4096)
    assert len(recs) == 1 and recs[0].message == body and recs[0].part == 0


def test_3mb_line_split_into_marked_parts_nothing_lost() -> None:
    body = "é" * (1_500_000)  # 3 MB of two-byte characters: cuts must respect UTF-8
    pieces = [body[i : i + 8192] for i in range(0, len(body), 8192)]
    data = b"".join(cri(p, tag="P") for p in pieces[:-1]) + cri(pieces[-1]) + cri("after")
    recs, asm = feed_all(data, 65536, max_line=1 << 20)
    parts = [r for r in recs if r.part]
    assert len(parts) == 3
    assert [r.part for r in parts] == [1, 2, 3] and [r.last_part for r in parts] == [False, False, True]
    assert "".join(r.message for r in parts) == body
    assert all(TAG_SPLIT in r.tags for r in parts) and all("\ufffd" not in r.message for r in parts)
    assert all(r.ckpt == 0 for r in parts[:-1]) and parts[-1].ckpt == len(data) - len(cri("after"))
    assert len({r.id for r in parts}) == 3
    assert recs[-1].message == "after" and asm.safe_offset() == len(data)


def test_oversize_physical_cri_line_streamed_in_parts() -> None:
    body = b"y" * 3_000_000
    data = cri(body) + cri("next")
    asm = LineAssembler(info(), 0, 1 << 20)
    out: list[Record] = []
    for i in range(0, len(data), 256 * 1024):
        out.extend(asm.feed(data[i : i + 256 * 1024]))
        assert len(asm.buf) < (1 << 20) + 256 * 1024 + 8192  # bounded memory
    parts = [r for r in out if r.part]
    assert "".join(r.message for r in parts).encode() == body
    assert parts[-1].last_part and out[-1].message == "next"


def test_oversize_raw_line_flagged_and_split() -> None:
    data = b"garbage " * 400_000 + b"\n" + cri("ok")
    recs, _ = feed_all(data, 300_000, max_line=1 << 20)
    raw = [r for r in recs if r.error]
    assert "".join(r.message for r in raw).encode() == b"garbage " * 400_000
    assert all(TAG_PARSE_ERROR in r.tags for r in raw)
    assert recs[-1].message == "ok" and recs[-1].error is None


def test_invalid_utf8_kept_with_replacement() -> None:
    recs, _ = feed_all(cri(b"bad \xff\xfe bytes") + docker("fine\n"))
    assert recs[0].message == "bad \ufffd\ufffd bytes" and TAG_INVALID_UTF8 in recs[0].tags
    assert recs[1].message == "fine"


@pytest.mark.parametrize(
    "line",
    [
        b"not a log line",
        b"{not json",
        b'{"log": 5}',
        b"2026-11-26T19:01:02Z stdin F x",
        b"",
        b"12 stdout F x",
    ],
)
def test_malformed_line_becomes_flagged_record(line: bytes) -> None:
    recs, _ = feed_all(line + b"\n" + cri("next"))
    assert recs[0].error is not None and TAG_PARSE_ERROR in recs[0].tags
    assert recs[0].message == line.decode()
    assert recs[0].timestamp.endswith("Z") and len(recs[0].timestamp) == 30  # the time it was read
    assert recs[1].message == "next" and recs[1].error is None


def test_flush_unterminated_emits_held_data() -> None:
    asm = LineAssembler(info(), 0, 1 << 20)
    asm.feed(cri("held", tag="P") + cri("tail")[:-1])
    recs = asm.flush_unterminated()
    assert [r.message for r in recs] == ["heldtail"]  # the unterminated F line closes the partial
    assert asm.safe_offset() == len(cri("held", tag="P") + cri("tail")) - 1


def test_document_shape() -> None:
    (r,) = feed_all(cri("m"))[0]
    doc = r.document()
    assert doc["@timestamp"] == TS and doc["log"] == {"file": {"path": "/x/p_ns_c-0123.log"}, "offset": 0}


def test_parse_helpers() -> None:
    assert parse_line(cri("x", tag="P")[:-1]).partial
    assert parse_line(b"2026-11-26T19:01:02Z stdout F:x y").message == b"y"
    assert utf8_cut("aé".encode(), 2) == 1
    assert parse_k8s_filename("/var/log/containers/web-1_shop_nginx-" + "a" * 64 + ".log") == {
        "pod": "web-1",
        "namespace": "shop",
        "container": "nginx",
        "container_id": "a" * 64,
    }
    m = parse_k8s_filename("/var/log/pods/shop_web-1_1234-uid/nginx/0.log")
    assert m["pod_uid"] == "1234-uid" and m["pod"] == "web-1" and m["container"] == "nginx"
