"""Node collectors for the system as a whole: uname, os, time, timex, cpufreq, thermal_zone; names,
labels and units as node_exporter 1.5.

=============  ===============================================================  ====================
collector      metrics                                                           source
=============  ===============================================================  ====================
uname          node_uname_info{sysname,release,version,machine,nodename,         uname(2)
               domainname}
os             node_os_info{id,name,version,...},                                <rootfs>/etc/os-release
               node_os_version{id,id_like,name}
time           node_time_seconds, node_time_zone_offset_seconds{time_zone},      the clock,
               node_time_clocksource_{available,current}_info{device,           /sys/devices/system/
               clocksource}                                                      clocksource
timex          node_timex_sync_status, node_timex_offset_seconds, ... (17)      adjtimex(2)
cpufreq        node_cpu_frequency{,_min,_max}_hertz{cpu},                        /sys/devices/system/
               node_cpu_scaling_frequency{,_min,_max}_hertz{cpu}                 cpu/cpuN/cpufreq
thermal_zone   node_thermal_zone_temp{zone,type},                                /sys/class/thermal
               node_cooling_device_{cur,max}_state{name,type}
=============  ===============================================================  ====================

The clock, uname and adjtimex are injected (tests give fixed values); the rest reads the injected roots.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from collector.exporters.nodefs import (
    NoDataError,
    NodeRoots,
    counter,
    gauge,
    parse_int,
    read_optional,
    read_text,
)

# ------------------------------------------------------------------------------------------------- uname

UnameFn = Callable[[], tuple[str, str, str, str, str]]  # sysname, nodename, release, version, machine


class UnameCollector:
    """``node_uname_info``. uname(2) answers for the reader's UTS namespace: a DaemonSet with
    ``hostNetwork: true`` shares the node's (and so its hostname), as node_exporter's does."""

    name = "uname"

    def __init__(self, roots: NodeRoots, uname: UnameFn = os.uname) -> None:
        self._uname = uname
        self._domainname = roots.proc("sys/kernel/domainname")

    def collect(self) -> list[Metric]:
        sysname, nodename, release, version, machine = self._uname()
        domainname = read_optional(self._domainname) or "(none)"
        info = GaugeMetricFamily(
            "node_uname_info",
            "Labeled system information as provided by the uname system call.",
            labels=["sysname", "release", "version", "machine", "nodename", "domainname"],
        )
        info.add_metric([sysname, release, version, machine, nodename, domainname], 1.0)
        return [info]


# ---------------------------------------------------------------------------------------------------- os

OS_INFO_KEYS = (
    "build_id",
    "id",
    "id_like",
    "image_id",
    "image_version",
    "name",
    "pretty_name",
    "variant",
    "variant_id",
    "version",
    "version_codename",
    "version_id",
)
_VERSION = re.compile(r"^[0-9]+\.?[0-9]*")
_ESCAPED = re.compile(r"\\(.)")


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): ``KEY=value`` lines, values optionally quoted shell-style."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = _ESCAPED.sub(r"\1", value[1:-1])
        elif len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def os_version(version_id: str) -> float:
    """``node_os_version``: the leading ``major.minor`` of VERSION_ID (0 without one)."""
    m = _VERSION.match(version_id)
    return float(m.group(0).rstrip(".")) if m else 0.0


class OsCollector:
    name = "os"

    def __init__(self, roots: NodeRoots) -> None:
        self._paths = (roots.root("etc/os-release"), roots.root("usr/lib/os-release"))

    def collect(self) -> list[Metric]:
        text = None
        for path in self._paths:
            try:
                text = read_text(path)
                break
            except FileNotFoundError:
                continue
        if text is None:
            raise NoDataError("no os-release file")
        rel = parse_os_release(text)
        info = GaugeMetricFamily(
            "node_os_info",
            "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, "
            "name, pretty_name, variant, variant_id, version, version_codename, version_id.",
            labels=list(OS_INFO_KEYS),
        )
        info.add_metric([rel.get(k.upper(), "") for k in OS_INFO_KEYS], 1.0)
        version = GaugeMetricFamily(
            "node_os_version",
            "Metric containing the major.minor part of the OS version.",
            labels=["id", "id_like", "name"],
        )
        version.add_metric(
            [rel.get("ID", ""), rel.get("ID_LIKE", ""), rel.get("NAME", "")],
            os_version(rel.get("VERSION_ID", "")),
        )
        return [info, version]


# -------------------------------------------------------------------------------------------------- time


class TimeCollector:
    name = "time"

    def __init__(self, roots: NodeRoots, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._clocksources = roots.sys("devices/system/clocksource")

    def collect(self) -> list[Metric]:
        now = self._clock()
        local = time.localtime(now)
        offset = GaugeMetricFamily(
            "node_time_zone_offset_seconds", "System time zone offset in seconds.", labels=["time_zone"]
        )
        offset.add_metric([local.tm_zone], float(local.tm_gmtoff))
        available = GaugeMetricFamily(
            "node_time_clocksource_available_info",
            "Available clocksources read from '/sys/devices/system/clocksource'.",
            labels=["device", "clocksource"],
        )
        current = GaugeMetricFamily(
            "node_time_clocksource_current_info",
            "Current clocksource read from '/sys/devices/system/clocksource'.",
            labels=["device", "clocksource"],
        )
        try:
            names = sorted(os.listdir(self._clocksources))
        except FileNotFoundError:
            names = []
        for name in names:
            if not name.startswith("clocksource"):
                continue
            device = name[len("clocksource") :]
            for source in (read_optional(f"{self._clocksources}/{name}/available_clocksource") or "").split():
                available.add_metric([device, source], 1.0)
            cur = read_optional(f"{self._clocksources}/{name}/current_clocksource")
            if cur:
                current.add_metric([device, cur.strip()], 1.0)
        out: list[Metric] = [
            gauge("node_time_seconds", "System time in seconds since epoch (1970).", now),
            offset,
        ]
        out.extend(f for f in (available, current) if f.samples)
        return out


# ------------------------------------------------------------------------------------------------- timex


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex (<sys/timex.h>, 64-bit Linux)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class Timex:
    """What adjtimex(2) reports: its return value (clock state) and the struct's fields."""

    state: int
    offset: int = 0
    freq: int = 0
    maxerror: int = 0
    esterror: int = 0
    status: int = 0
    constant: int = 0
    tick: int = 0
    ppsfreq: int = 0
    jitter: int = 0
    shift: int = 0
    stabil: int = 0
    jitcnt: int = 0
    calcnt: int = 0
    errcnt: int = 0
    stbcnt: int = 0
    tai: int = 0


_libc: ctypes.CDLL | None = None


def adjtimex() -> Timex:
    """adjtimex(2) with modes 0: reads the kernel clock discipline, changes nothing, needs no privilege."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()
    state = _libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return Timex(
        state,
        tx.offset,
        tx.freq,
        tx.maxerror,
        tx.esterror,
        tx.status,
        tx.constant,
        tx.tick,
        tx.ppsfreq,
        tx.jitter,
        tx.shift,
        tx.stabil,
        tx.jitcnt,
        tx.calcnt,
        tx.errcnt,
        tx.stbcnt,
        tx.tai,
    )


TIME_ERROR = 5  # adjtimex's "clock not synchronized" state
STA_NANO = 0x2000  # offset and jitter are in nanoseconds, else microseconds
PPM16 = 1_000_000.0 * 65536.0  # frequencies are ppm with a 16-bit fraction


def timex_metrics(t: Timex) -> list[Metric]:
    """node_exporter's timex collector, from one adjtimex(2) answer."""
    div = 1e9 if t.status & STA_NANO else 1e6
    return [
        gauge(
            "node_timex_sync_status",
            "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
            0.0 if t.state == TIME_ERROR else 1.0,
        ),
        gauge(
            "node_timex_offset_seconds",
            "Time offset in between local system and reference clock.",
            t.offset / div,
        ),
        gauge(
            "node_timex_frequency_adjustment_ratio", "Local clock frequency adjustment.", 1 + t.freq / PPM16
        ),
        gauge("node_timex_maxerror_seconds", "Maximum error in seconds.", t.maxerror / 1e6),
        gauge("node_timex_estimated_error_seconds", "Estimated error in seconds.", t.esterror / 1e6),
        gauge("node_timex_status", "Value of the status array bits.", t.status),
        gauge("node_timex_loop_time_constant", "Phase-locked loop time constant.", t.constant),
        gauge("node_timex_tick_seconds", "Seconds between clock ticks.", t.tick / 1e6),
        gauge("node_timex_pps_frequency_hertz", "Pulse per second frequency.", t.ppsfreq / PPM16),
        gauge("node_timex_pps_jitter_seconds", "Pulse per second jitter.", t.jitter / div),
        gauge("node_timex_pps_shift_seconds", "Pulse per second interval duration.", t.shift),
        gauge(
            "node_timex_pps_stability_hertz",
            "Pulse per second stability, average of recent frequency changes.",
            t.stabil / PPM16,
        ),
        counter(
            "node_timex_pps_jitter_total", "Pulse per second count of jitter limit exceeded events.", t.jitcnt
        ),
        counter(
            "node_timex_pps_calibration_total", "Pulse per second count of calibration intervals.", t.calcnt
        ),
        counter("node_timex_pps_error_total", "Pulse per second count of calibration errors.", t.errcnt),
        counter(
            "node_timex_pps_stability_exceeded_total",
            "Pulse per second count of stability limit exceeded events.",
            t.stbcnt,
        ),
        gauge("node_timex_tai_offset_seconds", "International Atomic Time (TAI) offset.", t.tai),
    ]


class TimexCollector:
    name = "timex"

    def __init__(self, adjtimex: Callable[[], Timex] = adjtimex) -> None:
        self._adjtimex = adjtimex

    def collect(self) -> list[Metric]:
        return timex_metrics(self._adjtimex())


# ----------------------------------------------------------------------------------------------- cpufreq

_CPUFREQ = (
    # file (kHz), metric, help
    ("cpuinfo_cur_freq", "node_cpu_frequency_hertz", "Current cpu thread frequency in hertz."),
    ("cpuinfo_max_freq", "node_cpu_frequency_max_hertz", "Maximum cpu thread frequency in hertz."),
    ("cpuinfo_min_freq", "node_cpu_frequency_min_hertz", "Minimum cpu thread frequency in hertz."),
    ("scaling_cur_freq", "node_cpu_scaling_frequency_hertz", "Current scaled CPU thread frequency in hertz."),
    (
        "scaling_max_freq",
        "node_cpu_scaling_frequency_max_hertz",
        "Maximum scaled CPU thread frequency in hertz.",
    ),
    (
        "scaling_min_freq",
        "node_cpu_scaling_frequency_min_hertz",
        "Minimum scaled CPU thread frequency in hertz.",
    ),
)


class CpufreqCollector:
    """CPU frequencies from cpufreq (absent in most VMs: then nothing is published, and that is success).
    ``cpuinfo_cur_freq`` is readable by root only."""

    name = "cpufreq"

    def __init__(self, roots: NodeRoots) -> None:
        self._path = roots.sys("devices/system/cpu")

    def collect(self) -> list[Metric]:
        families = [GaugeMetricFamily(m, doc, labels=["cpu"]) for _, m, doc in _CPUFREQ]
        names = [n for n in os.listdir(self._path) if n.startswith("cpu") and n[3:].isdigit()]
        for name in sorted(names, key=lambda n: int(n[3:])):
            base = f"{self._path}/{name}/cpufreq"
            if not os.path.isdir(base):
                continue
            cpu = name[3:]
            for (file, _, _), family in zip(_CPUFREQ, families, strict=True):
                khz = parse_int(read_optional(f"{base}/{file}"))
                if khz is not None:
                    family.add_metric([cpu], khz * 1000.0)
        return [f for f in families if f.samples]


# ------------------------------------------------------------------------------------------ thermal_zone


class ThermalZoneCollector:
    name = "thermal_zone"

    def __init__(self, roots: NodeRoots) -> None:
        self._path = roots.sys("class/thermal")

    def collect(self) -> list[Metric]:
        try:
            names = sorted(os.listdir(self._path))
        except FileNotFoundError:
            raise NoDataError(f"no {self._path}") from None
        temp = GaugeMetricFamily(
            "node_thermal_zone_temp", "Zone temperature in Celsius", labels=["zone", "type"]
        )
        cur = GaugeMetricFamily(
            "node_cooling_device_cur_state",
            "Current throttle state of the cooling device",
            labels=["name", "type"],
        )
        top = GaugeMetricFamily(
            "node_cooling_device_max_state",
            "Maximum throttle state of the cooling device",
            labels=["name", "type"],
        )
        for name in names:
            base = f"{self._path}/{name}"
            if name.startswith("thermal_zone"):
                millis = parse_int(read_optional(f"{base}/temp"))
                if millis is not None:
                    temp.add_metric(
                        [name[len("thermal_zone") :], read_optional(f"{base}/type") or ""], millis / 1000.0
                    )
            elif name.startswith("cooling_device"):
                labels = [name[len("cooling_device") :], read_optional(f"{base}/type") or ""]
                state = parse_int(read_optional(f"{base}/cur_state"))
                limit = parse_int(read_optional(f"{base}/max_state"))
                if state is not None:
                    cur.add_metric(labels, state)
                if limit is not None:
                    top.add_metric(labels, limit)
        return [f for f in (temp, cur, top) if f.samples]
