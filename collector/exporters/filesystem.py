"""Mounted filesystems' space and inodes, as node_exporter's ``filesystem`` collector publishes them.

Mounts come from ``<procfs>/1/mounts`` (the node's init's mount namespace; ``<procfs>/mounts`` when
that is not readable), as node_exporter reads them; each mount point is measured with ``statfs`` under
``metrics.rootfs`` (``/host/root`` in a DaemonSet that mounts the node's ``/`` there).

Metrics, labels ``device``, ``fstype``, ``mountpoint``:

=================================  =============================================================
node_filesystem_size_bytes         f_blocks * f_bsize
node_filesystem_free_bytes         f_bfree * f_bsize
node_filesystem_avail_bytes        f_bavail * f_bsize (space available to non-root users)
node_filesystem_files              f_files
node_filesystem_files_free         f_ffree
node_filesystem_readonly           1 when the mount options include ``ro``
node_filesystem_device_error       1 when statfs failed or timed out (then only this series)
=================================  =============================================================

Which mounts (node_exporter 1.5's rules and Debian's defaults): a mount whose mount point matches
``metrics.filesystem_exclude_mountpoints`` or whose type matches ``metrics.filesystem_exclude_fstypes``
(pseudo filesystems: proc, sysfs, cgroup, overlay, ...) is left out; a device mounted twice on the same
mount point is published once. Mount points are unescaped as the kernel escapes them (``\\040`` space,
``\\011`` tab, ``\\012`` newline, ``\\134`` backslash); the device is published as the kernel writes it.

Stuck mounts: ``statfs`` of an NFS mount whose server is gone blocks in the kernel. Calls run on a helper
thread; one that takes longer than ``metrics.filesystem_mount_timeout`` marks its mount point stuck: the
scrape goes on without it (``device_error`` 1) and later scrapes skip it until that call returns. The
scrape that meets it waits that long once (the collector serves ``/metrics`` on its event loop, which
waits too). A timeout of 0 calls statfs on the scraping thread.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric

from collector.exporters.nodefs import NodeRoots, read_bytes

log = logging.getLogger(__name__)

# Debian's node_exporter 1.5 defaults (--collector.filesystem.mount-points-exclude, fs-types-exclude)
FILESYSTEM_EXCLUDE_MOUNTPOINTS = (
    r"^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
)
FILESYSTEM_EXCLUDE_FSTYPES = (
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue"
    r"|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$"
)
MOUNT_TIMEOUT = 5.0

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

Statfs = Callable[[str], os.statvfs_result]


@dataclass(frozen=True)
class Mount:
    device: str
    mountpoint: str  # unescaped, as a path on the node
    fstype: str
    options: str

    @property
    def readonly(self) -> bool:
        return "ro" in self.options.split(",")


def unescape_mount_field(text: str) -> str:
    """Undo the kernel's octal escapes in /proc/*/mounts (``\\040`` is a space)."""
    if "\\" not in text:
        return text
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mounts(text: str) -> list[Mount]:
    """``/proc/<pid>/mounts`` lines: device, mount point, type, options, dump, pass."""
    out: list[Mount] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 4:
            raise ValueError(f"malformed mount point information: {line!r}")
        out.append(Mount(parts[0], unescape_mount_field(parts[1]), parts[2], parts[3]))
    return out


def strip_rootfs(mountpoint: str, rootfs: str) -> str:
    """A mount point seen from a namespace where the node's root is mounted at ``rootfs``, as a path on
    the node (``/host/root/var`` → ``/var``)."""
    root = rootfs.rstrip("/")
    if not root or not mountpoint.startswith(root):
        return mountpoint
    rest = mountpoint[len(root) :]
    if rest == "":
        return "/"
    return rest if rest.startswith("/") else mountpoint


def select_mounts(
    mounts: Sequence[Mount],
    exclude_mountpoints: re.Pattern[str],
    exclude_fstypes: re.Pattern[str],
    rootfs: str,
) -> list[Mount]:
    """The mounts to publish, in mount order: not excluded, each (device, mount point, type) once."""
    out: list[Mount] = []
    seen: set[tuple[str, str, str]] = set()
    for m in mounts:
        mountpoint = strip_rootfs(m.mountpoint, rootfs)
        if exclude_mountpoints.search(mountpoint) or exclude_fstypes.search(m.fstype):
            continue
        key = (m.device, mountpoint, m.fstype)
        if key in seen:
            continue
        seen.add(key)
        out.append(m if mountpoint == m.mountpoint else Mount(m.device, mountpoint, m.fstype, m.options))
    return out


def _label(text: str) -> str:
    """A path as a label value: bytes that are not UTF-8 (kept as surrogates to stat the path) become
    U+FFFD."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# ------------------------------------------------------------------------------------------ stuck mounts


@dataclass(eq=False)
class _Batch:
    paths: list[str]
    results: dict[str, os.statvfs_result | OSError] = field(default_factory=dict)
    progress: int = 0  # paths done
    abandoned: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class StatfsGuard:
    """statfs() of many paths on a helper thread, giving up on a path after ``timeout`` seconds without
    progress. A path given up on is *stuck*: not asked again until its call returns (the helper thread
    that made it then clears it and ends; the next batch starts a new helper). ``timeout`` 0 calls
    statfs on the caller's thread."""

    IDLE_EXIT = 60.0  # an idle helper thread ends after this many seconds

    def __init__(self, statfs: Statfs = os.statvfs, timeout: float = MOUNT_TIMEOUT) -> None:
        self._statfs = statfs
        self._timeout = timeout
        self._lock = threading.Lock()
        self._stuck: set[str] = set()
        self._jobs: queue.SimpleQueue[_Batch] | None = None

    def stuck(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._stuck)

    def run(self, paths: Sequence[str]) -> dict[str, os.statvfs_result | OSError]:
        """statfs results (or the error) by path; a stuck path has no entry."""
        with self._lock:
            todo = [p for p in dict.fromkeys(paths) if p not in self._stuck]
        if self._timeout <= 0:
            return {p: self._call(p) for p in todo}
        results: dict[str, os.statvfs_result | OSError] = {}
        while todo:
            batch = _Batch(todo)
            self._submit(batch)
            seen = -1
            while not batch.done.wait(self._timeout):
                with self._lock:
                    if batch.progress != seen or batch.progress >= len(batch.paths):
                        seen = batch.progress  # slow but moving (or just finishing): another window
                        continue
                    batch.abandoned = True
                    stuck = batch.paths[batch.progress]
                    self._stuck.add(stuck)
                    self._jobs = None  # that helper is blocked in the kernel; the next batch gets a new one
                    todo = batch.paths[batch.progress + 1 :]
                    results.update(batch.results)
                log.warning(
                    "statfs(%r) did not return within %.1f s: skipping it until it does", stuck, self._timeout
                )
                break
            else:
                results.update(batch.results)
                todo = []
        return results

    def _call(self, path: str) -> os.statvfs_result | OSError:
        try:
            return self._statfs(path)
        except OSError as e:
            return e

    def _submit(self, batch: _Batch) -> None:
        with self._lock:
            jobs = self._jobs
            if jobs is None:
                jobs = self._jobs = queue.SimpleQueue()
                threading.Thread(
                    target=self._helper, args=(jobs,), name="kubeobs-statfs", daemon=True
                ).start()
            jobs.put(batch)

    def _helper(self, jobs: queue.SimpleQueue[_Batch]) -> None:
        while True:
            try:
                batch = jobs.get(timeout=self.IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if jobs.empty():
                        if self._jobs is jobs:
                            self._jobs = None
                        return
                continue
            for i, path in enumerate(batch.paths):
                result = self._call(path)
                with self._lock:
                    # given up on while in this call: clear the path, leave the rest to the new helper
                    if batch.abandoned:
                        self._stuck.discard(path)
                        log.info("statfs(%r) returned after all", path)
                        return
                    batch.results[path] = result
                    batch.progress = i + 1
            batch.done.set()


# ------------------------------------------------------------------------------------------------ collector


class FilesystemCollector:
    name = "filesystem"

    def __init__(
        self,
        roots: NodeRoots,
        exclude_mountpoints: str = FILESYSTEM_EXCLUDE_MOUNTPOINTS,
        exclude_fstypes: str = FILESYSTEM_EXCLUDE_FSTYPES,
        mount_timeout: float = MOUNT_TIMEOUT,
        statfs: Statfs = os.statvfs,
    ) -> None:
        self._mounts = (roots.proc("1/mounts"), roots.proc("mounts"))
        self._rootfs = roots.rootfs
        self._exclude_mountpoints = re.compile(exclude_mountpoints)
        self._exclude_fstypes = re.compile(exclude_fstypes)
        self.guard = StatfsGuard(statfs, mount_timeout)

    def _read_mounts(self) -> str:
        try:
            data = read_bytes(self._mounts[0])
        except (FileNotFoundError, PermissionError):
            data = read_bytes(self._mounts[1])
        return data.decode("utf-8", "surrogateescape")

    def _path(self, mountpoint: str) -> str:
        root = self._rootfs.rstrip("/")
        if not root:
            return mountpoint
        return root if mountpoint == "/" else root + mountpoint

    def collect(self) -> list[Metric]:
        mounts = select_mounts(
            parse_mounts(self._read_mounts()), self._exclude_mountpoints, self._exclude_fstypes, self._rootfs
        )
        results = self.guard.run([self._path(m.mountpoint) for m in mounts])
        labels = ["device", "fstype", "mountpoint"]
        size = GaugeMetricFamily("node_filesystem_size_bytes", "Filesystem size in bytes.", labels=labels)
        free = GaugeMetricFamily(
            "node_filesystem_free_bytes", "Filesystem free space in bytes.", labels=labels
        )
        avail = GaugeMetricFamily(
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            labels=labels,
        )
        files = GaugeMetricFamily("node_filesystem_files", "Filesystem total file nodes.", labels=labels)
        files_free = GaugeMetricFamily(
            "node_filesystem_files_free", "Filesystem total free file nodes.", labels=labels
        )
        readonly = GaugeMetricFamily(
            "node_filesystem_readonly", "Filesystem read-only status.", labels=labels
        )
        error = GaugeMetricFamily(
            "node_filesystem_device_error",
            "Whether an error occurred while getting statistics for the given device.",
            labels=labels,
        )
        for m in mounts:
            values = [_label(m.device), m.fstype, _label(m.mountpoint)]
            st = results.get(self._path(m.mountpoint))
            if not isinstance(st, os.statvfs_result):
                if isinstance(st, OSError):
                    log.debug("statfs(%r): %s", m.mountpoint, st)
                error.add_metric(values, 1.0)
                continue
            error.add_metric(values, 0.0)
            bsize = float(st.f_bsize)
            size.add_metric(values, float(st.f_blocks) * bsize)
            free.add_metric(values, float(st.f_bfree) * bsize)
            avail.add_metric(values, float(st.f_bavail) * bsize)
            files.add_metric(values, float(st.f_files))
            files_free.add_metric(values, float(st.f_ffree))
            readonly.add_metric(values, 1.0 if m.readonly else 0.0)
        return [avail, error, files, files_free, free, readonly, size]
