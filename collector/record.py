"""The unit that flows from sources to sinks.

A :class:`Record` is one log line (or one part of a line longer than ``max_line_bytes``) with the
position it came from. ``ckpt`` is the file offset from which reading can safely resume once this
record, and every record of the same file before it, has been acknowledged by the sink.

The document shape follows Elastic Common Schema names (see SPEC.md, "Collector contract").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class FileInfo:
    """What is known about one tailed file; shared by all its records."""

    key: str  # file identity key: "<dev>:<ino>:<fingerprint>"
    path: str  # the path as matched by the source's globs
    id_prefix: str  # short hash of node + identity; `_id` = f"{id_prefix}-{offset}"
    kubernetes: dict[str, Any] = field(default_factory=dict)  # the document's `kubernetes` object
    container: dict[str, Any] = field(default_factory=dict)  # the document's `container` object


@dataclass(slots=True)
class Record:
    file: FileInfo
    offset: int  # byte offset of the line's first byte (first partial for joined lines)
    ckpt: int  # safe resume offset once this record is delivered
    timestamp: str  # RFC 3339 with nanoseconds as the runtime wrote it
    stream: str  # "stdout" | "stderr"
    message: str
    size: int  # bytes of the line on disk (for batching and metrics)
    part: int = 0  # 0: whole line; 1..n: part of a split line
    last_part: bool = True
    error: str | None = None  # parse problem (the message then holds the raw line)
    tags: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        if self.part:
            return f"{self.file.id_prefix}-{self.offset}-{self.part}"
        return f"{self.file.id_prefix}-{self.offset}"

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "@timestamp": self.timestamp,
            "message": self.message,
            "stream": self.stream,
            "log": {"file": {"path": self.file.path}, "offset": self.offset},
            "kubernetes": self.file.kubernetes,
            "container": self.file.container,
        }
        if self.part:
            doc["kubeobs"] = {"split": {"part": self.part, "last": self.last_part}}
        if self.tags:
            doc["tags"] = list(self.tags)
        if self.error is not None:
            doc["error"] = {"message": self.error}
        return doc
