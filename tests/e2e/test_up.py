"""The README's first command: ``kubeobs up --demo`` collects demo logs into SQLite, stops on Ctrl-C."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.collector_proc import free_port


def rows(db: Path) -> list[tuple[str, str, str]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.execute("SELECT namespace, pod, message FROM logs"))
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_up_demo_collects_into_sqlite_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubeobs", "up", "--demo", "--metrics-listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    db = tmp_path / "kubeobs-data" / "kubeobs-logs.db"
    try:
        deadline = time.monotonic() + 60
        while True:
            got = rows(db)
            if len({(ns, pod) for ns, pod, _ in got}) >= 4 and any("Traceback" in m for _, _, m in got):
                break
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, f"only {len(got)} rows after 60 s"
            time.sleep(0.5)
        first = len(got)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
            assert b"kubeobs_collector_lines_read_total" in r.read()
        deadline = time.monotonic() + 30
        while len(rows(db)) <= first:  # the demo keeps writing, the collector keeps collecting
            assert time.monotonic() < deadline
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        assert b"wrote demo logs" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_kubeobs_without_command_prints_usage_and_exits_2() -> None:
    r = subprocess.run([sys.executable, "-m", "kubeobs"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "up" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "kubeobs", "up", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "--demo" in r.stdout
