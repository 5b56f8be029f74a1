"""Exporters that render their own text exposition (the pod metrics: thousands of series per node, where
prometheus_client's generic rendering costs three times as much), run once per scrape, each timed and
isolated like the node collectors.

:class:`Exposers` runs them and keeps each one's duration and success of the last run; the node collector
publishes those as ``node_scrape_collector_duration_seconds`` / ``node_scrape_collector_success`` rows
(``collector="cadvisor"``, ``"kube_state"``), so one failing exporter shows as 0 and costs no other
series. The /metrics handler calls :meth:`Exposers.run` first, then renders the registry, and sends both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class Exposer(Protocol):
    name: str

    def expose(self) -> bytes: ...


class Exposers:
    def __init__(self, exposers: Sequence[Exposer], timer: Callable[[], float] = time.perf_counter) -> None:
        self.exposers = list(exposers)
        self.status: dict[str, tuple[float, float]] = {}  # name -> (seconds, success 1/0)
        self._timer = timer
        self._last_error: dict[str, str] = {}

    def run(self) -> bytes:
        out = []
        for e in self.exposers:
            start = self._timer()
            try:
                out.append(e.expose())
                ok = 1.0
                if self._last_error.pop(e.name, None) is not None:
                    log.info("metrics exporter %s works again", e.name)
            except Exception as exc:
                ok = 0.0
                message = f"{type(exc).__name__}: {exc}"
                if self._last_error.get(e.name) != message:
                    log.warning("metrics exporter %s failed: %s", e.name, message)
                    self._last_error[e.name] = message
            self.status[e.name] = (self._timer() - start, ok)
        return b"".join(out)
