"""Node metrics with node_exporter's names, labels and units, collected at scrape time.

:class:`NodeCollector` is a Prometheus custom collector over a list of *node collectors*, one per concern,
named as node_exporter names its collectors (``cpu``, ``meminfo``, ``filesystem``, ...; see
:data:`NODE_COLLECTORS` and the modules :mod:`.procfs`, :mod:`.netstat`, :mod:`.netdev`,
:mod:`.diskstats`, :mod:`.filesystem`, :mod:`.system`). On every scrape each one reads its files and
builds its families, timed and isolated: one that raises publishes nothing, and its
``node_scrape_collector_success{collector=...}`` is 0 while the others still answer. Nothing read from the
node is kept from one scrape to the next (but the cpu collector's guard against counters going
backwards, as node_exporter's).

Config (``metrics:`` in the collector's YAML; see :class:`collector.config.MetricsConfig`)::

    metrics:
      node: true                          # publish node metrics
      procfs: /host/proc                  # the node's /proc, /sys and / (DaemonSet mounts)
      sysfs: /host/sys
      rootfs: /host/root
      netdev_exclude: "^(lo|veth.*)$"     # interfaces left out of node_network_{receive,transmit}_*
      node_collectors_disabled: [arp]     # node_exporter's --no-collector.<name>

Metrics: node_exporter 1.5's for the collectors listed in :data:`NODE_COLLECTORS`, plus
``node_scrape_collector_duration_seconds{collector}`` and ``node_scrape_collector_success{collector}``.

Example::

    registry.register(build_node_collector(cfg.metrics))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.config import MetricsConfig
from collector.exporters import diskstats, filesystem, netdev, netstat, procfs, system
from collector.exporters.nodefs import NoDataError, NodePart, NodeRoots

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSettings:
    """What the node collectors are built from (the node part of ``metrics:``)."""

    roots: NodeRoots = field(default_factory=NodeRoots)
    netdev_exclude: str = netdev.NETDEV_EXCLUDE
    netclass_exclude: str = netdev.NETCLASS_EXCLUDE
    diskstats_exclude: str = diskstats.DISKSTATS_EXCLUDE
    filesystem_exclude_mountpoints: str = filesystem.FILESYSTEM_EXCLUDE_MOUNTPOINTS
    filesystem_exclude_fstypes: str = filesystem.FILESYSTEM_EXCLUDE_FSTYPES
    filesystem_mount_timeout: float = filesystem.MOUNT_TIMEOUT
    disabled: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, cfg: MetricsConfig) -> NodeSettings:
        return cls(
            roots=NodeRoots(cfg.procfs, cfg.sysfs, cfg.rootfs, cfg.udev_data),
            netdev_exclude=cfg.netdev_exclude,
            netclass_exclude=cfg.netclass_exclude,
            diskstats_exclude=cfg.diskstats_exclude,
            filesystem_exclude_mountpoints=cfg.filesystem_exclude_mountpoints,
            filesystem_exclude_fstypes=cfg.filesystem_exclude_fstypes,
            filesystem_mount_timeout=cfg.filesystem_mount_timeout,
            disabled=frozenset(cfg.node_collectors_disabled),
        )


def _filesystem(s: NodeSettings) -> NodePart:
    return filesystem.FilesystemCollector(
        s.roots, s.filesystem_exclude_mountpoints, s.filesystem_exclude_fstypes, s.filesystem_mount_timeout
    )


# node_exporter's collector name -> factory; all enabled unless listed in node_collectors_disabled
NODE_COLLECTORS: dict[str, Callable[[NodeSettings], NodePart]] = {
    "arp": lambda s: netstat.ArpCollector(s.roots),
    "conntrack": lambda s: netstat.ConntrackCollector(s.roots),
    "cpu": lambda s: procfs.CpuCollector(s.roots),
    "cpufreq": lambda s: system.CpufreqCollector(s.roots),
    "diskstats": lambda s: diskstats.DiskstatsCollector(s.roots, s.diskstats_exclude),
    "entropy": lambda s: procfs.EntropyCollector(s.roots),
    "filefd": lambda s: procfs.FilefdCollector(s.roots),
    "filesystem": _filesystem,
    "loadavg": lambda s: procfs.LoadavgCollector(s.roots),
    "meminfo": lambda s: procfs.MeminfoCollector(s.roots),
    "netclass": lambda s: netdev.NetclassCollector(s.roots, s.netclass_exclude),
    "netdev": lambda s: netdev.NetdevCollector(s.roots, s.netdev_exclude),
    "netstat": lambda s: netstat.NetstatCollector(s.roots),
    "os": lambda s: system.OsCollector(s.roots),
    "pressure": lambda s: procfs.PressureCollector(s.roots),
    "schedstat": lambda s: procfs.SchedstatCollector(s.roots),
    "sockstat": lambda s: netstat.SockstatCollector(s.roots),
    "softnet": lambda s: netstat.SoftnetCollector(s.roots),
    "stat": lambda s: procfs.StatCollector(s.roots),
    "thermal_zone": lambda s: system.ThermalZoneCollector(s.roots),
    "time": lambda s: system.TimeCollector(s.roots),
    "timex": lambda s: system.TimexCollector(),
    "udp_queues": lambda s: netstat.UdpQueuesCollector(s.roots),
    "uname": lambda s: system.UnameCollector(s.roots),
    "vmstat": lambda s: procfs.VmstatCollector(s.roots),
}


class NodeCollector(Collector):
    """Runs its node collectors on every scrape, in order, each timed and isolated."""

    def __init__(
        self,
        parts: Sequence[NodePart],
        timer: Callable[[], float] = time.perf_counter,
        extra_status: Callable[[], Mapping[str, tuple[float, float]]] | None = None,
    ) -> None:
        """``extra_status``: (seconds, success) of exporters run outside this collector this scrape
        (:class:`collector.exporters.scrape.Exposers`), published beside the node collectors' own."""
        self.parts = list(parts)
        self.extra_status = extra_status
        self._timer = timer
        self._last_error: dict[str, str] = {}

    def collect(self) -> Iterator[Metric]:
        duration = GaugeMetricFamily(
            "node_scrape_collector_duration_seconds",
            "node_exporter: Duration of a collector scrape.",
            labels=["collector"],
        )
        success = GaugeMetricFamily(
            "node_scrape_collector_success",
            "node_exporter: Whether a collector succeeded.",
            labels=["collector"],
        )
        timer = self._timer
        for part in self.parts:
            name = part.name
            start = timer()
            try:
                families = part.collect()
            except Exception as e:
                families = []
                self._failed(name, e)
                ok = 0.0
            else:
                ok = 1.0
                if name in self._last_error:
                    log.info("node collector %s works again", name)
                    del self._last_error[name]
            duration.add_metric([name], timer() - start)
            success.add_metric([name], ok)
            yield from families
        if self.extra_status is not None:
            for name, (seconds, ok) in sorted(self.extra_status().items()):
                duration.add_metric([name], seconds)
                success.add_metric([name], ok)
        yield duration
        yield success

    def _failed(self, name: str, e: Exception) -> None:
        message = f"{type(e).__name__}: {e}"
        if isinstance(e, NoDataError):
            log.debug("node collector %s has no data: %s", name, e)
        elif self._last_error.get(name) != message:
            log.warning("node collector %s failed: %s", name, message, exc_info=not isinstance(e, OSError))
        self._last_error[name] = message


def build_node_collectors(settings: NodeSettings) -> list[NodePart]:
    unknown = settings.disabled - NODE_COLLECTORS.keys()
    if unknown:
        raise ValueError(f"unknown node collectors: {', '.join(sorted(unknown))}")
    return [factory(settings) for name, factory in NODE_COLLECTORS.items() if name not in settings.disabled]


def build_node_collector(
    cfg: MetricsConfig, extra_status: Callable[[], Mapping[str, tuple[float, float]]] | None = None
) -> NodeCollector:
    """The node metrics the collector's ``/metrics`` serves, from the ``metrics:`` config."""
    return NodeCollector(build_node_collectors(NodeSettings.from_config(cfg)), extra_status=extra_status)
