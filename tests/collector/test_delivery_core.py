"""The delivery core without a network: ack ordering, batching, per-item retries, dead letters, 413 split.

The real-server versions of these behaviours are in tests/e2e; these pin down the rules exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from collector.acks import AckTracker
from collector.checkpoint import CheckpointStore, Entry
from collector.clock import SystemClock
from collector.config import CollectorConfig, SqliteSink
from collector.metrics import PipelineMetrics
from collector.pipeline import Batch, Batcher, Delivery
from collector.record import FileInfo, Record
from collector.sinks.base import DELIVERED, Outcome, PermanentError, Status, TemporaryError


def test_ack_tracker_advances_only_over_contiguous_completed_batches() -> None:
    advanced: list[tuple[str, int]] = []
    t = AckTracker(lambda k, o: advanced.append((k, o)))
    t.register(1, {"a": 10, "b": 5})
    t.register(2, {"a": 20})
    t.register(3, {"a": 30, "b": 15})
    t.complete(3, ["a", "b"])
    t.complete(2, ["a"])
    assert advanced == []  # batch 1 is still in flight
    t.complete(1, ["a", "b"])
    assert advanced == [("a", 30), ("b", 15)]
    assert not t.in_flight("a") and len(t) == 0


def rec(i: int, key: str = "k") -> Record:
    return Record(
        FileInfo(key, "/p", "x"), i * 10, i * 10 + 10, "2026-11-26T10:00:00Z", "stdout", f"m{i}", 10
    )


async def test_batcher_cuts_by_size_and_registers_offsets() -> None:
    q: asyncio.Queue[Batch] = asyncio.Queue()
    done: list[tuple[str, int]] = []
    t = AckTracker(lambda k, o: done.append((k, o)))
    b = Batcher(q, t, max_bytes=1000, max_records=3, clock=SystemClock())
    await b.add([rec(0), rec(1)])
    assert q.empty()
    await b.add([rec(2), rec(3)])  # 4 >= 3 records: cut
    batch = q.get_nowait()
    assert [r.message for r in batch.records] == ["m0", "m1", "m2", "m3"] and batch.offsets == {"k": 40}
    await b.advance("k2", 99)
    await b.cut()
    assert q.get_nowait().offsets == {"k2": 99}


class ScriptedSink:
    name = "scripted"

    def __init__(self, script: list[object]) -> None:
        self.script = script  # per call: list of statuses or an exception
        self.calls: list[list[str]] = []
        self.dead: list[tuple[str, str | Outcome]] = []

    async def start(self) -> None:
        pass

    async def write(self, batch: Sequence[Record]) -> list[Outcome]:
        self.calls.append([r.message for r in batch])
        step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        if step is None:
            return [DELIVERED] * len(batch)
        assert isinstance(step, list)
        return [s if isinstance(s, Outcome) else DELIVERED for s in step]

    async def dead_letter(self, records: Sequence[Record], errors: Sequence[str | Outcome]) -> None:
        self.dead.extend((r.message, e) for r, e in zip(records, errors, strict=True))

    async def close(self) -> None:
        pass


def delivery(sink: ScriptedSink) -> tuple[Delivery, PipelineMetrics]:
    cfg = CollectorConfig(sink=SqliteSink(type="sqlite", retry_initial_backoff=0.001, retry_max_backoff=0.01))
    metrics = PipelineMetrics(CollectorRegistry())
    return Delivery(sink, cfg, metrics, SystemClock()), metrics


async def test_only_failed_items_are_retried_and_rejected_ones_dead_lettered() -> None:
    retry = Outcome(Status.RETRY, "es_rejected_execution_exception", 429)
    reject = Outcome(Status.REJECTED, "mapper_parsing_exception: bad", 400)
    sink = ScriptedSink([[None, retry, reject, None], [retry], None])
    d, m = delivery(sink)
    await d.deliver(Batch(1, 0.0, [rec(i) for i in range(4)]))
    assert sink.calls == [["m0", "m1", "m2", "m3"], ["m1"], ["m1"]]
    assert sink.dead == [("m2", reject)]
    assert m.delivered.labels("scripted")._value.get() == 3
    assert m.dead_lettered.labels("scripted")._value.get() == 1
    assert m.retried.labels("scripted", "item")._value.get() == 2


async def test_whole_request_failures_retry_the_same_records() -> None:
    sink = ScriptedSink([TemporaryError("connection refused"), TemporaryError("503", 503), None])
    d, m = delivery(sink)
    await d.deliver(Batch(1, 0.0, [rec(0), rec(1)]))
    assert sink.calls == [["m0", "m1"]] * 3
    assert m.retried.labels("scripted", "request_failed")._value.get() == 4


async def test_413_splits_the_batch() -> None:
    sink = ScriptedSink([PermanentError("too large", 413), None, None])
    d, _ = delivery(sink)
    await d.deliver(Batch(1, 0.0, [rec(i) for i in range(4)]))
    assert sink.calls == [["m0", "m1", "m2", "m3"], ["m0", "m1"], ["m2", "m3"]]


def test_backoff_grows_and_is_capped() -> None:
    d, _ = delivery(ScriptedSink([]))
    d.initial, d.cap = 0.5, 30.0
    waits = [d.backoff(a) for a in range(10)]
    assert 0.25 <= waits[0] <= 0.5 and 8 <= waits[5] <= 16 and all(w <= 30 for w in waits)


def test_checkpoint_store_is_atomic_and_survives_corruption(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.set("k", Entry("/p", "/p", 1, 2, "ff", 0))
    store.advance("k", 100)
    assert store.save() and not store.save()  # nothing changed: no write
    again = CheckpointStore(tmp_path)
    assert again.load()["k"].offset == 100
    again.path.write_text("{not json")
    third = CheckpointStore(tmp_path)
    assert third.load() == {}
    assert again.path.with_suffix(".corrupt").exists()
