"""Acknowledgement tracking: which file offsets are safe to checkpoint.

Batches complete out of order (several are in flight to the sink at once). For each file, the tracker
keeps the batches that carry its records in the order they were cut; a file's checkpoint advances to a
batch's offset only when that batch and every earlier batch of the same file have completed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


class AckTracker:
    def __init__(self, on_advance: Callable[[str, int], None]) -> None:
        self._on_advance = on_advance
        # key -> [[batch_id, offset, done, created], ...] in the order the batches were cut
        self._queues: dict[str, deque[list[Any]]] = {}
        self._done: set[int] = set()

    def register(self, batch_id: int, offsets: dict[str, int], created: float = 0.0) -> None:
        """A batch was cut holding records of these files, up to these safe offsets."""
        for key, off in offsets.items():
            self._queues.setdefault(key, deque()).append([batch_id, off, False, created])

    def oldest(self, key: str) -> float | None:
        """When the oldest unacknowledged batch holding records of this file was started."""
        q = self._queues.get(key)
        return float(q[0][3]) if q else None

    def complete(self, batch_id: int, keys: list[str]) -> None:
        """Every record of the batch is delivered (or dead-lettered)."""
        for key in keys:
            q = self._queues.get(key)
            if not q:
                continue
            for item in q:
                if item[0] == batch_id:
                    item[2] = True
                    break
            advanced: int | None = None
            while q and q[0][2]:
                advanced = int(q.popleft()[1])
            if not q:
                del self._queues[key]
            if advanced is not None:
                self._on_advance(key, advanced)

    def in_flight(self, key: str) -> bool:
        return key in self._queues

    def __len__(self) -> int:
        return len(self._queues)
