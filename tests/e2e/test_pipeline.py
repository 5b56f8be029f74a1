"""Whole flows with real processes: log writer -> collector -> Elasticsearch-API server or SQLite.

Every line carries ``seq=<pod>:<n>``; each test checks that every line arrived exactly once.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from tests.e2e.harness import (
    check_exactly_once,
    collector_config,
    es_count,
    es_docs,
    finish_writer,
    sqlite_count,
    sqlite_docs,
    start_writer,
    wait_until,
)
from tests.support.collector_proc import CollectorProcess
from tests.support.servers import EsServer

pytestmark = pytest.mark.slow

PODS, LINES = 3, 100_000
WRITER = {
    "pods": PODS,
    "lines": LINES,
    "format": "mixed",
    "line_bytes": 150,
    "rotate_bytes": 10_000_000,
    "copytruncate_at_bytes": 4_000_000,
    "stderr_every": 7,
    "partial_every": 1000,
}
INDEX = "logs-e2e-%Y.%m.%d"
# osmem-server indexes a few thousand documents a second, fewer on a loaded 2-core machine: 300k take
# two to ten minutes. The bound only keeps a broken run from hanging; the test asserts no timing.
ES_TIMEOUT = 1500


@pytest.fixture
def es(es_server: EsServer) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_server.url, request_timeout=60)
    yield client
    client.close()


def es_sink(server: EsServer) -> dict[str, Any]:
    return {"type": "elasticsearch", "hosts": [server.url], "index": INDEX, "batch_max_bytes": 2_000_000}


def expected_lines(summary: dict[str, Any]) -> dict[str, int]:
    return {pod: info["lines"] for pod, info in summary["pods"].items()}


def check_document_fields(doc: dict[str, Any]) -> None:
    assert doc["kubernetes"]["namespace"] == "e2e"
    assert doc["kubernetes"]["pod"]["name"].startswith("app-")
    assert doc["kubernetes"]["container"]["name"]
    assert doc["kubernetes"]["node"]["name"] == "e2e-node"
    assert len(doc["container"]["id"]) == 64
    assert doc["stream"] in ("stdout", "stderr")
    assert doc["log"]["file"]["path"].endswith(".log")
    assert isinstance(doc["log"]["offset"], int)
    ts = doc["@timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,9}Z", ts), ts  # the runtime's, as written


def run_with_kills(collector: CollectorProcess, writer: Any, kills: int, seed: int) -> None:
    """SIGKILL the collector ``kills`` times at random moments while the writer runs, restarting it."""
    rng = random.Random(seed)
    for _ in range(kills):
        time.sleep(rng.uniform(0.5, 3.0))
        collector.kill()
        collector.start()
    assert writer.poll() is None or writer.returncode == 0


def test_three_pods_rotation_copytruncate_into_elasticsearch(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    collector = CollectorProcess(tmp_path, collector_config(logs, tmp_path / "state", es_sink(es_server)))
    collector.start()
    try:
        summary = finish_writer(start_writer(logs, **WRITER, seed=1))
        want = expected_lines(summary)
        total = sum(want.values())
        assert total == PODS * LINES
        wait_until(
            "every line in the index",
            lambda: es_count(es, "logs-e2e-*") >= total,
            ES_TIMEOUT,
            lambda: f"{es_count(es, 'logs-e2e-*')}/{total} arrived; {collector.stderr()[-2000:]}",
        )
        metrics = collector.metrics()
        assert collector.terminate() == 0
        # every pod's file was renamed once (10 MB) and copy-truncated once (4 MB), and it was noticed
        assert metrics['kubeobs_collector_rotations_total{kind="rename"}'] >= PODS
        assert metrics['kubeobs_collector_rotations_total{kind="truncate"}'] >= PODS
        assert metrics["kubeobs_collector_lines_read_total"] >= total
        assert not any(
            k.startswith("kubeobs_collector_records_dropped_total{") and v for k, v in metrics.items()
        )
        docs = es_docs(es, "logs-e2e-*")
        check_exactly_once((d["message"] for d in docs), want)
        for d in docs[:: len(docs) // 50]:
            check_document_fields(d)
        mapping = es.indices.get_mapping(index="logs-e2e-*")
        for idx in mapping.values():
            assert idx["mappings"]["properties"]["@timestamp"]["type"] == "date_nanos"
    finally:
        collector.stop()


def test_sigkill_five_times_during_rotation_into_elasticsearch(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    collector = CollectorProcess(tmp_path, collector_config(logs, tmp_path / "state", es_sink(es_server)))
    collector.start()
    try:
        writer = start_writer(logs, **(WRITER | {"rate": 8000}), seed=2)
        run_with_kills(collector, writer, kills=5, seed=2)
        want = expected_lines(finish_writer(writer))
        total = sum(want.values())
        wait_until(
            "every line in the index",
            lambda: es_count(es, "logs-e2e-*") >= total,
            ES_TIMEOUT,
            lambda: f"{es_count(es, 'logs-e2e-*')}/{total} arrived; {collector.stderr()[-2000:]}",
        )
        assert collector.terminate() == 0
        assert collector.starts == 6
        check_exactly_once((d["message"] for d in es_docs(es, "logs-e2e-*", ["message"])), want)
    finally:
        collector.stop()


def test_sigkill_five_times_into_sqlite(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    db = tmp_path / "logs.db"
    collector = CollectorProcess(
        tmp_path, collector_config(logs, tmp_path / "state", {"type": "sqlite", "path": str(db)})
    )
    collector.start()
    try:
        writer = start_writer(logs, **(WRITER | {"rate": 8000}), seed=3)
        run_with_kills(collector, writer, kills=5, seed=3)
        want = expected_lines(finish_writer(writer))
        total = sum(want.values())
        wait_until(
            "every line in SQLite",
            lambda: sqlite_count(db) >= total,
            300,
            lambda: f"{sqlite_count(db)}/{total} arrived; {collector.stderr()[-2000:]}",
        )
        assert collector.terminate() == 0
        docs = sqlite_docs(db)
        check_exactly_once((d["message"] for d in docs), want)
        for d in docs[:: len(docs) // 50]:
            check_document_fields(d)
    finally:
        collector.stop()
