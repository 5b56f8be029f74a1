"""A real Prometheus (Debian's 2.42) scrapes the running collector's node metrics; PromQL through its HTTP
API returns the expected series; ``promtool check metrics`` passes on the scrape output but for the names
SPEC.md keeps in node_exporter's spelling.

``prometheus`` and ``promtool`` come from Debian's ``prometheus`` package (tests/run.sh installs it). A
server that cannot start fails the test with its stderr; nothing here is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.support.collector_proc import CollectorProcess, free_port
from tests.support.servers import ManagedProcess, spawn, wait_for

T = TypeVar("T")

# SPEC.md, "Metrics contract": node_exporter's own names that promtool flags keep their spelling
KNOWN_LINT = (
    re.compile(r"node_memory_\w+ metric names should be written in 'snake_case' not 'camelCase'"),
    re.compile(r"node_netstat_\w+ metric names should be written in 'snake_case' not 'camelCase'"),
    re.compile(r'node_entropy_(available|pool_size)_bits use base unit "bytes" instead of "bits"'),
)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed (Debian package 'prometheus'): run tests/run.sh, which installs it"
        )
    return path


def poll(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except (OSError, ValueError, KeyError, IndexError) as e:
            value, last = None, e
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    """The real collector (``python -m collector``) with a trivial config and node metrics on."""
    work = tmp_path_factory.mktemp("node-metrics")
    logs = work / "logs"
    logs.mkdir()
    proc = CollectorProcess(
        work,
        {
            "state_dir": str(work / "state"),
            "sources": [{"type": "container_logs", "paths": [str(logs / "*.log")]}],
            "sink": {"type": "sqlite", "path": str(work / "logs.db")},
            "metrics": {"node": True},
        },
    )
    proc.start()
    yield proc
    proc.stop()


def scrape(collector: CollectorProcess) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{collector.port}/metrics", timeout=10) as r:
        body: bytes = r.read()
        return body


def test_promtool_check_metrics_flags_only_node_exporters_own_names(collector: CollectorProcess) -> None:
    exposition = scrape(collector)
    assert b"\nnode_cpu_seconds_total{" in exposition
    check = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=exposition, capture_output=True, timeout=60
    )
    printed = (check.stdout + check.stderr).decode(errors="replace")
    flagged = [line.strip() for line in printed.splitlines() if line.strip()]
    unexpected = [line for line in flagged if not any(p.fullmatch(line) for p in KNOWN_LINT)]
    assert not unexpected, f"promtool check metrics flagged (exit {check.returncode}):\n{printed}"
    # the exemptions are in use (so the filter above is what lets the check pass) ...
    assert (
        "node_memory_MemTotal_bytes metric names should be written in 'snake_case' not 'camelCase'" in flagged
    )
    # ... and promtool's exit status says "lint problems" for those alone
    assert check.returncode == 3, printed


def start_prometheus(workdir: Path, target: str) -> tuple[ManagedProcess, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "kubeobs", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    args = [
        tool("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    proc = spawn("prometheus", args, workdir)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool | None:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                return True if r.status == 200 else None
        except (OSError, urllib.error.URLError):
            return None

    wait_for(proc, f"become ready on {url}", ready, 60)
    return proc, url


def query(url: str, expr: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(url: str, expr: str) -> float | None:
    """The single value of an instant vector query, None while it has none."""
    result = query(url, expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_prometheus_scrapes_the_node_metrics(collector: CollectorProcess, tmp_path: Path) -> None:
    prometheus, url = start_prometheus(tmp_path / "prometheus", f"127.0.0.1:{collector.port}")
    try:
        poll("Prometheus to scrape the collector", lambda: scalar(url, 'up{job="kubeobs"} == 1'))

        with open("/proc/meminfo") as f:
            mem_total = int(f.readline().split()[1]) * 1024
        assert poll("MemTotal", lambda: scalar(url, "node_memory_MemTotal_bytes")) == mem_total

        with open("/proc/stat") as f:
            cpus = sum(1 for line in f if re.match(r"cpu\d+ ", line))
        assert scalar(url, 'count(node_cpu_seconds_total{mode="idle"})') == cpus
        assert scalar(url, "count(count by (mode) (node_cpu_seconds_total))") == 8

        st = os.statvfs("/")
        assert scalar(url, 'node_filesystem_size_bytes{mountpoint="/"}') == float(st.f_blocks) * st.f_bsize
        used = scalar(
            url,
            '1 - node_filesystem_avail_bytes{mountpoint="/"} / node_filesystem_size_bytes{mountpoint="/"}',
        )
        assert used is not None and 0 <= used < 1

        with open("/proc/net/dev") as f:
            interfaces = {line.split(":")[0].strip() for line in f.readlines()[2:]}
        devices = {r["metric"]["device"] for r in query(url, "node_network_receive_bytes_total")}
        assert devices == interfaces - {"lo"}

        (uname,) = query(url, "node_uname_info")
        assert uname["metric"]["nodename"] == os.uname().nodename
        assert uname["metric"]["release"] == os.uname().release

        assert scalar(url, "time() - node_boot_time_seconds > 0") is not None
        assert (
            scalar(
                url,
                'min(node_scrape_collector_success{collector=~"cpu|meminfo|filesystem|diskstats|netdev|loadavg"})',
            )
            == 1
        )
        assert scalar(url, "node_load1 >= 0") is not None

        # dashboard 1860's "CPU Busy" needs two scrapes in the window: a rate over real counters
        busy = poll(
            "a CPU busy rate",
            lambda: scalar(url, '100 * (1 - avg(rate(node_cpu_seconds_total{mode="idle"}[5s])))'),
        )
        assert 0 <= busy <= 100
        assert (
            poll("a disk read rate", lambda: scalar(url, "sum(rate(node_disk_read_bytes_total[5s])) >= 0"))
            >= 0
        )
    finally:
        prometheus.stop()
    assert collector.proc is not None and collector.proc.running(), collector.stderr()[-3000:]
