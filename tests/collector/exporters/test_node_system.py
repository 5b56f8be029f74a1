"""uname, os, time, timex, cpufreq, thermal_zone: injected clock/uname/adjtimex, fixture trees."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.exporters import system
from collector.exporters.nodefs import NoDataError
from tests.collector.exporters.node_fixtures import ODD, VM, by_name, key, roots, values, write_tree


def test_uname_info() -> None:
    uname = system.UnameCollector(
        VM, uname=lambda: ("Linux", "node-1", "6.1.0-18-amd64", "#1 SMP PREEMPT_DYNAMIC", "x86_64")
    )
    assert values(uname.collect()) == {
        key(
            "node_uname_info",
            sysname="Linux",
            release="6.1.0-18-amd64",
            version="#1 SMP PREEMPT_DYNAMIC",
            machine="x86_64",
            nodename="node-1",
            domainname="(none)",
        ): 1.0
    }


def test_uname_of_this_machine() -> None:
    (sample,) = values(system.UnameCollector(VM).collect())
    assert f'nodename="{os.uname().nodename}"' in sample


def test_os_release() -> None:
    v = values(system.OsCollector(VM).collect())
    info = key(
        "node_os_info",
        build_id="",
        id="debian",
        id_like="",
        image_id="",
        image_version="",
        name="Debian GNU/Linux",
        pretty_name="Debian GNU/Linux 12 (bookworm)",
        variant="",
        variant_id="",
        version="12 (bookworm)",
        version_codename="bookworm",
        version_id="12",
    )
    assert v == {info: 1.0, key("node_os_version", id="debian", id_like="", name="Debian GNU/Linux"): 12.0}


def test_os_release_fallback_and_quoting() -> None:
    v = values(system.OsCollector(ODD).collect())  # only /usr/lib/os-release in this tree
    (info,) = [k for k in v if k.startswith("node_os_info")]
    assert 'pretty_name="Flatcar Container Linux by Kinvolk 3815.2.1 (Oklo) "quoted""' in info
    assert 'variant="single quoted $x"' in info
    assert 'build_id="2024-03-11-1653"' in info
    assert (
        v[key("node_os_version", id="flatcar", id_like="coreos", name="Flatcar Container Linux by Kinvolk")]
        == 3815.2
    )


@pytest.mark.parametrize(
    ("version_id", "expected"),
    [("12", 12.0), ("22.04", 22.04), ("3815.2.1", 3815.2), ("7.", 7.0), ("rolling", 0.0), ("", 0.0)],
)
def test_os_version(version_id: str, expected: float) -> None:
    assert system.os_version(version_id) == expected


def test_os_without_os_release_is_no_data(tmp_path: Path) -> None:
    with pytest.raises(NoDataError):
        system.OsCollector(roots(tmp_path)).collect()


@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_time_and_clocksources(utc: None) -> None:
    v = values(system.TimeCollector(VM, clock=lambda: 1700000000.25).collect())
    assert v == {
        "node_time_seconds": 1700000000.25,
        key("node_time_zone_offset_seconds", time_zone="UTC"): 0.0,
        key("node_time_clocksource_available_info", clocksource="tsc", device="0"): 1.0,
        key("node_time_clocksource_available_info", clocksource="kvm-clock", device="0"): 1.0,
        key("node_time_clocksource_current_info", clocksource="tsc", device="0"): 1.0,
    }


def test_time_zone_offset() -> None:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "CET-1CEST,M3.5.0,M10.5.0/3"
    time.tzset()
    try:
        v = values(system.TimeCollector(ODD, clock=lambda: 1719835200.0).collect())  # 2024-07-01: summer
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
    assert v[key("node_time_zone_offset_seconds", time_zone="CEST")] == 7200.0
    assert not any("clocksource" in k for k in v)  # no clocksource directory in this tree


def test_timex_conversions() -> None:
    synced = system.Timex(
        state=0, offset=1_500_000, freq=65536 * 10, maxerror=250_000, esterror=1000, status=0x2000 | 0x1,
        constant=7, tick=10_000, ppsfreq=65536, jitter=2_000_000_000, shift=4, stabil=131072, jitcnt=1,
        calcnt=2, errcnt=3, stbcnt=4, tai=37,
    )  # fmt: skip
    fams = system.TimexCollector(lambda: synced).collect()
    v = values(fams)
    assert v == {
        "node_timex_sync_status": 1.0,
        "node_timex_offset_seconds": 0.0015,  # nanoseconds (STA_NANO)
        "node_timex_frequency_adjustment_ratio": 1.00001,  # 1 + 10 ppm
        "node_timex_maxerror_seconds": 0.25,
        "node_timex_estimated_error_seconds": 0.001,
        "node_timex_status": 0x2001,
        "node_timex_loop_time_constant": 7.0,
        "node_timex_tick_seconds": 0.01,
        "node_timex_pps_frequency_hertz": 1e-6,
        "node_timex_pps_jitter_seconds": 2.0,
        "node_timex_pps_shift_seconds": 4.0,
        "node_timex_pps_stability_hertz": 2e-6,
        "node_timex_pps_jitter_total": 1.0,
        "node_timex_pps_calibration_total": 2.0,
        "node_timex_pps_error_total": 3.0,
        "node_timex_pps_stability_exceeded_total": 4.0,
        "node_timex_tai_offset_seconds": 37.0,
    }
    assert by_name(fams)["node_timex_pps_error_total"].type == "counter"
    unsynced = system.timex_metrics(system.Timex(state=system.TIME_ERROR, offset=1500, jitter=3))
    u = values(unsynced)
    assert u["node_timex_sync_status"] == 0.0
    assert u["node_timex_offset_seconds"] == 0.0015  # microseconds without STA_NANO
    assert u["node_timex_pps_jitter_seconds"] == 3e-6


def test_adjtimex_of_this_machine() -> None:
    t = system.adjtimex()
    assert t.tick > 0  # microseconds per tick, 10000 at HZ=100
    assert values(system.timex_metrics(t))["node_timex_tick_seconds"] == t.tick / 1e6


def test_cpufreq() -> None:
    v = values(system.CpufreqCollector(ODD).collect())
    assert v == {
        key("node_cpu_frequency_max_hertz", cpu="0"): 3.6e9,
        key("node_cpu_frequency_min_hertz", cpu="0"): 8e8,
        key("node_cpu_scaling_frequency_hertz", cpu="0"): 2.4e9,
        key("node_cpu_scaling_frequency_max_hertz", cpu="0"): 3.6e9,
        key("node_cpu_scaling_frequency_min_hertz", cpu="0"): 8e8,
    }  # cpuinfo_cur_freq is root-only and absent here; cpu1 has no cpufreq directory
    assert system.CpufreqCollector(VM).collect() == []  # a VM without cpufreq: nothing, and no error


def test_thermal_zone_and_cooling_devices() -> None:
    assert values(system.ThermalZoneCollector(ODD).collect()) == {
        key("node_thermal_zone_temp", type="x86_pkg_temp", zone="0"): 47.5,
        key("node_cooling_device_cur_state", name="0", type="Processor"): 0.0,
        key("node_cooling_device_max_state", name="0", type="Processor"): 10.0,
    }
    assert system.ThermalZoneCollector(VM).collect() == []


def test_thermal_zone_without_the_class_is_no_data(tmp_path: Path) -> None:
    write_tree(tmp_path, {"sys/class/.keep": ""})
    with pytest.raises(NoDataError):
        system.ThermalZoneCollector(roots(tmp_path)).collect()
