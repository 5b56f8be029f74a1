"""The embedded SQLite/FTS5 log store, against real database files."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import SqliteSink
from collector.record import FileInfo, Record
from collector.sinks.base import DELIVERED, Outcome, PermanentError, Status, TemporaryError
from collector.sinks.sqlite import SCHEMA_VERSION, SqliteLogSink, build, open_reader, rfc3339_to_ns

CONTAINER_ID = "3b1f" * 16


def file_info(pod: str = "web-0", namespace: str = "shop", container: str = "nginx") -> FileInfo:
    return FileInfo(
        key=f"2049:{zlib.crc32(pod.encode())}:c0ffee",
        path=f"/var/log/containers/{pod}_{namespace}_{container}-{CONTAINER_ID}.log",
        id_prefix=hashlib.sha256(f"node-a/{namespace}/{pod}".encode()).hexdigest()[:16],
        kubernetes={
            "namespace": namespace,
            "pod": {"name": pod, "uid": "0b5e6f7a-1111-2222-3333-444455556666"},
            "container": {"name": container},
            "node": {"name": "node-a"},
            "labels": {"app": "web", "app_kubernetes_io/part-of": "shop"},
        },
        container={"id": CONTAINER_ID, "image": {"name": "nginx:1.25"}},
    )


def record(
    file: FileInfo,
    n: int,
    message: str | None = None,
    *,
    timestamp: str | None = None,
    stream: str = "stdout",
) -> Record:
    return Record(
        file=file,
        offset=n * 100,
        ckpt=n * 100 + 100,
        timestamp=timestamp or f"2026-11-26T19:01:02.{n:09d}Z",
        stream=stream,
        message=message if message is not None else f"GET /item/{n} 200 alpha line {n}",
        size=100,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store" / "logs.db"


@pytest.fixture
async def sink(db: Path) -> AsyncIterator[SqliteLogSink]:
    s = SqliteLogSink(str(db))
    await s.start()
    yield s
    await s.close()


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = open_reader(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def fts_doc_count(db: Path, term: str) -> int:
    """Rows the FTS index itself holds for ``term`` (read from the index, not the content table)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, logs_fts, 'row')")
        row = conn.execute("SELECT doc FROM temp.vocab WHERE term = ?", (term,)).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def fts_integrity_check(db: Path) -> None:
    """Raises sqlite3.DatabaseError when the FTS index and the ``logs`` table disagree."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("INSERT INTO logs_fts (logs_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        conn.close()


async def test_build_from_config(db: Path) -> None:
    s = build(SqliteSink(type="sqlite", path=str(db)))
    assert isinstance(s, SqliteLogSink)
    assert s.name == "sqlite"
    await s.start()
    await s.close()
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(db, "PRAGMA journal_mode") == [("wal",)]


async def test_write_stores_columns_document_and_fts(sink: SqliteLogSink, db: Path) -> None:
    f = file_info()
    batch = [record(f, n) for n in range(50)]
    batch[7] = record(f, 7, "upstream timed out connecting to payments", stream="stderr")

    assert await sink.write(batch) == [DELIVERED] * 50

    rows = query(
        db,
        "SELECT id, ts, ts_ns, namespace, pod, pod_uid, container, node, stream, message, offset, path,"
        " labels, doc FROM logs WHERE id = ?",
        batch[7].id,
    )
    assert rows == [
        (
            batch[7].id,
            "2026-11-26T19:01:02.000000007Z",
            1_795_719_662_000_000_007,
            "shop",
            "web-0",
            "0b5e6f7a-1111-2222-3333-444455556666",
            "nginx",
            "node-a",
            "stderr",
            "upstream timed out connecting to payments",
            700,
            f.path,
            '{"app":"web","app_kubernetes_io/part-of":"shop"}',
            orjson.dumps(batch[7].document()).decode(),
        )
    ]
    assert query(db, "SELECT count(*) FROM logs") == [(50,)]
    matched = query(
        db,
        "SELECT logs.id FROM logs_fts JOIN logs ON logs.rid = logs_fts.rowid WHERE logs_fts MATCH ?",
        "NEAR(timed payments, 3)",
    )
    assert matched == [(batch[7].id,)]
    assert query(db, "SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'alpha'") == [(49,)]
    assert query(db, "SELECT count(*) FROM logs_fts WHERE logs_fts MATCH '\"alpha line 12\"'") == [(1,)]
    assert query(db, "SELECT json_extract(doc, '$.kubernetes.pod.name') FROM logs LIMIT 1") == [("web-0",)]
    assert sink.rows_inserted == 50
    assert sink.duplicates == 0
    fts_integrity_check(db)


async def test_resend_adds_no_rows_and_no_index_entries(sink: SqliteLogSink, db: Path) -> None:
    f = file_info()
    batch = [record(f, n) for n in range(200)]
    await sink.write(batch)
    assert fts_doc_count(db, "alpha") == 200

    # The same records again, some of them twice within one batch, mixed with new ones.
    again = batch[:100] + batch[50:60] + [record(f, n) for n in range(200, 220)]
    assert await sink.write(again) == [DELIVERED] * len(again)

    assert query(db, "SELECT count(*), count(DISTINCT id) FROM logs") == [(220, 220)]
    assert fts_doc_count(db, "alpha") == 220
    assert query(db, "SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'alpha'") == [(220,)]
    assert sink.rows_inserted == 220
    assert sink.duplicates == 110
    # A second index entry for an existing rowid would make this fail ("malformed").
    fts_integrity_check(db)


async def test_records_survive_close_and_reopen(db: Path) -> None:
    f = file_info()
    first = SqliteLogSink(str(db))
    await first.start()
    await first.write([record(f, n) for n in range(10)])
    await first.close()

    second = SqliteLogSink(str(db))
    await second.start()
    await second.write([record(f, n) for n in range(5, 15)])
    await second.close()

    assert query(db, "SELECT count(*) FROM logs") == [(15,)]
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    fts_integrity_check(db)


async def test_concurrent_reader_sees_whole_batches(sink: SqliteLogSink, db: Path) -> None:
    batch_size, batches = 300, 30
    files = [file_info(f"web-{i}") for i in range(3)]
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    problems: list[str] = []

    def read_continuously() -> None:
        conn = open_reader(db)
        try:
            while not stop.is_set():
                # One statement, one snapshot: rows and index entries must agree.
                rows, matched = conn.execute(
                    "SELECT (SELECT count(*) FROM logs),"
                    " (SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'alpha')"
                ).fetchone()
                seen.append((rows, matched))
                if rows % batch_size or rows != matched:
                    problems.append(f"rows={rows} matched={matched}")
        finally:
            conn.close()

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        for b in range(batches):
            f = files[b % len(files)]
            await sink.write([record(f, b * batch_size + n) for n in range(batch_size)])
            await asyncio.sleep(0)
    finally:
        stop.set()
        await asyncio.to_thread(reader.join)

    assert problems == []
    assert len({rows for rows, _ in seen}) > 2  # the reader really ran while batches landed
    assert query(db, "SELECT count(*) FROM logs") == [(batch_size * batches,)]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-11-26T19:01:02.123456789Z", 1_795_719_662_123_456_789),
        ("2026-11-26T19:01:02.123456789z", 1_795_719_662_123_456_789),
        ("2026-11-26T21:01:02.123456789+02:00", 1_795_719_662_123_456_789),
        ("2026-11-26T13:31:02.123456789-05:30", 1_795_719_662_123_456_789),
        ("2026-11-27T00:00:02.5+04:58", 1_795_719_722_500_000_000),
        ("2026-11-26T19:01:02Z", 1_795_719_662_000_000_000),
        ("2026-11-26T19:01:02.1Z", 1_795_719_662_100_000_000),
        ("2026-11-26T19:01:02.000001Z", 1_795_719_662_000_001_000),
        ("2026-11-26 19:01:02.123Z", 1_795_719_662_123_000_000),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("2024-02-29T00:00:00+00:00", 1_709_164_800_000_000_000),
    ],
)
def test_rfc3339_to_ns(ts: str, expected: int) -> None:
    assert rfc3339_to_ns(ts) == expected


@pytest.mark.parametrize(
    "ts",
    [
        "",
        "not a time",
        "2026-11-26T19:01:02",  # no offset
        "2026-11-26T19:01:02.1234567890Z",  # 10 fractional digits
        "2026-11-26T19:01:02.Z",
        "2026-13-26T19:01:02Z",
        "2026-02-30T19:01:02Z",
        "2026-11-26T19:01:02+0200",
        "9999-12-31T23:59:59Z",  # past the int64 nanosecond range
        " 2026-11-26T19:01:02Z",
    ],
)
def test_rfc3339_to_ns_rejects(ts: str) -> None:
    assert rfc3339_to_ns(ts) is None


async def test_offset_timestamps_become_utc_ns(sink: SqliteLogSink, db: Path) -> None:
    f = file_info()
    stamps = [
        "2026-11-26T19:01:02.123456789Z",
        "2026-11-26T21:01:02.123456789+02:00",
        "2026-11-26T13:31:02.123456789-05:30",
        "2026-11-26T19:01:02.1234Z",
        "garbage",
    ]
    await sink.write([record(f, n, timestamp=ts) for n, ts in enumerate(stamps)])
    rows = query(db, "SELECT ts, ts_ns FROM logs ORDER BY offset")
    assert rows == [
        (stamps[0], 1_795_719_662_123_456_789),
        (stamps[1], 1_795_719_662_123_456_789),
        (stamps[2], 1_795_719_662_123_456_789),
        (stamps[3], 1_795_719_662_123_400_000),
        ("garbage", None),
    ]
    # Range queries on ts_ns see the same instant whatever the writer's offset.
    assert query(db, "SELECT count(*) FROM logs WHERE ts_ns = ?", 1_795_719_662_123_456_789) == [(3,)]


async def test_replacement_characters_survive(sink: SqliteLogSink, db: Path) -> None:
    f = file_info()
    from_bad_bytes = b"caf\xc3 \xff\xfe ok \xe2\x82".decode("utf-8", "replace")
    lone_surrogate = "half a pair: \udc80 end"
    await sink.write(
        [record(f, 0, from_bad_bytes), record(f, 1, lone_surrogate), record(f, 2, "naïve ünïcode")]
    )

    rows = query(db, "SELECT message, doc FROM logs ORDER BY offset")
    assert rows[0][0] == from_bad_bytes
    assert "\ufffd" in rows[0][0]
    assert orjson.loads(rows[0][1])["message"] == from_bad_bytes
    assert rows[1][0] == "half a pair: \ufffd\ufffd\ufffd end"  # cleaned, not rejected
    assert orjson.loads(rows[1][1])["message"] == rows[1][0]
    assert rows[2][0] == "naïve ünïcode"
    # unicode61 folds diacritics: "naive" finds "naïve".
    assert query(db, "SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'naive'") == [(1,)]


async def test_dead_letter_is_stored(sink: SqliteLogSink, db: Path) -> None:
    f = file_info()
    rejected = [record(f, 1, "bad one"), record(f, 2, "bad two"), record(f, 3, "bad three")]
    await sink.dead_letter(
        rejected,
        [
            "mapper_parsing_exception: x",
            Outcome(Status.REJECTED, "illegal_argument_exception: y", 400),
            Outcome(Status.REJECTED),
        ],
    )
    await sink.dead_letter(rejected[:1], ["mapper_parsing_exception: again"])

    rows = query(db, "SELECT id, ts, error, doc FROM dead_letter ORDER BY id")
    assert [(r[0], r[1], r[2]) for r in rows] == sorted(
        [
            (rejected[0].id, rejected[0].timestamp, "mapper_parsing_exception: again"),
            (rejected[1].id, rejected[1].timestamp, "HTTP 400: illegal_argument_exception: y"),
            (rejected[2].id, rejected[2].timestamp, "rejected"),
        ]
    )
    docs = {orjson.loads(r[3])["message"] for r in rows}
    assert docs == {"bad one", "bad two", "bad three"}
    assert query(db, "SELECT count(*) FROM logs") == [(0,)]
    with pytest.raises(ValueError):
        await sink.dead_letter(rejected, ["only one error"])


async def test_locked_database_is_a_temporary_error(db: Path) -> None:
    s = SqliteLogSink(str(db), busy_timeout=0.05)
    await s.start()
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
        with pytest.raises(TemporaryError, match="locked"):
            await s.write([record(file_info(), 0)])
        blocker.execute("ROLLBACK")
        assert await s.write([record(file_info(), 0)]) == [DELIVERED]
    finally:
        blocker.close()
        await s.close()
    assert query(db, "SELECT count(*) FROM logs") == [(1,)]


async def test_newer_schema_is_a_permanent_error(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    s = SqliteLogSink(str(db))
    with pytest.raises(PermanentError, match="newer"):
        await s.start()
    await s.close()


async def test_reader_is_read_only(sink: SqliteLogSink, db: Path) -> None:
    await sink.write([record(file_info(), 0)])
    conn = open_reader(db)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM logs")
    finally:
        conn.close()
    assert query(db, "SELECT count(*) FROM logs") == [(1,)]


async def test_empty_batch(sink: SqliteLogSink) -> None:
    assert await sink.write([]) == []
