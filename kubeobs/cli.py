"""``kubeobs``: the one command users learn.

- ``kubeobs up``: one-machine mode. Tails a local folder of container log files into the embedded
  SQLite store and serves the metrics endpoint. ``--demo`` also writes realistic demo logs there.
  It also runs the DNS server on ``--dns-listen``, answering the cluster zone from
  ``<data-dir>/records.yaml`` (Kubernetes Services/EndpointSlices/Pods; ``--demo`` writes a demo one).
- ``kubeobs logs``: search, follow and chart the collected logs (:mod:`kubeobs.search`).
- ``kubeobs collector``: the log collector daemon (same as ``python -m collector``).
- ``kubeobs dns``: the DNS server daemon (same as ``python -m dnsserver``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from collector.config import CollectorConfig, ContainerLogsSource, MetricsConfig, SqliteSink
from dnsserver.config import DnsConfig


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
    p.add_argument(
        "--dns-listen",
        default="127.0.0.1:5353",
        help="host:port of the DNS server, UDP and TCP ('' disables)",
    )
    p.add_argument(
        "--dns-metrics-listen",
        default="127.0.0.1:9153",
        help="host:port for the DNS server's /metrics ('' disables)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def dns_up_config(args: argparse.Namespace) -> DnsConfig | None:
    """The DNS server of one-machine mode: answers from ``<data-dir>/records.yaml`` (created if missing)."""
    if not args.dns_listen:
        return None
    records = Path(args.data_dir) / "records.yaml"
    if args.demo:
        from kubeobs.demo import write_demo_records

        write_demo_records(records)
    elif not records.exists():
        records.parent.mkdir(parents=True, exist_ok=True)
        records.write_text(
            "# Kubernetes Services, EndpointSlices and Pods for the DNS server (kubectl get -o yaml works)\n",
            encoding="utf-8",
        )
    return DnsConfig(
        listen=args.dns_listen,
        records=str(records),
        metrics_listen=args.dns_metrics_listen,
        health_listen="",
        lameduck=0,
    )


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


def _local_host_port(listen: str) -> tuple[str, str]:
    """``host:port`` as a local client dials it (a wildcard address becomes loopback)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    return (f"[{host}]" if ":" in host else host), port


def try_commands(args: argparse.Namespace, cfg: CollectorConfig, dns: DnsConfig | None) -> str:
    """The commands ``kubeobs up`` suggests at start: a search, a DNS query, a metrics scrape."""
    import shlex

    search = ["kubeobs", "logs"]
    if Path(args.data_dir) != Path("./kubeobs-data"):
        search += ["--backend", cfg.sink.path]  # type: ignore[union-attr]
    search += ["-n", "shop", "--since", "15m", 'error OR "timed out"'] if args.demo else ["--since", "15m"]
    lines = ["kubeobs: try", "  " + shlex.join(search)]
    if dns is not None:
        host, port = _local_host_port(dns.listen)
        name = "web.shop.svc.cluster.local" if args.demo else "dns-version.cluster.local TXT"
        lines.append(f"  dig @{host.strip('[]')} -p {port} {name}")
    if cfg.metrics.listen:
        host, port = _local_host_port(cfg.metrics.listen)
        lines.append(f"  curl -s http://{host}:{port}/metrics | head")
    return "\n".join(lines)


async def _dns(cfg: DnsConfig, stop: asyncio.Event) -> None:
    """The one-machine DNS server; a port already taken costs only DNS, never the collector."""
    from dnsserver.cli import serve

    try:
        await serve(cfg, stop)
    except OSError as e:
        logging.getLogger("kubeobs").error(
            "DNS server not started: cannot listen on %s: %s (use --dns-listen)", cfg.listen, e.strerror or e
        )


async def _up(cfg: CollectorConfig, logs: Path, demo: bool, dns: DnsConfig | None) -> None:
    from collector.cli import serve

    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        if dns is not None:
            tg.create_task(_dns(dns, stop), name="dns")
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
        "logs", help="search and follow the collected logs (see: kubeobs logs --help)", add_help=False
    )
    sub.add_parser(
        "collector", help="run the log collector daemon (see: kubeobs collector --help)", add_help=False
    )
    sub.add_parser("dns", help="run the DNS server daemon (see: kubeobs dns --help)", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["logs"]:
        from kubeobs.search.cli import main as logs_main

        return logs_main(argv[1:])
    if argv[:1] == ["collector"]:
        from collector.cli import main as collector_main

        return collector_main(argv[1:])
    if argv[:1] == ["dns"]:
        from dnsserver.cli import main as dns_main

        return dns_main(argv[1:], prog="kubeobs dns")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = up_config(args)
    dns = dns_up_config(args)
    logs = Path(cfg.sources[0].paths[0]).parent
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"kubeobs: collecting {logs}/*.log into {cfg.sink.path}"  # type: ignore[union-attr]
        + (f", metrics on http://{cfg.metrics.listen}/metrics" if cfg.metrics.listen else "")
        + (f"; DNS for cluster.local on {dns.listen} from {dns.records}" if dns is not None else "")
        + " (Ctrl-C to stop)",
        file=sys.stderr,
    )
    print(try_commands(args, cfg, dns), file=sys.stderr)
    from prometheus_client import disable_created_metrics

    from collector.cli import _install_uvloop, tune_gc, tune_malloc

    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series beside counters
    tune_gc()
    tune_malloc()
    _install_uvloop()
    asyncio.run(_up(cfg, logs, args.demo, dns))
    return 0
