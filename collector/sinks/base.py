"""The Sink role.

A sink receives a batch of records and reports, per record, whether it was delivered, should be
retried, or was rejected for good. It never retries by itself: the delivery loop
(:mod:`collector.delivery`) owns retries, backoff, dead-lettering and counting.

Contract:
- ``write(batch)`` returns one :class:`Outcome` per record, in order. A record already stored
  (same ``Record.id``) counts as ``DELIVERED``: ids are deterministic, so a re-send is harmless.
- A failure of the whole request (connection refused, HTTP 5xx/429 for the request) raises
  :class:`TemporaryError`; anything that retrying cannot fix raises :class:`PermanentError`.
- ``dead_letter(records, errors)`` stores rejected records with their error (the rejection text, or
  the :class:`Outcome` itself, which also carries the HTTP status), or raises
  ``TemporaryError`` when the dead-letter store itself is unavailable.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from collector.record import Record


class SinkError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of the whole request, when there was one


class TemporaryError(SinkError):
    """Retry later (with backoff)."""


class PermanentError(SinkError):
    """Retrying the same request will not help (bad credentials, request too large: status 413)."""


class Status(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    error: str | None = None  # for RETRY/REJECTED: the sink's reason, e.g. "mapper_parsing_exception: ..."
    http_status: int | None = None


DELIVERED = Outcome(Status.DELIVERED)
ALREADY_STORED = Outcome(Status.DELIVERED, "already stored", 409)  # a re-send of a delivered record


class Sink(Protocol):
    name: str

    async def start(self) -> None:
        """Connect and prepare (install templates, create tables). May raise TemporaryError."""

    async def write(self, batch: Sequence[Record]) -> list[Outcome]: ...

    async def dead_letter(self, records: Sequence[Record], errors: Sequence[str | Outcome]) -> None: ...

    async def close(self) -> None: ...
