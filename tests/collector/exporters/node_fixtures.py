"""Fixture trees and helpers for the node collector tests (``test_node*.py``).

``fixtures/node/vm`` holds files captured from a test machine's /proc and /sys (Linux 6.18, 2 CPUs,
Debian 12); ``fixtures/node/odd`` hand-made odd cases (see ``fixtures/node/README.md``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.core import Metric

from collector.exporters.nodefs import NodeRoots

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "node"


def roots(tree: str | Path) -> NodeRoots:
    base = FIXTURES / tree if isinstance(tree, str) else tree
    return NodeRoots(
        procfs=str(base / "proc"),
        sysfs=str(base / "sys"),
        rootfs=str(base / "root"),
        udev_data=str(base / "run" / "udev" / "data"),
    )


VM = roots("vm")
ODD = roots("odd")


def key(metric: str, /, **labels: str) -> str:
    """``metric{a="x",b="y"}`` with labels sorted and values as they are (no escaping)."""
    if not labels:
        return metric
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def values(metrics: Iterable[Metric]) -> dict[str, float]:
    """Every sample's value by :func:`key` (sample names, so counters end in ``_total``)."""
    out: dict[str, float] = {}
    for m in metrics:
        for s in m.samples:
            k = key(s.name, **s.labels)
            assert k not in out, f"duplicate series {k}"
            out[k] = s.value
    return out


def by_name(metrics: Iterable[Metric]) -> dict[str, Metric]:
    """Families by the name the exposition shows (``_total`` kept for counters)."""
    return {(m.name + "_total" if m.type == "counter" else m.name): m for m in metrics}


def statvfs(
    bsize: int = 4096, blocks: int = 0, bfree: int = 0, bavail: int = 0, files: int = 0, ffree: int = 0
) -> os.statvfs_result:
    return os.statvfs_result((bsize, bsize, blocks, bfree, bavail, files, ffree, ffree, 0, 255))


def write_tree(base: Path, files: dict[str, str]) -> Path:
    """Write ``{relative path: text}`` under ``base``; returns ``base``."""
    for rel, text in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return base
