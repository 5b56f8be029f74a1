"""Delivery behaviour of the real collector process: backpressure, SIGTERM, per-item retries, endpoints."""

from __future__ import annotations

import json
import time
import urllib.request
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
    start_writer,
    wait_until,
)
from tests.support.collector_proc import CollectorProcess
from tests.support.servers import EsServer

INDEX = "logs-dlv-%Y.%m.%d"


@pytest.fixture
def es(es_server: EsServer) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_server.url, request_timeout=60)
    yield client
    client.close()


def sink(server: EsServer, **extra: Any) -> dict[str, Any]:
    return {"type": "elasticsearch", "hosts": [server.url], "index": INDEX, **extra}


def expected(summary: dict[str, Any]) -> dict[str, int]:
    return {pod: info["lines"] for pod, info in summary["pods"].items()}


def test_slow_sink_pauses_reading_and_bounds_what_is_held(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    want = expected(finish_writer(start_writer(logs, pods=2, lines=60_000, format="cri", seed=5)))
    es_server.set_faults([{"action": "delay", "seconds": 1.5, "path_regex": "_bulk"}])
    # small batches so the bound is visible: queue 2 + 1 worker + 1 being filled, 1000 records each
    cfg = collector_config(
        logs,
        tmp_path / "state",
        sink(es_server, batch_max_records=1000, workers=1),
        queue_batches=2,
    )
    cfg["sources"][0]["read_chunk_bytes"] = 16384
    collector = CollectorProcess(tmp_path, cfg)
    collector.start()
    try:
        samples = []
        for _ in range(6):
            time.sleep(1)
            m = collector.metrics()
            held = m["kubeobs_collector_lines_read_total"] - m.get(
                'kubeobs_collector_records_delivered_total{sink="elasticsearch"}', 0
            )
            samples.append((held, m["kubeobs_collector_lines_read_total"]))
        # reading is paused by the slow sink: lines read but not delivered stay under the pipeline's bound:
        # (queue 2 + worker 1 + current 1) batches of 1000 records (+ the chunk that filled each one),
        # plus one chunk per file
        per_chunk = 16384 // 150 + 1
        bound = 4 * (1000 + per_chunk) + 2 * per_chunk
        assert all(held <= bound for held, _ in samples), samples
        assert samples[-1][1] < 120_000  # it did not read everything into memory
        lag = sum(
            v for k, v in collector.metrics().items() if k.startswith("kubeobs_collector_read_lag_bytes")
        )
        assert lag > 1_000_000
        es_server.clear_faults()
        wait_until(
            "all lines delivered", lambda: es_count(es, "logs-dlv-*") >= 120_000, 300, collector.stderr
        )
        assert collector.terminate() == 0
    finally:
        collector.stop()
    check_exactly_once((d["message"] for d in es_docs(es, "logs-dlv-*", ["message"])), want)


def test_sigterm_flushes_in_flight_lines_and_exits_0(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = collector_config(
        logs,
        tmp_path / "state",
        sink(es_server, flush_interval=30, batch_max_records=100_000, batch_max_bytes=64_000_000),
    )
    collector = CollectorProcess(tmp_path, cfg)
    collector.start()
    try:
        want = expected(finish_writer(start_writer(logs, pods=1, lines=3000, format="docker", seed=6)))
        wait_until(
            "all lines read",
            lambda: collector.metric("kubeobs_collector_lines_read_total") >= 3000,
            60,
            collector.stderr,
        )
        assert es_count(es, "logs-dlv-*") == 0  # held in one batch: 30 s flush interval, no size limit hit
        t0 = time.monotonic()
        assert collector.terminate() == 0
        assert time.monotonic() - t0 < 10
    finally:
        collector.stop()
    check_exactly_once((d["message"] for d in es_docs(es, "logs-dlv-*", ["message"])), want)
    state = json.loads((tmp_path / "state" / "checkpoints.json").read_text())
    (entry,) = state["files"].values()
    assert entry["offset"] == Path(entry["path"]).stat().st_size


def test_sigterm_during_outage_exits_in_time_and_restart_delivers_the_rest(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = collector_config(logs, tmp_path / "state", sink(es_server), shutdown_timeout=3)
    collector = CollectorProcess(tmp_path, cfg)
    collector.start()
    try:
        first = expected(finish_writer(start_writer(logs, pods=1, lines=2000, format="cri", seed=7)))
        wait_until("first lines delivered", lambda: es_count(es, "logs-dlv-*") >= 2000, 60, collector.stderr)
        es_server.set_faults([{"action": "refuse", "path_regex": "_bulk"}])
        with open(next(logs.glob("*.log")), "ab") as f:
            f.write(
                b"".join(
                    f"2026-11-26T10:00:01.{i:09d}Z stdout F seq=app-0:{2000 + i} x\n".encode()
                    for i in range(500)
                )
            )
        wait_until(
            "the collector to fail against the outage",
            lambda: collector.metric("kubeobs_collector_records_retried_total") > 0,
            30,
            collector.stderr,
        )
        state_before = (tmp_path / "state" / "checkpoints.json").read_text()
        t0 = time.monotonic()
        assert collector.terminate() == 0
        assert time.monotonic() - t0 < 3 + 5
        assert "re-sent after the restart" in collector.stderr()
        # nothing unacknowledged was checkpointed
        assert (tmp_path / "state" / "checkpoints.json").read_text() == state_before
        es_server.clear_faults()
        collector.start()
        wait_until("the rest delivered", lambda: es_count(es, "logs-dlv-*") >= 2500, 60, collector.stderr)
        assert collector.terminate() == 0
    finally:
        collector.stop()
    check_exactly_once(
        (d["message"] for d in es_docs(es, "logs-dlv-*", ["message"])), {"app-0": first["app-0"] + 500}
    )


def test_429_items_retried_alone_and_endpoints(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    es_server.set_faults(
        [{"action": "bulk_items", "status": 429, "fraction": 0.2, "times": 3, "path_regex": "_bulk"}]
    )
    collector = CollectorProcess(tmp_path, collector_config(logs, tmp_path / "state", sink(es_server)))
    collector.start()
    try:
        base = f"http://127.0.0.1:{collector.port}"
        with urllib.request.urlopen(base + "/healthz") as r:
            assert r.status == 200
        with urllib.request.urlopen(base + "/readyz") as r:
            assert r.status == 200
        want = expected(finish_writer(start_writer(logs, pods=2, lines=2000, format="mixed", seed=8)))
        # the index fills at once (the proxy rewrites responses, not requests): wait for the collector's view
        wait_until(
            "all lines acknowledged",
            lambda: collector.metric("kubeobs_collector_records_delivered_total") >= 4000,
            60,
            collector.stderr,
        )
        m = collector.metrics()
        assert m['kubeobs_collector_records_retried_total{reason="item",sink="elasticsearch"}'] > 0
        assert m['kubeobs_collector_records_delivered_total{sink="elasticsearch"}'] == 4000
        assert m["kubeobs_collector_files_open"] == 2
        assert es_server.stats()["items_rewritten"] > 0
        with urllib.request.urlopen(base + "/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain")
        assert collector.terminate() == 0
    finally:
        collector.stop()
    check_exactly_once((d["message"] for d in es_docs(es, "logs-dlv-*", ["message"])), want)
