"""cpu, stat, loadavg, meminfo, vmstat, pressure, schedstat, entropy, filefd on fixture trees: values, not
just names."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.exporters import procfs
from collector.exporters.nodefs import NoDataError
from tests.collector.exporters.node_fixtures import ODD, VM, by_name, key, roots, values, write_tree


def test_cpu_seconds_per_cpu_and_mode_from_user_hz_ticks() -> None:
    v = values(procfs.CpuCollector(VM).collect())
    # cpu0 462665 0 107748 800785 928 0 13052 116 0 0 (USER_HZ = 100)
    assert v[key("node_cpu_seconds_total", cpu="0", mode="user")] == 4626.65
    assert v[key("node_cpu_seconds_total", cpu="0", mode="idle")] == 8007.85
    assert v[key("node_cpu_seconds_total", cpu="0", mode="steal")] == 1.16
    assert v[key("node_cpu_seconds_total", cpu="1", mode="iowait")] == 18.27
    assert v[key("node_cpu_guest_seconds_total", cpu="1", mode="nice")] == 0.0
    assert len([k for k in v if k.startswith("node_cpu_seconds_total")]) == 2 * 8
    assert len([k for k in v if k.startswith("node_cpu_guest_seconds_total")]) == 2 * 2
    assert by_name(procfs.CpuCollector(VM).collect())["node_cpu_seconds_total"].type == "counter"


def test_cpu_old_kernel_without_guest_fields_and_offline_cpu() -> None:
    v = values(procfs.CpuCollector(ODD).collect())
    assert {k.split('cpu="')[1][0] for k in v} == {"0", "2"}  # cpu1 is offline: no line, no series
    assert v[key("node_cpu_seconds_total", cpu="2", mode="system")] == 13.0
    assert v[key("node_cpu_guest_seconds_total", cpu="2", mode="user")] == 0.0


def test_cpu_counters_never_go_backwards_as_in_node_exporter(tmp_path: Path) -> None:
    def write(iowait: int, idle: int) -> None:
        write_tree(
            tmp_path,
            {"proc/stat": f"cpu  1 0 1 {idle} {iowait} 0 0 0 0 0\ncpu0 1 0 1 {idle} {iowait} 0 0 0 0 0\n"},
        )

    cpu = procfs.CpuCollector(roots(tmp_path))
    iowait = key("node_cpu_seconds_total", cpu="0", mode="iowait")
    idle = key("node_cpu_seconds_total", cpu="0", mode="idle")
    write(iowait=500, idle=100_000)
    assert values(cpu.collect())[iowait] == 5.0
    write(iowait=490, idle=100_050)  # the kernel's iowait went back 0.1 s
    assert values(cpu.collect())[iowait] == 5.0
    write(iowait=520, idle=100_100)
    assert values(cpu.collect())[iowait] == 5.2
    write(iowait=10, idle=1_000)  # idle dropped by more than 3 s: a reset, start over
    v = values(cpu.collect())
    assert (v[iowait], v[idle]) == (0.1, 10.0)


def test_monotonic_cpu_starts_over_when_the_cpu_set_changes() -> None:
    prev = {"0": [1.0] * 10}
    assert procfs.monotonic_cpu(prev, {"0": [0.5] * 10, "1": [0.5] * 10}) == {
        "0": [0.5] * 10,
        "1": [0.5] * 10,
    }
    assert procfs.monotonic_cpu(prev, {"0": [0.5] * 10}) == {"0": [1.0] * 10}


def test_stat() -> None:
    v = values(procfs.StatCollector(VM).collect())
    assert v == {
        "node_boot_time_seconds": 1795719714.0,
        "node_context_switches_total": 130825157.0,
        "node_forks_total": 139352.0,
        "node_intr_total": 37415621.0,
        "node_procs_blocked": 0.0,
        "node_procs_running": 2.0,
    }
    fams = by_name(procfs.StatCollector(VM).collect())
    assert fams["node_forks_total"].type == "counter"
    assert fams["node_boot_time_seconds"].type == "gauge"


def test_loadavg() -> None:
    assert values(procfs.LoadavgCollector(VM).collect()) == {
        "node_load1": 1.26,
        "node_load5": 1.38,
        "node_load15": 1.47,
    }


def test_meminfo_names_and_kib_to_bytes() -> None:
    v = values(procfs.MeminfoCollector(VM).collect())
    assert v["node_memory_MemTotal_bytes"] == 24684084 * 1024
    assert v["node_memory_MemAvailable_bytes"] == 24001512 * 1024
    assert v["node_memory_Active_anon_bytes"] == 12120 * 1024  # Active(anon)
    assert v["node_memory_Active_file_bytes"] == 480920 * 1024
    assert v["node_memory_HugePages_Total"] == 0.0  # no unit: no _bytes
    assert all(k.startswith("node_memory_") for k in v)
    odd = values(procfs.MeminfoCollector(ODD).collect())  # ends with an empty line
    assert odd == {
        "node_memory_MemTotal_bytes": 2048000 * 1024,
        "node_memory_MemFree_bytes": 512000 * 1024,
        "node_memory_Active_anon_bytes": 10000 * 1024,
        "node_memory_Inactive_file_bytes": 20000 * 1024,
        "node_memory_HugePages_Total": 4.0,
        "node_memory_Hugepagesize_bytes": 2048 * 1024,
    }
    assert (
        procfs.MeminfoCollector(VM).collect()[0].documentation == "Memory information field MemTotal_bytes."
    )


def test_meminfo_rejects_a_malformed_line() -> None:
    with pytest.raises(ValueError, match="invalid line in meminfo"):
        procfs.parse_meminfo("MemTotal: 1 kB extra\n")


def test_vmstat_default_fields_untyped() -> None:
    fams = procfs.VmstatCollector(VM).collect()
    assert values(fams) == {
        "node_vmstat_pgpgin": 4264173.0,
        "node_vmstat_pgpgout": 53318328.0,
        "node_vmstat_pswpin": 0.0,
        "node_vmstat_pswpout": 0.0,
        "node_vmstat_pgfault": 188282868.0,
        "node_vmstat_pgmajfault": 7917.0,
        "node_vmstat_oom_kill": 0.0,
    }
    assert {m.type for m in fams} == {"unknown"}  # "untyped" in the text format, as node_exporter's


def test_pressure_seconds_from_microseconds() -> None:
    assert values(procfs.PressureCollector(VM).collect()) == {
        "node_pressure_cpu_waiting_seconds_total": 2360541783 / 1000 / 1000,  # as node_exporter computes it
        "node_pressure_io_waiting_seconds_total": 32.36339,
        "node_pressure_io_stalled_seconds_total": 18.110084,
        "node_pressure_memory_waiting_seconds_total": 0.0,
        "node_pressure_memory_stalled_seconds_total": 0.0,
    }


def test_pressure_irq_when_the_kernel_has_it_and_no_data_without_psi(tmp_path: Path) -> None:
    line = (
        "some avg10=0.00 avg60=0.00 avg300=0.00 total={}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total={}\n"
    )
    write_tree(
        tmp_path,
        {
            "proc/pressure/cpu": line.format(1_000_000, 0),
            "proc/pressure/io": line.format(2, 3),
            "proc/pressure/memory": line.format(4, 5),
            "proc/pressure/irq": "full avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\n",
        },
    )
    v = values(procfs.PressureCollector(roots(tmp_path)).collect())
    assert v["node_pressure_irq_stalled_seconds_total"] == 2.5
    assert v["node_pressure_cpu_waiting_seconds_total"] == 1.0
    with pytest.raises(NoDataError, match="CONFIG_PSI"):
        procfs.PressureCollector(ODD).collect()


def test_schedstat(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "proc/schedstat": "version 15\ntimestamp 4295\n"
            "cpu0 0 0 0 0 0 0 1500000000 250000000 42\ndomain0 00000003 1 2 3\n"
            "cpu1 0 0 0 0 0 0 3000000000 0 7\n"
        },
    )
    assert values(procfs.SchedstatCollector(roots(tmp_path)).collect()) == {
        'node_schedstat_running_seconds_total{cpu="0"}': 1.5,
        'node_schedstat_running_seconds_total{cpu="1"}': 3.0,
        'node_schedstat_waiting_seconds_total{cpu="0"}': 0.25,
        'node_schedstat_waiting_seconds_total{cpu="1"}': 0.0,
        'node_schedstat_timeslices_total{cpu="0"}': 42.0,
        'node_schedstat_timeslices_total{cpu="1"}': 7.0,
    }
    with pytest.raises(NoDataError):  # this VM's kernel has no CONFIG_SCHEDSTATS
        procfs.SchedstatCollector(VM).collect()


def test_entropy_and_filefd() -> None:
    assert values(procfs.EntropyCollector(VM).collect()) == {
        "node_entropy_available_bits": 256.0,
        "node_entropy_pool_size_bits": 256.0,
    }
    assert values(procfs.FilefdCollector(VM).collect()) == {
        "node_filefd_allocated": 599.0,
        "node_filefd_maximum": 2466170.0,
    }
    assert values(procfs.FilefdCollector(ODD).collect())["node_filefd_maximum"] == 9223372036854775807.0


def test_missing_file_raises() -> None:
    with pytest.raises(FileNotFoundError):
        procfs.LoadavgCollector(roots(FIXTURES_MISSING)).collect()


FIXTURES_MISSING = Path("/nonexistent-kubeobs-fixture")
