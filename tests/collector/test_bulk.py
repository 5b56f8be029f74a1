"""The ``_bulk`` encoder and response classifier: pure functions, no server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from collector.record import FileInfo, Record
from collector.sinks.base import DELIVERED, Outcome, Status
from collector.sinks.bulk import (
    BulkEncoder,
    IndexNamer,
    classify_bulk_response,
    dead_letter_document,
    encode_dead_letters,
    error_text,
    index_patterns,
    parse_timestamp,
    split_error,
)

FILE = FileInfo(
    key="2049:1234:abcd",
    path="/var/log/containers/web-1_shop_nginx-0123abcd.log",
    id_prefix="f00dcafe",
    kubernetes={
        "namespace": "shop",
        "pod": {"name": "web-1", "uid": "uid-1"},
        "container": {"name": "nginx"},
        "node": {"name": "node-a"},
        "labels": {"app": "web", "app_kubernetes_io/name": "web"},
    },
    container={"id": "0123abcd", "image": {"name": "nginx:1.25"}},
)


def rec(
    offset: int, timestamp: str = "2024-03-01T12:00:00.123456789Z", message: str = "hello", **kw: Any
) -> Record:
    return Record(
        file=FILE,
        offset=offset,
        ckpt=offset + 10,
        timestamp=timestamp,
        stream="stdout",
        message=message,
        size=10,
        **kw,
    )


def decode(body: bytes) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    assert body.endswith(b"\n")
    lines = [orjson.loads(line) for line in body.split(b"\n")[:-1]]
    assert len(lines) % 2 == 0
    return list(zip(lines[::2], lines[1::2], strict=True))


# --- index names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "index"),
    [
        ("2024-02-29T23:59:59.999999999Z", "logs-2024.02.29"),
        ("2024-03-01T00:00:00Z", "logs-2024.03.01"),
        ("2024-03-01T00:00:00.000000001Z", "logs-2024.03.01"),
        ("2024-12-31T23:59:59.5Z", "logs-2024.12.31"),
        ("2025-01-01T00:00:00.0Z", "logs-2025.01.01"),
        # an offset moves the UTC date: these are 2024-02-29T23:30Z and 2024-03-01T00:30Z
        ("2024-03-01T01:30:00.123456789+02:00", "logs-2024.02.29"),
        ("2024-03-01T02:30:00.123456789+02:00", "logs-2024.03.01"),
        ("2024-02-29T19:30:00-05:00", "logs-2024.03.01"),
        ("2024-02-29T18:59:59.999-05:00", "logs-2024.02.29"),
        ("2024-03-01t12:00:00z", "logs-2024.03.01"),
    ],
)
def test_index_name_is_the_utc_date(timestamp: str, index: str) -> None:
    assert IndexNamer("logs-%Y.%m.%d")(timestamp) == index


def test_index_names_are_cached_per_date_and_offset_minute() -> None:
    namer = IndexNamer("logs-%Y.%m.%d")
    for ts in ("2024-03-01T00:00:00Z", "2024-03-01T23:59:59.999999999Z", "2024-03-01T12:00:00.5Z"):
        assert namer(ts) == "logs-2024.03.01"
    assert list(namer.cache) == ["2024-03-01"]
    # with an offset, the same local date can be two UTC dates: the key keeps hour, minute and offset
    assert namer("2024-03-01T01:59:00+02:00") == "logs-2024.02.29"
    assert namer("2024-03-01T02:00:00+02:00") == "logs-2024.03.01"
    assert namer("2024-03-01T01:59:59.9+02:00") == "logs-2024.02.29"


def test_hourly_pattern_keys_on_the_hour() -> None:
    namer = IndexNamer("logs-%Y.%m.%d-%H")
    assert namer("2024-03-01T13:59:59.999999999Z") == "logs-2024.03.01-13"
    assert namer("2024-03-01T14:00:00Z") == "logs-2024.03.01-14"
    assert namer("2024-03-01T14:00:00+01:00") == "logs-2024.03.01-13"
    assert namer.key_len == 13


def test_pattern_without_directives_and_uncacheable_directives() -> None:
    assert IndexNamer("logs")("2024-03-01T00:00:00Z") == "logs"
    micro = IndexNamer("logs-%f")
    assert micro.key_len == 0
    assert micro("2024-03-01T00:00:00.123456789Z") == "logs-123456"


@pytest.mark.parametrize(
    "timestamp",
    ["2024-02-31T00:00:00.1Z", "2024-13-01T00:00:00Z", "not a time", "", "2024-03-01T25:00:00+02:00"],
)
def test_unparsable_timestamps_have_no_index(timestamp: str) -> None:
    assert IndexNamer("logs-%Y.%m.%d")(timestamp) is None


def test_a_bad_timestamp_does_not_poison_its_date() -> None:
    namer = IndexNamer("logs-%Y.%m.%d")
    assert namer("2024-03-01Tgarbage Z") is None
    assert namer("2024-03-01T00:00:00Z") == "logs-2024.03.01"


def test_parse_timestamp_keeps_microseconds_of_nanosecond_stamps() -> None:
    dt = parse_timestamp("2024-03-01T01:30:00.123456789+02:00")
    assert dt is not None
    assert dt.isoformat() == "2024-02-29T23:30:00.123456+00:00"


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("logs-k8s-%Y.%m.%d", ["logs-k8s-*.*.*"]),
        ("logs-%Y%m%d", ["logs-*"]),
        ("logs-%-d", ["logs-*"]),
        ("kubeobs", ["kubeobs"]),
        ("a%%b-%Y", ["a%b-*"]),
    ],
)
def test_index_patterns(pattern: str, expected: list[str]) -> None:
    assert index_patterns(pattern) == expected


# --- encoding ----------------------------------------------------------------------------------------


def test_encode_creates_each_record_with_its_id_and_document() -> None:
    records = [
        rec(0, "2024-02-29T23:59:59.999999999Z"),
        rec(120, "2024-03-01T00:00:00.000000001Z", message='quotes " and \\ and ünïcode'),
        rec(240, "2024-03-01T00:00:01Z", part=2, last_part=False, tags=("partial",), error="bad line"),
    ]
    pairs = decode(BulkEncoder("logs-%Y.%m.%d").encode(records, fallback_index="fallback"))
    assert [a for a, _ in pairs] == [
        {"create": {"_index": "logs-2024.02.29", "_id": "f00dcafe-0"}},
        {"create": {"_index": "logs-2024.03.01", "_id": "f00dcafe-120"}},
        {"create": {"_index": "logs-2024.03.01", "_id": "f00dcafe-240-2"}},
    ]
    assert [d for _, d in pairs] == [r.document() for r in records]
    assert pairs[0][1]["@timestamp"] == "2024-02-29T23:59:59.999999999Z"  # nanoseconds kept as written


def test_encode_sends_unparsable_timestamps_to_the_fallback_index() -> None:
    body = BulkEncoder("logs-%Y.%m.%d").encode(
        [rec(0, "2024-02-31T00:00:00.1Z"), rec(10)], fallback_index="logs-2024.03.05"
    )
    assert [a["create"]["_index"] for a, _ in decode(body)] == ["logs-2024.03.05", "logs-2024.03.01"]


def test_encode_is_stable_across_calls_and_empty_batches() -> None:
    encoder = BulkEncoder("logs-%Y.%m.%d")
    batch = [rec(i * 10) for i in range(50)]
    assert encoder.encode(batch, "f") == encoder.encode(batch, "f")
    assert encoder.encode([], "f") == b""


def test_encode_survives_strings_that_are_not_valid_unicode() -> None:
    raw = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    ((_, doc),) = decode(BulkEncoder("logs").encode([rec(0, message=raw)], "f"))
    assert doc["message"] == "caf\ufffd \ufffd"


def test_index_name_is_json_escaped_in_the_action() -> None:
    ((action, _),) = decode(BulkEncoder('we"ird-%Y').encode([rec(0)], "f"))
    assert action["create"]["_index"] == 'we"ird-2024'


# --- classification ------------------------------------------------------------------------------------


def item(status: int, error: dict[str, Any] | None = None, op: str = "create") -> dict[str, Any]:
    body: dict[str, Any] = {"_index": "i", "_id": "x", "status": status}
    if error is not None:
        body["error"] = error
    return {op: body}


def test_all_created_is_all_delivered() -> None:
    resp = {"errors": False, "items": [item(201), item(201)]}
    assert classify_bulk_response(resp, 2) == [DELIVERED, DELIVERED]


def test_conflict_counts_as_delivered() -> None:
    conflict = {"type": "version_conflict_engine_exception", "reason": "[x]: version conflict"}
    resp = {"errors": True, "items": [item(409, conflict), item(201), item(200, op="index")]}
    out = classify_bulk_response(resp, 3)
    assert [o.status for o in out] == [Status.DELIVERED] * 3
    assert out[0].http_status == 409 and out[1:] == [DELIVERED, DELIVERED]  # 409 is told apart for metrics


def test_mixed_items() -> None:
    mapping_error = {
        "type": "mapper_parsing_exception",
        "reason": "failed to parse field [@timestamp] of type [date_nanos]",
        "caused_by": {"type": "illegal_argument_exception", "reason": "failed to parse date field"},
    }
    resp = {
        "errors": True,
        "items": [
            item(201),
            item(429, {"type": "es_rejected_execution_exception", "reason": "queue full"}),
            item(400, mapping_error),
            item(409, {"type": "version_conflict_engine_exception", "reason": "exists"}),
            item(503, {"type": "unavailable_shards_exception", "reason": "primary shard is not active"}),
            item(404, {"type": "index_not_found_exception", "reason": "no such index [i]"}),
            item(500),
        ],
    }
    out = classify_bulk_response(resp, 7)
    assert [o.status for o in out] == [
        Status.DELIVERED,
        Status.RETRY,
        Status.REJECTED,
        Status.DELIVERED,
        Status.RETRY,
        Status.REJECTED,
        Status.RETRY,
    ]
    assert out[1] == Outcome(Status.RETRY, "es_rejected_execution_exception: queue full", 429)
    assert out[2].http_status == 400
    assert out[2].error is not None
    assert out[2].error.startswith("mapper_parsing_exception: failed to parse field [@timestamp]")
    assert "caused by illegal_argument_exception" in out[2].error
    assert out[5].error == "index_not_found_exception: no such index [i]"
    assert out[6].http_status == 500


def test_items_missing_from_the_response_are_retried() -> None:
    out = classify_bulk_response({"errors": False, "items": [item(201)]}, 3)
    assert out[0] is DELIVERED
    assert [o.status for o in out[1:]] == [Status.RETRY, Status.RETRY]
    assert classify_bulk_response({}, 2)[0].status is Status.RETRY


def test_filter_path_shaped_response() -> None:
    # With filter_path=errors,items.*.status,items.*.error the items keep only what is read.
    resp = {"errors": True, "items": [{"create": {"status": 201}}, {"create": {"status": 429}}]}
    out = classify_bulk_response(resp, 2)
    assert out[0] is DELIVERED
    assert out[1] == Outcome(Status.RETRY, "HTTP 429", 429)


def test_malformed_items_are_retried_not_lost() -> None:
    resp = {"errors": True, "items": [{}, {"create": {}}, "junk"]}
    assert [o.status for o in classify_bulk_response(resp, 3)] == [Status.RETRY] * 3


def test_error_text_of_string_errors() -> None:
    assert error_text("plain") == "plain"
    assert error_text({"type": "t", "reason": "r"}) == "t: r"


# --- dead letters --------------------------------------------------------------------------------------


def test_dead_letter_document_keeps_the_line_and_the_original() -> None:
    r = rec(42, "2024-02-31T00:00:00.1Z", message="the original line", tags=("x",))
    err = Outcome(Status.REJECTED, "mapper_parsing_exception: failed to parse field [@timestamp]", 400)
    doc = dead_letter_document(r, err, "2024-03-05T10:00:00.000000Z")
    assert doc["@timestamp"] == "2024-03-05T10:00:00.000000Z"
    assert doc["message"] == "the original line"
    assert doc["error"] == {
        "type": "mapper_parsing_exception",
        "reason": "failed to parse field [@timestamp]",
        "status": 400,
    }
    assert doc["log"] == {"file": {"path": FILE.path}, "offset": 42}
    assert doc["kubernetes"] == FILE.kubernetes
    assert doc["container"] == FILE.container
    assert isinstance(doc["kubeobs"]["original"], str)
    assert orjson.loads(doc["kubeobs"]["original"]) == r.document()

    minimal = dead_letter_document(r, "t: r", "2024-03-05T10:00:00Z", minimal=True)
    assert "kubernetes" not in minimal and "container" not in minimal
    assert minimal["kubeobs"] == doc["kubeobs"]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            "mapper_parsing_exception: bad",
            {"type": "mapper_parsing_exception", "reason": "bad", "status": None},
        ),
        ("no type here", {"type": "unknown", "reason": "no type here", "status": None}),
        ("has spaces: then colon", {"type": "unknown", "reason": "has spaces: then colon", "status": None}),
        (Outcome(Status.REJECTED, None, 404), {"type": "unknown", "reason": "", "status": 404}),
    ],
)
def test_split_error(error: str | Outcome, expected: dict[str, Any]) -> None:
    assert split_error(error) == expected


def test_encode_dead_letters_uses_the_records_ids() -> None:
    records = [rec(0), rec(10, part=1, last_part=False)]
    body = encode_dead_letters(records, ["a: b", "c: d"], "dead", "2024-03-05T10:00:00Z")
    pairs = decode(body)
    assert [a for a, _ in pairs] == [
        {"create": {"_index": "dead", "_id": "f00dcafe-0"}},
        {"create": {"_index": "dead", "_id": "f00dcafe-10-1"}},
    ]
    assert [d["error"]["type"] for _, d in pairs] == ["a", "c"]
    with pytest.raises(ValueError):
        encode_dead_letters(records, ["only one"], "dead", "2024-03-05T10:00:00Z")


def test_fast_path_documents_equal_record_documents() -> None:
    from collector.record import FileInfo, Record
    from collector.sinks.bulk import BulkEncoder

    info = FileInfo(
        key="1:2:ff",
        path='/var/log/containers/we"ird_ns_c-1.log',
        id_prefix="abc",
        kubernetes={"namespace": "ns", "pod": {"name": 'we"ird'}, "node": {"name": "n"}},
        container={"id": "1"},
    )
    records = [
        Record(
            info, 0, 10, "2026-11-26T10:00:00.123456789Z", "stdout", 'plain "quoted" \\ \n tab\t é 日本', 10
        ),
        Record(info, 10, 20, "2026-11-26T10:00:00Z", "stderr", "", 10),
        Record(
            info,
            20,
            30,
            "2026-11-26T10:00:00Z",
            "stdout",
            "part",
            10,
            part=2,
            last_part=False,
            tags=("split",),
        ),
        Record(
            info, 30, 40, "2026-11-26T10:00:00Z", "stdout", "raw", 10, error="cri: bad", tags=("parse_error",)
        ),
        Record(info, 40, 50, "2026-11-26T10:00:00Z", "stdout", "lone \udcff surrogate", 10),
    ]
    lines = BulkEncoder("logs-%Y.%m.%d").encode(records, "fallback").splitlines()
    assert len(lines) == 2 * len(records)
    for rec, action, doc in zip(records, lines[::2], lines[1::2], strict=True):
        assert orjson.loads(action) == {"create": {"_index": "logs-2026.11.26", "_id": rec.id}}
        expected = rec.document()
        if "\udcff" in rec.message:
            expected["message"] = "lone \ufffd surrogate"
        assert orjson.loads(doc) == expected


def test_error_free_bulk_response_is_counted_not_parsed() -> None:
    from collector.sinks.bulk import DELIVERED, classify_bulk_response, parse_bulk_response

    ok = b'{"errors":false,"items":[{"create":{"status":201}},{"create":{"status":409}}]}'
    parsed = parse_bulk_response(ok)
    assert parsed == {"errors": False, "item_count": 2}
    assert classify_bulk_response(parsed, 2) == [DELIVERED, DELIVERED]
    assert classify_bulk_response(parse_bulk_response(ok), 3)[2].status.value == "retry"  # one missing
    failed = (
        b'{"errors":true,"items":[{"create":{"status":201}},{"create":{"status":429,"error":{"type":"x"}}}]}'
    )
    assert [o.status.value for o in classify_bulk_response(parse_bulk_response(failed), 2)] == [
        "delivered",
        "retry",
    ]
