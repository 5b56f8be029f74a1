"""Network interfaces: ``netdev`` (traffic counters) and ``netclass`` (link properties), as node_exporter.

netdev: ``node_network_{receive,transmit}_<stat>_total{device}`` from ``/proc/net/dev`` (receive: bytes,
packets, errs, drop, fifo, frame, compressed, multicast; transmit: bytes, packets, errs, drop, fifo, colls,
carrier, compressed) plus ``node_network_receive_nohandler_total`` from
``/sys/class/net/<dev>/statistics/rx_nohandler``, which is what node_exporter 1.5 publishes through
netlink. Interfaces matching ``metrics.netdev_exclude`` (default ``^lo$``, Debian's node_exporter
default) are left out.

netclass: from ``/sys/class/net/<dev>/``: ``node_network_up`` (operstate is ``up``), ``node_network_info``
{address, broadcast, duplex, ifalias, operstate}, and one gauge per numeric attribute
(``node_network_mtu_bytes``, ``node_network_carrier``, ``node_network_speed_bytes`` = Mbit/s * 125000,
``node_network_flags``, ...). An attribute the kernel refuses to give (``carrier`` of a link that is
down answers EINVAL) is left out, as node_exporter does. Interfaces matching ``metrics.netclass_exclude``
are left out (default: none).

Interface names are any bytes but ``/``, ``:`` and white space: they go into labels as they are.
"""

from __future__ import annotations

import os
import re

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.exporters.nodefs import NodeRoots, parse_int, read_at, read_optional, read_text

NETDEV_EXCLUDE = r"^lo$"
NETCLASS_EXCLUDE = r"^$"

# the columns of /proc/net/dev, in order
NETDEV_FIELDS = (
    "receive_bytes", "receive_packets", "receive_errs", "receive_drop", "receive_fifo", "receive_frame",
    "receive_compressed", "receive_multicast",
    "transmit_bytes", "transmit_packets", "transmit_errs", "transmit_drop", "transmit_fifo", "transmit_colls",
    "transmit_carrier", "transmit_compressed",
)  # fmt: skip


def parse_net_dev(text: str) -> dict[str, list[int]]:
    """``/proc/net/dev``: interface → its 16 counters, in :data:`NETDEV_FIELDS` order."""
    out: dict[str, list[int]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        values = [int(x) for x in rest.split()]
        if len(values) != len(NETDEV_FIELDS):
            raise ValueError(f"invalid line in /proc/net/dev: {line!r}")
        out[name.strip()] = values
    return out


class NetdevCollector:
    name = "netdev"

    def __init__(self, roots: NodeRoots, exclude: str = NETDEV_EXCLUDE) -> None:
        self._path = roots.proc("net/dev")
        self._class_net = roots.sys("class/net")
        self._exclude = re.compile(exclude)
        self._excluded: dict[str, bool] = {}

    def _skip(self, device: str) -> bool:
        skip = self._excluded.get(device)
        if skip is None:
            if len(self._excluded) > 4096:  # interfaces come and go (veth): keep the memo bounded
                self._excluded.clear()
            skip = self._excluded[device] = bool(self._exclude.search(device))
        return skip

    def collect(self) -> list[Metric]:
        devices = {d: v for d, v in parse_net_dev(read_text(self._path)).items() if not self._skip(d)}
        families = [
            CounterMetricFamily(
                f"node_network_{f}_total", f"Network device statistic {f}.", labels=["device"]
            )
            for f in NETDEV_FIELDS
        ]
        nohandler = CounterMetricFamily(
            "node_network_receive_nohandler_total",
            "Network device statistic receive_nohandler.",
            labels=["device"],
        )
        for device, values in devices.items():
            labels = [device]
            for family, value in zip(families, values, strict=True):
                family.add_metric(labels, value)
            n = parse_int(read_optional(f"{self._class_net}/{device}/statistics/rx_nohandler"))
            if n is not None:
                nohandler.add_metric(labels, n)
        out: list[Metric] = list(families)
        if nohandler.samples:
            out.append(nohandler)
        return out


# ----------------------------------------------------------------------------------------------- netclass

# sysfs attribute, metric (node_network_<metric>), is a counter
NETCLASS_NUMERIC = (
    ("addr_assign_type", "address_assign_type", False),
    ("carrier", "carrier", False),
    ("carrier_changes", "carrier_changes_total", True),
    ("carrier_up_count", "carrier_up_changes_total", True),
    ("carrier_down_count", "carrier_down_changes_total", True),
    ("dev_id", "device_id", False),
    ("dormant", "dormant", False),
    ("flags", "flags", False),
    ("ifindex", "iface_id", False),
    ("iflink", "iface_link", False),
    ("link_mode", "iface_link_mode", False),
    ("mtu", "mtu_bytes", False),
    ("name_assign_type", "name_assign_type", False),
    ("netdev_group", "net_dev_group", False),
    ("speed", "speed_bytes", False),
    ("tx_queue_len", "transmit_queue_length", False),
    ("type", "protocol_type", False),
)
NETCLASS_INFO = ("address", "broadcast", "duplex", "ifalias", "operstate")


def netclass_values(attrs: dict[str, str | None]) -> dict[str, int]:
    """node_network_<metric> → value from the attribute files' text (None: unreadable). Speed is in
    Mbit/s (-1 when unknown; node_exporter publishes that as -125000 too)."""
    out: dict[str, int] = {}
    for attr, metric, _ in NETCLASS_NUMERIC:
        value = parse_int(attrs.get(attr))
        if value is None:
            continue
        if attr == "speed":
            value = value * 1000 * 1000 // 8
        out[metric] = value
    return out


class NetclassCollector:
    name = "netclass"

    def __init__(self, roots: NodeRoots, exclude: str = NETCLASS_EXCLUDE) -> None:
        self._path = roots.sys("class/net")
        self._exclude = re.compile(exclude)

    def read_interface(self, device: str) -> dict[str, str | None] | None:
        """The attribute files of one interface, or None when it is gone."""
        try:
            dir_fd = os.open(f"{self._path}/{device}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            attrs = {attr: read_at(dir_fd, attr) for attr, _, _ in NETCLASS_NUMERIC}
            for attr in NETCLASS_INFO:
                attrs[attr] = read_at(dir_fd, attr)
            return attrs
        finally:
            os.close(dir_fd)

    def collect(self) -> list[Metric]:
        up = GaugeMetricFamily(
            "node_network_up", "Value is 1 if operstate is 'up', 0 otherwise.", labels=["device"]
        )
        info = GaugeMetricFamily(
            "node_network_info",
            "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
            labels=["device", "address", "broadcast", "duplex", "operstate", "ifalias"],
        )
        numeric = {
            metric: (CounterMetricFamily if is_counter else GaugeMetricFamily)(
                f"node_network_{metric}", f"Network device property: {metric}", labels=["device"]
            )
            for _, metric, is_counter in NETCLASS_NUMERIC
        }
        with os.scandir(self._path) as entries:
            devices = sorted(e.name for e in entries if not e.is_file(follow_symlinks=False))
        for device in devices:
            if self._exclude.search(device):
                continue
            attrs = self.read_interface(device)
            if attrs is None:
                continue
            operstate = attrs["operstate"] or ""
            up.add_metric([device], 1.0 if operstate == "up" else 0.0)
            info.add_metric(
                [
                    device,
                    attrs["address"] or "",
                    attrs["broadcast"] or "",
                    attrs["duplex"] or "",
                    operstate,
                    attrs["ifalias"] or "",
                ],
                1.0,
            )
            for metric, value in netclass_values(attrs).items():
                numeric[metric].add_metric([device], value)
        return [up, info, *(f for f in numeric.values() if f.samples)]
