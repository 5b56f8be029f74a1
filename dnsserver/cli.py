"""``python -m dnsserver`` / ``kubeobs dns``: the DNS server daemon.

Answers the Kubernetes DNS spec for ``--zone`` from the apiserver (``--kubeconfig``, or in-cluster) or from
a static ``--records`` file, forwards other names to ``--upstream``s, serves ``/health`` and ``/ready`` on
``--health-listen`` and CoreDNS-named metrics on ``--metrics-listen``. SIGTERM/SIGINT: ``/ready`` fails at
once, answering goes on for ``lameduck`` seconds (so load balancers stop sending), then it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dnsserver.config import ConfigError, DnsConfig, load_config, split_hostport
from dnsserver.http import HttpEndpoints, Route
from dnsserver.metrics import DnsStats
from dnsserver.records import RecordsError, load_records
from dnsserver.server import Answers, Resolver, listen
from dnsserver.zone import ClusterZone

log = logging.getLogger("dnsserver")


def build_parser(prog: str = "python -m dnsserver") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="kubeobs DNS server: the Kubernetes DNS spec from the apiserver (or a records file), "
        "forwarding and caching for other names, CoreDNS-compatible metrics.",
        epilog="Every flag can also be a key of the --config file (dashes become underscores); flags win. "
        "The file also takes 'forward:' (policy, timeout, max_concurrent, health_check_interval, max_fails), "
        "'cache:' (enabled, capacity, max_ttl, max_negative_ttl, serve_stale), max_pending and "
        "tcp_idle_timeout; see dnsserver/config.py or the README.",
    )
    p.add_argument("--config", help="YAML file of settings")
    p.add_argument("--listen", help="HOST:PORT for UDP and TCP (default 127.0.0.1:5353)")
    p.add_argument("--zone", help="cluster domain (default cluster.local)")
    p.add_argument("--kubeconfig", help="kubeconfig file (absent, with no --records: in-cluster)")
    p.add_argument(
        "--records", help="YAML file of Services/EndpointSlices/Endpoints/Pods, instead of an apiserver"
    )
    p.add_argument("--upstream", action="append", help="HOST:PORT resolver for other names (repeatable)")
    p.add_argument("--ttl", type=int, help="TTL of cluster answers in seconds (default 5)")
    p.add_argument(
        "--pods", choices=["disabled", "insecure", "verified"], help="pod records (default insecure)"
    )
    p.add_argument("--metrics-listen", help="HOST:PORT for /metrics ('' disables; default 127.0.0.1:9153)")
    p.add_argument(
        "--health-listen", help="HOST:PORT for /health and /ready ('' disables; default 127.0.0.1:8080)"
    )
    p.add_argument("--lameduck", type=float, help="seconds to keep answering after SIGTERM (default 5)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> DnsConfig:
    keys = (
        "listen",
        "zone",
        "kubeconfig",
        "records",
        "upstream",
        "ttl",
        "pods",
        "metrics_listen",
        "health_listen",
        "lameduck",
        "log_level",
    )
    return load_config(args.config, {k: getattr(args, k) for k in keys})


class DnsService:
    """Everything one DNS server process runs; :meth:`run` until ``stop`` is set."""

    def __init__(self, cfg: DnsConfig, registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.registry = registry or CollectorRegistry()
        self.zone = ClusterZone(cfg.zone, ttl=cfg.ttl, pods=cfg.pods)
        plugins = ["errors", "kubernetes", "health", "ready", "prometheus", "loadbalance"]
        self.stats = DnsStats(f"dns://{cfg.listen}", plugins + (["cache", "forward"] if cfg.upstream else []))
        self.registry.register(self.stats)
        self.synced = False
        self.stopping = False
        self.port = 0
        self.health_port = 0
        self.metrics_port = 0
        self.started = asyncio.Event()

    def ready(self) -> bool:
        return self.synced

    def _upstream(self) -> tuple[Any, Any]:
        if not self.cfg.upstream:
            return None, None
        from dnsserver.cache import ResponseCache
        from dnsserver.forward import Forwarder

        f = self.cfg.forward
        forwarder = Forwarder(
            [split_hostport(u) for u in self.cfg.upstream],
            policy=f.policy,
            timeout=f.timeout,
            max_concurrent=f.max_concurrent,
            health_check_interval=f.health_check_interval,
            max_fails=f.max_fails,
        )
        self.registry.register(forwarder)
        cache = None
        c = self.cfg.cache
        if c.enabled:
            cache = ResponseCache(
                capacity=c.capacity,
                max_ttl=c.max_ttl,
                max_negative_ttl=c.max_negative_ttl,
                serve_stale=c.serve_stale,
                server=f"dns://{self.cfg.listen}",
            )
            self.registry.register(cache)
        return forwarder, cache

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        source: Any = None  # a KubeSource (imported only then: the apiserver client costs memory)
        if not cfg.records:
            self.zone = ClusterZone(cfg.zone, ttl=cfg.ttl, pods=cfg.pods, pod_hostnames=False)
        if cfg.records:
            n = load_records(cfg.records, self.zone)
            log.info("loaded %d objects from %s: %s", n, cfg.records, self.zone.stats())
            self.synced = True
        else:
            from dnsserver.kubesource import KubeSource
            from kubeobs.kube.client import KubeClient

            client = KubeClient.load(cfg.kubeconfig)
            source = KubeSource(client, self.zone, self.registry)
        forwarder, cache = self._upstream()
        self.answers = Answers(self.zone, ready=self.ready)
        resolver = Resolver(
            self.answers,
            self.stats,
            upstream=forwarder,
            cache=cache,
            max_pending=cfg.max_pending,
        )
        host, port = split_hostport(cfg.listen)
        listeners = await listen(resolver, host, port, tcp_idle_timeout=cfg.tcp_idle_timeout)
        self.port = listeners.port
        endpoints: list[HttpEndpoints] = []
        loop = asyncio.get_running_loop()
        try:
            if cfg.health_listen:
                health = HttpEndpoints(cfg.health_listen, self._health_routes(), loop)
                endpoints.append(health)
                self.health_port = health.port
            if cfg.metrics_listen:
                metrics = HttpEndpoints(cfg.metrics_listen, {"/metrics": self._metrics}, loop)
                endpoints.append(metrics)
                self.metrics_port = metrics.port
            for e in endpoints:
                e.start()
            log.info(
                "answering %s on %s:%d (udp+tcp)%s",
                cfg.zone,
                host,
                self.port,
                f", forwarding to {', '.join(cfg.upstream)}" if cfg.upstream else "",
            )
            self.started.set()
            async with asyncio.TaskGroup() as tg:
                background = []
                if source is not None:
                    background.append(tg.create_task(source.run(), name="kube-source"))
                    background.append(tg.create_task(self._wait_synced(source), name="synced"))
                if forwarder is not None:
                    background.append(tg.create_task(forwarder.run(), name="upstream-health"))
                if cfg.records:
                    background.append(tg.create_task(self._reload(cfg.records), name="records-reload"))
                await stop.wait()
                self.stopping = True
                if cfg.lameduck:
                    log.info("stopping: lame duck for %.1fs", cfg.lameduck)
                    await asyncio.sleep(cfg.lameduck)
                for task in background:
                    task.cancel()
        finally:
            await listeners.close()
            for task in list(resolver.pending):
                task.cancel()
            for e in endpoints:
                await e.stop()
            if source is not None:
                await source.client.close()
        log.info("stopped")

    async def _reload(self, path: str, interval: float = 1.0) -> None:
        """Reload the records file when it changes (CoreDNS ``reload``); a broken edit keeps the last
        good records and is logged."""

        def stamp() -> tuple[float, int] | None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return st.st_mtime, st.st_size

        last = stamp()
        while True:
            await asyncio.sleep(interval)
            now = stamp()
            if now == last or now is None:
                continue
            last = now
            zone = ClusterZone(self.cfg.zone, ttl=self.cfg.ttl, pods=self.cfg.pods)
            try:
                n = load_records(path, zone)
            except RecordsError as e:
                log.error("keeping the last good records: %s", e)
                continue
            self.zone = zone
            self.answers.swap(zone)
            log.info("reloaded %d objects from %s: %s", n, path, zone.stats())

    async def _wait_synced(self, source: Any) -> None:
        await source.ready.wait()
        self.synced = True

    def _health_routes(self) -> dict[str, Route]:
        text = "text/plain; charset=utf-8"

        def health() -> tuple[int, str, bytes]:
            return 200, text, b"OK"

        def ready() -> tuple[int, str, bytes]:
            if self.stopping:
                return 503, text, b"stopping"
            if not self.synced:
                return 503, text, b"not synced with the apiserver yet"
            return 200, text, b"OK"

        return {"/health": health, "/ready": ready}

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)


async def serve(cfg: DnsConfig, stop: asyncio.Event, service: DnsService | None = None) -> None:
    await (service or DnsService(cfg)).run(stop)


def main(argv: Sequence[str] | None = None, prog: str = "python -m dnsserver") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The hot path allocates only short-lived, acyclic bytes: young collections can be rare, and the
    # objects alive at start (imports, the loaded zone) stay out of every scan.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    try:
        asyncio.run(_main())
    except RecordsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: cannot listen on {cfg.listen}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0
