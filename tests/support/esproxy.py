"""A small reverse proxy that puts an Elasticsearch face on osmem-server and injects faults.

Run::

    python -m tests.support.esproxy --upstream http://127.0.0.1:PORT --listen 127.0.0.1:0 --port-file FILE

It forwards every request to the upstream, except ``/_proxy/...`` which is its own control API.

Why it exists: osmem-server answers 406 to the official client's vendor media types
(``application/vnd.elasticsearch+json; compatible-with=8`` and the ``+x-ndjson`` variant), which real
Elasticsearch accepts; the proxy rewrites ``Accept`` and ``Content-Type`` to the plain types. It also
makes sure every response carries ``X-Elastic-Product: Elasticsearch`` (the client checks it).

Control API (JSON):

- ``POST /_proxy/faults`` with a list of rules replaces the active rules; ``GET`` shows them (with the
  remaining ``times``); ``DELETE`` removes them all.
- ``GET /_proxy/stats``: ``requests``, ``bulk_requests``, ``bulk_docs`` (documents in the ``_bulk``
  requests forwarded upstream: NDJSON lines / 2, as every action the collector sends carries a source),
  ``faults`` (applied), ``faults_by_action``, ``items_rewritten``; ``DELETE /_proxy/stats`` resets the
  counters.

A rule is ``{"action": ..., <action args>, "path_regex": ..., "method": ..., "body_regex": ...,
"times": ..., "probability": ...}``; the last five are optional: ``path_regex`` is searched in the
request path, ``method`` compared without case, ``body_regex`` searched (as a bytes regex, UTF-8 encoded)
in the request body, ``times`` is how many requests the rule applies to (null/absent: forever),
``probability`` the chance it applies to a matching request (default 1). A rule with ``body_regex``
reads the request body before deciding (once its path and method match), so with it even ``refuse``
resets the connection only after the body was read; e.g. ``{"action": "status", "status": 503,
"path_regex": "_bulk", "body_regex": "kubeobs-deadletter"}`` fails only the bulk requests that write to
the dead-letter index. Actions:

- ``{"action": "status", "status": 503}``: answer with that status and an Elasticsearch-like error body.
- ``{"action": "bulk_items", "status": 429, "fraction": 0.2}``: forward a ``_bulk`` request, then turn
  that fraction of the successful items (spread evenly, deterministically: ``floor(n * fraction)`` of
  ``n``) into failures: 429 ``es_rejected_execution_exception`` or 400 ``illegal_argument_exception``
  (any other 4xx/5xx status gets a generic error type); sets ``errors: true``. Applies to ``_bulk``
  paths only. The upstream has indexed the rewritten items, so their re-send is answered 409; with
  ``"include_conflicts": true`` 409 items count as successful too and can be rejected again, as a real
  overloaded Elasticsearch would reject a re-send (so a retry chain, and its backoff, can grow).
- ``{"action": "delay", "seconds": 2}``: wait before forwarding (combines with the other actions).
- ``{"action": "drop_before"}``: read the request, then close the connection without forwarding it.
- ``{"action": "drop_after"}``: forward the request, then close the connection without answering.
- ``{"action": "refuse"}``: an outage: reset the connection at once, nothing read or forwarded.

Rules are tried in list order: delays, then the first ``refuse``/``drop_before``/``status`` that applies
ends the request; after forwarding, ``bulk_items`` then ``drop_after``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import re
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

# Request/response headers that describe one hop, not the message: never forwarded.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        # the proxy must read bodies (bulk_items), so it asks the upstream for identity encoding
        "Accept-Encoding",
        "Content-Encoding",
    )
)
_VENDOR = re.compile(r"application/vnd\.elasticsearch\+([a-z-]+)(\s*;[^,]*)?", re.IGNORECASE)
_BULK_PATH = re.compile(r"(^|/)_bulk/?$")

PRE_ACTIONS = ("delay", "refuse", "drop_before", "status")
POST_ACTIONS = ("bulk_items", "drop_after")
ACTIONS = PRE_ACTIONS + POST_ACTIONS


def plain_media_type(value: str) -> str:
    """``application/vnd.elasticsearch+json; compatible-with=8`` -> ``application/json`` (lists too)."""
    return _VENDOR.sub(lambda m: f"application/{m.group(1).lower()}", value)


class RuleError(ValueError):
    pass


@dataclass
class Rule:
    action: str
    args: dict[str, Any]
    path_regex: re.Pattern[str] | None = None
    method: str | None = None
    body_regex: re.Pattern[bytes] | None = None
    times: int | None = None  # remaining applications; None: forever
    probability: float = 1.0

    @classmethod
    def parse(cls, raw: Any) -> Rule:
        if not isinstance(raw, dict):
            raise RuleError(f"a rule must be an object, got {raw!r}")
        raw = dict(raw)
        action = raw.pop("action", None)
        if action not in ACTIONS:
            raise RuleError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        path = raw.pop("path_regex", None)
        method = raw.pop("method", None)
        body = raw.pop("body_regex", None)
        times = raw.pop("times", None)
        probability = raw.pop("probability", 1.0)
        if times is not None and (not isinstance(times, int) or times < 0):
            raise RuleError(f"times must be a non-negative integer or null, got {times!r}")
        if not isinstance(probability, int | float) or not 0 <= probability <= 1:
            raise RuleError(f"probability must be in [0, 1], got {probability!r}")
        allowed = {
            "status": {"status"},
            "bulk_items": {"status", "fraction", "include_conflicts"},
            "delay": {"seconds"},
        }
        unknown = set(raw) - allowed.get(action, set())
        if unknown:
            raise RuleError(f"{action}: unknown keys {sorted(unknown)}")
        if action == "status" and not isinstance(raw.get("status"), int):
            raise RuleError("status: needs an integer 'status'")
        if action == "bulk_items":
            raw.setdefault("status", 429)
            raw.setdefault("fraction", 1.0)
            raw.setdefault("include_conflicts", False)
            if not isinstance(raw["status"], int) or raw["status"] < 400:
                raise RuleError("bulk_items: 'status' must be an error status (>= 400)")
            if not isinstance(raw["fraction"], int | float) or not 0 <= raw["fraction"] <= 1:
                raise RuleError("bulk_items: 'fraction' must be in [0, 1]")
            if not isinstance(raw["include_conflicts"], bool):
                raise RuleError("bulk_items: 'include_conflicts' must be true or false")
        if action == "delay" and not isinstance(raw.get("seconds"), int | float):
            raise RuleError("delay: needs a number 'seconds'")
        try:
            pattern = re.compile(path) if path is not None else None
        except re.error as e:
            raise RuleError(f"bad path_regex {path!r}: {e}") from None
        if body is not None and not isinstance(body, str):
            raise RuleError(f"body_regex must be a string, got {body!r}")
        try:
            body_pattern = re.compile(body.encode()) if body is not None else None
        except re.error as e:
            raise RuleError(f"bad body_regex {body!r}: {e}") from None
        return cls(
            action,
            raw,
            pattern,
            method.upper() if method else None,
            body_pattern,
            times,
            float(probability),
        )

    def matches_head(self, request: web.Request) -> bool:
        """Whether method and path match (what can be decided without reading the body)."""
        if self.method is not None and request.method.upper() != self.method:
            return False
        if self.path_regex is not None and not self.path_regex.search(request.path):
            return False
        return not (self.action == "bulk_items" and not _BULK_PATH.search(request.path))

    def fires(self, request: web.Request, rng: random.Random, body: bytes | None = None) -> bool:
        """Whether the rule applies to this request; consumes one of its ``times`` when it does.

        ``body`` is the request body, needed (and read by the caller) only when ``body_regex`` is set.
        """
        if self.times is not None and self.times <= 0:
            return False
        if not self.matches_head(request):
            return False
        if self.body_regex is not None and (body is None or not self.body_regex.search(body)):
            return False
        if self.probability < 1.0 and rng.random() >= self.probability:
            return False
        if self.times is not None:
            self.times -= 1
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "action": self.action,
            **self.args,
            "path_regex": self.path_regex.pattern if self.path_regex else None,
            "method": self.method,
            "body_regex": self.body_regex.pattern.decode() if self.body_regex else None,
            "times": self.times,
            "probability": self.probability,
        }


@dataclass
class Stats:
    requests: int = 0
    bulk_requests: int = 0
    bulk_docs: int = 0
    faults: int = 0
    items_rewritten: int = 0
    faults_by_action: dict[str, int] = field(default_factory=dict)

    def fault(self, action: str) -> None:
        self.faults += 1
        self.faults_by_action[action] = self.faults_by_action.get(action, 0) + 1


_ITEM_ERRORS = {
    429: ("es_rejected_execution_exception", "rejected execution (injected by esproxy): queue capacity"),
    400: ("illegal_argument_exception", "injected by esproxy"),
}


def rewrite_bulk_items(
    body: dict[str, Any], status: int, fraction: float, *, include_conflicts: bool = False
) -> int:
    """Turn ``fraction`` of the successful items (2xx; 409 too with ``include_conflicts``) of a bulk
    response into failures; returns how many."""
    items = body.get("items")
    if not isinstance(items, list):
        return 0
    err_type, reason = _ITEM_ERRORS.get(status, ("esproxy_injected_exception", "injected by esproxy"))
    rewritten = 0
    ok_seen = 0
    for item in items:
        if not isinstance(item, dict) or not item:
            continue
        op = next(iter(item))
        result = item[op]
        if not isinstance(result, dict):
            continue
        item_status = int(result.get("status", 0))
        if not (200 <= item_status < 300 or (include_conflicts and item_status == 409)):
            continue
        # The k-th successful item is picked when floor((k+1)*f) > floor(k*f): evenly spread.
        picked = math.floor((ok_seen + 1) * fraction + 1e-9) > math.floor(ok_seen * fraction + 1e-9)
        ok_seen += 1
        if not picked:
            continue
        new: dict[str, Any] = {k: result[k] for k in ("_index", "_id") if k in result}
        new["status"] = status
        new["error"] = {"type": err_type, "reason": reason}
        item[op] = new
        rewritten += 1
    if rewritten:
        body["errors"] = True
    return rewritten


class Proxy:
    def __init__(self, upstream: str, seed: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self.stats = Stats()
        self.rng = random.Random(seed)
        self._session: ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("GET", "/_proxy/faults", self.get_faults)
        app.router.add_route("POST", "/_proxy/faults", self.set_faults)
        app.router.add_route("DELETE", "/_proxy/faults", self.clear_faults)
        app.router.add_route("GET", "/_proxy/stats", self.get_stats)
        app.router.add_route("DELETE", "/_proxy/stats", self.reset_stats)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        self._session = ClientSession(
            connector=TCPConnector(limit=64),
            timeout=ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    # --- control API -------------------------------------------------------------------------------

    async def get_faults(self, _request: web.Request) -> web.Response:
        return _json([r.describe() for r in self.rules])

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            raw = orjson.loads(await request.read())
            if not isinstance(raw, list):
                raw = [raw]
            rules = [Rule.parse(r) for r in raw]
        except (orjson.JSONDecodeError, RuleError) as e:
            return _json({"error": str(e)}, status=400)
        self.rules = rules
        return _json({"acknowledged": True, "rules": len(rules)})

    async def clear_faults(self, _request: web.Request) -> web.Response:
        self.rules = []
        return _json({"acknowledged": True})

    async def get_stats(self, _request: web.Request) -> web.Response:
        s = self.stats
        return _json(
            {
                "requests": s.requests,
                "bulk_requests": s.bulk_requests,
                "bulk_docs": s.bulk_docs,
                "faults": s.faults,
                "faults_by_action": s.faults_by_action,
                "items_rewritten": s.items_rewritten,
            }
        )

    async def reset_stats(self, _request: web.Request) -> web.Response:
        self.stats = Stats()
        return _json({"acknowledged": True})

    # --- forwarding --------------------------------------------------------------------------------

    async def forward(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        is_bulk = bool(_BULK_PATH.search(request.path))
        if is_bulk:
            self.stats.bulk_requests += 1

        for rule in await self._fired_pre(request):
            self.stats.fault(rule.action)
            if rule.action == "delay":
                await asyncio.sleep(float(rule.args["seconds"]))
            elif rule.action == "refuse":
                return _close_connection(request, reset=True)
            elif rule.action == "drop_before":
                await request.read()
                return _close_connection(request, reset=False)
            elif rule.action == "status":
                status = int(rule.args["status"])
                await request.read()
                return _json(
                    {
                        "error": {
                            "type": "esproxy_injected_fault",
                            "reason": f"HTTP {status} injected by esproxy",
                        },
                        "status": status,
                    },
                    status=status,
                )

        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        for name in ("Accept", "Content-Type"):
            if name in headers:
                headers[name] = plain_media_type(headers[name])
        body = await request.read()
        if is_bulk:
            self.stats.bulk_docs += body.count(b"\n") // 2
        assert self._session is not None
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.rel_url.raw_path_qs,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            ) as upstream:
                status = upstream.status
                resp_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                payload = await upstream.read()
        except ClientError as e:
            return _json(
                {"error": {"type": "esproxy_upstream_error", "reason": repr(e)}, "status": 502}, status=502
            )

        for rule in self._fired_post(request, body):
            if rule.action == "bulk_items":
                try:
                    parsed = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                n = rewrite_bulk_items(
                    parsed,
                    int(rule.args["status"]),
                    float(rule.args["fraction"]),
                    include_conflicts=bool(rule.args["include_conflicts"]),
                )
                if n:
                    self.stats.fault(rule.action)
                    self.stats.items_rewritten += n
                    payload = orjson.dumps(parsed)
            elif rule.action == "drop_after":
                self.stats.fault(rule.action)
                return _close_connection(request, reset=False)

        resp_headers["X-Elastic-Product"] = "Elasticsearch"
        return web.Response(status=status, body=payload, headers=resp_headers)

    async def _fired_pre(self, request: web.Request) -> list[Rule]:
        # A rule that ends the request stops the scan, so later rules keep their `times`.
        fired: list[Rule] = []
        body: bytes | None = None
        for rule in self.rules:
            if rule.action not in PRE_ACTIONS:
                continue
            if body is None and rule.body_regex is not None and rule.matches_head(request):
                body = await request.read()  # aiohttp keeps it: forwarding reads it again for free
            if rule.fires(request, self.rng, body):
                fired.append(rule)
                if rule.action != "delay":
                    break
        return fired

    def _fired_post(self, request: web.Request, body: bytes) -> list[Rule]:
        fired: list[Rule] = []
        for rule in self.rules:
            if rule.action in POST_ACTIONS and rule.fires(request, self.rng, body):
                fired.append(rule)
                if rule.action == "drop_after":
                    break
        return fired


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data),
        content_type="application/json",
        headers={"X-Elastic-Product": "Elasticsearch"},
    )


def _close_connection(request: web.Request, *, reset: bool) -> web.Response:
    """Close the client's connection without an answer (aiohttp then skips writing the response)."""
    transport = request.transport
    if transport is not None:
        if reset:
            transport.abort()
        else:
            transport.close()
    return web.Response(status=599)


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stop.set()
            return
        except PermissionError:
            pass
        await asyncio.sleep(0.5)


def _write_port_file(path: str, port: int) -> None:
    """Atomically, so a reader never sees a partial number."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


async def serve(upstream: str, listen: str, port_file: str | None, parent_pid: int | None) -> None:
    host, _, port = listen.rpartition(":")
    proxy = Proxy(upstream)
    runner = web.AppRunner(proxy.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port))
    await site.start()
    bound = runner.addresses[0][1]
    if port_file:
        await asyncio.to_thread(_write_port_file, port_file, bound)
    print(f"esproxy listening on {host}:{bound} -> {upstream}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(parent_pid, stop)) if parent_pid else None
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.esproxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--upstream", required=True, help="base URL of the server to forward to")
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on (port 0: any free)")
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.upstream, args.listen, args.port_file, args.parent_pid))


if __name__ == "__main__":
    main()
