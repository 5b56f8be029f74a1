"""``kubeobs``: the one command users learn.

- ``kubeobs up``: one-machine mode. Tails a local folder of container log files into the embedded
  SQLite store and serves the metrics endpoint. ``--demo`` also writes realistic demo logs there.
- ``kubeobs collector``: the log collector daemon (same as ``python -m collector``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from collector.config import CollectorConfig, ContainerLogsSource, MetricsConfig, SqliteSink


def _up_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up",
        help="one-machine mode: collect a local folder of container logs into SQLite",
        description="Run kubeobs on one machine with no cluster and no Elasticsearch: the collector tails "
        "<data-dir>/logs/*.log (kubelet-named CRI or docker json-file logs) into the SQLite store "
        "<data-dir>/kubeobs-logs.db, with metrics on --metrics-listen.",
    )
    p.add_argument("--data-dir", default="./kubeobs-data", help="where logs, the store and state live")
    p.add_argument("--logs", help="folder of container log files (default <data-dir>/logs)")
    p.add_argument("--demo", action="store_true", help="write realistic demo container logs into the folder")
    p.add_argument("--metrics-listen", default="127.0.0.1:2021", help="host:port for /metrics ('' disables)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def up_config(args: argparse.Namespace) -> CollectorConfig:
    data = Path(args.data_dir)
    logs = Path(args.logs) if args.logs else data / "logs"
    return CollectorConfig(
        node_name="local",
        state_dir=str(data / "state"),
        sources=[ContainerLogsSource(paths=[str(logs / "*.log")])],
        sink=SqliteSink(type="sqlite", path=str(data / "kubeobs-logs.db")),
        metrics=MetricsConfig(listen=args.metrics_listen),
    )


async def _up(cfg: CollectorConfig, logs: Path, demo: bool) -> None:
    from collector.cli import serve

    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        if demo:
            from kubeobs.demo import run_demo_writer, write_demo_logs

            files = write_demo_logs(logs)
            print(f"kubeobs: wrote demo logs for {len(files)} containers into {logs}", file=sys.stderr)
            tg.create_task(run_demo_writer(logs, stop))
        await serve(cfg, stop)
        stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubeobs", description="Observability for Kubernetes: logs, DNS, metrics."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _up_parser(sub)
    sub.add_parser(
        "collector", help="run the log collector daemon (see: kubeobs collector --help)", add_help=False
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["collector"]:
        from collector.cli import main as collector_main

        return collector_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = up_config(args)
    logs = Path(cfg.sources[0].paths[0]).parent
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"kubeobs: collecting {logs}/*.log into {cfg.sink.path}"  # type: ignore[union-attr]
        + (f", metrics on http://{cfg.metrics.listen}/metrics" if cfg.metrics.listen else "")
        + " (Ctrl-C to stop)",
        file=sys.stderr,
    )
    from collector.cli import _install_uvloop, tune_gc, tune_malloc

    tune_gc()
    tune_malloc()
    _install_uvloop()
    asyncio.run(_up(cfg, logs, args.demo))
    return 0
