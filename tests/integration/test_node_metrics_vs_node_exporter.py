"""Side by side with Debian's ``prometheus-node-exporter`` (1.5, the reference) on this machine.

node_exporter runs on a free loopback port with exactly the collectors we implement
(``--collector.disable-defaults --collector.<name>...``) and the include/exclude settings our defaults
mirror, passed explicitly; it reads ``/proc/1/mounts`` by default and so do we. Our collector is the real
process (``python -m collector``) with a trivial config.

Scrapes are taken node_exporter, ours, node_exporter in quick succession. Then:

* every node_* family node_exporter publishes, we publish (but ``node_exporter_build_info``), and we
  publish no other node_* family but three that node_exporter 1.5 lacks;
* each family has the same series (label sets) in both;
* each of our values lies between node_exporter's two values (counters: no slack but rounding, and 0.1 s for
  CPU seconds, whose idle/iowait the kernel may step back; node_time_seconds to the millisecond), widened
  for gauges that move on their own: memory by 3% (plus 0.5% of MemTotal for the small fields), filesystem
  free space by 1% (sizes and inode totals exact), load averages by 0.5, and loosely for the volatile
  counts (running processes, sockets, conntrack entries, open files, timex error estimates).

The mount table or the set of interfaces may change while other suites run; a mismatch is retried with
fresh scrapes twice before it fails the test.
"""

from __future__ import annotations

import http.client
import math
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.config import MetricsConfig
from collector.exporters.netstat import NETSTAT_FIELDS
from collector.exporters.node import NODE_COLLECTORS
from tests.support.collector_proc import CollectorProcess, free_port
from tests.support.servers import ManagedProcess, spawn, wait_for

NODE_EXPORTER = "prometheus-node-exporter"
NOT_OURS = {"node_exporter_build_info"}
OUR_EXTRAS = {  # in later node_exporter releases
    "node_softnet_received_rps_total",
    "node_softnet_flow_limit_count_total",
    "node_pressure_irq_stalled_seconds_total",
}

Series = dict[str, dict[tuple[tuple[str, str], ...], float]]  # sample name -> labels -> value
Slack = Callable[[float, float], float]  # (value, MemTotal) -> allowed distance outside node_exporter's range


def _loose(v: float, _: float) -> float:
    return 0.5 * abs(v) + 50


SLACK: list[tuple[re.Pattern[str], Slack]] = [
    (re.compile(r"node_scrape_collector_duration_seconds"), lambda v, m: math.inf),
    (re.compile(r"node_cpu_seconds_total"), lambda v, m: 0.1),
    (re.compile(r"node_time_seconds"), lambda v, m: 0.001),
    (re.compile(r"node_memory_.*"), lambda v, m: 0.03 * abs(v) + 0.005 * m),
    (re.compile(r"node_filesystem_(avail|free)_bytes"), lambda v, m: 0.01 * abs(v) + 64 * 2**20),
    (re.compile(r"node_filesystem_files_free"), lambda v, m: 0.01 * abs(v) + 1000),
    (re.compile(r"node_load(1|5|15)"), lambda v, m: 0.5),
    (
        re.compile(r"node_timex_(maxerror|estimated_error|offset|frequency_adjustment|pps_.*)_\w+"),
        lambda v, m: 0.01 * abs(v) + 0.01,
    ),
    (
        re.compile(
            r"node_procs_(running|blocked)|node_sockstat_.*|node_udp_queues|node_nf_conntrack_entries"
            r"|node_filefd_allocated|node_netstat_Tcp_CurrEstab|node_arp_entries|node_disk_io_now"
            r"|node_entropy_available_bits"
        ),
        _loose,
    ),
]


def slack(name: str, value: float, mem_total: float) -> float:
    for pattern, fn in SLACK:
        if pattern.fullmatch(name):
            return fn(value, mem_total)
    return 1e-12 * abs(value)  # float arithmetic done in another order


def node_exporter_args(binary: str, port: int) -> list[str]:
    d = MetricsConfig()
    return [
        binary,
        f"--web.listen-address=127.0.0.1:{port}",
        "--collector.disable-defaults",
        *(f"--collector.{name}" for name in NODE_COLLECTORS),
        f"--collector.filesystem.mount-points-exclude={d.filesystem_exclude_mountpoints}",
        f"--collector.filesystem.fs-types-exclude={d.filesystem_exclude_fstypes}",
        f"--collector.netdev.device-exclude={d.netdev_exclude}",
        f"--collector.netclass.ignored-devices={d.netclass_exclude}",
        f"--collector.diskstats.device-exclude={d.diskstats_exclude}",
        f"--collector.netstat.fields={NETSTAT_FIELDS}",
    ]


@dataclass
class Endpoint:
    port: int

    def scrape(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/metrics", headers={"Accept": "text/plain"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, body[:500]
            return body.decode()
        finally:
            conn.close()


@pytest.fixture
def node_exporter(tmp_path: Path) -> Iterator[Endpoint]:
    binary = shutil.which(NODE_EXPORTER)
    if binary is None:
        pytest.fail(
            f"{NODE_EXPORTER} is not installed (Debian package of that name): tests/run.sh installs it"
        )
    port = free_port()
    proc: ManagedProcess = spawn(
        "node_exporter", node_exporter_args(binary, port), tmp_path / "node_exporter"
    )
    endpoint = Endpoint(port)

    def answers() -> bool | None:
        try:
            endpoint.scrape()
        except (OSError, AssertionError):
            return None
        return True

    try:
        wait_for(proc, f"answer on 127.0.0.1:{port}", answers, 30)
        yield endpoint
    finally:
        proc.stop()


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[Endpoint]:
    work = tmp_path / "collector"
    work.mkdir()
    (work / "logs").mkdir()
    proc = CollectorProcess(
        work,
        {
            "state_dir": str(work / "state"),
            "sources": [{"type": "container_logs", "paths": [str(work / "logs" / "*.log")]}],
            "sink": {"type": "sqlite", "path": str(work / "logs.db")},
            "metrics": {"node": True},
        },
    )
    proc.start()
    try:
        yield Endpoint(proc.port)
    finally:
        proc.stop()


def parse(text: str) -> tuple[Series, dict[str, str]]:
    series: Series = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("node_"):
                series.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
                types[s.name] = family.type
    return series, types


def compare(before: str, ours_text: str, after: str) -> list[str]:
    ne1, ne_types = parse(before)
    ne2, _ = parse(after)
    mine, our_types = parse(ours_text)
    problems: list[str] = []
    theirs = set(ne1) - NOT_OURS
    if missing := theirs - set(mine):
        problems.append(f"node_exporter publishes, we do not: {sorted(missing)}")
    if extra := set(mine) - theirs - OUR_EXTRAS:
        problems.append(f"we publish, node_exporter does not: {sorted(extra)}")
    mem_total = ne1.get("node_memory_MemTotal_bytes", {}).get((), 0.0)
    for name in sorted(theirs & set(mine)):
        if ne_types[name] != our_types[name]:
            problems.append(f"{name}: type {our_types[name]}, node_exporter's {ne_types[name]}")
        labels = set(mine[name])
        if labels != set(ne1[name]) or labels != set(ne2.get(name, {})):
            only_theirs = sorted(set(ne1[name]) - labels)[:3]
            only_ours = sorted(labels - set(ne1[name]))[:3]
            problems.append(
                f"{name}: series differ; only node_exporter's {only_theirs}, only ours {only_ours}"
            )
            continue
        for lbl, value in mine[name].items():
            a, b = ne1[name][lbl], ne2[name][lbl]
            lo, hi = min(a, b), max(a, b)
            tol = slack(name, value, mem_total)
            if not lo - tol <= value <= hi + tol:
                problems.append(
                    f"{name}{dict(lbl)}: ours {value!r}, node_exporter {a!r} then {b!r} (slack {tol})"
                )
    return problems


def test_same_series_and_values_as_node_exporter(node_exporter: Endpoint, ours: Endpoint) -> None:
    ours.scrape()  # the first scrape starts the statfs helper thread and loads libc for adjtimex
    problems: list[str] = []
    for _ in range(3):
        before = node_exporter.scrape()
        mine = ours.scrape()
        after = node_exporter.scrape()
        problems = compare(before, mine, after)
        if not problems:
            break
        time.sleep(0.2)  # something on the machine changed between the scrapes: take fresh ones
    assert not problems, "\n".join(problems)

    series, _ = parse(mine)
    # what must be there on any Linux node, whatever node_exporter had to say
    required: tuple[str, ...] = (
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "node_load1",
        "node_uname_info",
    )
    required += (
        "node_filesystem_avail_bytes",
        "node_disk_read_bytes_total",
        "node_network_receive_bytes_total",
    )
    required += ("node_boot_time_seconds", "node_time_seconds", "node_scrape_collector_success")
    for name in required:
        assert series.get(name), name
    success = {dict(lbl)["collector"]: v for lbl, v in series["node_scrape_collector_success"].items()}
    assert set(success) == set(NODE_COLLECTORS)
