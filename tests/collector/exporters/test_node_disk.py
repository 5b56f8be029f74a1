"""diskstats and filesystem on fixture trees: kernel formats, udev, mount escapes, bind and duplicate
mounts, pseudo filesystems, statfs errors and stuck mounts."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from collector.exporters import diskstats, filesystem
from collector.exporters.filesystem import FilesystemCollector, Mount, StatfsGuard
from tests.collector.exporters.node_fixtures import ODD, VM, by_name, key, roots, statvfs, values, write_tree

# ------------------------------------------------------------------------------------------------ diskstats


def test_diskstats_linux_5_5_fields_and_units() -> None:
    v = values(diskstats.DiskstatsCollector(VM).collect())
    assert {k.split('device="')[1].split('"')[0] for k in v} == {"vda", "zram0"}  # loop*: excluded
    # 254 0 vda 344968 18348 8528394 354115 463185 165816 106636656 637147 0 112876 1007289 135640 57
    #            42857816 12157 43355 3868
    d = {k.split("{")[0]: x for k, x in v.items() if 'device="vda"' in k and "info" not in k}
    assert d == {
        "node_disk_reads_completed_total": 344968,
        "node_disk_reads_merged_total": 18348,
        "node_disk_read_bytes_total": 8528394 * 512,
        "node_disk_read_time_seconds_total": 354.115,
        "node_disk_writes_completed_total": 463185,
        "node_disk_writes_merged_total": 165816,
        "node_disk_written_bytes_total": 106636656 * 512,
        "node_disk_write_time_seconds_total": 637.147,
        "node_disk_io_now": 0,
        "node_disk_io_time_seconds_total": 112.876,
        "node_disk_io_time_weighted_seconds_total": 1007.289,
        "node_disk_discards_completed_total": 135640,
        "node_disk_discards_merged_total": 57,
        "node_disk_discarded_sectors_total": 42857816,
        "node_disk_discard_time_seconds_total": 12.157,
        "node_disk_flush_requests_total": 43355,
        "node_disk_flush_requests_time_seconds_total": 3.868,
    }
    # no udev database in this tree: node_disk_info with empty labels, as node_exporter 1.5 here
    info = key(
        "node_disk_info",
        device="vda",
        major="254",
        minor="0",
        model="",
        path="",
        revision="",
        serial="",
        wwn="",
    )
    assert v[info] == 1
    fams = by_name(diskstats.DiskstatsCollector(VM).collect())
    assert fams["node_disk_io_now"].type == "gauge"
    assert fams["node_disk_read_bytes_total"].type == "counter"


def test_diskstats_older_kernels_publish_only_what_they_count() -> None:
    v = values(diskstats.DiskstatsCollector(ODD).collect())
    devices = {k.split('device="')[1].split('"')[0] for k in v if not k.startswith("node_disk_info")}
    assert devices == {"sda", "nvme0n1", "dm-0"}  # partitions sda1, nvme0n1p1 and loop0 excluded
    series = {k.split("{")[0] for k in v if 'device="sda"' in k}
    assert "node_disk_io_time_weighted_seconds_total" in series  # 11 fields (before Linux 4.18)
    assert "node_disk_discards_completed_total" not in series
    nvme = {k.split("{")[0] for k in v if 'device="nvme0n1"' in k}
    assert "node_disk_discard_time_seconds_total" in nvme and "node_disk_flush_requests_total" not in nvme
    assert v[key("node_disk_discarded_sectors_total", device="nvme0n1")] == 4096
    assert v[key("node_disk_flush_requests_total", device="dm-0")] == 42
    assert v[key("node_disk_flush_requests_time_seconds_total", device="dm-0")] == 0.12


def test_diskstats_udev_properties() -> None:
    v = values(diskstats.DiskstatsCollector(ODD).collect())
    sda = key(
        "node_disk_info",
        device="sda",
        major="8",
        minor="0",
        model="Samsung_SSD_860_EVO_500GB",
        path="pci-0000:00:1f.2-ata-1",
        revision="RVT04B6Q",
        serial="S123",
        wwn="0x5002538e40a1b2c3",
    )
    assert v[sda] == 1
    assert v[key("node_disk_ata_rotation_rate_rpm", device="sda")] == 0
    assert v[key("node_disk_ata_write_cache_enabled", device="sda")] == 1
    dm = key(
        "node_disk_device_mapper_info",
        device="dm-0",
        name="vg0-root",
        uuid="LVM-aBcD",
        vg_name="vg0",
        lv_name="root",
        lv_layer="",
    )
    assert v[dm] == 1


def test_diskstats_exclude_regex() -> None:
    v = values(diskstats.DiskstatsCollector(ODD, exclude=r"^(dm-|loop)").collect())
    assert {k.split('device="')[1].split('"')[0] for k in v} == {"sda", "sda1", "nvme0n1", "nvme0n1p1"}


# ---------------------------------------------------------------------------------------------- filesystem

LABELS = ("device", "fstype", "mountpoint")


def fs_values(collector: FilesystemCollector) -> dict[str, float]:
    return values(collector.collect())


def fake_statfs(sizes: dict[str, os.statvfs_result], root: str = "") -> Callable[[str], os.statvfs_result]:
    def statfs(path: str) -> os.statvfs_result:
        try:
            return sizes[path.removeprefix(root) or "/"]
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", path) from None

    return statfs


def test_mount_parsing_unescapes_mount_points() -> None:
    mounts = filesystem.parse_mounts((Path(ODD.procfs) / "1" / "mounts").read_text())
    points = [m.mountpoint for m in mounts]
    assert "/srv/My Disk" in points
    assert "/srv/tab\tand\\backslash" in points
    cifs = next(m for m in mounts if m.fstype == "cifs")
    assert cifs.device == "//fileserver/share\\040name"  # the device as the kernel writes it (node_exporter)
    assert next(m for m in mounts if m.mountpoint == "/srv/My Disk").readonly
    with pytest.raises(ValueError, match="malformed"):
        filesystem.parse_mounts("/dev/sda1 /\n")


def test_mount_selection_as_node_exporter() -> None:
    mounts = filesystem.parse_mounts((Path(ODD.procfs) / "1" / "mounts").read_text())
    chosen = filesystem.select_mounts(
        mounts,
        re.compile(filesystem.FILESYSTEM_EXCLUDE_MOUNTPOINTS),
        re.compile(filesystem.FILESYSTEM_EXCLUDE_FSTYPES),
        "/",
    )
    assert [(m.device, m.mountpoint) for m in chosen] == [
        ("/dev/sda1", "/"),
        ("/dev/sdb1", "/data"),  # mounted twice on /data: once
        (
            "/dev/sdb1",
            "/var/lib/kubelet/pods/0b8f5e2a/volumes/kubernetes.io~local-volume/data",
        ),  # bind mount
        ("/dev/sdc1", "/srv/My Disk"),
        ("/dev/sdd1", "/srv/tab\tand\\backslash"),
        ("//fileserver/share\\040name", "/srv/cifs"),
        ("nfs.example:/export", "/srv/nfs"),
        ("tmpfs", "/var/lib/kubelet/pods/0b8f5e2a/volumes/kubernetes.io~projected/kube-api-access-x7k2p"),
        ("/dev/sde1", "/srv/gone"),
    ]  # not: proc, sysfs, cgroup2, overlay (types); /run, /run/user/1000, /var/lib/docker/... (mount points)


def test_rootfs_prefix_is_stripped_at_a_path_boundary() -> None:
    assert filesystem.strip_rootfs("/host/root", "/host/root") == "/"
    assert filesystem.strip_rootfs("/host/root/var", "/host/root/") == "/var"
    assert filesystem.strip_rootfs("/host/rootless", "/host/root") == "/host/rootless"
    assert filesystem.strip_rootfs("/var", "/") == "/var"


def test_filesystem_values_from_statfs() -> None:
    sizes = {
        "/": statvfs(bsize=4096, blocks=1000, bfree=600, bavail=500, files=100, ffree=40),
        "/data": statvfs(bsize=512, blocks=10, bfree=5, bavail=4, files=3, ffree=2),
        "/srv/My Disk": statvfs(bsize=4096, blocks=1, bfree=0, bavail=0, files=1, ffree=0),
    }
    collector = FilesystemCollector(ODD, statfs=fake_statfs(sizes, ODD.rootfs), mount_timeout=0)
    v = fs_values(collector)
    root = {"device": "/dev/sda1", "fstype": "ext4", "mountpoint": "/"}
    assert v[key("node_filesystem_size_bytes", **root)] == 4096 * 1000
    assert v[key("node_filesystem_free_bytes", **root)] == 4096 * 600
    assert v[key("node_filesystem_avail_bytes", **root)] == 4096 * 500
    assert v[key("node_filesystem_files", **root)] == 100
    assert v[key("node_filesystem_files_free", **root)] == 40
    assert v[key("node_filesystem_readonly", **root)] == 0
    assert v[key("node_filesystem_device_error", **root)] == 0
    disk = {"device": "/dev/sdc1", "fstype": "ext4", "mountpoint": "/srv/My Disk"}
    assert v[key("node_filesystem_readonly", **disk)] == 1
    data = {"device": "/dev/sdb1", "fstype": "xfs", "mountpoint": "/data"}
    assert v[key("node_filesystem_size_bytes", **data)] == 5120
    # statfs failed (the fake knows no other path): only device_error, 1
    gone = {"device": "/dev/sde1", "fstype": "ext4", "mountpoint": "/srv/gone"}
    assert v[key("node_filesystem_device_error", **gone)] == 1
    assert key("node_filesystem_size_bytes", **gone) not in v
    assert len([k for k in v if k.startswith("node_filesystem_device_error")]) == 9
    assert all(m.type == "gauge" for m in collector.collect())


def test_filesystem_statfs_under_rootfs(tmp_path: Path) -> None:
    tree = write_tree(tmp_path, {"proc/1/mounts": "/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 /data xfs rw 0 0\n"})
    (tmp_path / "root" / "data").mkdir(parents=True)
    asked: list[str] = []

    def statfs(path: str) -> os.statvfs_result:
        asked.append(path)
        return statvfs(blocks=1)

    FilesystemCollector(roots(tree), statfs=statfs, mount_timeout=0).collect()
    assert asked == [str(tmp_path / "root"), str(tmp_path / "root" / "data")]


def test_filesystem_real_statfs_of_the_vm_tree_root() -> None:
    """The captured mount table of the test VM leaves one filesystem, as node_exporter 1.5 there."""
    v = fs_values(FilesystemCollector(VM, mount_timeout=0))
    st = os.statvfs(VM.rootfs)
    root = {"device": "/dev/vda", "fstype": "ext4", "mountpoint": "/"}
    assert {k.split("{")[1] for k in v} == {key("x", **root)[2:]}
    assert v[key("node_filesystem_size_bytes", **root)] == float(st.f_blocks) * st.f_bsize


def test_filesystem_falls_back_to_proc_mounts(tmp_path: Path) -> None:
    tree = write_tree(tmp_path, {"proc/mounts": "/dev/sda1 / ext4 ro 0 0\n"})
    v = fs_values(FilesystemCollector(roots(tree), statfs=lambda _: statvfs(blocks=2), mount_timeout=0))
    assert v[key("node_filesystem_readonly", device="/dev/sda1", fstype="ext4", mountpoint="/")] == 1


def test_filesystem_exclude_settings() -> None:
    collector = FilesystemCollector(
        ODD,
        exclude_mountpoints=r"^/(srv|var)($|/)",
        exclude_fstypes=r"^(proc|sysfs|cgroup2|tmpfs|overlay)$",
        statfs=lambda _: statvfs(blocks=1),
        mount_timeout=0,
    )
    points = {k.split('mountpoint="')[1][:-2] for k in fs_values(collector)}
    assert points == {"/", "/data"}


def test_non_utf8_mount_point_is_statted_by_its_bytes_and_labelled_with_replacement(tmp_path: Path) -> None:
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "mounts").write_bytes(b"/dev/sdx1 /srv/caf\xe9 ext4 rw 0 0\n")
    asked: list[str] = []

    def statfs(path: str) -> os.statvfs_result:
        asked.append(path)
        return statvfs(blocks=1)

    tree = roots(tmp_path)
    v = fs_values(FilesystemCollector(tree, statfs=statfs, mount_timeout=0))
    assert os.fsencode(asked[0]).endswith(b"/srv/caf\xe9")
    assert (
        v[key("node_filesystem_size_bytes", device="/dev/sdx1", fstype="ext4", mountpoint="/srv/caf\ufffd")]
        == 4096
    )


# ------------------------------------------------------------------------------------------- stuck mounts


class BlockingStatfs:
    """statfs that blocks on chosen paths until released."""

    def __init__(self, blocked: set[str]) -> None:
        self.blocked = blocked
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[str] = []

    def __call__(self, path: str) -> os.statvfs_result:
        self.calls.append(path)
        if path in self.blocked:
            self.entered.set()
            self.release.wait(30)
        return statvfs(blocks=1)


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_a_stuck_mount_is_skipped_until_its_statfs_returns(tmp_path: Path) -> None:
    tree = write_tree(
        tmp_path,
        {
            "proc/1/mounts": "/dev/sda1 / ext4 rw 0 0\n"
            "nfs:/x /srv/nfs nfs4 rw 0 0\n"
            "/dev/sdb1 /data xfs rw 0 0\n"
        },
    )
    root = str(tmp_path / "root")
    statfs = BlockingStatfs({root + "/srv/nfs"})
    collector = FilesystemCollector(roots(tree), statfs=statfs, mount_timeout=0.2)
    nfs = {"device": "nfs:/x", "fstype": "nfs4", "mountpoint": "/srv/nfs"}
    data = {"device": "/dev/sdb1", "fstype": "xfs", "mountpoint": "/data"}
    try:
        start = time.monotonic()
        v = fs_values(collector)
        assert time.monotonic() - start < 5  # gave up after the timeout, did not hang
        assert v[key("node_filesystem_device_error", **nfs)] == 1
        assert v[key("node_filesystem_size_bytes", **data)] == 4096  # the mount after the stuck one too
        assert collector.guard.stuck() == {root + "/srv/nfs"}

        calls = len(statfs.calls)
        start = time.monotonic()
        v = fs_values(collector)  # the stuck mount is not asked again: no wait
        assert time.monotonic() - start < 0.2
        assert v[key("node_filesystem_device_error", **nfs)] == 1
        assert root + "/srv/nfs" not in statfs.calls[calls:]
    finally:
        statfs.release.set()
    wait_until("the stuck statfs to return", lambda: not collector.guard.stuck())
    v = fs_values(collector)
    assert v[key("node_filesystem_device_error", **nfs)] == 0
    assert v[key("node_filesystem_size_bytes", **nfs)] == 4096


def test_guard_runs_inline_without_timeout_and_reports_errors() -> None:
    def statfs(path: str) -> os.statvfs_result:
        if path == "/bad":
            raise PermissionError(13, "Permission denied", path)
        return statvfs(blocks=3)

    for timeout in (0.0, 5.0):
        results = StatfsGuard(statfs, timeout).run(["/ok", "/bad", "/ok"])
        assert isinstance(results["/bad"], PermissionError)
        assert isinstance(results["/ok"], os.statvfs_result)
        assert len(results) == 2


def test_mount_readonly_option_is_a_whole_word() -> None:
    assert Mount("d", "/", "ext4", "ro,relatime").readonly
    assert not Mount("d", "/", "ext4", "rw,errors=remount-ro").readonly
