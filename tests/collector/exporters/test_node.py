"""NodeCollector: every collector timed and isolated; built from the ``metrics:`` config; the exposition."""

from __future__ import annotations

import logging
import typing
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from collector.config import ConfigError, MetricsConfig, NodeCollectorName, parse_config
from collector.exporters import diskstats, filesystem, netdev
from collector.exporters.node import NODE_COLLECTORS, NodeCollector, NodeSettings, build_node_collector
from collector.exporters.nodefs import NoDataError
from tests.collector.exporters.node_fixtures import FIXTURES, key, values


class Part:
    def __init__(self, name: str, result: list[Metric] | Exception) -> None:
        self.name = name
        self.result = result
        self.calls = 0

    def collect(self) -> list[Metric]:
        self.calls += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def ticks() -> Iterator[float]:
    t = 0.0
    while True:
        yield t
        t += 0.25


def test_each_collector_is_timed_and_isolated(caplog: pytest.LogCaptureFixture) -> None:
    ok = GaugeMetricFamily("node_ok", "fine", value=1)
    clock = ticks()
    collector = NodeCollector(
        [
            Part("first", [ok]),
            Part("broken", RuntimeError("parse error")),
            Part("absent", NoDataError("no file")),
        ],
        timer=lambda: next(clock),
    )
    with caplog.at_level(logging.DEBUG, logger="collector.exporters.node"):
        v = values(collector.collect())
    assert v == {
        "node_ok": 1.0,
        key("node_scrape_collector_success", collector="first"): 1.0,
        key("node_scrape_collector_success", collector="broken"): 0.0,
        key("node_scrape_collector_success", collector="absent"): 0.0,
        key("node_scrape_collector_duration_seconds", collector="first"): 0.25,
        key("node_scrape_collector_duration_seconds", collector="broken"): 0.25,
        key("node_scrape_collector_duration_seconds", collector="absent"): 0.25,
    }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["node collector broken failed: RuntimeError: parse error"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="collector.exporters.node"):
        list(collector.collect())  # the same failure again: not logged again as a warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_failing_collector_publishes_nothing_of_what_it_built() -> None:
    class HalfWay:
        name = "halfway"

        def collect(self) -> list[Metric]:
            GaugeMetricFamily("node_half", "built, then the parse fails", value=1)
            raise ValueError("bad line")

    v = values(
        NodeCollector([HalfWay(), Part("next", [GaugeMetricFamily("node_next", "n", value=2)])]).collect()
    )
    assert "node_half" not in v
    assert v["node_next"] == 2
    assert v[key("node_scrape_collector_success", collector="halfway")] == 0


def test_collector_names_in_config_match_the_implementation() -> None:
    assert set(typing.get_args(NodeCollectorName)) == set(NODE_COLLECTORS)


def test_config_defaults_are_the_collectors_defaults() -> None:
    d = MetricsConfig()
    s = NodeSettings()
    assert NodeSettings.from_config(d) == s
    assert d.netdev_exclude == netdev.NETDEV_EXCLUDE
    assert d.netclass_exclude == netdev.NETCLASS_EXCLUDE
    assert d.diskstats_exclude == diskstats.DISKSTATS_EXCLUDE
    assert d.filesystem_exclude_mountpoints == filesystem.FILESYSTEM_EXCLUDE_MOUNTPOINTS
    assert d.filesystem_exclude_fstypes == filesystem.FILESYSTEM_EXCLUDE_FSTYPES
    assert d.filesystem_mount_timeout == filesystem.MOUNT_TIMEOUT
    assert d.node is True and d.rootfs == "/"


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"metrics\.netdev_exclude: invalid regex"):
        parse_config({"metrics": {"netdev_exclude": "(unclosed"}})
    with pytest.raises(ConfigError, match=r"metrics\.node_collectors_disabled\[0\]"):
        parse_config({"metrics": {"node_collectors_disabled": ["hwmon"]}})
    with pytest.raises(ConfigError, match=r"metrics\.nodes: unknown key"):
        parse_config({"metrics": {"nodes": True}})


def vm_config(**overrides: object) -> MetricsConfig:
    base = FIXTURES / "vm"
    return MetricsConfig.model_validate(
        {
            "procfs": str(base / "proc"),
            "sysfs": str(base / "sys"),
            "rootfs": str(base / "root"),
            "udev_data": str(base / "run" / "udev" / "data"),
            **overrides,
        }
    )


def success(metrics: list[Metric]) -> dict[str, float]:
    return {
        s.labels["collector"]: s.value
        for m in metrics
        if m.name == "node_scrape_collector_success"
        for s in m.samples
    }


def test_built_from_config_on_the_captured_tree() -> None:
    collector = build_node_collector(vm_config())
    metrics = list(collector.collect())
    assert success(metrics) == {name: 0.0 if name == "schedstat" else 1.0 for name in NODE_COLLECTORS}
    v = values(metrics)
    assert v["node_memory_MemTotal_bytes"] == 24684084 * 1024
    assert v[key("node_cpu_seconds_total", cpu="1", mode="user")] == 5144.55
    assert v["node_boot_time_seconds"] == 1795719714
    assert v[key("node_network_receive_bytes_total", device="eth0")] == 241515523
    assert v[key("node_disk_written_bytes_total", device="vda")] == 106636656 * 512
    assert v["node_load15"] == 1.47
    assert key("node_filesystem_avail_bytes", device="/dev/vda", fstype="ext4", mountpoint="/") in v


def test_disabled_collectors_are_not_run() -> None:
    collector = build_node_collector(vm_config(node_collectors_disabled=["netclass", "timex", "schedstat"]))
    assert set(success(list(collector.collect()))) == set(NODE_COLLECTORS) - {
        "netclass",
        "timex",
        "schedstat",
    }


def test_exposition_types_and_node_exporter_names() -> None:
    registry = CollectorRegistry()
    registry.register(build_node_collector(vm_config()))
    text = generate_latest(registry).decode()
    assert "# TYPE node_cpu_seconds_total counter\n" in text
    assert "# TYPE node_vmstat_pgfault untyped\n" in text
    assert "# TYPE node_netstat_Tcp_InSegs untyped\n" in text
    assert "# TYPE node_memory_MemTotal_bytes gauge\n" in text
    assert 'node_cpu_seconds_total{cpu="0",mode="idle"} 8007.85\n' in text
    assert "node_memory_MemTotal_bytes 2.5276502016e+10\n" in text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {
        "node_cpu_seconds",
        "node_memory_MemTotal_bytes",
        "node_filesystem_size_bytes",
        "node_uname_info",
    } <= names


def test_on_this_machine() -> None:
    """Against the real /proc and /sys: the collectors every Linux node has all answer."""
    metrics = list(build_node_collector(MetricsConfig()).collect())
    ok = success(metrics)
    always: tuple[str, ...] = (
        "cpu",
        "stat",
        "loadavg",
        "meminfo",
        "vmstat",
        "diskstats",
        "filesystem",
        "netdev",
        "netclass",
    )
    always += ("netstat", "sockstat", "filefd", "entropy", "time", "timex", "uname", "os")
    for name in always:
        assert ok[name] == 1.0, name
    v = values(metrics)
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    assert v["node_memory_MemTotal_bytes"] == total
