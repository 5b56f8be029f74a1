"""``/health``, ``/ready`` and ``/metrics`` over HTTP, on the standard library's server.

The DNS server keeps its memory small: aiohttp's server alone costs about 12 MB of RSS, the standard
library's (which prometheus_client imports anyway) nothing more. Requests are parsed on a daemon
thread, but every route runs on the event loop (handed over with ``call_soon_threadsafe``), so the
counters the loop updates are never read from another thread.

    endpoints = HttpEndpoints("127.0.0.1:8080", {"/health": health, "/ready": ready}, loop)
    endpoints.start(); endpoints.port; await endpoints.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[], tuple[int, str, bytes]]  # (status, content type, body), called on the loop
ROUTE_TIMEOUT = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]
    loop: asyncio.AbstractEventLoop


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        result: concurrent.futures.Future[tuple[int, str, bytes]] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(route())
            except Exception as e:  # reported to the client as a 500, never kills the loop
                result.set_exception(e)

        try:
            self.server.loop.call_soon_threadsafe(run)
            status, ctype, body = result.result(ROUTE_TIMEOUT)
        except Exception as e:
            status, ctype, body = 500, "text/plain; charset=utf-8", f"{type(e).__name__}: {e}\n".encode()
        self._send(status, ctype, body)

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class HttpEndpoints:
    def __init__(self, hostport: str, routes: dict[str, Route], loop: asyncio.AbstractEventLoop) -> None:
        host, _, port = hostport.rpartition(":")
        self._server = _Server((host.strip("[]"), int(port)), _Handler)
        self._server.routes = routes
        self._server.loop = loop
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"http-{hostport}", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self._server.shutdown)
        self._server.server_close()
