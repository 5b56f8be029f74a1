"""``kubeobs logs --follow``: print the backlog, then poll the backend's cursor until told to stop.

The cursor (:class:`~kubeobs.search.backend.Follower`) guarantees no gaps and no repeats; this loop only
paces it, writes, and flushes after every poll so a pipe reader sees lines as they come.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kubeobs.search.backend import Follower, Hit

__all__ = ["follow"]


def follow(
    follower: Follower,
    emit: Callable[[Hit], None],
    flush: Callable[[], None],
    *,
    backlog: int | None,
    interval: float,
    stop: threading.Event,
) -> int:
    """Run until ``stop`` is set (Ctrl-C raises KeyboardInterrupt through the wait); returns lines shown."""
    shown = 0
    for hit in follower.backlog(backlog):
        emit(hit)
        shown += 1
    flush()
    while not stop.wait(interval):
        hits = follower.poll()
        for hit in hits:
            emit(hit)
        shown += len(hits)
        if hits:
            flush()
    return shown
