"""The collector's HTTP listener: ``/metrics`` (Prometheus text format), ``/healthz``, ``/readyz``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def make_app(
    registry: CollectorRegistry, ready: Callable[[], bool], extra: Callable[[], bytes] | None = None
) -> web.Application:
    """``extra`` renders series outside the registry (the pod metrics); it runs before the registry is
    rendered, so the registry can report on it (its scrape duration and success)."""

    async def metrics(_: web.Request) -> web.Response:
        more = extra() if extra is not None else b""
        resp = web.Response(body=generate_latest(registry) + more)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def start_http(app: web.Application, listen: str) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (for cleanup) and the bound port (listen may ask for port 0)."""
    host, port = split_listen(listen)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for addr in runner.addresses:
        bound = int(addr[1])
        break
    return runner, bound
