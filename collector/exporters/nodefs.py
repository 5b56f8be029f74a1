"""Plumbing shared by the node collectors: the injected filesystem roots, whole-file reads, and the small
interface every node collector implements.

Every node collector reads its files under roots given in config (``metrics.procfs``, ``metrics.sysfs``,
``metrics.rootfs``), never ``/proc`` or ``/sys`` directly, so tests point them at fixture trees and a
DaemonSet points them at the host's, mounted at ``/host/proc``, ``/host/sys`` and ``/host/root``.

Files are read with ``os.open``/``os.read`` (about half the cost of ``open().read()``) and parsed with
``str`` methods. A collector returns its metric families as a list: it either answers completely or
raises, and :class:`collector.exporters.node.NodeCollector` turns a raise into
``node_scrape_collector_success{collector=...} 0`` without touching the other collectors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_CHUNK = 65536


class NoDataError(Exception):
    """What a collector reads does not exist on this node (node_exporter's ``ErrNoData``): its success is 0
    and it is logged at debug level only, as node_exporter does (e.g. no ``/proc/schedstat``)."""


class NodePart(Protocol):
    """One node collector: one concern (``cpu``, ``meminfo``, ``filesystem``, ...), named as node_exporter
    names it, which is the ``collector`` label of ``node_scrape_collector_success``."""

    @property
    def name(self) -> str: ...

    def collect(self) -> list[Metric]:
        """Read and parse now; all of this collector's families, or raise."""
        ...


@dataclass(frozen=True)
class NodeRoots:
    """Where the node's pseudo filesystems and root filesystem are mounted."""

    procfs: str = "/proc"
    sysfs: str = "/sys"
    rootfs: str = "/"
    udev_data: str = "/run/udev/data"

    def proc(self, rel: str) -> str:
        return _join(self.procfs, rel)

    def sys(self, rel: str) -> str:
        return _join(self.sysfs, rel)

    def root(self, rel: str) -> str:
        return _join(self.rootfs, rel)


def _join(root: str, rel: str) -> str:
    root = root.rstrip("/")
    rel = rel.lstrip("/")
    return f"{root}/{rel}" if rel else (root or "/")


def read_bytes(path: str | bytes) -> bytes:
    """The whole file, read with as few system calls as the kernel allows (a proc or sysfs file is made
    when it is read: read it once, to its end)."""
    fd = os.open(path, _READ_FLAGS)
    try:
        data = os.read(fd, _CHUNK)
        if not data:
            return data
        more = os.read(fd, _CHUNK)
        if not more:
            return data
        chunks = [data, more]
        while more:
            more = os.read(fd, _CHUNK)
            chunks.append(more)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str | bytes) -> str:
    return read_bytes(path).decode("utf-8", "replace")


def read_optional(path: str | bytes) -> str | None:
    """The file's text without its trailing newline, or None when it cannot be read. Reading some sysfs
    attributes fails by design (``carrier`` of a link that is down: EINVAL); that is "no value"."""
    try:
        return read_bytes(path).decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return None


def read_at(dir_fd: int, name: str) -> str | None:
    """Like :func:`read_optional` for ``name`` inside an open directory (saves resolving the directory's
    path again for each of its files)."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, _CHUNK).decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_int(text: str | None) -> int | None:
    """An integer as sysfs writes it (decimal, or ``0x`` hex); None for absent or malformed values."""
    if text is None:
        return None
    text = text.strip()
    try:
        if text.startswith(("0x", "0X")):
            return int(text, 16)
        return int(text)
    except ValueError:
        return None


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def untyped(name: str, doc: str, value: float) -> UnknownMetricFamily:
    return UnknownMetricFamily(name, doc, value=value)
