"""Node collectors over the kernel's network protocol statistics: netstat, sockstat, softnet, conntrack,
udp_queues, arp. Pure parsers plus one collector class each; names, labels and types as node_exporter 1.5.

===========  ==============================================================  ==========================
collector    metrics                                                          source
===========  ==============================================================  ==========================
netstat      node_netstat_<Proto>_<Field> (untyped; the fields below)         /proc/net/{netstat,snmp,snmp6}
sockstat     node_sockstat_sockets_used, node_sockstat_<PROTO>_<field>,       /proc/net/sockstat{,6}
             node_sockstat_<PROTO>_mem_bytes (pages * page size)
softnet      node_softnet_{processed,dropped,times_squeezed,received_rps,     /proc/net/softnet_stat
             flow_limit_count}_total{cpu}
conntrack    node_nf_conntrack_entries, node_nf_conntrack_entries_limit,      /proc/sys/net/netfilter,
             node_nf_conntrack_stat_<field> (summed over CPUs)               /proc/net/stat/nf_conntrack
udp_queues   node_udp_queues{ip="v4"|"v6",queue="rx"|"tx"} (bytes queued)     /proc/net/udp{,6}
arp          node_arp_entries{device}                                          /proc/net/arp
===========  ==============================================================  ==========================

``/proc/net`` is the network namespace of the process that reads it: run the DaemonSet with
``hostNetwork: true`` to see the node's (as node_exporter's chart does).
"""

from __future__ import annotations

import contextlib
import os
import re

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily

from collector.exporters.nodefs import NoDataError, NodeRoots, gauge, read_text

# node_exporter's --collector.netstat.fields default, plus the two TcpExt fields dashboard 1860 charts
# (later node_exporter releases publish them by default too)
NETSTAT_FIELDS = (
    r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)"
    r"|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts|TCPOFOQueue|TCPRcvQDrop)"
    r"|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)"
    r"|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$"
)


# ------------------------------------------------------------------------------------------------ netstat


def parse_netstat(text: str) -> dict[str, dict[str, str]]:
    """``/proc/net/netstat`` and ``/proc/net/snmp``: pairs of lines ``Proto: names...`` and
    ``Proto: values...``. Returns protocol → field → value text."""
    out: dict[str, dict[str, str]] = {}
    lines = text.splitlines()
    for i in range(0, len(lines) - 1, 2):
        proto, _, names = lines[i].partition(":")
        vproto, _, values = lines[i + 1].partition(":")
        if proto != vproto:
            raise ValueError(f"mismatched lines in netstat: {proto!r} and {vproto!r}")
        out.setdefault(proto, {}).update(zip(names.split(), values.split(), strict=False))
    return out


def parse_snmp6(text: str) -> dict[str, dict[str, str]]:
    """``/proc/net/snmp6``: ``Ip6InReceives 12`` lines; the protocol is the name up to its ``6``."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        six = parts[0].find("6")
        if six < 0:
            continue
        out.setdefault(parts[0][: six + 1], {})[parts[0][six + 1 :]] = parts[1]
    return out


class NetstatCollector:
    name = "netstat"

    def __init__(self, roots: NodeRoots, fields: str = NETSTAT_FIELDS) -> None:
        self._netstat = roots.proc("net/netstat")
        self._snmp = roots.proc("net/snmp")
        self._snmp6 = roots.proc("net/snmp6")
        self._fields = re.compile(fields)
        self._wanted: dict[tuple[str, str], bool] = {}

    def collect(self) -> list[Metric]:
        stats = parse_netstat(read_text(self._netstat))
        for proto, fields in parse_netstat(read_text(self._snmp)).items():
            stats.setdefault(proto, {}).update(fields)
        try:
            snmp6 = read_text(self._snmp6)
        except FileNotFoundError:  # IPv6 disabled
            snmp6 = ""
        for proto, fields in parse_snmp6(snmp6).items():
            stats.setdefault(proto, {}).update(fields)
        out: list[Metric] = []
        wanted = self._wanted
        for proto, fields in stats.items():
            for field, value in fields.items():
                key = (proto, field)
                ok = wanted.get(key)
                if ok is None:
                    ok = wanted[key] = bool(self._fields.search(f"{proto}_{field}"))
                if ok:
                    out.append(
                        UnknownMetricFamily(
                            f"node_netstat_{proto}_{field}", f"Statistic {proto}{field}.", value=float(value)
                        )
                    )
        return out


# ----------------------------------------------------------------------------------------------- sockstat


def parse_sockstat(text: str) -> dict[str, dict[str, int]]:
    """``TCP: inuse 4 orphan 0 tw 4 alloc 4 mem 0`` → {"TCP": {"inuse": 4, ...}}; ``sockets: used 22`` →
    {"sockets": {"used": 22}}."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        proto, _, rest = line.partition(":")
        parts = rest.split()
        out[proto] = {parts[i]: int(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}
    return out


class SockstatCollector:
    name = "sockstat"

    def __init__(self, roots: NodeRoots, page_size: int | None = None) -> None:
        self._v4 = roots.proc("net/sockstat")
        self._v6 = roots.proc("net/sockstat6")
        self._page = page_size if page_size is not None else os.sysconf("SC_PAGE_SIZE")

    def collect(self) -> list[Metric]:
        stats = parse_sockstat(read_text(self._v4))
        with contextlib.suppress(FileNotFoundError):  # no IPv6
            stats.update(parse_sockstat(read_text(self._v6)))
        out: list[Metric] = []
        used = stats.pop("sockets", {}).get("used")
        if used is not None:
            out.append(gauge("node_sockstat_sockets_used", "Number of IPv4 sockets in use.", used))
        for proto, fields in stats.items():
            for field, value in fields.items():
                out.append(
                    gauge(
                        f"node_sockstat_{proto}_{field}",
                        f"Number of {proto} sockets in state {field}.",
                        value,
                    )
                )
                if field == "mem":
                    out.append(
                        gauge(
                            f"node_sockstat_{proto}_mem_bytes",
                            f"Number of {proto} sockets in state mem_bytes.",
                            value * self._page,
                        )
                    )
        return out


# ------------------------------------------------------------------------------------------------ softnet

_SOFTNET = (
    # column, metric, help
    (0, "node_softnet_processed", "Number of processed packets"),
    (1, "node_softnet_dropped", "Number of dropped packets"),
    (2, "node_softnet_times_squeezed", "Number of times processing packets ran out of quota"),
    (9, "node_softnet_received_rps", "Number of times cpu woken up received_rps"),
    (10, "node_softnet_flow_limit_count", "Number of times flow limit has been reached"),
)


def parse_softnet(text: str) -> list[tuple[str, list[int]]]:
    """One row of hex counters per online CPU. The CPU is column 12 when the kernel writes it (5.10+),
    else the row's position."""
    out: list[tuple[str, list[int]]] = []
    for i, line in enumerate(text.splitlines()):
        values = [int(x, 16) for x in line.split()]
        if not values:
            continue
        cpu = str(values[12]) if len(values) > 12 else str(i)
        out.append((cpu, values))
    return out


class SoftnetCollector:
    name = "softnet"

    def __init__(self, roots: NodeRoots) -> None:
        self._path = roots.proc("net/softnet_stat")

    def collect(self) -> list[Metric]:
        rows = parse_softnet(read_text(self._path))
        out: list[Metric] = []
        for column, metric, doc in _SOFTNET:
            family = CounterMetricFamily(metric, doc, labels=["cpu"])
            for cpu, values in rows:
                if len(values) > column:
                    family.add_metric([cpu], values[column])
            if family.samples:
                out.append(family)
        return out


# ---------------------------------------------------------------------------------------------- conntrack

_CONNTRACK_STAT = (
    ("found", "Number of searched entries which were successful."),
    ("invalid", "Number of packets seen which can not be tracked."),
    ("ignore", "Number of packets seen which are already connected to a conntrack entry."),
    ("insert", "Number of entries inserted into the list."),
    ("insert_failed", "Number of entries for which list insertion was attempted but failed."),
    ("drop", "Number of packets dropped due to conntrack failure."),
    (
        "early_drop",
        "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached.",
    ),
    (
        "search_restart",
        "Number of conntrack table lookups which had to be restarted due to hashtable resizes.",
    ),
)


def parse_conntrack_stat(text: str) -> dict[str, int]:
    """``/proc/net/stat/nf_conntrack``: a header of field names, then one row of hex values per CPU;
    returns each field summed over the CPUs."""
    lines = text.splitlines()
    if not lines:
        return {}
    names = lines[0].split()
    totals = dict.fromkeys(names, 0)
    for line in lines[1:]:
        for name, value in zip(names, line.split(), strict=False):
            totals[name] += int(value, 16)
    return totals


class ConntrackCollector:
    name = "conntrack"

    def __init__(self, roots: NodeRoots) -> None:
        self._count = roots.proc("sys/net/netfilter/nf_conntrack_count")
        self._max = roots.proc("sys/net/netfilter/nf_conntrack_max")
        self._stat = roots.proc("net/stat/nf_conntrack")

    def collect(self) -> list[Metric]:
        try:
            entries = float(read_text(self._count))
            limit = float(read_text(self._max))
        except FileNotFoundError:
            raise NoDataError("conntrack is not loaded (no nf_conntrack_count)") from None
        out: list[Metric] = [
            gauge(
                "node_nf_conntrack_entries",
                "Number of currently allocated flow entries for connection tracking.",
                entries,
            ),
            gauge("node_nf_conntrack_entries_limit", "Maximum size of connection tracking table.", limit),
        ]
        try:
            stat = parse_conntrack_stat(read_text(self._stat))
        except FileNotFoundError:
            return out
        for field, doc in _CONNTRACK_STAT:
            if field in stat:
                out.append(gauge(f"node_nf_conntrack_stat_{field}", doc, stat[field]))
        return out


# --------------------------------------------------------------------------------------------- udp_queues


def parse_udp_queues(text: str) -> tuple[int, int]:
    """``/proc/net/udp{,6}``: the bytes in the sockets' send and receive queues, summed (tx, rx)."""
    tx = rx = 0
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        t, _, r = parts[4].partition(":")
        tx += int(t, 16)
        rx += int(r, 16)
    return tx, rx


class UdpQueuesCollector:
    name = "udp_queues"

    def __init__(self, roots: NodeRoots) -> None:
        self._paths = (("v4", roots.proc("net/udp")), ("v6", roots.proc("net/udp6")))

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(
            "node_udp_queues",
            "Number of allocated memory in the kernel for UDP datagrams in bytes.",
            labels=["queue", "ip"],
        )
        for ip, path in self._paths:
            try:
                tx, rx = parse_udp_queues(read_text(path))
            except FileNotFoundError:
                continue
            family.add_metric(["tx", ip], tx)
            family.add_metric(["rx", ip], rx)
        if not family.samples:
            raise NoDataError("no /proc/net/udp nor /proc/net/udp6")
        return [family]


# ---------------------------------------------------------------------------------------------------- arp


def parse_arp(text: str) -> dict[str, int]:
    """Entries of ``/proc/net/arp`` per device (its last column)."""
    out: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6:
            out[parts[-1]] = out.get(parts[-1], 0) + 1
    return out


class ArpCollector:
    name = "arp"

    def __init__(self, roots: NodeRoots) -> None:
        self._path = roots.proc("net/arp")

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily("node_arp_entries", "ARP entries by device", labels=["device"])
        for device, n in parse_arp(read_text(self._path)).items():
            family.add_metric([device], n)
        return [family]
