"""The collector's own pipeline metrics (Prometheus naming rules; they pass ``promtool check metrics``).

All live in an injected registry; only ``__main__`` uses a process-wide one.

=============================================  =======================================================
kubeobs_collector_lines_read_total             physical lines read from files
kubeobs_collector_bytes_read_total             bytes read from files
kubeobs_collector_records_delivered_total      records acknowledged by the sink (incl. 409 conflicts)
kubeobs_collector_records_retried_total        record deliveries retried, by reason
kubeobs_collector_records_dead_lettered_total  records rejected by the sink and stored as dead letters
kubeobs_collector_records_dropped_total        records lost, by reason (should stay 0)
kubeobs_collector_parse_errors_total           lines that could not be parsed (shipped flagged)
kubeobs_collector_records_excluded_total       records not shipped: excluded by config, pod or namespace
kubeobs_collector_invalid_utf8_total           lines with invalid UTF-8 (shipped with U+FFFD)
kubeobs_collector_split_parts_total            parts emitted for lines over max_line_bytes
kubeobs_collector_files_open                   files open for reading
kubeobs_collector_rotations_total              rotations seen, by kind (rename, truncate, delete)
kubeobs_collector_files_lost_total             checkpointed files gone before they were read to end
kubeobs_collector_read_errors_total            failed reads of log files (retried next round)
kubeobs_collector_read_lag_bytes               bytes written to a file and not yet read, by path
kubeobs_collector_bulk_requests_total          requests to the sink, by result
kubeobs_collector_bulk_request_duration_seconds  sink request latency
kubeobs_collector_queue_batches                batches waiting for the sink
kubeobs_collector_checkpoint_writes_total      checkpoint file writes, by result
kubeobs_collector_records_conflicts_total      records already stored (409), counted as delivered
kubeobs_collector_retry_backoff_seconds        delay before the current retry (0: delivering normally)
kubeobs_collector_sink_up                      1 when the last request to the sink succeeded
kubeobs_collector_state_dir_writable           1 when the last checkpoint write succeeded
kubeobs_collector_backlog_bytes                unread bytes in open files, by state (active/rotated/deleted)
kubeobs_collector_oldest_unacked_age_seconds   age of the oldest unacknowledged line, by path
=============================================  =======================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

NS = "kubeobs_collector"


class FileStateSource(Protocol):
    def lag(self) -> Iterable[tuple[str, int]]: ...

    def backlog(self) -> dict[str, int]: ...

    def unacked_ages(self) -> Iterable[tuple[str, float]]: ...


class _FileStateCollector(Collector):
    """Per-file state, sampled at scrape time."""

    def __init__(self, state: FileStateSource) -> None:
        self._state = state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            f"{NS}_read_lag_bytes", "Bytes written to a file and not yet read.", labels=["path"]
        )
        for path, n in self._state.lag():
            lag.add_metric([path], n)
        yield lag
        backlog = GaugeMetricFamily(
            f"{NS}_backlog_bytes",
            "Unread bytes in open files: active, rotated (still on disk), deleted (held open by us).",
            labels=["state"],
        )
        for state, n in self._state.backlog().items():
            backlog.add_metric([state], n)
        yield backlog
        age = GaugeMetricFamily(
            f"{NS}_oldest_unacked_age_seconds",
            "Age of the oldest line read from a file and not yet acknowledged by the sink.",
            labels=["path"],
        )
        for path, seconds in self._state.unacked_ages():
            age.add_metric([path], seconds)
        yield age


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.lines_read = Counter(f"{NS}_lines_read", "Physical lines read from files.", registry=r)
        self.bytes_read = Counter(f"{NS}_bytes_read", "Bytes read from files.", registry=r)
        self.delivered = Counter(
            f"{NS}_records_delivered", "Records acknowledged by the sink.", ["sink"], registry=r
        )
        self.retried = Counter(
            f"{NS}_records_retried", "Record deliveries retried.", ["sink", "reason"], registry=r
        )
        self.dead_lettered = Counter(
            f"{NS}_records_dead_lettered",
            "Records rejected by the sink, stored as dead letters.",
            ["sink"],
            registry=r,
        )
        self.dropped = Counter(f"{NS}_records_dropped", "Records lost, by reason.", ["reason"], registry=r)
        self.excluded = Counter(
            f"{NS}_records_excluded", "Records not shipped: excluded by config, pod or namespace.", registry=r
        )
        self.parse_errors = Counter(f"{NS}_parse_errors", "Lines that could not be parsed.", registry=r)
        self.invalid_utf8 = Counter(f"{NS}_invalid_utf8", "Lines with invalid UTF-8.", registry=r)
        self.split_parts = Counter(f"{NS}_split_parts", "Parts of lines over max_line_bytes.", registry=r)
        self.files_open = Gauge(f"{NS}_files_open", "Files open for reading.", registry=r)
        self.rotations = Counter(f"{NS}_rotations", "Rotations seen.", ["kind"], registry=r)
        self.read_errors = Counter(f"{NS}_read_errors", "Failed reads of log files (retried).", registry=r)
        self.files_lost = Counter(
            f"{NS}_files_lost", "Checkpointed files gone before they were read to the end.", registry=r
        )
        self.bulk_requests = Counter(
            f"{NS}_bulk_requests", "Requests to the sink.", ["sink", "result"], registry=r
        )
        self.bulk_duration = Histogram(
            f"{NS}_bulk_request_duration_seconds",
            "Sink request latency.",
            ["sink"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.queue_batches = Gauge(f"{NS}_queue_batches", "Batches waiting for the sink.", registry=r)
        self.checkpoint_writes = Counter(
            f"{NS}_checkpoint_writes", "Checkpoint file writes.", ["result"], registry=r
        )
        self.up = Gauge(f"{NS}_sink_up", "1 when the last request to the sink succeeded.", registry=r)
        self.conflicts = Counter(
            f"{NS}_records_conflicts",
            "Records already stored (409), counted as delivered.",
            ["sink"],
            registry=r,
        )
        self.backoff = Gauge(
            f"{NS}_retry_backoff_seconds",
            "Delay before the current retry; 0 while delivering normally.",
            registry=r,
        )
        self.state_dir_writable = Gauge(
            f"{NS}_state_dir_writable", "1 when the last checkpoint write succeeded.", registry=r
        )
        self.state_dir_writable.set(1)

    def register_file_state(self, state: FileStateSource) -> None:
        self.registry.register(_FileStateCollector(state))
