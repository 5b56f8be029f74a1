"""The collector process: source -> batcher -> bounded queue -> delivery workers -> sink, and checkpoints.

Backpressure: the queue between the batcher and the delivery workers holds at most ``queue_batches``
batches. When it is full, ``Batcher.add`` waits, which pauses the source's reading loop: a slow or dead
sink stops reading, it never drops lines. At most ``queue_batches + workers + 1`` batches are held, each
of at most ``batch_max_records`` records / ``batch_max_bytes`` bytes of lines (plus the chunk that filled
it); a record costs about 2.5x its line in memory and a request body about 3x.

Delivery (the one place that retries): a worker sends a batch; items answered delivered (2xx, 409) are
done, items answered retryable (429, 5xx) are re-sent alone with exponential backoff and jitter, other
rejected items are written to the dead-letter store (retried until it takes them). A batch is complete
only when every record in it is delivered or dead-lettered; only then may the files' checkpoints advance
(:class:`collector.acks.AckTracker`), and the checkpoint file is written every ``checkpoint_interval``.

Shutdown (SIGTERM): stop reading, cut the last batch, let the workers drain the queue for up to
``shutdown_timeout`` seconds, cancel what is still in flight (it was not acknowledged, so it is not
checkpointed and will be re-sent after the restart), write the checkpoints, close the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
from dataclasses import dataclass, field

from collector.acks import AckTracker
from collector.checkpoint import CheckpointStore
from collector.clock import Clock
from collector.config import CollectorConfig
from collector.metadata import PodMetadata
from collector.metrics import PipelineMetrics
from collector.record import Record
from collector.sinks.base import DELIVERED, Outcome, PermanentError, Sink, Status, TemporaryError
from collector.source import ContainerLogsSource

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Batch:
    id: int
    created: float
    records: list[Record] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)  # file key -> safe offset after this batch
    size: int = 0


class Batcher:
    """Groups records into batches cut by size, count or age, and queues them (waiting when full)."""

    def __init__(
        self,
        queue: asyncio.Queue[Batch],
        tracker: AckTracker,
        *,
        max_bytes: int,
        max_records: int,
        clock: Clock,
    ) -> None:
        self.queue = queue
        self.tracker = tracker
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.clock = clock
        self._next_id = 0
        self.current = self._new()

    def _new(self) -> Batch:
        self._next_id += 1
        return Batch(self._next_id, self.clock.monotonic())

    async def add(self, records: list[Record]) -> None:
        """Records of one file, in file order."""
        b = self.current
        if not b.records and not b.offsets:
            b.created = self.clock.monotonic()
        b.records.extend(records)
        b.size += sum(r.size for r in records)
        b.offsets[records[-1].file.key] = records[-1].ckpt
        if b.size >= self.max_bytes or len(b.records) >= self.max_records:
            await self.cut()

    async def advance(self, key: str, offset: int) -> None:
        """Progress of a file that produced no record (a file closed at its end)."""
        b = self.current
        if not b.records and not b.offsets:
            b.created = self.clock.monotonic()
        b.offsets[key] = max(offset, b.offsets.get(key, 0))

    def due(self, interval: float) -> bool:
        b = self.current
        return bool(b.records or b.offsets) and self.clock.monotonic() - b.created >= interval

    async def cut(self) -> None:
        b = self.current
        if not b.records and not b.offsets:
            return
        self.current = self._new()
        self.tracker.register(b.id, b.offsets, b.created)
        await self.queue.put(b)


class Delivery:
    """Sends batches to the sink; owns retries, backoff, dead-lettering and their metrics."""

    def __init__(self, sink: Sink, cfg: CollectorConfig, metrics: PipelineMetrics, clock: Clock) -> None:
        self.sink = sink
        self.name = sink.name
        self.initial = cfg.sink.retry_initial_backoff
        self.cap = cfg.sink.retry_max_backoff
        self.metrics = metrics
        self.clock = clock
        self.started = False
        self._start_lock = asyncio.Lock()
        self._last_error: str | None = None

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: base * 2^attempt, capped, scaled by a random [0.5, 1)."""
        delay: float = min(self.cap, self.initial * 2.0 ** min(attempt, 30))
        return delay * (0.5 + random.random() / 2)

    async def _sleep(self, attempt: int) -> None:
        await self._sleep_for(self.backoff(attempt))

    async def _sleep_for(self, delay: float) -> None:
        self.metrics.backoff.set(delay)
        # a failed request leaves reference cycles (client exceptions and their tracebacks) that hold its
        # body; with the raised GC thresholds (collector.cli.tune_gc) and little allocation while waiting
        # they would pile up through an outage: collect them now, while idle anyway (callers release the
        # exception first, or it would survive into the old generation)
        gc.collect()
        await asyncio.sleep(delay)

    def _trouble(self, what: str, err: Exception) -> None:
        text = f"{what}: {err}"
        if text != self._last_error:  # log each distinct problem once, not once per retry
            log.warning("%s (retrying with backoff)", text)
            self._last_error = text
        self.metrics.up.set(0)

    def _recovered(self) -> None:
        if self._last_error is not None:
            log.info("sink %s is delivering again", self.name)
            self._last_error = None
        self.metrics.up.set(1)

    async def ensure_started(self) -> None:
        attempt = 0
        async with self._start_lock:
            while not self.started:
                try:
                    await self.sink.start()
                    self.started = True
                    self._recovered()
                except (TemporaryError, PermanentError) as e:
                    # permanent (credentials, TLS): retrying alone will not fix it, but an operator might
                    hint = (
                        " (permanent: fix the configuration or the server)"
                        if isinstance(e, PermanentError)
                        else ""
                    )
                    self._trouble(f"cannot start sink {self.name}{hint}", e)
                if not self.started:  # outside the except block, see _sleep_for
                    await self._sleep(attempt)
                    attempt += 1

    async def deliver(self, batch: Batch) -> None:
        pending = batch.records
        attempt = 0
        m = self.metrics
        while pending:
            await self.ensure_started()
            t0 = self.clock.monotonic()
            wait: float | None = None  # set when the whole request failed
            try:
                outcomes = await self.sink.write(pending)
            except PermanentError as e:
                if e.status == 413 and len(pending) > 1:  # too large for the server: halve and go on
                    log.warning(
                        "sink %s: request too large (413); splitting a batch of %d", self.name, len(pending)
                    )
                    half = len(pending) // 2
                    await self.deliver(Batch(batch.id, batch.created, pending[:half]))
                    await self.deliver(Batch(batch.id, batch.created, pending[half:]))
                    return
                self._trouble(f"request to sink {self.name} failed permanently; fix and it resumes", e)
                wait = self.cap
            except TemporaryError as e:
                self._trouble(f"request to sink {self.name} failed", e)
                wait = self.backoff(attempt)
            if wait is not None:  # outside the except block: the exception is released before we wait
                m.bulk_requests.labels(self.name, "error").inc()
                m.retried.labels(self.name, "request_failed").inc(len(pending))
                await self._sleep_for(wait)
                attempt += 1
                continue
            m.bulk_duration.labels(self.name).observe(self.clock.monotonic() - t0)
            m.bulk_requests.labels(self.name, "ok").inc()
            self._recovered()
            if outcomes.count(DELIVERED) == len(pending):
                m.delivered.labels(self.name).inc(len(pending))
                m.backoff.set(0)
                return
            retry: list[Record] = []
            rejected: list[Record] = []
            errors: list[Outcome] = []
            delivered = conflicts = 0
            for rec, o in zip(pending, outcomes, strict=True):
                if o.status is Status.DELIVERED:
                    delivered += 1
                    if o.http_status == 409:
                        conflicts += 1
                elif o.status is Status.RETRY:
                    retry.append(rec)
                else:
                    rejected.append(rec)
                    errors.append(o)
            m.delivered.labels(self.name).inc(delivered)
            if conflicts:
                m.conflicts.labels(self.name).inc(conflicts)
            if rejected:
                await self._dead_letter(rejected, errors)
            if retry:
                m.retried.labels(self.name, "item").inc(len(retry))
                await self._sleep(attempt)
                attempt += 1
            else:
                m.backoff.set(0)
            pending = retry

    async def _dead_letter(self, records: list[Record], errors: list[Outcome]) -> None:
        attempt = 0
        for rec, err in zip(records, errors, strict=True):
            log.warning("dead-lettering %s offset %d: %s", rec.file.path, rec.offset, err.error)
        while True:
            try:
                await self.sink.dead_letter(records, errors)
            except (TemporaryError, PermanentError) as e:
                self._trouble(f"dead-letter store of sink {self.name} failed", e)
                failed = True
            else:
                failed = False
            if failed:  # outside the except block, see _sleep_for
                self.metrics.retried.labels(self.name, "dead_letter_failed").inc(len(records))
                await self._sleep(attempt)
                attempt += 1
                continue
            self.metrics.dead_lettered.labels(self.name).inc(len(records))
            return


class Pipeline:
    def __init__(
        self,
        cfg: CollectorConfig,
        sink: Sink,
        metrics: PipelineMetrics,
        clock: Clock,
    ) -> None:
        self.cfg = cfg
        self.sink = sink
        self.metrics = metrics
        self.clock = clock
        self.store = CheckpointStore(cfg.state_dir)
        self.tracker = AckTracker(self._on_ack)
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(cfg.queue_batches)
        self.batcher = Batcher(
            self.queue,
            self.tracker,
            max_bytes=cfg.sink.batch_max_bytes,
            max_records=cfg.sink.batch_max_records,
            clock=clock,
        )
        self.delivery = Delivery(sink, cfg, metrics, clock)
        self.metadata = PodMetadata(cfg.kubernetes, cfg.node_name, clock) if cfg.kubernetes else None
        self.sources = [
            ContainerLogsSource(
                s,
                node_name=cfg.node_name,
                store=self.store,
                metrics=metrics,
                clock=clock,
                emit=self.batcher.add,
                on_close=self._on_file_closed,
                on_skip=self.batcher.advance,
                metadata=self.metadata,
            )
            for s in cfg.sources
        ]
        self._finished: set[str] = set()
        self._ckpt_error: str | None = None
        self.reading = asyncio.Event()
        metrics.register_file_state(self)
        metrics.queue_batches.set_function(self.queue.qsize)

    # -- per-file state for /metrics -------------------------------------------------------------------
    def lag(self) -> list[tuple[str, int]]:
        return [x for s in self.sources for x in s.lag()]

    def backlog(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in self.sources:
            for state, n in s.backlog().items():
                total[state] = total.get(state, 0) + n
        return total

    def unacked_ages(self) -> list[tuple[str, float]]:
        now = self.clock.monotonic()
        current = self.batcher.current
        out = []
        for s in self.sources:
            for f in s.files():
                since = self.tracker.oldest(f.key)
                if since is None and f.key in current.offsets:
                    since = current.created
                if since is not None and not f.closed:
                    out.append((f.path, now - since))
        return out

    @property
    def ready(self) -> bool:
        return self.reading.is_set() and self.delivery.started

    def _on_ack(self, key: str, offset: int) -> None:
        self.store.advance(key, offset)
        if (
            key in self._finished
            and not self.tracker.in_flight(key)
            and key not in self.batcher.current.offsets
        ):
            self._finished.discard(key)
            self.store.remove(key)

    async def _on_file_closed(self, key: str, offset: int) -> None:
        self._finished.add(key)
        await self.batcher.advance(key, offset)

    def save_checkpoints(self) -> None:
        try:
            if self.store.save():
                self.metrics.checkpoint_writes.labels("ok").inc()
            self.metrics.state_dir_writable.set(1)
            if self._ckpt_error is not None:
                log.info("checkpoints are being written again to %s", self.store.path)
                self._ckpt_error = None
        except OSError as e:
            self.metrics.checkpoint_writes.labels("error").inc()
            self.metrics.state_dir_writable.set(0)
            if str(e) != self._ckpt_error:
                log.error(
                    "cannot write checkpoints to %s: %s (delivery goes on; will retry)", self.store.path, e
                )
                self._ckpt_error = str(e)

    async def _checkpointer(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.checkpoint_interval)
            self.save_checkpoints()

    async def _flusher(self) -> None:
        interval = self.cfg.sink.flush_interval
        while True:
            await asyncio.sleep(min(interval / 4, 0.25))
            if self.batcher.due(interval):
                await self.batcher.cut()

    async def _worker(self) -> None:
        while True:
            batch = await self.queue.get()
            try:
                await self.delivery.deliver(batch)
                self.tracker.complete(batch.id, list(batch.offsets))
            finally:
                self.queue.task_done()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain within ``shutdown_timeout`` and return."""
        async with asyncio.TaskGroup() as tg:
            helpers = [
                tg.create_task(self._worker(), name=f"deliver-{i}") for i in range(self.cfg.sink.workers)
            ]
            helpers.append(tg.create_task(self._flusher(), name="flusher"))
            helpers.append(tg.create_task(self._checkpointer(), name="checkpointer"))
            helpers.append(tg.create_task(self.delivery.ensure_started(), name="sink-start"))
            if self.metadata is not None and self.cfg.kubernetes is not None:
                helpers.append(tg.create_task(self.metadata.run(), name="kubernetes-metadata"))
                try:  # bounded: lines are shipped with file-name metadata rather than held
                    async with asyncio.timeout(self.cfg.kubernetes.sync_timeout):
                        await self.metadata.synced.wait()
                except TimeoutError:
                    log.warning(
                        "no pod list from the apiserver within %.0fs; shipping with file-name metadata "
                        "until it arrives",
                        self.cfg.kubernetes.sync_timeout,
                    )
            readers = [tg.create_task(s.run(stop), name=f"source-{i}") for i, s in enumerate(self.sources)]
            self.reading.set()
            await stop.wait()
            # a reader blocked on a full queue (sink behind) is cancelled: what it held was not batched,
            # so it is not checkpointed either and is read again after the restart
            _, blocked = await asyncio.wait(readers, timeout=1.0)
            for t in blocked:
                t.cancel()
            self.reading.clear()
            # drain from the front: readers are stopped, flush the last batch, let the sink catch up
            deadline = self.cfg.shutdown_timeout
            try:
                async with asyncio.timeout(deadline):
                    await self.batcher.cut()
                    await self.queue.join()
            except TimeoutError:
                log.warning(
                    "shutdown: %d batch(es) not delivered within %.1fs; they stay un-checkpointed and "
                    "will be re-sent after the restart",
                    self.queue.qsize() + 1,
                    deadline,
                )
            for t in helpers:
                t.cancel()
        for s in self.sources:
            s.close()
        self.save_checkpoints()
        with contextlib.suppress(Exception):
            await self.sink.close()
