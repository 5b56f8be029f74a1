"""Delivery under faults (issue 3): the real collector, the log writer and the fault-injecting proxy.

Each test scripts one fault (per-item 429s, connections dropped after indexing, an outage while the
kubelet rotates, a backlog beyond what the kubelet keeps, an unavailable dead-letter index, a full or
read-only ``state_dir``, a slow Elasticsearch) and checks, through the ``seq=<pod>:<n>`` markers, that
every line arrived exactly once, or, where lines are lost on purpose, that every loss was counted.

The proxy rewrites *responses* (osmem has indexed the documents already), so tests that need to know
when the collector is done wait on its metrics, not on the index count.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from tests.e2e.harness import (
    check_exactly_once,
    collector_config,
    es_count,
    es_docs,
    finish_writer,
    start_writer,
    wait_until,
)
from tests.support.collector_proc import CollectorProcess
from tests.support.diskfault import faulty_filesystem
from tests.support.logwriter import container_id, log_file_name, parse_seq
from tests.support.servers import EsServer

pytestmark = pytest.mark.slow

INDEX = "logs-flt-%Y.%m.%d"
PATTERN = "logs-flt-*"
DEAD_LETTER = "kubeobs-deadletter-flt"
ES = 'sink="elasticsearch"'
DELIVERED = f"kubeobs_collector_records_delivered_total{{{ES}}}"
RETRIED_ITEM = f'kubeobs_collector_records_retried_total{{reason="item",{ES}}}'
RETRIED_REQUEST = f'kubeobs_collector_records_retried_total{{reason="request_failed",{ES}}}'
RETRIED_DEAD_LETTER = f'kubeobs_collector_records_retried_total{{reason="dead_letter_failed",{ES}}}'
CONFLICTS = f"kubeobs_collector_records_conflicts_total{{{ES}}}"
DEAD_LETTERED = f"kubeobs_collector_records_dead_lettered_total{{{ES}}}"
BACKOFF = "kubeobs_collector_retry_backoff_seconds"
SINK_UP = "kubeobs_collector_sink_up"
BACKLOG = "kubeobs_collector_backlog_bytes"
WRITABLE = "kubeobs_collector_state_dir_writable"
CKPT_ERRORS = 'kubeobs_collector_checkpoint_writes_total{result="error"}'
DROPPED = "kubeobs_collector_records_dropped_total"
MB = 1024 * 1024


@pytest.fixture
def es(es_server: EsServer) -> Iterator[Elasticsearch]:
    client = Elasticsearch(es_server.url, request_timeout=120)
    yield client
    client.close()


def sink(server: EsServer, **extra: Any) -> dict[str, Any]:
    return {
        "type": "elasticsearch",
        "hosts": [server.url],
        "index": INDEX,
        "dead_letter_index": DEAD_LETTER,
        **extra,
    }


def expected(summary: dict[str, Any]) -> dict[str, int]:
    return {pod: info["lines"] for pod, info in summary["pods"].items()}


def messages(es: Elasticsearch) -> list[str]:
    return [d["message"] for d in es_docs(es, PATTERN, ["message"])]


@contextlib.contextmanager
def running(collector: CollectorProcess, *writers: subprocess.Popen[bytes]) -> Iterator[None]:
    """Stops the collector and kills unfinished writers however the block ends."""
    try:
        yield
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
        collector.stop()


def wait_delivered(collector: CollectorProcess, total: int, timeout: float) -> None:
    wait_until(
        f"{total} records acknowledged",
        lambda: collector.metrics().get(DELIVERED, 0) >= total,
        timeout,
        lambda: f"{collector.metrics().get(DELIVERED, 0):.0f}/{total}; {collector.stderr()[-3000:]}",
    )


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class Sampler:
    """Calls ``probe`` every ``interval`` seconds in a thread; ``samples`` are ``(monotonic, value)``."""

    def __init__(self, probe: Callable[[], float], interval: float) -> None:
        self.probe = probe
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.probe()))
            except Exception as e:  # reported by between(), never swallowed
                self.errors.append(e)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def between(self, start: float, end: float) -> list[float]:
        assert not self.errors, f"sampling failed: {self.errors[:3]}"
        return [v for t, v in self.samples if start <= t <= end]


def checkpoint_offsets(state: Path) -> dict[str, int]:
    """``path -> offset`` from the checkpoint file (the paths of several entries may repeat: summed)."""
    data = json.loads((state / "checkpoints.json").read_text())
    out: dict[str, int] = {}
    for entry in data["files"].values():
        out[entry["path"]] = out.get(entry["path"], 0) + entry["offset"]
    return out


# --- a. per-item 429s -----------------------------------------------------------------------------------


def test_item_429s_for_two_minutes_retry_only_those_items_with_growing_backoff(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    # batches of ~1000 records (2 s of logging); 20% of every response rejected, re-sends included
    # (include_conflicts), so a batch's retry chain is 1000 -> 200 -> 40 -> 8 -> 1 and its backoff
    # climbs 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.8-1.6 s (initial 0.2 s, doubling, jitter 0.5-1)
    cfg = collector_config(
        logs,
        tmp_path / "state",
        sink(es_server, flush_interval=2.0, retry_initial_backoff=0.2, retry_max_backoff=5.0),
    )
    collector = CollectorProcess(tmp_path, cfg)
    collector.start()
    es_server.set_faults(
        [
            {
                "action": "bulk_items",
                "status": 429,
                "fraction": 0.2,
                "include_conflicts": True,
                "path_regex": "_bulk",
            }
        ]
    )
    writer = start_writer(logs, pods=3, lines=21_000, format="mixed", rate=500, seed=31)
    with running(collector, writer):
        backoff: list[float] = []
        window_end = time.monotonic() + 120
        while time.monotonic() < window_end:
            backoff.append(collector.metrics().get(BACKOFF, 0.0))
            time.sleep(0.5)
        es_server.clear_faults()
        want = expected(finish_writer(writer))
        total = sum(want.values())
        wait_delivered(collector, total, 180)
        wait_until(
            "the backoff gauge back at 0",
            lambda: collector.metrics()[BACKOFF] == 0,
            30,
            lambda: f"{collector.metrics()[BACKOFF]}",
        )
        m = collector.metrics()
        stats = es_server.stats()
        assert collector.terminate() == 0

    nonzero = [b for b in backoff if b > 0]
    assert len(nonzero) >= 20, f"the backoff gauge was rarely non-zero during the fault: {backoff}"
    assert any(0 < a < b for a, b in itertools.pairwise(backoff)), backoff
    # attempt 3 or later of a chain was reached (its delay is 0.8-1.6 s), and attempt 0's (0.1-0.2 s)
    assert max(nonzero) > 0.8, f"backoff never grew past its third step: {sorted(set(nonzero))}"
    assert min(nonzero) < 0.25, sorted(set(nonzero))
    # only the rejected items were retried: one retry per rewritten item, and every document the proxy
    # forwarded is either a first send or the re-send of a rejected item
    assert stats["items_rewritten"] > 0
    assert m[RETRIED_ITEM] == stats["items_rewritten"], (m[RETRIED_ITEM], stats)
    assert stats["bulk_docs"] == total + stats["items_rewritten"], (total, stats)
    assert m.get(RETRIED_REQUEST, 0) == 0
    # every record acknowledged once; the re-sends of rejected-but-stored items were 409s
    assert m[DELIVERED] == total
    assert 0 < m[CONFLICTS] <= stats["items_rewritten"]
    assert not any(k.startswith(DROPPED + "{") and v for k, v in m.items())
    assert es_count(es, PATTERN) == total
    check_exactly_once(messages(es), want)


# --- b. connection dropped after indexing ---------------------------------------------------------------


def test_connection_dropped_after_indexing_resend_is_idempotent(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    collector = CollectorProcess(tmp_path, collector_config(logs, tmp_path / "state", sink(es_server)))
    collector.start()
    writer = start_writer(logs, pods=3, lines=6000, format="mixed", rate=1000, seed=32)
    with running(collector, writer):
        # three times, one request at a time: the next drop is armed only once the re-send of the
        # previous one was answered, so no re-send is itself dropped (its 409s would go unheard)
        for k in range(1, 4):
            conflicts = collector.metrics().get(CONFLICTS, 0)
            es_server.set_faults([{"action": "drop_after", "path_regex": "_bulk", "times": 1}])
            wait_until(
                f"drop {k} to happen",
                lambda k=k: es_server.stats()["faults_by_action"].get("drop_after", 0) == k,
                30,
                lambda: f"{es_server.stats()}",
            )
            wait_until(
                f"the re-send after drop {k} answered with 409s",
                lambda c=conflicts: collector.metrics().get(CONFLICTS, 0) > c,
                30,
                lambda: collector.stderr()[-2000:],
            )
        want = expected(finish_writer(writer))
        total = sum(want.values())
        wait_delivered(collector, total, 120)
        m = collector.metrics()
        stats = es_server.stats()
        assert collector.terminate() == 0

    assert stats["faults_by_action"] == {"drop_after": 3}, stats
    assert m[RETRIED_REQUEST] > 0
    # everything the collector re-sent had been indexed already: each re-sent document was a 409
    resent = stats["bulk_docs"] - total
    assert resent > 0, stats
    assert m[CONFLICTS] == resent, (m[CONFLICTS], stats)
    assert m[DELIVERED] == total  # counted once each, the 409s included
    assert es_count(es, PATTERN) == total
    check_exactly_once(messages(es), want)


# --- c, d. outage while the kubelet rotates -------------------------------------------------------------

LINE_BYTES = 2000  # big lines: 10 MB files rotate often while osmem indexes few documents
OUTAGE_RATE = 210  # lines/s over 3 pods: 140 kB/s per pod, a 10 MB rotation every ~70 s per pod
LEAD_IN = 15.0  # seconds of normal delivery before the outage, and of logging after it


def run_outage(
    tmp_path: Path,
    es_server: EsServer,
    *,
    outage: float,
    rotate_bytes: int,
    keep: int,
    source_extra: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Log steadily for LEAD_IN + outage + LEAD_IN seconds with Elasticsearch refusing connections in
    the middle; returns what was observed (writer summary, samples, final metrics, stderr)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = collector_config(logs, tmp_path / "state", sink(es_server))
    cfg["sources"][0].update(source_extra)
    collector = CollectorProcess(tmp_path, cfg)
    collector.start()
    assert collector.proc is not None
    pid = collector.proc.pid
    per_pod = int(OUTAGE_RATE * (2 * LEAD_IN + outage) / 3)
    writer = start_writer(
        logs,
        pods=3,
        lines=per_pod,
        format="mixed",
        line_bytes=LINE_BYTES,
        rate=OUTAGE_RATE,
        rotate_bytes=rotate_bytes,
        keep=keep,
        seed=seed,
    )
    during: list[dict[str, float]] = []
    with running(collector, writer), Sampler(lambda: rss_bytes(pid), 1.0) as rss:
        time.sleep(LEAD_IN)
        es_server.set_faults([{"action": "refuse"}])
        start = time.monotonic()
        while time.monotonic() < start + outage:
            m = collector.metrics()
            during.append({"t": time.monotonic() - start} | m)
            time.sleep(2.0)
        end = time.monotonic()
        es_server.clear_faults()
        summary = finish_writer(writer)
        total = sum(expected(summary).values())

        def dropped() -> float:
            return sum(v for k, v in collector.metrics().items() if k.startswith(DROPPED + "{"))

        wait_until(
            "every line not reported dropped acknowledged",
            lambda: collector.metrics().get(DELIVERED, 0) + dropped() >= total,
            240,
            lambda: (
                f"{collector.metrics().get(DELIVERED, 0):.0f} + {dropped():.0f} dropped / {total}; "
                f"{collector.stderr()[-3000:]}"
            ),
        )
        time.sleep(2 * cfg["checkpoint_interval"] + 1)  # nothing more arrives late
        after = collector.metrics()
        assert collector.terminate() == 0
    return {
        "summary": summary,
        "rss_first_minute": rss.between(start, start + 60),
        "rss_last_minute": rss.between(end - 60, end),
        "during": during,
        "after": after,
        "stderr": collector.stderr(),
    }


def test_three_minute_outage_while_kubelet_rotates_every_line_arrives_memory_bounded(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    seen = run_outage(
        tmp_path, es_server, outage=180, rotate_bytes=10_000_000, keep=5, source_extra={}, seed=33
    )
    summary = seen["summary"]
    rotations = {pod: len(info["rotated"]) for pod, info in summary["pods"].items()}
    assert all(n >= 2 for n in rotations.values()), f"the kubelet rotated too little: {rotations}"
    assert not any(info["deleted"] for info in summary["pods"].values())  # 5 kept: all still on disk

    after = seen["after"]
    want = expected(summary)
    total = sum(want.values())
    assert after[DELIVERED] == total
    assert not any(k.startswith(DROPPED + "{") and v for k, v in after.items())
    assert es_count(es, PATTERN) == total
    check_exactly_once(messages(es), want)

    settled = [s for s in seen["during"] if s["t"] >= 10]  # the first request has failed by then
    assert settled and all(s[SINK_UP] == 0 for s in settled), [(s["t"], s[SINK_UP]) for s in settled]
    assert after[SINK_UP] == 1
    backlog = [sum(v for k, v in s.items() if k.startswith(BACKLOG + "{")) for s in settled]
    assert max(backlog) > 0, backlog
    assert settled[-1][f'{BACKLOG}{{state="rotated"}}'] > 0  # rotated files wait, unread, on disk

    # what an operator lives with during the outage, reported together (each is independent)
    problems = []
    # each state change logged once, not once per retry (an outage is a few hundred failed requests)
    noisy = [line for line in seen["stderr"].splitlines() if " WARNING " in line or " ERROR " in line]
    if len(noisy) > 20:
        problems.append(f"{len(noisy)} warnings/errors logged during one outage, e.g. {noisy[-2:]}")
    first, last = seen["rss_first_minute"], seen["rss_last_minute"]
    assert len(first) >= 50 and len(last) >= 50, (len(first), len(last))
    if max(last) > max(first) + 15 * MB:
        problems.append(
            f"RSS grew during the outage: first minute max {max(first) / MB:.1f} MB, "
            f"last minute max {max(last) / MB:.1f} MB"
        )
    assert not problems, "\n".join(problems)


def test_backlog_beyond_what_the_kubelet_keeps_is_counted_as_dropped(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    # one rotated file kept by the kubelet, one deleted file held open by the collector: a 2-minute
    # outage rotates each pod's 3 MB file ~6 times, so older deleted files must be let go
    seen = run_outage(
        tmp_path,
        es_server,
        outage=120,
        rotate_bytes=3_000_000,
        keep=1,
        source_extra={"max_deleted_files": 1},
        seed=34,
    )
    summary, after = seen["summary"], seen["after"]
    deleted_files = sum(len(info["deleted"]) for info in summary["pods"].values())
    assert deleted_files >= 6, f"the kubelet deleted too little to exceed the limit: {deleted_files}"
    dropped_lines = sum(v for k, v in after.items() if k.startswith(DROPPED + "{"))
    assert (
        after.get(f'{DROPPED}{{reason="deleted_file_limit"}}', 0) > 0
        or after.get("kubeobs_collector_files_lost_total", 0) > 0
    ), {k: v for k, v in after.items() if "dropped" in k or "lost" in k}

    want = expected(summary)
    seen_seq: Counter[tuple[str, int]] = Counter()
    for msg in messages(es):
        s = parse_seq(msg)
        assert s is not None, msg[:120]
        seen_seq[s] += 1
    dups = [k for k, c in seen_seq.items() if c > 1]
    assert not dups, f"{len(dups)} lines duplicated, e.g. {sorted(dups)[:5]}"
    wanted = {(pod, n) for pod, count in want.items() for n in range(count)}
    extra = set(seen_seq) - wanted
    assert not extra, sorted(extra)[:5]
    missing = wanted - set(seen_seq)
    assert missing, "nothing was lost although the kubelet deleted unread files beyond the limit"
    assert len(missing) <= dropped_lines, (
        f"{len(missing)} lines missing but only {dropped_lines:.0f} reported dropped: silent loss"
    )
    assert len(missing) == dropped_lines, f"{dropped_lines:.0f} reported dropped, {len(missing)} missing"
    # the collector acknowledged exactly what arrived
    assert after[DELIVERED] == len(wanted) - len(missing)
    # logged, once per let-go file (never per line or per retry)
    let_go = re.findall(r"letting go of deleted file", seen["stderr"])
    assert 0 < len(let_go) <= deleted_files, len(let_go)


# --- e. dead-letter index unavailable -------------------------------------------------------------------


def test_dead_letter_index_down_keeps_the_poison_line_unacknowledged(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    state = tmp_path / "state"
    path = logs / log_file_name("app-0", "e2e", "app", container_id(35, "app-0"))

    def good(start: int, n: int) -> bytes:
        return b"".join(
            f"2026-11-26T10:00:{i % 60:02d}.{i:09d}Z stdout F seq=app-0:{i} good line\n".encode()
            for i in range(start, start + n)
        )

    path.write_bytes(good(0, 1000))
    collector = CollectorProcess(tmp_path, collector_config(logs, state, sink(es_server)))
    collector.start()
    with running(collector):
        wait_delivered(collector, 1000, 60)
        poison_at = path.stat().st_size
        wait_until(
            "the first 1000 lines checkpointed",
            lambda: checkpoint_offsets(state).get(str(path)) == poison_at,
            30,
            lambda: f"{checkpoint_offsets(state)}",
        )
        es_server.set_faults(
            [{"action": "status", "status": 503, "path_regex": "_bulk", "body_regex": "kubeobs-deadletter"}]
        )
        # a day that does not exist: the server rejects the document with 400 (date_nanos mapping)
        with open(path, "ab") as f:
            f.write(b"2026-02-31T10:00:00.000000001Z stdout F poison line\n" + good(1000, 1000))
        wait_until(
            "the dead-letter store failing",
            lambda: collector.metrics().get(RETRIED_DEAD_LETTER, 0) >= 3,
            60,
            lambda: collector.stderr()[-3000:],
        )
        # the lines after the poison one are delivered (the pipeline does not stall behind it) ...
        wait_delivered(collector, 2000, 60)
        # ... but the checkpoint stays before the poison line while it is not stored anywhere
        for _ in range(10):
            assert checkpoint_offsets(state).get(str(path)) == poison_at
            time.sleep(0.5)
        m = collector.metrics()
        assert m.get(DEAD_LETTERED, 0) == 0
        assert es_server.stats()["faults_by_action"].get("status", 0) >= 3
        es_server.clear_faults()
        end = path.stat().st_size
        wait_until(
            "the poison line dead-lettered and checkpointed",
            lambda: checkpoint_offsets(state).get(str(path)) == end,
            60,
            lambda: f"{checkpoint_offsets(state)}; {collector.stderr()[-3000:]}",
        )
        m = collector.metrics()
        assert collector.terminate() == 0

    assert m[DEAD_LETTERED] == 1
    assert m[DELIVERED] == 2000
    (dead,) = es_docs(es, DEAD_LETTER)
    assert dead["message"] == "poison line"
    assert "mapper_parsing_exception" in str(dead["error"])
    check_exactly_once(messages(es), {"app-0": 2000})


# --- f. state_dir full, then read-only ------------------------------------------------------------------


def test_state_dir_full_then_read_only_delivery_goes_on_and_checkpoints_resume(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    state = tmp_path / "state"
    collector = CollectorProcess(tmp_path, collector_config(logs, state, sink(es_server)))
    collector.start()
    writer = start_writer(logs, pods=3, lines=9000, format="mixed", rate=300, seed=36)
    with running(collector, writer):
        wait_until("a first checkpoint", lambda: (state / "checkpoints.json").exists(), 30, collector.stderr)
        time.sleep(3)
        with faulty_filesystem(state) as disk:
            for fault in ("full", "read-only"):
                if fault == "full":
                    disk.fill()
                else:
                    disk.restore()
                    disk.make_readonly()
                wait_until(
                    f"the collector to notice the {fault} state_dir",
                    lambda: collector.metrics()[WRITABLE] == 0,
                    15,
                    lambda: f"{collector.metrics()[WRITABLE]}; {collector.stderr()[-2000:]}",
                )
                errors_before = collector.metrics()[CKPT_ERRORS]
                delivered_before = collector.metrics()[DELIVERED]
                time.sleep(5)
                m = collector.metrics()
                assert m[WRITABLE] == 0, fault
                assert m[CKPT_ERRORS] > errors_before, fault  # it keeps trying
                assert m[DELIVERED] > delivered_before + 500, f"delivery stalled on a {fault} state_dir"
            stale = sum(checkpoint_offsets(state).values())
            disk.restore()
            wait_until(
                "checkpoints written again",
                lambda: (
                    collector.metrics()[WRITABLE] == 1 and sum(checkpoint_offsets(state).values()) > stale
                ),
                15,
                lambda: f"{collector.metrics()[WRITABLE]}; {collector.stderr()[-2000:]}",
            )
        summary = finish_writer(writer)
        want = expected(summary)
        total = sum(want.values())
        wait_delivered(collector, total, 120)
        time.sleep(1)  # a checkpoint interval or more
        m = collector.metrics()
        assert collector.terminate() == 0

    assert m[WRITABLE] == 1
    stderr = collector.stderr()
    complaints = [line for line in stderr.splitlines() if "cannot write checkpoints" in line]
    full = [c for c in complaints if "No space left on device" in c]
    readonly = [c for c in complaints if "Read-only file system" in c]
    assert len(full) == 1 and len(readonly) == 1, complaints  # once per problem, not once per retry
    assert len(complaints) == 2, complaints
    assert "checkpoints are being written again" in stderr
    # the checkpoint file (copied back under the tmpfs at unmount, then written on) covers everything
    ckpt = checkpoint_offsets(state)
    for info in summary["pods"].values():
        assert ckpt[info["file"]] == Path(info["file"]).stat().st_size, (ckpt, info)
    assert es_count(es, PATTERN) == total
    check_exactly_once(messages(es), want)


# --- g. slow Elasticsearch ------------------------------------------------------------------------------


def test_slow_elasticsearch_bounds_queues_and_throughput_follows_it(
    tmp_path: Path, es_server: EsServer, es: Elasticsearch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    want = expected(finish_writer(start_writer(logs, pods=2, lines=30_000, format="cri", seed=37)))
    total = sum(want.values())
    delay, per_bulk, workers = 2.0, 1000, 2
    es_server.set_faults([{"action": "delay", "seconds": delay, "path_regex": "_bulk"}])
    cfg = collector_config(
        logs,
        tmp_path / "state",
        sink(es_server, batch_max_records=per_bulk, workers=workers),
        queue_batches=2,
    )
    cfg["sources"][0]["read_chunk_bytes"] = 16384
    collector = CollectorProcess(tmp_path, cfg)
    collector.start()
    with running(collector):
        time.sleep(6)  # the pipeline fills up
        samples: list[tuple[float, float, float]] = []  # (t, lines read, delivered)
        for _ in range(21):
            m = collector.metrics()
            samples.append((time.monotonic(), m["kubeobs_collector_lines_read_total"], m.get(DELIVERED, 0)))
            time.sleep(1)
        es_server.clear_faults()
        wait_delivered(collector, total, 120)
        assert collector.terminate() == 0

    # bounded: (queue 2 + workers 2 + the batch being filled) batches, each plus the chunk that filled
    # it, plus one chunk per file
    per_chunk = 16384 // 150 + 1
    bound = (2 + workers + 1) * (per_bulk + per_chunk) + 2 * per_chunk
    held = [read - done for _, read, done in samples]
    assert max(held) <= bound, (bound, held)
    assert samples[-1][1] < total  # it did not read everything while Elasticsearch was slow
    # throughput follows Elasticsearch: records per bulk / delay x workers, within a generous factor
    (t0, _, d0), (t1, _, d1) = samples[0], samples[-1]
    rate = (d1 - d0) / (t1 - t0)
    ideal = per_bulk / delay * workers
    assert 0.4 * ideal <= rate <= 1.3 * ideal, (
        f"{rate:.0f} lines/s delivered, Elasticsearch allows {ideal:.0f}"
    )
    assert es_count(es, PATTERN) == total
    check_exactly_once(messages(es), want)
