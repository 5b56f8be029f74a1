"""netdev and netclass on fixture trees, including interfaces with odd names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from collector.exporters import netdev
from tests.collector.exporters.node_fixtures import ODD, VM, by_name, key, values

ODD_NAMES = ("eth0.100", "br-1a2b3c4d", 'cali"q\\x', "veth9f1@")


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def test_netdev_counters_from_proc_net_dev_and_nohandler_from_sysfs() -> None:
    fams = netdev.NetdevCollector(VM).collect()
    v = values(fams)
    assert {k.split('"')[1] for k in v} == {"eth0", "ifb0", "ifb1"}  # lo: excluded by default (^lo$)
    assert v[key("node_network_receive_bytes_total", device="eth0")] == 241515523
    assert v[key("node_network_receive_packets_total", device="eth0")] == 5922
    assert v[key("node_network_transmit_bytes_total", device="eth0")] == 402550
    assert v[key("node_network_transmit_packets_total", device="eth0")] == 4111
    assert v[key("node_network_receive_nohandler_total", device="eth0")] == 0
    # ifb1 has no sysfs directory in the fixture: its /proc/net/dev counters, but no nohandler
    assert key("node_network_receive_drop_total", device="ifb1") in v
    assert key("node_network_receive_nohandler_total", device="ifb1") not in v
    assert len(by_name(fams)) == 17
    assert all(m.type == "counter" for m in fams)
    assert (
        by_name(fams)["node_network_receive_bytes_total"].documentation
        == "Network device statistic receive_bytes."
    )


def test_netdev_odd_names_and_every_column() -> None:
    v = values(netdev.NetdevCollector(ODD).collect())
    assert {k.split('device="')[1][:-2] for k in v} == set(ODD_NAMES)
    # "eth0.100:98765432101 900000 ...": no space between the name's colon and the first counter
    row = {f: v[key(f"node_network_{f}_total", device="eth0.100")] for f in netdev.NETDEV_FIELDS}
    assert row == dict(
        zip(
            netdev.NETDEV_FIELDS,
            [98765432101, 900000, 1, 2, 3, 4, 5, 6, 12345678909, 800000, 7, 8, 9, 10, 11, 12],
            strict=True,
        )
    )
    assert v[key("node_network_receive_nohandler_total", device="eth0.100")] == 17


def test_netdev_exclude_regex() -> None:
    v = values(netdev.NetdevCollector(ODD, exclude=r"^(veth.*|cali.*|br-.*)$").collect())
    assert {k.split('device="')[1][:-2] for k in v} == {"lo", "eth0.100"}


def test_odd_names_survive_the_exposition() -> None:
    registry = CollectorRegistry()
    registry.register(_Fixed(netdev.NetdevCollector(ODD).collect()))
    text = generate_latest(registry).decode()
    assert 'device="cali\\"q\\\\x"' in text  # escaped in the text format
    devices = {
        s.labels["device"]
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if fam.name == "node_network_receive_bytes"
    }
    assert devices == set(ODD_NAMES)


def test_netclass_properties() -> None:
    fams = netdev.NetclassCollector(VM).collect()
    v = values(fams)
    assert v[key("node_network_up", device="eth0")] == 1
    assert v[key("node_network_up", device="lo")] == 0  # operstate "unknown"
    assert v[key("node_network_up", device="ifb0")] == 0
    info = key(
        "node_network_info",
        device="eth0",
        address="02:fc:00:00:00:01",
        broadcast="ff:ff:ff:ff:ff:ff",
        duplex="unknown",
        operstate="up",
        ifalias="",
    )
    assert v[info] == 1
    assert v[key("node_network_mtu_bytes", device="eth0")] == 1400
    assert (
        v[key("node_network_speed_bytes", device="eth0")] == -125000
    )  # speed -1 (unknown), as node_exporter
    assert v[key("node_network_flags", device="eth0")] == 0x1003
    assert v[key("node_network_protocol_type", device="lo")] == 772
    assert v[key("node_network_carrier", device="eth0")] == 1
    # ifb0 is down: the kernel refuses carrier, speed, duplex (EINVAL): no series, duplex label empty
    assert key("node_network_carrier", device="ifb0") not in v
    assert key("node_network_speed_bytes", device="ifb0") not in v
    assert any(k.startswith("node_network_info{") and 'device="ifb0"' in k and 'duplex=""' in k for k in v)
    fam = by_name(fams)
    assert fam["node_network_carrier_changes_total"].type == "counter"
    assert fam["node_network_mtu_bytes"].documentation == "Network device property: mtu_bytes"


def test_netclass_odd_names_skip_files_and_exclude() -> None:
    v = values(netdev.NetclassCollector(ODD).collect())
    devices = {k.split('device="')[1].split('"')[0] for k in v if k.startswith("node_network_up")}
    assert devices == {"eth0.100", "br-1a2b3c4d", "cali", "veth9f1@"}  # split at the quote of cali"q\x
    assert v[key("node_network_up", device='cali"q\\x')] == 0
    assert "bonding_masters" not in str(v)  # a regular file in /sys/class/net, not an interface
    assert v[key("node_network_speed_bytes", device="eth0.100")] == 10000 * 125000
    assert v[key("node_network_speed_bytes", device='cali"q\\x')] == -125000
    assert v[key("node_network_carrier_changes_total", device="veth9f1@")] == 4
    assert v[key("node_network_carrier_up_changes_total", device="veth9f1@")] == 2
    ifalias = [k for k in v if k.startswith("node_network_info{") and "eth0.100" in k]
    assert ifalias == [
        key(
            "node_network_info",
            device="eth0.100",
            address="52:54:00:12:34:56",
            broadcast="ff:ff:ff:ff:ff:ff",
            duplex="full",
            operstate="up",
            ifalias='uplink "core" \\ 1',
        )
    ]
    only = values(netdev.NetclassCollector(ODD, exclude=r"^(veth|cali|br-)").collect())
    assert {k.split('device="')[1].split('"')[0] for k in only if k.startswith("node_network_up")} == {
        "eth0.100"
    }
