"""Node collectors over plain ``/proc`` files: cpu, stat, loadavg, meminfo, vmstat, pressure, schedstat,
entropy, filefd. Each has a pure parser (text in, numbers out) and a collector class that reads one or
two files and builds node_exporter's metric families (names, labels, units and types as node_exporter
1.5 publishes them).

==========  ================================================  ===================================
collector   metrics                                            source
==========  ================================================  ===================================
cpu         node_cpu_seconds_total{cpu,mode},                  /proc/stat (USER_HZ ticks / 100)
            node_cpu_guest_seconds_total{cpu,mode}
stat        node_boot_time_seconds, node_context_switches_total,  /proc/stat
            node_forks_total, node_intr_total, node_procs_running, node_procs_blocked
loadavg     node_load1, node_load5, node_load15                 /proc/loadavg
meminfo     node_memory_<Field>_bytes, node_memory_<Field>      /proc/meminfo (kB * 1024)
vmstat      node_vmstat_<field> (oom_kill, pgpg*, pswp*, pg*fault*)  /proc/vmstat
pressure    node_pressure_{cpu,io,memory}_waiting_seconds_total,  /proc/pressure/* (µs / 1e6)
            node_pressure_{io,memory,irq}_stalled_seconds_total
schedstat   node_schedstat_{running,waiting}_seconds_total{cpu},  /proc/schedstat
            node_schedstat_timeslices_total{cpu}
entropy     node_entropy_available_bits, node_entropy_pool_size_bits  /proc/sys/kernel/random
filefd      node_filefd_allocated, node_filefd_maximum          /proc/sys/fs/file-nr
==========  ================================================  ===================================

Example::

    CpuCollector(NodeRoots(procfs="/host/proc")).collect()
"""

from __future__ import annotations

import re

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily

from collector.exporters.nodefs import NoDataError, NodeRoots, counter, gauge, read_text

CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_CPU_FIELDS = 10  # the 8 modes, then guest and guest_nice
# node_exporter: an idle counter that drops by this many seconds is a reset (CPU hot-unplugged and back)
CPU_JUMP_BACK_SECONDS = 3.0
USER_HZ = 100.0  # /proc/stat's unit, fixed by the kernel ABI whatever CONFIG_HZ is


# ---------------------------------------------------------------------------------------------- cpu, stat


def parse_cpu_ticks(text: str) -> dict[str, list[int]]:
    """Per CPU (``"0"``, ``"1"``, ...) the 10 tick counters of ``/proc/stat``'s ``cpuN`` lines (missing
    trailing fields of old kernels are 0). The ``cpu`` total line is not included."""
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        parts = line.split()
        ticks = [int(x) for x in parts[1 : _CPU_FIELDS + 1]]
        ticks.extend([0] * (_CPU_FIELDS - len(ticks)))
        out[parts[0][3:]] = ticks
    return out


def monotonic_cpu(
    previous: dict[str, list[float]], current: dict[str, list[float]]
) -> dict[str, list[float]]:
    """node_exporter's guard against CPU counters that go backwards (the kernel's idle and iowait
    accounting does on some machines): a value lower than the last one published is replaced by the last
    one; an idle drop of 3 s or more, or a change in the set of CPUs, starts over."""
    if previous.keys() != current.keys():
        return {cpu: list(v) for cpu, v in current.items()}
    out: dict[str, list[float]] = {}
    for cpu, values in current.items():
        last = previous[cpu]
        if last[3] - values[3] >= CPU_JUMP_BACK_SECONDS:
            out[cpu] = list(values)
        else:
            out[cpu] = [v if v >= o else o for v, o in zip(values, last, strict=True)]
    return out


class CpuCollector:
    name = "cpu"

    def __init__(self, roots: NodeRoots, user_hz: float = USER_HZ) -> None:
        self._path = roots.proc("stat")
        self._hz = user_hz
        self._last: dict[str, list[float]] = {}

    def collect(self) -> list[Metric]:
        hz = self._hz
        seconds = {
            cpu: [t / hz for t in ticks] for cpu, ticks in parse_cpu_ticks(read_text(self._path)).items()
        }
        self._last = stats = monotonic_cpu(self._last, seconds)
        total = CounterMetricFamily(
            "node_cpu_seconds_total", "Seconds the CPUs spent in each mode.", labels=["cpu", "mode"]
        )
        guest = CounterMetricFamily(
            "node_cpu_guest_seconds_total",
            "Seconds the CPUs spent in guests (VMs) for each mode.",
            labels=["cpu", "mode"],
        )
        add = total.add_metric
        for cpu, v in stats.items():
            for mode, value in zip(CPU_MODES, v, strict=False):
                add([cpu, mode], value)
            guest.add_metric([cpu, "user"], v[8])
            guest.add_metric([cpu, "nice"], v[9])
        return [total, guest]


def parse_stat(text: str) -> dict[str, float]:
    """The system-wide lines of ``/proc/stat``: btime, ctxt, processes, intr (its total), procs_running,
    procs_blocked."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key in ("btime", "ctxt", "processes", "procs_running", "procs_blocked"):
            out[key] = float(rest)
        elif key == "intr":
            out[key] = float(rest.split(" ", 1)[0])
    return out


class StatCollector:
    name = "stat"

    def __init__(self, roots: NodeRoots) -> None:
        self._path = roots.proc("stat")

    def collect(self) -> list[Metric]:
        s = parse_stat(read_text(self._path))
        return [
            gauge("node_boot_time_seconds", "Node boot time, in unixtime.", s["btime"]),
            counter("node_context_switches_total", "Total number of context switches.", s["ctxt"]),
            counter("node_forks_total", "Total number of forks.", s["processes"]),
            counter("node_intr_total", "Total number of interrupts serviced.", s["intr"]),
            gauge(
                "node_procs_blocked",
                "Number of processes blocked waiting for I/O to complete.",
                s["procs_blocked"],
            ),
            gauge("node_procs_running", "Number of processes in runnable state.", s["procs_running"]),
        ]


# ------------------------------------------------------------------------------------------------ loadavg


def parse_loadavg(text: str) -> tuple[float, float, float]:
    parts = text.split()
    return float(parts[0]), float(parts[1]), float(parts[2])


class LoadavgCollector:
    name = "loadavg"

    def __init__(self, roots: NodeRoots) -> None:
        self._path = roots.proc("loadavg")

    def collect(self) -> list[Metric]:
        one, five, fifteen = parse_loadavg(read_text(self._path))
        return [
            gauge("node_load1", "1m load average.", one),
            gauge("node_load5", "5m load average.", five),
            gauge("node_load15", "15m load average.", fifteen),
        ]


# ------------------------------------------------------------------------------------------------ meminfo

_PARENS = re.compile(r"\((.*)\)")


def parse_meminfo(text: str) -> dict[str, float]:
    """``/proc/meminfo`` as node_exporter names it: ``Active(anon): 12 kB`` is ``Active_anon_bytes``
    = 12288; a line without unit (``HugePages_Total: 0``) keeps its name and value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        key = parts[0].rstrip(":")
        if "(" in key:
            key = _PARENS.sub(r"_\1", key)
        value = float(parts[1])
        if len(parts) == 3:  # "kB": the kernel's only unit here, which means KiB
            out[key + "_bytes"] = value * 1024
        elif len(parts) == 2:
            out[key] = value
        else:
            raise ValueError(f"invalid line in meminfo: {line!r}")
    return out


class MeminfoCollector:
    name = "meminfo"

    def __init__(self, roots: NodeRoots) -> None:
        self._path = roots.proc("meminfo")

    def collect(self) -> list[Metric]:
        return [
            GaugeMetricFamily(f"node_memory_{k}", f"Memory information field {k}.", value=v)
            for k, v in parse_meminfo(read_text(self._path)).items()
        ]


# ------------------------------------------------------------------------------------------------- vmstat

VMSTAT_FIELDS = r"^(oom_kill|pgpg|pswp|pg.*fault).*"  # node_exporter's --collector.vmstat.fields default


def parse_vmstat(text: str, fields: re.Pattern[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value and fields.search(key):
            out[key] = float(value)
    return out


class VmstatCollector:
    name = "vmstat"

    def __init__(self, roots: NodeRoots, fields: str = VMSTAT_FIELDS) -> None:
        self._path = roots.proc("vmstat")
        self._fields = re.compile(fields)

    def collect(self) -> list[Metric]:
        return [
            UnknownMetricFamily(f"node_vmstat_{k}", f"/proc/vmstat information field {k}.", value=v)
            for k, v in parse_vmstat(read_text(self._path), self._fields).items()
        ]


# ----------------------------------------------------------------------------------------------- pressure


def parse_pressure(text: str) -> dict[str, float]:
    """``some``/``full`` → total stall time in seconds (the file's ``total=`` is in microseconds)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for field in rest.split():
            if field.startswith("total="):
                out[kind] = int(field[6:]) / 1000 / 1000  # node_exporter's arithmetic, to the last bit
    return out


_PRESSURE = (
    # resource, line, metric, help
    (
        "cpu",
        "some",
        "node_pressure_cpu_waiting_seconds",
        "Total time in seconds that processes have waited for CPU time",
    ),
    (
        "io",
        "some",
        "node_pressure_io_waiting_seconds",
        "Total time in seconds that processes have waited due to IO congestion",
    ),
    (
        "io",
        "full",
        "node_pressure_io_stalled_seconds",
        "Total time in seconds no process could make progress due to IO congestion",
    ),
    (
        "memory",
        "some",
        "node_pressure_memory_waiting_seconds",
        "Total time in seconds that processes have waited for memory",
    ),
    (
        "memory",
        "full",
        "node_pressure_memory_stalled_seconds",
        "Total time in seconds no process could make progress due to memory congestion",
    ),
    (
        "irq",
        "full",
        "node_pressure_irq_stalled_seconds",
        "Total time in seconds no process could make progress due to IRQ congestion",
    ),
)


class PressureCollector:
    """PSI (Linux 4.20+ with CONFIG_PSI). cpu, io and memory are required (no data without them, as in
    node_exporter); irq (Linux 6.1+ with CONFIG_IRQ_TIME_ACCOUNTING) is published when present."""

    name = "pressure"

    def __init__(self, roots: NodeRoots) -> None:
        self._paths = {r: roots.proc(f"pressure/{r}") for r in ("cpu", "io", "memory", "irq")}

    def collect(self) -> list[Metric]:
        stats: dict[str, dict[str, float]] = {}
        for resource, path in self._paths.items():
            try:
                stats[resource] = parse_pressure(read_text(path))
            except FileNotFoundError:
                if resource != "irq":
                    raise NoDataError(f"no {path}: needs Linux 4.20+ with CONFIG_PSI") from None
        out: list[Metric] = []
        for resource, line, metric, doc in _PRESSURE:
            value = stats.get(resource, {}).get(line)
            if value is not None:
                out.append(counter(metric, doc, value))
        return out


# ---------------------------------------------------------------------------------------------- schedstat

_NS = 1e9


def parse_schedstat(text: str) -> dict[str, tuple[float, float, float]]:
    """Per CPU: seconds running, seconds waiting to run, timeslices (fields 7-9 of ``cpuN`` lines)."""
    out: dict[str, tuple[float, float, float]] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        parts = line.split()
        if len(parts) < 10:
            continue
        out[parts[0][3:]] = (int(parts[7]) / _NS, int(parts[8]) / _NS, float(parts[9]))
    return out


class SchedstatCollector:
    name = "schedstat"

    def __init__(self, roots: NodeRoots) -> None:
        self._path = roots.proc("schedstat")

    def collect(self) -> list[Metric]:
        try:
            text = read_text(self._path)
        except FileNotFoundError:
            raise NoDataError(f"no {self._path}: needs CONFIG_SCHEDSTATS") from None
        running = CounterMetricFamily(
            "node_schedstat_running_seconds_total",
            "Number of seconds CPU spent running a process.",
            labels=["cpu"],
        )
        waiting = CounterMetricFamily(
            "node_schedstat_waiting_seconds_total",
            "Number of seconds spent by processing waiting for this CPU.",
            labels=["cpu"],
        )
        slices = CounterMetricFamily(
            "node_schedstat_timeslices_total", "Number of timeslices executed by CPU.", labels=["cpu"]
        )
        for cpu, (run, wait, n) in parse_schedstat(text).items():
            running.add_metric([cpu], run)
            waiting.add_metric([cpu], wait)
            slices.add_metric([cpu], n)
        return [running, waiting, slices]


# ---------------------------------------------------------------------------------------- entropy, filefd


class EntropyCollector:
    name = "entropy"

    def __init__(self, roots: NodeRoots) -> None:
        self._avail = roots.proc("sys/kernel/random/entropy_avail")
        self._pool = roots.proc("sys/kernel/random/poolsize")

    def collect(self) -> list[Metric]:
        return [
            gauge("node_entropy_available_bits", "Bits of available entropy.", float(read_text(self._avail))),
            gauge("node_entropy_pool_size_bits", "Bits of entropy pool.", float(read_text(self._pool))),
        ]


def parse_file_nr(text: str) -> tuple[float, float]:
    """``/proc/sys/fs/file-nr``: allocated, (always 0), maximum."""
    parts = text.split()
    return float(parts[0]), float(parts[2])


class FilefdCollector:
    name = "filefd"

    def __init__(self, roots: NodeRoots) -> None:
        self._path = roots.proc("sys/fs/file-nr")

    def collect(self) -> list[Metric]:
        allocated, maximum = parse_file_nr(read_text(self._path))
        return [
            gauge("node_filefd_allocated", "File descriptor statistics: allocated.", allocated),
            gauge("node_filefd_maximum", "File descriptor statistics: maximum.", maximum),
        ]
