"""``python -m collector`` / ``kubeobs collector``: run the log collector from a YAML config file."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import logging
import signal
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from collector.clock import SystemClock
from collector.config import (
    CollectorConfig,
    ConfigError,
    ContainerLogsSource,
    ElasticsearchSink,
    SqliteSink,
    load_config,
)
from collector.exporters.containers import ContainerMetrics
from collector.exporters.node import build_node_collector
from collector.exporters.podstate import PodStateMetrics
from collector.exporters.scrape import Exposer, Exposers
from collector.http import make_app, start_http
from collector.metrics import PipelineMetrics
from collector.pipeline import Pipeline
from collector.sinks import build_sink

log = logging.getLogger("collector")


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out.append(annotation)
    for a in args:
        out.extend(_models_of(a))
    if isinstance(annotation, types.UnionType):
        for a in annotation.__args__:
            out.extend(_models_of(a))
    return out


def _default(f: FieldInfo) -> str:
    if f.default_factory is not None:
        try:
            v = f.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return ""
        return "" if isinstance(v, BaseModel) else f" (default {v!r})"
    if f.is_required():
        return " (required)"
    return f" (default {f.default!r})"


def config_reference(model: type[BaseModel] = CollectorConfig, prefix: str = "") -> list[str]:
    """Every config key with its default and description, generated from the declarations."""
    lines: list[str] = []
    for name, f in model.model_fields.items():
        key = prefix + name
        models = _models_of(f.annotation)
        desc = f" - {f.description}" if f.description else ""
        if models and model is CollectorConfig and name == "sink":
            lines.append(f"  {key}: one of type: elasticsearch | sqlite")
            for m, tag in ((ElasticsearchSink, "elasticsearch"), (SqliteSink, "sqlite")):
                lines.extend(config_reference(m, f"{key}[{tag}]."))
            continue
        if models:
            lines.append(f"  {key}:{desc}")
            list_prefix = "[]." if typing.get_origin(f.annotation) is list else "."
            lines.extend(config_reference(models[0], key + list_prefix))
            continue
        lines.append(f"  {key}{_default(f)}{desc}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubeobs collector",
        description="Tail container log files and ship them to Elasticsearch or the embedded SQLite store, "
        "with no line lost or duplicated. Publishes /metrics, /healthz and /readyz.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="configuration keys (YAML; ${VAR} and ${VAR:-default} are expanded):\n"
        + "\n".join(config_reference())
        + "\n\nexit codes: 0 stopped cleanly, 2 usage or configuration error, 1 other failure",
    )
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file (default: built-in defaults)")
    p.add_argument("--check-config", action="store_true", help="validate the config and exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def tune_malloc() -> None:
    """Fix glibc's mmap threshold at 256 KiB. By default it rises to the size of the largest block freed,
    so once a bulk body (about a megabyte) has been freed, later ones come from the heap, where freeing
    them rarely returns memory: RSS then creeps up through an outage's retries. Fixed, large bodies are
    mmapped and given back to the system when freed. A no-op where glibc's mallopt is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, 256 * 1024)


def tune_gc() -> None:
    """Records are short-lived and acyclic: collect young objects far less often (measured: the default
    thresholds cost about a quarter of the shipper's CPU), and keep import-time objects out of scans."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def pod_exporters(cfg: CollectorConfig, pipeline: Pipeline) -> list[Exposer]:
    """cAdvisor-named container metrics and kube-state-metrics-named pod state for this node's pods, when
    the collector watches them (``kubernetes:`` configured) and ``metrics.pods`` is on."""
    metadata = pipeline.metadata
    if metadata is None or not cfg.metrics.pods:
        return []
    return [
        ContainerMetrics(cfg.metrics.cgroupfs, metadata.pod_objects),
        PodStateMetrics(cfg.node_name, metadata.pod_objects),
    ]


async def serve(cfg: CollectorConfig, stop: asyncio.Event | None = None) -> None:
    """Run the collector until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
    metrics = PipelineMetrics(registry)
    sink = build_sink(cfg.sink)
    pipeline = Pipeline(cfg, sink, metrics, SystemClock())
    exposers = Exposers(pod_exporters(cfg, pipeline))
    if cfg.metrics.node:  # node_* as node_exporter, read at scrape time
        registry.register(build_node_collector(cfg.metrics, extra_status=lambda: exposers.status))
    runner = None
    if cfg.metrics.listen:
        app = make_app(registry, lambda: pipeline.ready, exposers.run if exposers.exposers else None)
        runner, port = await start_http(app, cfg.metrics.listen)
        log.info("metrics on http://%s/metrics", cfg.metrics.listen.rpartition(":")[0] + f":{port}")
    log.info(
        "collector on node %s: %s -> %s",
        cfg.node_name,
        ", ".join(p for s in cfg.sources for p in s.paths),
        cfg.sink.type,
    )
    try:
        await pipeline.run(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # one line per request otherwise
    # one warning per failed request otherwise; the delivery loop logs each state change once
    logging.getLogger("elastic_transport.node_pool").setLevel(logging.ERROR)
    try:
        cfg = load_config(args.config) if args.config else CollectorConfig(sources=[ContainerLogsSource()])
    except ConfigError as e:
        print(f"kubeobs collector: config error: {e}", file=sys.stderr)
        return 2
    if args.check_config:
        print("config ok")
        return 0
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series beside counters
    tune_gc()
    tune_malloc()
    _install_uvloop()
    asyncio.run(serve(cfg))
    return 0
