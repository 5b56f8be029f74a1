"""Block device I/O, as node_exporter's ``diskstats`` collector publishes it, from ``/proc/diskstats``.

All with the ``device`` label; sectors are the kernel's fixed 512-byte units, times are milliseconds:

==============================================  ================================================
node_disk_reads_completed_total                 field 1
node_disk_reads_merged_total                    field 2
node_disk_read_bytes_total                      field 3 * 512
node_disk_read_time_seconds_total               field 4 / 1000
node_disk_writes_completed_total                field 5
node_disk_writes_merged_total                   field 6
node_disk_written_bytes_total                   field 7 * 512
node_disk_write_time_seconds_total              field 8 / 1000
node_disk_io_now                                field 9 (gauge)
node_disk_io_time_seconds_total                 field 10 / 1000
node_disk_io_time_weighted_seconds_total        field 11 / 1000
node_disk_discards_completed_total ...          fields 12-15 (Linux 4.18+): discards, merged,
node_disk_discard_time_seconds_total            sectors (``node_disk_discarded_sectors_total``), time
node_disk_flush_requests_total,                 fields 16-17 (Linux 5.5+)
node_disk_flush_requests_time_seconds_total
node_disk_info{device,major,minor,model,path,revision,serial,wwn}   udev data (empty labels without it)
==============================================  ================================================

A counter the running kernel does not write is not published. Devices matching
``metrics.diskstats_exclude`` (default: partitions, ram, loop and floppy devices) are left out.
With udev's database (``metrics.udev_data``), ``node_disk_device_mapper_info`` and ``node_disk_ata_*``
are published as node_exporter does.
"""

from __future__ import annotations

import logging
import os
import re

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.exporters.nodefs import NodeRoots, read_text

log = logging.getLogger(__name__)

# Debian's node_exporter 1.5 default for --collector.diskstats.device-exclude
DISKSTATS_EXCLUDE = r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"
SECTOR_BYTES = 512.0
MS = 0.001

# metric, help, scale to the unit, is a counter
DISK_FIELDS: tuple[tuple[str, str, float, bool], ...] = (
    ("node_disk_reads_completed_total", "The total number of reads completed successfully.", 1.0, True),
    ("node_disk_reads_merged_total", "The total number of reads merged.", 1.0, True),
    ("node_disk_read_bytes_total", "The total number of bytes read successfully.", SECTOR_BYTES, True),
    ("node_disk_read_time_seconds_total", "The total number of seconds spent by all reads.", MS, True),
    ("node_disk_writes_completed_total", "The total number of writes completed successfully.", 1.0, True),
    ("node_disk_writes_merged_total", "The number of writes merged.", 1.0, True),
    ("node_disk_written_bytes_total", "The total number of bytes written successfully.", SECTOR_BYTES, True),
    (
        "node_disk_write_time_seconds_total",
        "This is the total number of seconds spent by all writes.",
        MS,
        True,
    ),
    ("node_disk_io_now", "The number of I/Os currently in progress.", 1.0, False),
    ("node_disk_io_time_seconds_total", "Total seconds spent doing I/Os.", MS, True),
    ("node_disk_io_time_weighted_seconds_total", "The weighted # of seconds spent doing I/Os.", MS, True),
    ("node_disk_discards_completed_total", "The total number of discards completed successfully.", 1.0, True),
    ("node_disk_discards_merged_total", "The total number of discards merged.", 1.0, True),
    ("node_disk_discarded_sectors_total", "The total number of sectors discarded successfully.", 1.0, True),
    (
        "node_disk_discard_time_seconds_total",
        "This is the total number of seconds spent by all discards.",
        MS,
        True,
    ),
    (
        "node_disk_flush_requests_total",
        "The total number of flush requests completed successfully",
        1.0,
        True,
    ),
    (
        "node_disk_flush_requests_time_seconds_total",
        "This is the total number of seconds spent by all flush requests.",
        MS,
        True,
    ),
)

_ATA = (
    ("ID_ATA_WRITE_CACHE", "node_disk_ata_write_cache", "ATA disk has a write cache."),
    (
        "ID_ATA_WRITE_CACHE_ENABLED",
        "node_disk_ata_write_cache_enabled",
        "ATA disk has its write cache enabled.",
    ),
    (
        "ID_ATA_ROTATION_RATE_RPM",
        "node_disk_ata_rotation_rate_rpm",
        "ATA disk rotation rate in RPMs (0 for SSDs).",
    ),
)


def parse_diskstats(text: str) -> list[tuple[str, str, str, list[int]]]:
    """``/proc/diskstats`` rows: (major, minor, device, counters); 11, 15 or 17 counters by kernel."""
    out: list[tuple[str, str, str, list[int]]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 14:
            continue
        out.append((parts[0], parts[1], parts[2], [int(x) for x in parts[3:]]))
    return out


def parse_udev(text: str) -> dict[str, str]:
    """udev's database entry of a device: its ``E:KEY=VALUE`` properties."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("E:"):
            key, sep, value = line[2:].partition("=")
            if sep:
                out[key] = value
    return out


class DiskstatsCollector:
    name = "diskstats"

    def __init__(self, roots: NodeRoots, exclude: str = DISKSTATS_EXCLUDE) -> None:
        self._path = roots.proc("diskstats")
        self._exclude = re.compile(exclude)
        self._udev: str | None = roots.udev_data
        if not os.path.isdir(roots.udev_data):
            log.debug("no udev database at %s: node_disk_info has empty labels", roots.udev_data)
            self._udev = None

    def _udev_props(self, major: str, minor: str) -> dict[str, str]:
        if self._udev is None:
            return {}
        try:
            return parse_udev(read_text(f"{self._udev}/b{major}:{minor}"))
        except OSError:
            return {}

    def collect(self) -> list[Metric]:
        families = [
            (CounterMetricFamily if is_counter else GaugeMetricFamily)(name, doc, labels=["device"])
            for name, doc, _, is_counter in DISK_FIELDS
        ]
        scales = [scale for _, _, scale, _ in DISK_FIELDS]
        info = GaugeMetricFamily(
            "node_disk_info",
            "Info of /sys/block/<block_device>.",
            labels=["device", "major", "minor", "path", "wwn", "model", "serial", "revision"],
        )
        dm_info = GaugeMetricFamily(
            "node_disk_device_mapper_info",
            "Info about disk device mapper.",
            labels=["device", "name", "uuid", "vg_name", "lv_name", "lv_layer"],
        )
        ata = {key: GaugeMetricFamily(metric, doc, labels=["device"]) for key, metric, doc in _ATA}
        for major, minor, device, values in parse_diskstats(read_text(self._path)):
            if self._exclude.search(device):
                continue
            props = self._udev_props(major, minor)
            serial = props.get("SCSI_IDENT_SERIAL") or props.get("ID_SERIAL_SHORT") or ""
            info.add_metric(
                [
                    device,
                    major,
                    minor,
                    props.get("ID_PATH", ""),
                    props.get("ID_WWN", ""),
                    props.get("ID_MODEL", ""),
                    serial,
                    props.get("ID_REVISION", ""),
                ],
                1.0,
            )
            labels = [device]
            for family, scale, value in zip(families, scales, values, strict=False):
                family.add_metric(labels, value * scale if scale != 1.0 else float(value))
            if props.get("DM_NAME"):
                dm_info.add_metric(
                    [
                        device,
                        props["DM_NAME"],
                        props.get("DM_UUID", ""),
                        props.get("DM_VG_NAME", ""),
                        props.get("DM_LV_NAME", ""),
                        props.get("DM_LV_LAYER", ""),
                    ],
                    1.0,
                )
            if props.get("ID_ATA"):
                for key, family in ata.items():
                    if key in props:
                        try:
                            family.add_metric(labels, float(props[key]))
                        except ValueError:
                            log.debug("udev: %s=%r of %s is not a number", key, props[key], device)
        extra = [f for f in (dm_info, *ata.values()) if f.samples]
        return [info, *(f for f in families if f.samples), *extra]
