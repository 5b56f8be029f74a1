"""How ``kubeobs logs`` prints lines: ``text``, ``wide`` or ``json``.

- ``text``: ``<time> <namespace>/<pod>/<container> <message>``; the time in UTC to the millisecond.
- ``wide``: ``<time to the ns> <node> <namespace>/<pod>/<container> <stream> <labels> <message>``.
- ``json``: the stored document plus its ``_id``, one JSON object per line (``jq`` friendly).

With colour (a terminal, unless ``NO_COLOR`` is set or ``--color never``): the time dim, each pod in
its own colour (the same pod, the same colour, run after run), stderr lines in red. Control characters
in messages are shown escaped on a terminal, so a log line cannot move the cursor or retitle the window;
piped output is the message as stored.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import orjson

from kubeobs.search.backend import Hit
from kubeobs.search.timerange import format_ns

__all__ = ["FORMATS", "Renderer", "source_of"]

Format = Literal["text", "wide", "json"]
FORMATS: tuple[Format, ...] = ("text", "wide", "json")

RESET = "\x1b[0m"
DIM = "\x1b[2m"
RED = "\x1b[31m"
BOLD_RED = "\x1b[1;31m"
_POD_COLOURS = (
    "\x1b[36m",
    "\x1b[32m",
    "\x1b[33m",
    "\x1b[35m",
    "\x1b[34m",
    "\x1b[96m",
    "\x1b[92m",
    "\x1b[93m",
)
# C0 and C1 controls except tab and newline, and DEL
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _get(doc: Mapping[str, Any], *path: str) -> Any:
    cur: Any = doc
    for p in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(p)
    return cur


def source_of(doc: Mapping[str, Any]) -> str:
    """``namespace/pod/container`` of a document (``-`` for what is unknown)."""
    k8s = doc.get("kubernetes") or {}
    parts = (_get(k8s, "namespace"), _get(k8s, "pod", "name"), _get(k8s, "container", "name"))
    return "/".join(str(p) if p else "-" for p in parts)


def _escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class Renderer:
    """Writes hits to ``out`` in one format; ``colour`` adds ANSI colours and escapes controls."""

    def __init__(self, out: TextIO, fmt: Format = "text", *, colour: bool = False) -> None:
        self.out = out
        self.fmt = fmt
        self.colour = colour

    def line(self, hit: Hit) -> str:
        """The output for one hit, without the final newline."""
        doc = hit.doc
        if self.fmt == "json":
            return orjson.dumps({"_id": hit.id, **doc}).decode()
        message = str(doc.get("message", ""))
        if self.colour:
            message = _escape_controls(message)
        stderr = doc.get("stream") == "stderr"
        source = source_of(doc)
        if self.fmt == "wide":
            when = format_ns(hit.ts_ns, 9)
            node = _get(doc, "kubernetes", "node", "name") or "-"
            labels = _get(doc, "kubernetes", "labels") or {}
            label_text = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) if labels else "-"
            stream = str(doc.get("stream") or "-")
            if self.colour:
                stream = f"{BOLD_RED}{stream}{RESET}" if stderr else stream
                label_text = f"{DIM}{label_text}{RESET}"
            head = f"{self._time(when)} {node} {self._source(doc, source)} {stream} {label_text}"
        else:
            head = f"{self._time(format_ns(hit.ts_ns, 3))} {self._source(doc, source)}"
        if self.colour and stderr:
            message = f"{RED}{message}{RESET}"
        return f"{head} {message}"

    def _time(self, when: str) -> str:
        return f"{DIM}{when}{RESET}" if self.colour else when

    def _source(self, doc: Mapping[str, Any], source: str) -> str:
        if not self.colour:
            return source
        pod = f"{_get(doc, 'kubernetes', 'namespace')}/{_get(doc, 'kubernetes', 'pod', 'name')}"
        colour = _POD_COLOURS[zlib.crc32(pod.encode()) % len(_POD_COLOURS)]
        return f"{colour}{source}{RESET}"

    def write(self, hit: Hit) -> None:
        self.out.write(self.line(hit) + "\n")

    def flush(self) -> None:
        self.out.flush()
