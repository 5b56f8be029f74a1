"""The collector's ``/metrics`` passes ``promtool check metrics`` (SPEC.md, "Metrics contract").

promtool comes from Debian's ``prometheus`` package, which ``tests/run.sh`` installs. Without it this
test fails (a missing tool must not pass silently as a skip).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.harness import collector_config, wait_until
from tests.support.collector_proc import CollectorProcess

LOG_FILE = "web-0_e2e_app-" + "d" * 64 + ".log"
LINES = [
    b"2026-11-26T10:00:00.123456789Z stdout F hello",
    b"2026-11-26T10:00:00.223456789Z stderr F oops on stderr",
    b"2026-11-26T10:00:00.323456789Z stdout P a partial ",
    b"2026-11-26T10:00:00.423456789Z stdout F line, joined",
    b"2026-11-26T10:00:01.000000001Z stdout F bye",
]
DELIVERED = 4  # the partial and its final part are one record
# SPEC.md: these keep node_exporter's spelling (dashboards query them) although promtool flags them.
EXEMPT = re.compile(r"node_memory_\w+|node_netstat_\w+|node_entropy_(available|pool_size)_bits")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed (Debian package 'prometheus'): run tests/run.sh, which installs it"
        )
    return path


def test_collector_metrics_pass_promtool_check_metrics(tmp_path: Path) -> None:
    tool = promtool()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / LOG_FILE).write_bytes(b"\n".join(LINES) + b"\n")
    sink = {"type": "sqlite", "path": str(tmp_path / "logs.db")}
    collector = CollectorProcess(tmp_path, collector_config(logs, tmp_path / "state", sink))
    collector.start()
    try:
        delivered = "kubeobs_collector_records_delivered_total"
        wait_until(
            "the lines to be delivered",
            lambda: collector.metric(delivered) >= DELIVERED,
            60,
            lambda: f"{delivered} = {collector.metric(delivered)}; {collector.stderr()[-3000:]}",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{collector.port}/metrics", timeout=5) as r:
            exposition = r.read()
        assert collector.terminate() == 0, collector.stderr()[-3000:]
    finally:
        collector.stop()

    assert f'{delivered}{{sink="sqlite"}} {DELIVERED}.0'.encode() in exposition.splitlines()
    check = subprocess.run([tool, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    printed = (check.stdout + check.stderr).decode(errors="replace")
    problems = [line for line in printed.splitlines() if line.strip()]
    flagged = [p for p in problems if not EXEMPT.fullmatch(p.split(" ", 1)[0])]
    assert not flagged, f"promtool check metrics (exit {check.returncode}) flagged:\n{printed}"
    # promtool exits 3 on lint problems: only the SPEC's node_exporter exemptions may cause that
    assert check.returncode == (3 if problems else 0), printed
