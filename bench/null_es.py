"""A null Elasticsearch ``_bulk`` endpoint for throughput benchmarks: it stores nothing and counts.

Run::

    python bench/null_es.py --listen 127.0.0.1:0 --port-file FILE [--expect N]

What it answers (every response carries ``X-Elastic-Product: Elasticsearch``, which the official
client checks):

- ``GET /``: an Elasticsearch 8.x info document.
- ``GET /_cat/health``: a one-line ``green`` health row (rsyslog's omelasticsearch checks it).
- ``POST``/``PUT /_bulk`` and ``/<index>/_bulk``: parses the NDJSON body (any content type:
  ``application/x-ndjson``, the client's ``application/vnd.elasticsearch+x-ndjson; compatible-with=8``,
  rsyslog's ``application/json``) and answers every item ``status: 201, result: created`` with
  ``errors: false``. ``filter_path`` is honoured for the forms bulk clients use (``errors``, ``took``,
  ``items.*.<field>``), as Elasticsearch does.
- ``GET /_bench/count``: what was received: ``items``, ``requests``, ``bytes``, ``distinct_seq`` (the
  distinct ``seq=<digits>`` markers found in the documents), ``first_item_at`` / ``last_item_at`` /
  ``done_at`` (``time.monotonic()``, system-wide on Linux, so comparable with the caller's clock;
  ``done_at`` is when ``items`` first reached ``--expect``), and the content types seen.
- anything else (index templates, ``_refresh``, ...): ``{"acknowledged": true}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

ES_VERSION = "8.15.0"
_SEQ = re.compile(rb"seq=(\d+)")
_JSON = "application/json"
_MAX_BODY = 1024 * 1024 * 1024


class Counter:
    """What the endpoint has received so far."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.items = 0
        self.requests = 0
        self.bytes = 0
        self.distinct = 0
        self.seen = bytearray(expect + 1 if expect > 0 else 1024)
        self.first_item_at: float | None = None
        self.last_item_at: float | None = None
        self.done_at: float | None = None
        self.content_types: dict[str, int] = {}
        self.sample = ""  # the first action and document received, to check what a shipper sends

    def mark_seq(self, body: bytes) -> None:
        seen = self.seen
        distinct = 0
        for m in _SEQ.findall(body):
            k = int(m)
            if k >= len(seen):
                seen.extend(bytes(max(k + 1 - len(seen), len(seen))))
            if not seen[k]:
                seen[k] = 1
                distinct += 1
        self.distinct += distinct

    def add(self, items: int, nbytes: int, content_type: str) -> None:
        now = time.monotonic()
        self.requests += 1
        self.bytes += nbytes
        self.content_types[content_type] = self.content_types.get(content_type, 0) + 1
        if items:
            if self.first_item_at is None:
                self.first_item_at = now
            self.last_item_at = now
            self.items += items
            if self.done_at is None and 0 < self.expect <= self.items:
                self.done_at = now

    def as_json(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "requests": self.requests,
            "bytes": self.bytes,
            "distinct_seq": self.distinct,
            "expect": self.expect,
            "first_item_at": self.first_item_at,
            "last_item_at": self.last_item_at,
            "done_at": self.done_at,
            "content_types": self.content_types,
            "sample": self.sample,
        }


def _filter(path: str | None) -> tuple[bool, bool, list[str] | None]:
    """(took, errors, item fields or None for all) from a ``filter_path`` parameter."""
    if not path:
        return True, True, None
    took = errors = False
    fields: list[str] = []
    for part in path.split(","):
        part = part.strip().lstrip("-")
        if part == "took":
            took = True
        elif part == "errors":
            errors = True
        elif part in ("items", "items.*", "items.*.*"):
            return "took" in path, "errors" in path, None
        elif part.startswith("items.*."):
            fields.append(part[len("items.*.") :])
    return took, errors, fields


def bulk_response(body: bytes, default_index: str | None, filter_path: str | None) -> tuple[bytes, int]:
    """The ``_bulk`` answer for ``body`` (all items created) and the number of items."""
    want_took, want_errors, fields = _filter(filter_path)
    items: list[dict[str, Any]] = []
    lines = body.split(b"\n")
    i, n = 0, len(lines)
    auto = 0
    while i < n:
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        action = orjson.loads(line)
        op, meta = next(iter(action.items()))
        if op != "delete":
            i += 1  # the document line
        if fields is not None and not fields:
            items.append({op: {}})
            continue
        doc_id = meta.get("_id")
        if doc_id is None:
            auto += 1
            doc_id = f"auto-{auto}"
        full = {
            "_index": meta.get("_index", default_index),
            "_id": doc_id,
            "_version": 1,
            "result": "deleted" if op == "delete" else "created",
            "_shards": {"total": 1, "successful": 1, "failed": 0},
            "_seq_no": 0,
            "_primary_term": 1,
            "status": 200 if op == "delete" else 201,
        }
        if fields is not None:
            full = {k: v for k, v in full.items() if k in fields}
        items.append({op: full})
    out: dict[str, Any] = {}
    if want_took:
        out["took"] = 1
    if want_errors:
        out["errors"] = False
    if fields is None or fields:
        out["items"] = items
    return orjson.dumps(out), len(items)


def make_app(counter: Counter) -> web.Application:
    async def info(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": "null-es",
                "cluster_name": "bench",
                "cluster_uuid": "bench-null-endpoint",
                "version": {
                    "number": ES_VERSION,
                    "build_flavor": "default",
                    "build_type": "tar",
                    "lucene_version": "9.11.1",
                    "minimum_wire_compatibility_version": "7.17.0",
                    "minimum_index_compatibility_version": "7.0.0",
                },
                "tagline": "You Know, for Search",
            }
        )

    async def health(_: web.Request) -> web.Response:
        now = int(time.time())
        row = f"{now} {time.strftime('%H:%M:%S', time.gmtime(now))} bench green 1 1 1 1 0 0 0 0 - 100.0%\n"
        return web.Response(text=row, content_type="text/plain")

    async def bulk(request: web.Request) -> web.Response:
        body = await request.read()
        payload, count = bulk_response(
            body, request.match_info.get("index"), request.query.get("filter_path")
        )
        counter.mark_seq(body)
        if not counter.sample and count:
            counter.sample = b"\n".join(body.split(b"\n", 2)[:2]).decode("utf-8", "replace")
        counter.add(count, len(body), request.headers.get("Content-Type", ""))
        return web.Response(body=payload, content_type=_JSON)

    async def count(_: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(counter.as_json()), content_type=_JSON)

    async def acknowledged(_: web.Request) -> web.Response:
        return web.Response(body=b'{"acknowledged":true}', content_type=_JSON)

    async def product_header(_: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Elastic-Product"] = "Elasticsearch"

    app = web.Application(client_max_size=_MAX_BODY)
    app.on_response_prepare.append(product_header)
    app.router.add_get("/", info)
    app.router.add_get("/_cat/health", health)
    app.router.add_get("/_bench/count", count)
    for method in ("POST", "PUT"):
        app.router.add_route(method, "/_bulk", bulk)
        app.router.add_route(method, "/{index}/_bulk", bulk)
    app.router.add_route("*", "/{tail:.*}", acknowledged)
    return app


async def serve(listen: str, port_file: Path | None, expect: int) -> None:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(make_app(Counter(expect)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or "127.0.0.1", int(port), backlog=1024)
    await site.start()
    bound = int(runner.addresses[0][1])
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(bound))
        tmp.rename(port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: any free port)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--expect", type=int, default=0, help="items after which done_at is set")
    p.add_argument("--cpu", type=int, help="pin this process to that CPU")
    args = p.parse_args()
    if args.cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {args.cpu})
    coro = serve(args.listen, args.port_file, args.expect)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
