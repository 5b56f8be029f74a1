"""Container metrics with cAdvisor's names, read from cgroup v2 for the pods on this node.

:class:`ContainerMetrics` is a Prometheus custom collector: every scrape it lists the pod cgroups under the
kubelet's ``kubepods`` cgroup, matches them to this node's pods (from the pod watch) by pod uid, finds each
container's cgroup by the container id in ``status.containerStatuses[].containerID``, and reads a few
cgroup v2 files. Nothing read from them is kept from one scrape to the next.

Layouts (both kubelet cgroup drivers, every QoS class; the pod uid's dashes become ``_`` under systemd)::

    systemd   kubepods.slice/kubepods-pod<uid>.slice/cri-containerd-<id>.scope            (Guaranteed)
              kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/crio-<id>.scope
              kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/docker-<id>.scope
    cgroupfs  kubepods/pod<uid>/<id>, kubepods/burstable/pod<uid>/<id>, kubepods/besteffort/pod<uid>/<id>

A static pod's cgroup carries the uid of the kubelet's own copy, which its mirror pod names in the
``kubernetes.io/config.mirror`` annotation; that uid is tried as well.

Metrics (values as cAdvisor computes them on cgroup v2):

=============================================== ===================================================
``container_cpu_usage_seconds_total{cpu="total"}`` ``cpu.stat`` usage_usec / 1e6
``container_cpu_cfs_periods_total``             ``cpu.stat`` nr_periods      (only with a CPU quota)
``container_cpu_cfs_throttled_periods_total``   ``cpu.stat`` nr_throttled    (only with a CPU quota)
``container_cpu_cfs_throttled_seconds_total``   ``cpu.stat`` throttled_usec / 1e6 (only with a CPU quota)
``container_memory_usage_bytes``                ``memory.current``
``container_memory_working_set_bytes``          ``memory.current`` - ``memory.stat`` inactive_file, at least 0
``container_memory_rss``                        ``memory.stat`` anon
``container_spec_memory_limit_bytes``           ``memory.max``; ``max`` (no limit) is 0, as in cAdvisor
``container_oom_events_total``                  ``memory.events`` oom_kill
=============================================== ===================================================

Labels: ``container``, ``id`` (the cgroup path from the cgroup root, as cAdvisor's), ``image`` (the image
the runtime reports in the container status), ``name`` (the container id), ``namespace``, ``pod``, and
``node`` (the pod's ``spec.nodeName``: the label kube-prometheus' kubelet scrape config adds, which the
"Kubernetes / Views / Nodes" dashboard filters on).

Pod-level series: like cAdvisor, each pod's own cgroup is published too, with ``container=""``,
``image=""`` and ``name=""`` (its ``id`` is the pod cgroup). They are the pod's totals (pause container
and pod overhead included). Dashboards select containers with ``image!=""`` or ``container!=""`` (the
dotdc "Kubernetes / Views" ones do), so these series are not counted twice there; a query summing
without either filter counts each pod twice, exactly as it would against cAdvisor. ``pod_cgroups=False``
leaves them out. The pause (sandbox) container itself is not published: its id is not in the pod status.

Not published: ``container_network_*`` (they need the pod's network namespace, not cgroup files), and
cgroup v1 hosts: a root without ``cgroup.controllers`` fails the scrape with :class:`CgroupError`.

Robustness: each file is read and parsed on its own; one that is missing, unreadable or malformed loses
only the series computed from it and is counted in
``kubeobs_cadvisor_cgroup_file_errors_total{file,reason}`` (reason ``missing``, ``unreadable``,
``malformed``). A container whose cgroup is gone (exited, not started yet) is skipped without error.

Scrape cost: ``collect()`` yields ``Metric`` objects for any ``CollectorRegistry``; ``expose()`` returns
the same families as Prometheus text, rendered at a fraction of ``generate_latest``'s cost per series (for
110 pods of 3 containers, about 3,200 series: bench/pod_scrape.py). Both read the files anew every time.

Example::

    cadvisor = ContainerMetrics("/sys/fs/cgroup", pods=metadata.pod_objects)
    registry.register(cadvisor)           # through generate_latest(registry), or
    body = generate_latest(other) + cadvisor.expose()   # families of its own, appended to a body
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from collector.exporters.exposition import family_header, format_labels, format_value, render_metric

__all__ = [
    "DEFAULT_KUBEPODS_ROOTS",
    "CgroupError",
    "CgroupStats",
    "ContainerMetrics",
    "PodSource",
    "container_cgroup_name",
    "family_values",
    "find_pod_cgroups",
    "keyed_values",
    "parse_cpu_max",
    "parse_limit",
    "pod_uid_from_cgroup",
    "read_cgroup",
    "split_container_id",
    "working_set",
]

log = logging.getLogger(__name__)

PodSource = Callable[[], Iterable[Mapping[str, Any]]]
"""Returns the raw pod objects (API JSON as dicts) of this node, e.g. from the pod watch cache."""

DEFAULT_KUBEPODS_ROOTS = (
    "kubepods.slice",  # systemd driver
    "kubepods",  # cgroupfs driver
    "kubelet.slice/kubelet-kubepods.slice",  # systemd driver, kubelet --cgroup-root=/kubelet (kind)
    "kubelet/kubepods",  # cgroupfs driver, kubelet --cgroup-root=/kubelet
)

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

# runtime scheme of containerID -> the scope name prefix the runtime gives it under the systemd driver
_SCOPE_PREFIX = {"containerd": "cri-containerd-", "cri-o": "crio-", "docker": "docker-"}

_POD_DIR = re.compile(r"(?:^|-)pod([0-9a-fA-F][0-9a-fA-F_-]*)(?:\.slice)?$")
_QOS_DIR = re.compile(r"(?:^|-)(?:burstable|besteffort)(?:\.slice)?$")


class CgroupError(RuntimeError):
    """The cgroup root is not cgroup v2: the whole scrape fails (the collector is marked failed)."""


# -- pure parsing ---------------------------------------------------------------------------------------


def keyed_values(text: str, keys: Iterable[str]) -> dict[str, int]:
    """The integer values of ``keys`` in a flat-keyed cgroup file (``cpu.stat``, ``memory.stat``,
    ``memory.events``: one ``key value`` per line); keys that are absent are left out. ValueError for a
    value that is not an integer."""
    padded = "\n" + text
    out: dict[str, int] = {}
    for key in keys:
        at = padded.find(f"\n{key} ")
        if at < 0:
            continue
        start = at + len(key) + 2
        end = padded.find("\n", start)
        out[key] = int(padded[start:] if end < 0 else padded[start:end])
    return out


def parse_limit(text: str) -> int | None:
    """A single-value limit file (``memory.max``): bytes, or None for ``max`` (no limit)."""
    value = text.strip()
    return None if value == "max" else int(value)


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """``cpu.max`` (``"$QUOTA $PERIOD"``): (quota in µs or None for ``max``, period in µs)."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"cpu.max: expected '$QUOTA $PERIOD', got {text.strip()!r}")
    return (None if parts[0] == "max" else int(parts[0])), int(parts[1])


def working_set(usage: int, inactive_file: int) -> int:
    """cAdvisor's working set: usage minus inactive file pages, never below 0."""
    return usage - inactive_file if usage > inactive_file else 0


def split_container_id(container_id: str) -> tuple[str, str] | None:
    """``"containerd://<id>"`` -> ``("containerd", "<id>")``; None when there is no id (not started)."""
    runtime, sep, cid = container_id.partition("://")
    if not sep or not cid:
        return None
    return runtime, cid


def pod_uid_from_cgroup(dirname: str) -> str | None:
    """The pod uid (with dashes) in a pod cgroup's directory name, under either cgroup driver:
    ``kubepods-burstable-pod12ab_34cd.slice`` -> ``12ab-34cd``, ``pod12ab-34cd`` -> ``12ab-34cd``."""
    m = _POD_DIR.search(dirname)
    return m.group(1).replace("_", "-").lower() if m else None


def container_cgroup_name(runtime: str, cid: str, systemd: bool) -> str | None:
    """The directory name of a container's cgroup inside its pod's; None when the runtime's systemd scope
    name is not known (the pod directory is then searched for the id)."""
    if not systemd:
        return cid
    prefix = _SCOPE_PREFIX.get(runtime)
    return None if prefix is None else f"{prefix}{cid}.scope"


def find_pod_cgroups(cgroupfs: str, roots: Iterable[str] = DEFAULT_KUBEPODS_ROOTS) -> dict[str, str]:
    """Pod uid -> the pod cgroup's path relative to ``cgroupfs``, for every pod cgroup under the kubepods
    roots that exist (the QoS level is descended into)."""
    found: dict[str, str] = {}
    for root in roots:
        todo = [root]
        while todo:
            rel = todo.pop()
            try:
                entries = list(os.scandir(os.path.join(cgroupfs, rel)))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                name = entry.name
                if name.startswith("cgroup.") or ("." in name and not name.endswith(".slice")):
                    continue  # interface files (cpu.stat, ...)
                if not entry.is_dir(follow_symlinks=False):
                    continue
                uid = pod_uid_from_cgroup(name)
                if uid is not None:
                    found.setdefault(uid, f"{rel}/{name}")
                elif rel == root and _QOS_DIR.search(name):
                    todo.append(f"{rel}/{name}")
    return found


# -- reading one cgroup ---------------------------------------------------------------------------------

_CPU_KEYS = ("usage_usec", "nr_periods", "nr_throttled", "throttled_usec")
_MEMORY_KEYS = ("inactive_file", "anon")
_EVENTS_KEYS = ("oom_kill",)
_READ_SIZE = 65536


@dataclass(slots=True)
class CgroupStats:
    """What one cgroup's files said; None where a file (or a key in it) was not there or not readable."""

    usage_usec: int | None = None
    nr_periods: int | None = None
    nr_throttled: int | None = None
    throttled_usec: int | None = None
    cpu_quota: int | None = None  # µs per period; None: no quota (``max``) or cpu.max unreadable
    memory_current: int | None = None
    inactive_file: int | None = None
    anon: int | None = None
    memory_max: int | None = None  # None: no limit (``max``) or memory.max unreadable
    memory_max_read: bool = False
    oom_kill: int | None = None


def _read_at(dir_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.read(fd, _READ_SIZE)
        if len(data) == _READ_SIZE:
            chunks = [data]
            while chunk := os.read(fd, _READ_SIZE):
                chunks.append(chunk)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return data.decode("ascii", "replace")


def read_cgroup(path: str, errors: dict[tuple[str, str], int]) -> CgroupStats | None:
    """Read one cgroup directory; None if the directory is gone. Every file failure is counted in
    ``errors[(file, reason)]`` and costs only the values of that file."""
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    stats = CgroupStats()
    try:
        for name in ("cpu.stat", "cpu.max", "memory.current", "memory.stat", "memory.max", "memory.events"):
            try:
                text = _read_at(dir_fd, name)
            except OSError as e:
                reason = "missing" if e.errno in (errno.ENOENT, errno.ENODEV) else "unreadable"
                errors[(name, reason)] = errors.get((name, reason), 0) + 1
                continue
            try:
                _apply(stats, name, text)
            except ValueError:
                errors[(name, "malformed")] = errors.get((name, "malformed"), 0) + 1
    finally:
        os.close(dir_fd)
    return stats


def _apply(stats: CgroupStats, name: str, text: str) -> None:
    if name == "cpu.stat":
        v = keyed_values(text, _CPU_KEYS)
        if "usage_usec" not in v:
            raise ValueError("cpu.stat without usage_usec")
        stats.usage_usec = v["usage_usec"]
        stats.nr_periods = v.get("nr_periods")
        stats.nr_throttled = v.get("nr_throttled")
        stats.throttled_usec = v.get("throttled_usec")
    elif name == "cpu.max":
        stats.cpu_quota = parse_cpu_max(text)[0]
    elif name == "memory.current":
        stats.memory_current = int(text.strip())
    elif name == "memory.stat":
        v = keyed_values(text, _MEMORY_KEYS)
        if len(v) != len(_MEMORY_KEYS):
            raise ValueError("memory.stat without inactive_file/anon")
        stats.inactive_file = v["inactive_file"]
        stats.anon = v["anon"]
    elif name == "memory.max":
        stats.memory_max = parse_limit(text)
        stats.memory_max_read = True
    elif name == "memory.events":
        stats.oom_kill = keyed_values(text, _EVENTS_KEYS).get("oom_kill")


# -- the collector --------------------------------------------------------------------------------------

_FAMILIES: tuple[tuple[str, str, str], ...] = (
    # (name as exposed, help, type); counters are named here with their _total
    ("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", "counter"),
    ("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", "counter"),
    ("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", "counter"),
    ("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.",
     "counter"),
    ("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of "
     "when it was accessed", "gauge"),
    ("container_memory_working_set_bytes", "Current working set in bytes.", "gauge"),
    ("container_memory_rss", "Size of RSS in bytes.", "gauge"),
    ("container_spec_memory_limit_bytes", "Memory limit for the container.", "gauge"),
    ("container_oom_events_total", "Count of out of memory events observed for the container", "counter"),
)  # fmt: skip
_CPU, _PERIODS, _THROTTLED_PERIODS, _THROTTLED, _USAGE, _WSS, _RSS, _LIMIT, _OOM = range(len(_FAMILIES))
_NAMES = [f[0] for f in _FAMILIES]
_ERRORS_NAME = "kubeobs_cadvisor_cgroup_file_errors_total"
_ERRORS_HELP = "cgroup files that could not be used (missing, unreadable, malformed), by file"


def _family(name: str, doc: str, typ: str) -> Metric:
    return Metric(name[:-6] if typ == "counter" else name, doc, typ)


@dataclass(frozen=True, slots=True)
class _Target:
    path: str  # relative to the cgroup root
    labels: dict[str, str]


class ContainerMetrics:
    """cAdvisor-named container metrics from cgroup v2; see the module docstring.

    ``cgroupfs`` is the cgroup v2 mount (``metrics.cgroupfs``), ``pods`` returns this node's pod objects
    at scrape time. ``collect()`` and ``expose()`` raise :class:`CgroupError` when the root is not cgroup
    v2, and whatever ``pods()`` raises; file-level problems never fail them.
    """

    name = "cadvisor"

    def __init__(
        self,
        cgroupfs: str,
        pods: PodSource,
        *,
        roots: Iterable[str] = DEFAULT_KUBEPODS_ROOTS,
        pod_cgroups: bool = True,
    ) -> None:
        self.cgroupfs = cgroupfs.rstrip("/") or "/"
        self.pods = pods
        self.roots = tuple(roots)
        self.pod_cgroups = pod_cgroups
        self.file_errors: dict[tuple[str, str], int] = {}
        self._label_text: dict[tuple[str, ...], tuple[str, str]] = {}
        self._logged: set[tuple[str, str]] = set()

    def targets(self) -> list[_Target]:
        """The cgroups to read this scrape, with their labels: each pod's (if ``pod_cgroups``), then its
        containers'."""
        if not os.path.exists(os.path.join(self.cgroupfs, "cgroup.controllers")):
            raise CgroupError(f"{self.cgroupfs} is not a cgroup v2 mount (no cgroup.controllers)")
        pods = list(self.pods())
        if not pods:
            return []
        index = find_pod_cgroups(self.cgroupfs, self.roots)
        targets: list[_Target] = []
        for pod in pods:
            meta = pod.get("metadata") or {}
            uid = str(meta.get("uid", "")).lower()
            pod_dir = index.get(uid)
            if pod_dir is None:
                mirror = (meta.get("annotations") or {}).get(MIRROR_ANNOTATION)
                pod_dir = index.get(str(mirror).lower()) if mirror else None
            if pod_dir is None:
                continue
            base = {
                "namespace": str(meta.get("namespace", "")),
                "pod": str(meta.get("name", "")),
                "node": str((pod.get("spec") or {}).get("nodeName") or ""),
            }
            if self.pod_cgroups:
                targets.append(_Target(pod_dir, {"container": "", "id": "/" + pod_dir, "image": "",
                                                 "name": "", **base}))  # fmt: skip
            systemd = pod_dir.endswith(".slice")
            status = pod.get("status") or {}
            for section in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
                for cs in status.get(section) or ():
                    parsed = split_container_id(str(cs.get("containerID") or ""))
                    if parsed is None:
                        continue
                    dirname = container_cgroup_name(parsed[0], parsed[1], systemd)
                    if dirname is None:
                        dirname = self._search(pod_dir, parsed[1])
                        if dirname is None:
                            continue
                    path = f"{pod_dir}/{dirname}"
                    labels = {"container": str(cs.get("name", "")), "id": "/" + path,
                              "image": str(cs.get("image") or ""), "name": parsed[1], **base}  # fmt: skip
                    targets.append(_Target(path, labels))
        return targets

    def _search(self, pod_dir: str, cid: str) -> str | None:
        try:
            with os.scandir(os.path.join(self.cgroupfs, pod_dir)) as it:
                for entry in it:
                    if entry.name.endswith(f"-{cid}.scope") and "conmon" not in entry.name:
                        return entry.name
        except OSError:
            return None
        return None

    def _scan(self) -> Iterator[tuple[_Target, list[float | None]]]:
        """Each cgroup read this scrape with its value per family (``_FAMILIES`` order; None: no series)."""
        root = self.cgroupfs
        for target in self.targets():
            stats = read_cgroup(os.path.join(root, target.path), self.file_errors)
            if stats is not None:  # None: gone between listing and reading (exited)
                yield target, family_values(stats)
        if len(self.file_errors) > len(self._logged):  # a new kind of file error: say so once
            for file, reason in sorted(self.file_errors.keys() - self._logged):
                log.warning("cadvisor: %s %s in some cgroups under %s; their series from it are left out "
                            "(counted in %s)", reason, file, root, _ERRORS_NAME)  # fmt: skip
            self._logged.update(self.file_errors)

    def _errors_family(self) -> Metric:
        errors = Metric("kubeobs_cadvisor_cgroup_file_errors", _ERRORS_HELP, "counter")
        for (file, reason), count in sorted(self.file_errors.items()):
            errors.samples.append(Sample(_ERRORS_NAME, {"file": file, "reason": reason}, count))
        return errors

    def collect(self) -> list[Metric]:
        """Read and parse now (eagerly: a wrapper timing and isolating the call sees all the work and
        every exception inside it); every family, the error counter last."""
        families = [_family(*f) for f in _FAMILIES]
        samples = [f.samples for f in families]
        for target, values in self._scan():
            labels = target.labels
            for i, v in enumerate(values):
                if v is not None:
                    samples[i].append(
                        Sample(_NAMES[i], {**labels, "cpu": "total"} if i == _CPU else labels, v)
                    )
        families.append(self._errors_family())
        return families

    def expose(self) -> bytes:
        """The same metrics as :meth:`collect`, as Prometheus text exposition (format 0.0.4), rendered here
        in a few microseconds per series where ``generate_latest`` takes several: for /metrics handlers
        that append it to the registry's body (see bench/pod_scrape.py)."""
        lines: list[list[str]] = [[] for _ in _FAMILIES]
        label_text = self._label_text
        fresh: dict[tuple[str, ...], tuple[str, str]] = {}
        for target, values in self._scan():
            key = tuple(target.labels.values())
            texts = fresh.get(key) or label_text.get(key)
            if texts is None:
                texts = (format_labels(target.labels), format_labels({**target.labels, "cpu": "total"}))
            fresh[key] = texts
            for i, v in enumerate(values):
                if v is not None:
                    lines[i].append(f"{_NAMES[i]}{texts[1] if i == _CPU else texts[0]} {format_value(v)}\n")
        self._label_text = fresh  # only the containers still there
        out = [family_header(*f) + "".join(lines[i]) for i, f in enumerate(_FAMILIES)]
        out.append(render_metric(self._errors_family()))
        return "".join(out).encode()


def family_values(stats: CgroupStats) -> list[float | None]:
    """The value of each family (``_FAMILIES`` order) for one cgroup; None where it has no series: the CFS
    ones without a CPU quota, and any whose file could not be used."""
    values: list[float | None] = [None] * len(_FAMILIES)
    if stats.usage_usec is not None:
        values[_CPU] = stats.usage_usec / 1e6
    if stats.cpu_quota is not None:
        if stats.nr_periods is not None:
            values[_PERIODS] = float(stats.nr_periods)
        if stats.nr_throttled is not None:
            values[_THROTTLED_PERIODS] = float(stats.nr_throttled)
        if stats.throttled_usec is not None:
            values[_THROTTLED] = stats.throttled_usec / 1e6
    if stats.memory_current is not None:
        values[_USAGE] = float(stats.memory_current)
        if stats.inactive_file is not None:
            values[_WSS] = float(working_set(stats.memory_current, stats.inactive_file))
    if stats.anon is not None:
        values[_RSS] = float(stats.anon)
    if stats.memory_max_read:
        values[_LIMIT] = float(stats.memory_max or 0)
    if stats.oom_kill is not None:
        values[_OOM] = float(stats.oom_kill)
    return values
