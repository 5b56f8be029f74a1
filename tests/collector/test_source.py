"""The container_logs source on real files: discovery, rotation kinds, restart recovery, identity."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from collector.checkpoint import CheckpointStore
from collector.clock import SystemClock
from collector.config import ContainerLogsSource as SourceConfig
from collector.metrics import PipelineMetrics
from collector.record import Record
from collector.source import ContainerLogsSource

NAME = "app-0_ns_main-" + "d" * 64 + ".log"


def line(n: int) -> bytes:
    return f"2026-11-26T10:00:00.{n:09d}Z stdout F seq={n}\n".encode()


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self.state = tmp / "state"
        self.records: list[Record] = []
        self.closed: list[tuple[str, int]] = []
        self.store = CheckpointStore(self.state)
        self.metrics = PipelineMetrics(CollectorRegistry())
        cfg = SourceConfig(
            paths=[str(self.logs / "*.log")], rescan_interval=0.1, poll_interval=0.05, rotate_wait=0.2
        )
        self.source = ContainerLogsSource(
            cfg,
            node_name="n",
            store=self.store,
            metrics=self.metrics,
            clock=SystemClock(),
            emit=self._emit,
            on_close=self._on_close,
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.gate = asyncio.Event()  # cleared: emit blocks, like a sink that is behind
        self.gate.set()

    async def _emit(self, recs: list[Record]) -> None:
        self.records.extend(recs)
        await self.gate.wait()

    async def _on_close(self, key: str, offset: int) -> None:
        self.closed.append((key, offset))

    def seqs(self) -> list[int]:
        return [int(r.message.split("=")[1]) for r in self.records]

    async def wait_for(self, n: int, within: float = 10) -> None:
        async with asyncio.timeout(within):
            while len(self.records) < n:  # noqa: ASYNC110 - polling a plain list the source appends to
                await asyncio.sleep(0.02)

    def start(self) -> None:
        self.task = asyncio.create_task(self.source.run(self.stop))

    async def shutdown(self, ack_all: bool = True) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task
        if ack_all:  # pretend the sink acknowledged everything emitted
            for r in self.records:
                self.store.advance(r.file.key, r.ckpt)
        self.store.save()
        self.source.close()


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    if harness.task is not None and not harness.task.done():
        await harness.shutdown()


def append(path: Path, start: int, stop: int) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line(i) for i in range(start, stop)))


async def test_rename_rotation_reads_old_file_to_its_end(h: Harness) -> None:
    p = h.logs / NAME
    append(p, 0, 100)
    h.start()
    await h.wait_for(100)
    append(p, 100, 150)  # written just before the rotation
    os.rename(p, h.logs / (NAME + ".20261126-100000"))
    append(p, 150, 200)  # the new file
    append(h.logs / (NAME + ".20261126-100000"), 200, 210)  # late write to the old file by its writer
    await h.wait_for(210)
    await asyncio.sleep(0.5)
    assert sorted(h.seqs()) == list(range(210))
    assert len({(r.file.key, r.offset) for r in h.records}) == 210
    assert h.metrics.rotations.labels("rename")._value.get() == 1
    assert len(h.closed) == 1  # the old file was closed after rotate_wait


async def test_copytruncate_reads_unread_rest_from_the_copy(h: Harness) -> None:
    p = h.logs / NAME
    append(p, 0, 50)
    h.start()
    await h.wait_for(50)
    h.gate.clear()  # the sink falls behind: the source blocks after its next read
    append(p, 50, 60)
    await h.wait_for(60)
    append(p, 60, 120)  # not read yet when the file is copy-truncated
    shutil.copyfile(p, h.logs / (NAME + ".1"))
    os.truncate(p, 0)
    append(p, 120, 130)
    h.gate.set()
    await h.wait_for(130)
    await asyncio.sleep(0.3)
    assert sorted(h.seqs()) == list(range(130))
    first_key = h.records[0].file.key
    assert {r.file.key for r in h.records if int(r.message.split("=")[1]) < 120} == {first_key}


async def test_copytruncate_then_rename_before_the_next_read_loses_nothing(h: Harness) -> None:
    """A writer faster than the reader: copy-truncated, rewritten and renamed away (a kubelet rotation)
    before the source looks again. The rewritten content is only in the renamed file; the path leads to
    the next file."""
    p = h.logs / NAME
    append(p, 0, 50)
    h.start()
    await h.wait_for(50)
    h.gate.clear()
    append(p, 50, 60)
    await h.wait_for(60)
    append(p, 60, 120)
    shutil.copyfile(p, h.logs / (NAME + ".copy.1"))
    os.truncate(p, 0)
    append(p, 120, 300)
    os.rename(p, h.logs / (NAME + ".20261126-100000"))
    append(p, 300, 330)
    h.gate.set()
    await h.wait_for(330)
    await asyncio.sleep(0.5)
    assert sorted(h.seqs()) == list(range(330))


async def test_truncate_without_copy_restarts_from_head(h: Harness) -> None:
    p = h.logs / NAME
    append(p, 0, 20)
    h.start()
    await h.wait_for(20)
    os.truncate(p, 0)
    append(p, 20, 25)
    await h.wait_for(25)
    assert sorted(h.seqs()) == list(range(25))


async def test_deleted_file_is_read_to_its_end(h: Harness) -> None:
    p = h.logs / NAME
    append(p, 0, 10)
    h.start()
    await h.wait_for(10)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.unlink(p)
    os.write(fd, b"".join(line(i) for i in range(10, 20)))
    os.close(fd)
    await h.wait_for(20)
    assert sorted(h.seqs()) == list(range(20))


async def test_new_file_picked_up_quickly(h: Harness) -> None:
    h.start()
    await asyncio.sleep(0.2)
    append(h.logs / NAME, 0, 3)
    await h.wait_for(3, within=2)


async def test_restart_resumes_from_checkpoint_and_finds_file_rotated_while_down(tmp_path: Path) -> None:
    p = tmp_path / "logs"
    h1 = Harness(tmp_path)
    append(h1.logs / NAME, 0, 100)
    h1.start()
    await h1.wait_for(100)
    await h1.shutdown()
    # while stopped: more lines, a rename rotation, lines in the new file
    append(p / NAME, 100, 130)
    os.rename(p / NAME, p / (NAME + ".20261126-110000"))
    append(p / NAME, 130, 140)
    h2 = Harness(tmp_path)
    h2.start()
    await h2.wait_for(40)
    await asyncio.sleep(0.3)
    await h2.shutdown()
    assert sorted(h2.seqs()) == list(range(100, 140))
    # the rotated file's records keep the identity (and so the _id prefix) they had before the restart
    old_ids = {r.file.id_prefix for r in h1.records}
    assert {r.file.id_prefix for r in h2.records if int(r.message.split("=")[1]) < 130} == old_ids


async def test_restart_after_copytruncate_while_down_reads_the_copy(tmp_path: Path) -> None:
    p = tmp_path / "logs"
    h1 = Harness(tmp_path)
    append(p / NAME, 0, 30)
    h1.start()
    await h1.wait_for(30)
    await h1.shutdown()
    append(p / NAME, 30, 60)
    shutil.copyfile(p / NAME, p / (NAME + ".1"))
    os.truncate(p / NAME, 0)
    append(p / NAME, 60, 70)
    h2 = Harness(tmp_path)
    h2.start()
    await h2.wait_for(40)
    await asyncio.sleep(0.3)
    await h2.shutdown()
    assert sorted(h2.seqs()) == list(range(30, 70))


async def test_unacknowledged_lines_are_read_again_after_restart(tmp_path: Path) -> None:
    h1 = Harness(tmp_path)
    append(h1.logs / NAME, 0, 50)
    h1.start()
    await h1.wait_for(50)
    for r in h1.records[:20]:  # the sink acknowledged only the first 20
        h1.store.advance(r.file.key, r.ckpt)
    await h1.shutdown(ack_all=False)
    h2 = Harness(tmp_path)
    h2.start()
    await h2.wait_for(30)
    await h2.shutdown()
    assert h2.seqs() == list(range(20, 50))
    assert [r.id for r in h2.records] == [r.id for r in h1.records[20:]]


async def test_namespace_include_exclude_skips_lines_but_advances(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    skipped: list[tuple[str, int]] = []
    got_skip = asyncio.Event()

    async def on_skip(key: str, offset: int) -> None:
        skipped.append((key, offset))
        got_skip.set()

    h.source.cfg = h.source.cfg.model_copy(update={"exclude_namespaces": ["kube-*"]})
    h.source.on_skip = on_skip
    append(h.logs / NAME, 0, 5)  # namespace "ns": shipped
    other = h.logs / ("dns-0_kube-system_coredns-" + "e" * 64 + ".log")
    append(other, 100, 110)
    h.start()
    await h.wait_for(5)
    async with asyncio.timeout(10):
        await got_skip.wait()
    await h.shutdown()
    assert h.seqs() == list(range(5))
    assert skipped[-1][1] == other.stat().st_size  # the excluded file's checkpoint still advances
    assert h.metrics.excluded._value.get() == 10


async def test_multiline_traces_joined_and_quiet_container_flushed(tmp_path: Path) -> None:
    from collector.config import MultilineRule

    h = Harness(tmp_path)
    h.source.cfg = h.source.cfg.model_copy(update={"multiline": [MultilineRule(rules="python", timeout=0.3)]})
    ts = "2026-11-26T10:00:00.000000001Z"
    trace = [
        "Traceback (most recent call last):",
        '  File "/app/main.py", line 3, in <module>',
        "    main()",
        "ValueError: boom",
    ]
    content = f"{ts} stdout F seq=0\n" + "".join(f"{ts} stderr F {line}\n" for line in trace)
    content += f"{ts} stderr F Traceback (most recent call last):\n"  # a quiet container's last words
    content += f'{ts} stderr F   File "x.py", line 1, in <module>\n'
    (h.logs / NAME).write_text(content)
    h.start()
    await h.wait_for(3)  # seq=0, the first trace, and (after the 0.3 s timeout) the unfinished one
    await h.shutdown()
    assert [r.message for r in h.records][:2] == ["seq=0", "\n".join(trace)]
    assert h.records[1].offset == len(f"{ts} stdout F seq=0\n")
    assert h.records[2].message.startswith("Traceback") and h.records[2].message.count("\n") == 1
