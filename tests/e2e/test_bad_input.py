"""Bad input through the real collector into the Elasticsearch-API server: nothing lost, all flagged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from tests.e2e.harness import collector_config, es_count, es_docs, wait_until
from tests.support.collector_proc import CollectorProcess
from tests.support.servers import EsServer

TS = "2026-11-26T10:00:00.123456789Z"
POD_FILE = "weird-0_e2e_app-" + "c" * 64 + ".log"


def cri(msg: bytes, tag: bytes = b"F", stream: bytes = b"stdout", ts: str = TS) -> bytes:
    return ts.encode() + b" " + stream + b" " + tag + b" " + msg + b"\n"


@pytest.fixture
def es(es_server: EsServer) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_server.url, request_timeout=60)
    yield client
    client.close()


def run_collector(
    tmp_path: Path, es_server: EsServer, content: bytes, expect_docs: int, es: Elasticsearch
) -> CollectorProcess:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / POD_FILE).write_bytes(content)
    sink = {
        "type": "elasticsearch",
        "hosts": [es_server.url],
        "index": "logs-bad-%Y.%m.%d",
        "dead_letter_index": "kubeobs-deadletter-e2e",
    }
    collector = CollectorProcess(tmp_path, collector_config(logs, tmp_path / "state", sink))
    collector.start()
    try:
        wait_until(
            "documents in the index",
            lambda: es_count(es, "logs-bad-*") >= expect_docs,
            120,
            lambda: f"{es_count(es, 'logs-bad-*')}/{expect_docs}; {collector.stderr()[-3000:]}",
        )
    except BaseException:
        collector.stop()
        raise
    return collector


def test_long_partial_split_invalid_utf8_and_malformed_lines(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    fifty_kb = b"".join(b"%05d" % i + b"a" * 95 for i in range(500))  # 50 KB, distinguishable pieces
    three_mb = b"".join(b"%07d" % i + b"b" * 93 for i in range(30_000))  # 3 MB
    content = (
        cri(b"first")
        + b"".join(cri(fifty_kb[i : i + 16384], b"P") for i in range(0, len(fifty_kb) - 16384, 16384))
        + cri(fifty_kb[(len(fifty_kb) - 1) // 16384 * 16384 :])
        + b"".join(cri(three_mb[i : i + 16384], b"P") for i in range(0, len(three_mb) - 16384, 16384))
        + cri(three_mb[(len(three_mb) - 1) // 16384 * 16384 :])
        + cri(b"bad utf8 \xc3\x28 \xff end")
        + b"this is not a container log line\n"
        + b'{"log": "broken json\n'
        + cri(b"last")
    )
    # first, 50 KB, 3 parts of 3 MB, invalid utf8, 2 malformed, last
    collector = run_collector(tmp_path, es_server, content, 9, es)
    try:
        metrics = collector.metrics()
        assert collector.terminate() == 0
    finally:
        collector.stop()
    docs = es_docs(es, "logs-bad-*")
    by_msg = {d["message"][:20]: d for d in docs}
    assert len(docs) == 9, [d["message"][:40] for d in docs]
    assert docs[0]["message"] == "first" and docs[-1]["message"] == "last"
    joined = [d for d in docs if d["message"].startswith("00000a")]
    assert len(joined) == 1 and joined[0]["message"].encode() == fifty_kb and "kubeobs" not in joined[0]
    parts = sorted(
        (d for d in docs if d["message"].startswith(("0", "b")) and "kubeobs" in d),
        key=lambda d: d["kubeobs"]["split"]["part"],
    )
    assert [p["kubeobs"]["split"]["part"] for p in parts] == [1, 2, 3]
    assert [p["kubeobs"]["split"]["last"] for p in parts] == [False, False, True]
    assert "".join(p["message"] for p in parts).encode() == three_mb
    assert all("split" in p["tags"] for p in parts)
    bad = by_msg["bad utf8 \ufffd( \ufffd end"[:20]]
    assert "invalid_utf8" in bad["tags"]
    malformed = [d for d in docs if "parse_error" in d.get("tags", [])]
    assert sorted(d["message"] for d in malformed) == sorted(
        ['{"log": "broken json', "this is not a container log line"]
    )
    assert all(d["error"]["message"] for d in malformed)
    assert metrics["kubeobs_collector_parse_errors_total"] == 2
    assert metrics["kubeobs_collector_invalid_utf8_total"] == 1


def test_mapping_conflict_goes_to_dead_letter_rest_of_bulk_delivered(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    # a runtime timestamp of a day that does not exist: Elasticsearch rejects it (400
    # mapper_parsing_exception on the date_nanos field), the lines around it in the same bulk go in
    lines = [cri(b"good %d" % i) for i in range(50)]
    lines.insert(25, cri(b"poison line", ts="2026-02-31T10:00:00.000000001Z"))
    collector = run_collector(tmp_path, es_server, b"".join(lines), 50, es)
    try:
        wait_until(
            "the dead letter",
            lambda: es_count(es, "kubeobs-deadletter-e2e") >= 1,
            60,
            lambda: collector.stderr()[-3000:],
        )
        metrics = collector.metrics()
        assert collector.terminate() == 0
    finally:
        collector.stop()
    good = es_docs(es, "logs-bad-*")
    assert sorted(d["message"] for d in good) == sorted(f"good {i}" for i in range(50))
    (dead,) = es_docs(es, "kubeobs-deadletter-e2e")
    assert dead["message"] == "poison line"
    assert "mapper_parsing_exception" in str(dead["error"])
    assert metrics['kubeobs_collector_records_dead_lettered_total{sink="elasticsearch"}'] == 1
    # the checkpoint moved past the poison line: a restart sends nothing again
    state = (tmp_path / "state" / "checkpoints.json").read_text()
    assert str(sum(len(x) for x in lines)) in state
