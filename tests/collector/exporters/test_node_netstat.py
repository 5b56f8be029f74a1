"""netstat, sockstat, softnet, conntrack, udp_queues, arp on fixture trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.exporters import netstat
from collector.exporters.nodefs import NoDataError
from tests.collector.exporters.node_fixtures import VM, by_name, key, roots, values, write_tree

# what node_exporter 1.5 published from the same machine's files, plus the two TcpExt fields dashboard 1860
# charts that its default field list lacks
NODE_EXPORTER_NETSTAT = {
    "Icmp6_InErrors", "Icmp6_InMsgs", "Icmp6_OutMsgs", "Icmp_InErrors", "Icmp_InMsgs", "Icmp_OutMsgs",
    "Ip6_InOctets", "Ip6_OutOctets", "IpExt_InOctets", "IpExt_OutOctets", "Ip_Forwarding",
    "TcpExt_ListenDrops", "TcpExt_ListenOverflows", "TcpExt_SyncookiesFailed", "TcpExt_SyncookiesRecv",
    "TcpExt_SyncookiesSent", "TcpExt_TCPSynRetrans", "TcpExt_TCPTimeouts", "Tcp_ActiveOpens", "Tcp_CurrEstab",
    "Tcp_InErrs", "Tcp_InSegs", "Tcp_OutRsts", "Tcp_OutSegs", "Tcp_PassiveOpens", "Tcp_RetransSegs",
    "Udp6_InDatagrams", "Udp6_InErrors", "Udp6_NoPorts", "Udp6_OutDatagrams", "Udp6_RcvbufErrors",
    "Udp6_SndbufErrors", "UdpLite6_InErrors", "UdpLite_InErrors", "Udp_InDatagrams", "Udp_InErrors",
    "Udp_NoPorts", "Udp_OutDatagrams", "Udp_RcvbufErrors", "Udp_SndbufErrors",
}  # fmt: skip


def test_netstat_fields_as_node_exporter_publishes_them() -> None:
    fams = netstat.NetstatCollector(VM).collect()
    v = values(fams)
    assert set(v) == {
        f"node_netstat_{n}" for n in NODE_EXPORTER_NETSTAT | {"TcpExt_TCPOFOQueue", "TcpExt_TCPRcvQDrop"}
    }
    assert v["node_netstat_Tcp_InSegs"] == 3166800.0
    assert v["node_netstat_Tcp_CurrEstab"] == 2.0
    assert v["node_netstat_Ip_Forwarding"] == 2.0
    assert v["node_netstat_IpExt_InOctets"] == 95574175730.0  # from /proc/net/netstat
    assert v["node_netstat_Ip6_InOctets"] == 414.0  # from /proc/net/snmp6
    assert v["node_netstat_TcpExt_TCPOFOQueue"] == 4027.0
    m = by_name(fams)["node_netstat_Tcp_InSegs"]
    assert (m.type, m.documentation) == ("unknown", "Statistic TcpInSegs.")


def test_netstat_without_ipv6(tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path,
        {
            "proc/net/netstat": "TcpExt: ListenDrops TW\nTcpExt: 3 4\n",
            "proc/net/snmp": "Tcp: MaxConn InSegs\nTcp: -1 10\nUdp: InErrors\nUdp: 1\n",
        },
    )
    assert values(netstat.NetstatCollector(roots(tree)).collect()) == {
        "node_netstat_TcpExt_ListenDrops": 3.0,
        "node_netstat_Tcp_InSegs": 10.0,
        "node_netstat_Udp_InErrors": 1.0,
    }
    with pytest.raises(ValueError, match="mismatched"):
        netstat.parse_netstat("Tcp: A\nUdp: 1\n")


def test_sockstat_with_mem_bytes_in_pages() -> None:
    v = values(netstat.SockstatCollector(VM, page_size=4096).collect())
    assert v["node_sockstat_sockets_used"] == 19
    assert v["node_sockstat_TCP_inuse"] == 5
    assert v["node_sockstat_TCP_tw"] == 10
    assert v["node_sockstat_TCP_mem"] == 133
    assert v["node_sockstat_TCP_mem_bytes"] == 133 * 4096
    assert v["node_sockstat_UDP_mem_bytes"] == 105 * 4096
    assert v["node_sockstat_FRAG_memory"] == 0
    assert "node_sockstat_TCP6_inuse" in v and "node_sockstat_FRAG6_memory" in v
    assert len(v) == 20


def test_sockstat_without_ipv6(tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path, {"proc/net/sockstat": "sockets: used 3\nTCP: inuse 1 orphan 0 tw 2 alloc 1 mem 7\n"}
    )
    v = values(netstat.SockstatCollector(roots(tree), page_size=16384).collect())
    assert v["node_sockstat_TCP_mem_bytes"] == 7 * 16384
    assert not any("6_" in k for k in v)


def test_softnet_cpu_from_the_kernels_column_or_row() -> None:
    v = values(netstat.SoftnetCollector(VM).collect())
    assert v[key("node_softnet_processed_total", cpu="0")] == 0x05383427
    assert v[key("node_softnet_processed_total", cpu="1")] == 0x0288C594
    assert v[key("node_softnet_received_rps_total", cpu="1")] == 0
    odd = values(netstat.SoftnetCollector(roots("odd")).collect())  # old kernel: 11 columns, no cpu column
    assert odd == {
        key("node_softnet_processed_total", cpu="0"): 255,
        key("node_softnet_processed_total", cpu="1"): 256,
        key("node_softnet_dropped_total", cpu="0"): 1,
        key("node_softnet_dropped_total", cpu="1"): 0,
        key("node_softnet_times_squeezed_total", cpu="0"): 2,
        key("node_softnet_times_squeezed_total", cpu="1"): 3,
        key("node_softnet_received_rps_total", cpu="0"): 0,
        key("node_softnet_received_rps_total", cpu="1"): 0,
        key("node_softnet_flow_limit_count_total", cpu="0"): 0,
        key("node_softnet_flow_limit_count_total", cpu="1"): 0,
    }


def test_softnet_offline_cpu_keeps_its_number(tmp_path: Path) -> None:
    row = "00000010 " + "00000000 " * 11 + "{cpu:08x}\n"
    tree = write_tree(tmp_path, {"proc/net/softnet_stat": row.format(cpu=0) + row.format(cpu=3)})
    v = values(netstat.SoftnetCollector(roots(tree)).collect())
    assert key("node_softnet_processed_total", cpu="3") in v
    assert key("node_softnet_processed_total", cpu="1") not in v


def test_conntrack() -> None:
    v = values(netstat.ConntrackCollector(VM).collect())
    assert v["node_nf_conntrack_entries"] == 0
    assert v["node_nf_conntrack_entries_limit"] == 262144
    assert v["node_nf_conntrack_stat_found"] == 0
    assert len(v) == 10


def test_conntrack_stat_is_summed_over_cpus_and_missing_module_is_no_data(tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path,
        {
            "proc/sys/net/netfilter/nf_conntrack_count": "12\n",
            "proc/sys/net/netfilter/nf_conntrack_max": "65536\n",
            "proc/net/stat/nf_conntrack": "entries  found invalid drop\n"
            "0000000c  00000010 00000002 00000001\n"
            "0000000c  00000001 00000000 0000000f\n",
        },
    )
    v = values(netstat.ConntrackCollector(roots(tree)).collect())
    assert v == {
        "node_nf_conntrack_entries": 12,
        "node_nf_conntrack_entries_limit": 65536,
        "node_nf_conntrack_stat_found": 17,
        "node_nf_conntrack_stat_invalid": 2,
        "node_nf_conntrack_stat_drop": 16,
    }
    with pytest.raises(NoDataError, match="conntrack"):
        netstat.ConntrackCollector(roots("odd")).collect()


UDP = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref "
    "pointer drops\n"
    " 1: 00000000:0044 00000000:0000 07 00000010:00000020 00:00000000 00000000     0        0 1 2 "
    "0000000000000000 0\n"
    " 2: 0100007F:0035 00000000:0000 07 00000001:00000002 00:00000000 00000000   101        0 3 2 "
    "0000000000000000 0\n"
)


def test_udp_queues(tmp_path: Path) -> None:
    assert values(netstat.UdpQueuesCollector(VM).collect()) == {
        key("node_udp_queues", ip="v4", queue="tx"): 0,
        key("node_udp_queues", ip="v4", queue="rx"): 0,
        key("node_udp_queues", ip="v6", queue="tx"): 0,
        key("node_udp_queues", ip="v6", queue="rx"): 0,
    }
    tree = write_tree(tmp_path, {"proc/net/udp": UDP})  # no IPv6
    assert values(netstat.UdpQueuesCollector(roots(tree)).collect()) == {
        key("node_udp_queues", ip="v4", queue="tx"): 17,
        key("node_udp_queues", ip="v4", queue="rx"): 34,
    }
    with pytest.raises(NoDataError):
        netstat.UdpQueuesCollector(roots("odd")).collect()


def test_arp_entries_per_device(tmp_path: Path) -> None:
    assert values(netstat.ArpCollector(VM).collect()) == {key("node_arp_entries", device="eth0"): 1}
    tree = write_tree(
        tmp_path,
        {
            "proc/net/arp": "IP address       HW type     Flags       HW address            Mask     Device\n"
            "10.0.0.1         0x1         0x2         52:54:00:00:00:01     *        eth0\n"
            "10.0.0.2         0x1         0x0         00:00:00:00:00:00     *        eth0\n"
            "10.244.1.5       0x1         0x2         ee:ee:ee:ee:ee:ee     *        cali12ab\n"
        },
    )
    assert values(netstat.ArpCollector(roots(tree)).collect()) == {
        key("node_arp_entries", device="eth0"): 2,
        key("node_arp_entries", device="cali12ab"): 1,
    }
