"""Helpers for whole-flow tests: the log writer process, collector configs, reading back what arrived."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch

from tests.support.logwriter import parse_seq


def start_writer(logs: Path, **opts: Any) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tests.support.logwriter", "--dir", str(logs)]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish_writer(proc: subprocess.Popen[bytes], timeout: float = 300) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"log writer failed: {err.decode(errors='replace')}"
    summary: dict[str, Any] = json.loads(out)
    return summary


def collector_config(logs: Path, state: Path, sink: dict[str, Any], **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "node_name": "e2e-node",
        "state_dir": str(state),
        "sources": [{"type": "container_logs", "paths": [str(logs / "*.log")], "rotate_wait": 2.0}],
        "sink": {"flush_interval": 0.2, "retry_initial_backoff": 0.05, "retry_max_backoff": 1.0, **sink},
        "checkpoint_interval": 0.2,
    }
    cfg.update(extra)
    return cfg


def wait_until(what: str, probe: Callable[[], bool], timeout: float, on_timeout: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {on_timeout()}")
        time.sleep(0.5)


def es_count(es: Elasticsearch, index: str) -> int:
    es.indices.refresh(index=index, ignore_unavailable=True)
    try:
        return int(es.count(index=index)["count"])
    except Exception:  # index not created yet
        return 0


def es_docs(es: Elasticsearch, index: str, fields: list[str] | None = None) -> list[dict[str, Any]]:
    """Every document of the index, paged with search_after on a total order (no scroll, no PIT)."""
    es.indices.refresh(index=index)
    docs: list[dict[str, Any]] = []
    after: list[Any] | None = None
    while True:
        body: dict[str, Any] = {
            "size": 5000,
            "sort": [{"log.file.path": "asc"}, {"log.offset": "asc"}, {"_id": "asc"}],
        }
        if after is not None:
            body["search_after"] = after
        if fields is not None:
            body["_source"] = fields
        hits = es.search(index=index, **body)["hits"]["hits"]
        if not hits:
            return docs
        docs.extend(h["_source"] | {"_id": h["_id"]} for h in hits)
        after = hits[-1]["sort"]


def sqlite_docs(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [json.loads(doc) | {"_id": i} for i, doc in conn.execute("SELECT id, doc FROM logs")]
    finally:
        conn.close()


def sqlite_count(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM logs").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def check_exactly_once(messages: Iterable[str], expected: dict[str, int]) -> None:
    """Every ``seq=<pod>:<n>`` for n < expected[pod] appears exactly once, and nothing else."""
    seen: Counter[tuple[str, int]] = Counter()
    for m in messages:
        s = parse_seq(m)
        assert s is not None, f"a message without a sequence number: {m[:120]!r}"
        seen[s] += 1
    dups = [k for k, c in seen.items() if c > 1]
    assert not dups, f"{len(dups)} lines duplicated, e.g. {sorted(dups)[:5]}"
    want = {(pod, n) for pod, count in expected.items() for n in range(count)}
    missing = want - set(seen)
    extra = set(seen) - want
    assert not missing, f"{len(missing)} lines missing, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} unexpected lines, e.g. {sorted(extra)[:5]}"
