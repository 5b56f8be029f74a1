"""``kubeobs logs -f`` against a collector that is writing: every new line exactly once, then Ctrl-C.

A real collector (``python -m collector``) tails files that the log writer appends to and writes them
into a SQLite store; two ``kubeobs logs -f`` subprocesses follow that store while it is being written:

- A: no filter, the default backlog of 10 lines: it must print the 10 newest lines of the first batch,
  then every line of the second batch once, and nothing else;
- B: ``-n phase2 --stream stderr --limit 0``, started before the second batch: every stderr line of the
  second batch once, whether it was already stored when B started (backlog) or arrived later (polls).

Then A gets Ctrl-C (SIGINT) and B SIGTERM: both end with status 0.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from tests.e2e.harness import collector_config, finish_writer, sqlite_count, start_writer
from tests.support.collector_proc import CollectorProcess
from tests.support.logwriter import parse_seq
from tests.support.servers import REPO_ROOT

PODS, LINES, STDERR_EVERY = 3, 400, 4


def follow(db: Path, out: Path, *argv: str) -> subprocess.Popen[bytes]:
    with open(out, "wb") as fh:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubeobs",
                "logs",
                "--backend",
                str(db),
                "-f",
                "-o",
                "json",
                "--poll",
                "0.1",
                *argv,
            ],
            stdout=fh,
            stderr=subprocess.PIPE,
            cwd=REPO_ROOT,
        )


def docs(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines written so far."""
    data = path.read_bytes()
    return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def wait_for(what: str, probe: Any, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        for p in procs:
            assert p.poll() is None, f"a process exited ({p.args!r}) while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def newest_ids(db: Path, namespace: str, count: int) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT id FROM logs WHERE namespace = ? ORDER BY ts_ns DESC, offset DESC, node DESC, path DESC,"
            " rid DESC LIMIT ?",
            (namespace, count),
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in reversed(rows)]


def test_follow_prints_every_new_line_exactly_once(tmp_path: Path) -> None:
    logs, db = tmp_path / "logs", tmp_path / "store" / "logs.db"
    collector = CollectorProcess(
        tmp_path, collector_config(logs, tmp_path / "state", {"type": "sqlite", "path": str(db)})
    )
    followers: list[subprocess.Popen[bytes]] = []
    try:
        collector.start()
        assert collector.proc is not None
        collector_proc = collector.proc.process
        finish_writer(start_writer(logs, pods=2, lines=100, namespace="phase1", format="mixed"))
        wait_for("the first batch in the store", lambda: sqlite_count(db) == 200, [collector_proc])
        backlog = newest_ids(db, "phase1", 10)

        out_a, out_b = tmp_path / "follow-all.jsonl", tmp_path / "follow-stderr.jsonl"
        followers = [
            follow(db, out_a),
            follow(db, out_b, "-n", "phase2", "--stream", "stderr", "--limit", "0"),
        ]
        wait_for("the backlog", lambda: len(docs(out_a)) >= 10, followers, timeout=30)

        writer = start_writer(
            logs,
            pods=PODS,
            lines=LINES,
            namespace="phase2",
            format="mixed",
            rate=800,
            stderr_every=STDERR_EVERY,
            partial_every=9,
        )
        summary = finish_writer(writer, timeout=60)
        assert all(p["lines"] == LINES for p in summary["pods"].values())
        total = PODS * LINES
        wait_for("every line in the store", lambda: sqlite_count(db) == 200 + total, [collector_proc])
        wait_for("follower A", lambda: len(docs(out_a)) >= 10 + total, followers)
        wait_for("follower B", lambda: len(docs(out_b)) >= total // STDERR_EVERY, followers)

        followers[0].send_signal(signal.SIGINT)  # Ctrl-C
        followers[1].send_signal(signal.SIGTERM)
        for p in followers:
            _, err = p.communicate(timeout=20)
            assert p.returncode == 0, err.decode()
            assert b"Traceback" not in err
    finally:
        for p in followers:
            if p.poll() is None:
                p.kill()
                p.communicate()
        collector.stop()

    a = docs(out_a)
    assert [d["_id"] for d in a[:10]] == backlog  # the newest 10 of the first batch, oldest first
    rest = a[10:]
    assert all(d["kubernetes"]["namespace"] == "phase2" for d in rest)
    seen = Counter(parse_seq(d["message"]) for d in rest)
    assert None not in seen
    assert [k for k, n in seen.items() if n > 1] == []
    assert set(seen) == {(f"app-{i}", n) for i in range(PODS) for n in range(LINES)}
    assert len({d["_id"] for d in rest}) == len(rest) == total

    b = docs(out_b)
    assert all(d["stream"] == "stderr" and d["kubernetes"]["namespace"] == "phase2" for d in b)
    seen_b = Counter(parse_seq(d["message"]) for d in b)
    assert sorted(seen_b.values()) == [1] * len(seen_b)
    assert set(seen_b) == {
        (f"app-{i}", n) for i in range(PODS) for n in range(LINES) if n % STDERR_EVERY == STDERR_EVERY - 1
    }
