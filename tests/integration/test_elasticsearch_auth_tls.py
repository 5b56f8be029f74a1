"""Authentication and TLS of the Elasticsearch sink, against an in-process HTTPS fake of Elasticsearch.

The fake (aiohttp, certificates from a throwaway CA made by ``trustme``) answers what the sink sends,
``GET /``, ``PUT /_index_template/<name>`` and ``POST /_bulk``, with Elasticsearch's
``X-Elastic-Product`` header, and records every request's headers. It can demand an exact
``Authorization`` header (401 otherwise) or refuse everything with a given status.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web
from elastic_transport import TlsError
from elasticsearch import AuthenticationException, AuthorizationException
from multidict import CIMultiDict

from collector.config import ElasticsearchSink
from collector.record import FileInfo, Record
from collector.sinks.base import DELIVERED, PermanentError, Sink
from collector.sinks.elasticsearch import build

FILE = FileInfo(
    key="2049:88:cafe",
    path="/var/log/containers/api-0_auth_server-" + "a" * 64 + ".log",
    id_prefix="5ec",
)
RECORDS = [
    Record(
        file=FILE,
        offset=i * 80,
        ckpt=(i + 1) * 80,
        timestamp=f"2026-11-26T10:00:0{i}.123456789Z",
        stream="stdout",
        message=f"hello {i}",
        size=80,
    )
    for i in range(3)
]
USER, PASSWORD = "elastic", "pa:ss word"  # a colon in the password: only the first one splits
API_KEY = base64.b64encode(b"VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw").decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()  # UTF-8, as curl does


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDict[str]
    secure: bool


@dataclass
class FakeElasticsearch:
    """An HTTPS server speaking just enough Elasticsearch for the sink (see the module docstring)."""

    ca: trustme.CA
    cert_names: Sequence[str] = ("127.0.0.1", "localhost")
    required_authorization: str | None = None  # answer 401 unless Authorization is exactly this
    refuse_with: int | None = None  # answer every request with this status (security_exception)
    seen: list[Seen] = field(default_factory=list)
    docs: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # _id -> (_index, _source)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*self.cert_names).configure_cert(server_ctx)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append(Seen(request.method, request.path, CIMultiDict(request.headers), request.secure))
        if self.refuse_with is not None:
            return self._security_error(self.refuse_with, "action is unauthorized for this API key")
        wanted = self.required_authorization
        if wanted is not None and request.headers.get("Authorization") != wanted:
            return self._security_error(401, "unable to authenticate user for REST request")
        if request.method == "GET" and request.path == "/":
            return self._json(
                200,
                {
                    "name": "fake-node",
                    "cluster_name": "kubeobs-test",
                    "version": {"number": "8.13.4", "build_flavor": "default"},
                    "tagline": "You Know, for Search",
                },
            )
        if request.method == "PUT" and request.path.startswith("/_index_template/"):
            orjson.loads(await request.read())  # the body must be JSON
            return self._json(200, {"acknowledged": True})
        if request.method == "POST" and request.path == "/_bulk":
            return self._json(200, self._bulk(await request.read()))
        return self._json(404, {"error": f"no handler for {request.method} {request.path}", "status": 404})

    def _bulk(self, body: bytes) -> dict[str, Any]:
        lines = [orjson.loads(line) for line in body.split(b"\n") if line.strip()]
        assert len(lines) % 2 == 0, "a _bulk body of create actions comes in action/source pairs"
        items = []
        for action, source in zip(lines[::2], lines[1::2], strict=True):
            ((op, meta),) = action.items()
            assert op == "create", action
            self.docs[meta["_id"]] = (meta["_index"], source)
            items.append(
                {
                    op: {
                        "_index": meta["_index"],
                        "_id": meta["_id"],
                        "_version": 1,
                        "result": "created",
                        "status": 201,
                    }
                }
            )
        return {"took": 1, "errors": False, "items": items}

    def _security_error(self, status: int, reason: str) -> web.Response:
        error = {"type": "security_exception", "reason": reason}
        response = self._json(status, {"error": {"root_cause": [error], **error}, "status": status})
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="security", charset="UTF-8", ApiKey'
        return response

    @staticmethod
    def _json(status: int, body: dict[str, Any]) -> web.Response:
        return web.Response(
            status=status,
            body=orjson.dumps(body),
            headers={"Content-Type": "application/json", "X-Elastic-Product": "Elasticsearch"},
        )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_path(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def fake_es(ca: trustme.CA) -> AsyncIterator[FakeElasticsearch]:
    server = FakeElasticsearch(ca)
    await server.start()
    yield server
    await server.stop()


def config(hosts: str, **settings: Any) -> ElasticsearchSink:
    return ElasticsearchSink(type="elasticsearch", hosts=[hosts], request_timeout=5, **settings)


@asynccontextmanager
async def opened(cfg: ElasticsearchSink) -> AsyncIterator[Sink]:
    sink = build(cfg)
    try:
        yield sink
    finally:
        await sink.close()


async def test_basic_auth_over_tls_with_the_test_ca(fake_es: FakeElasticsearch, ca_path: str) -> None:
    fake_es.required_authorization = basic(USER, PASSWORD)
    async with opened(config(fake_es.url, username=USER, password=PASSWORD, ca_certs=ca_path)) as sink:
        await sink.start()
        assert await sink.write(RECORDS) == [DELIVERED] * 3

    assert [(s.method, s.path) for s in fake_es.seen] == [
        ("PUT", "/_index_template/kubeobs-logs"),
        ("PUT", "/_index_template/kubeobs-logs-deadletter"),
        ("POST", "/_bulk"),
    ]
    assert all(s.secure for s in fake_es.seen)
    assert {s.headers["Authorization"] for s in fake_es.seen} == {
        "Basic " + base64.b64encode(b"elastic:pa:ss word").decode()
    }
    assert fake_es.docs == {r.id: ("logs-k8s-2026.11.26", r.document()) for r in RECORDS}


async def test_api_key_arrives_as_apikey_authorization(fake_es: FakeElasticsearch, ca_path: str) -> None:
    fake_es.required_authorization = f"ApiKey {API_KEY}"
    cfg = config(fake_es.url, api_key=API_KEY, ca_certs=ca_path, install_template=False)
    async with opened(cfg) as sink:
        await sink.start()  # without templates to install, start() checks the connection with GET /
        assert await sink.write(RECORDS) == [DELIVERED] * 3

    assert [(s.method, s.path) for s in fake_es.seen] == [("GET", "/"), ("POST", "/_bulk")]
    assert [s.headers["Authorization"] for s in fake_es.seen] == [f"ApiKey {API_KEY}"] * 2
    assert set(fake_es.docs) == {r.id for r in RECORDS}


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({"username": USER, "password": "wrong"}, id="wrong-password"),
        pytest.param({"api_key": base64.b64encode(b"id:revoked").decode()}, id="wrong-api-key"),
        pytest.param({}, id="no-credentials"),
    ],
)
@pytest.mark.parametrize("install_template", [True, False])
async def test_rejected_credentials_are_permanent_errors(
    fake_es: FakeElasticsearch, ca_path: str, credentials: dict[str, str], install_template: bool
) -> None:
    fake_es.required_authorization = basic(USER, PASSWORD)
    cfg = config(fake_es.url, ca_certs=ca_path, install_template=install_template, **credentials)
    async with opened(cfg) as sink:
        with pytest.raises(PermanentError, match="401") as started:
            await sink.start()
        assert isinstance(started.value.__cause__, AuthenticationException)
        assert "security_exception" in str(started.value)

        with pytest.raises(PermanentError, match="401") as written:
            await sink.write(RECORDS)
        assert isinstance(written.value.__cause__, AuthenticationException)

    assert len(fake_es.seen) == 2, "the client itself must not retry: the delivery loop owns retries"
    assert not fake_es.docs


async def test_forbidden_bulk_is_a_permanent_error(fake_es: FakeElasticsearch, ca_path: str) -> None:
    fake_es.refuse_with = 403  # e.g. an API key without the index privilege
    async with opened(config(fake_es.url, api_key=API_KEY, ca_certs=ca_path)) as sink:
        with pytest.raises(PermanentError, match="403") as written:
            await sink.write(RECORDS)
    assert isinstance(written.value.__cause__, AuthorizationException)
    assert len(fake_es.seen) == 1


async def test_tls_with_the_test_ca_verifies_the_server(fake_es: FakeElasticsearch, ca_path: str) -> None:
    async with opened(config(fake_es.url, ca_certs=ca_path)) as sink:
        await sink.start()
        assert await sink.write(RECORDS) == [DELIVERED] * 3
    assert all(s.secure and "Authorization" not in s.headers for s in fake_es.seen)


async def test_tls_without_the_test_ca_fails_verification_at_once(fake_es: FakeElasticsearch) -> None:
    """No ``ca_certs``: the client trusts its default bundle (certifi's, not the test CA). A failed
    verification is a PermanentError (a TLS error, not a network outage) and no request arrives."""
    async with opened(config(fake_es.url)) as sink:
        t0 = time.monotonic()
        with pytest.raises(PermanentError, match="TLS error") as started:
            await sink.start()
        with pytest.raises(PermanentError, match="TLS error") as written:
            await sink.write(RECORDS)
        elapsed = time.monotonic() - t0
    for raised in (started.value, written.value):
        assert isinstance(raised.__cause__, TlsError)
        assert "CERTIFICATE_VERIFY_FAILED" in raised.__cause__.message
        assert "unable to get local issuer certificate" in raised.__cause__.message
    assert elapsed < 4, f"a TLS failure must fail fast, not be retried ({elapsed:.1f}s)"
    assert fake_es.seen == []


async def test_tls_failure_message_names_the_reason(fake_es: FakeElasticsearch) -> None:
    async with opened(config(fake_es.url)) as sink:
        with pytest.raises(PermanentError) as started:
            await sink.start()
    assert "CERTIFICATE_VERIFY_FAILED" in str(started.value)


async def test_hostname_is_verified_for_named_hosts(ca: trustme.CA, ca_path: str) -> None:
    server = FakeElasticsearch(ca, cert_names=("elasticsearch.example",))
    await server.start()
    try:
        async with opened(config(f"https://localhost:{server.port}", ca_certs=ca_path)) as sink:
            with pytest.raises(PermanentError, match="TLS error") as started:
                await sink.start()
        cause = started.value.__cause__
        assert isinstance(cause, TlsError)
        assert "Hostname mismatch, certificate is not valid for 'localhost'" in cause.message
        assert server.seen == []
    finally:
        await server.stop()


async def test_ip_address_is_verified_against_the_certificate(ca: trustme.CA, ca_path: str) -> None:
    server = FakeElasticsearch(ca, cert_names=("elasticsearch.example",))
    await server.start()
    try:
        async with opened(config(server.url, ca_certs=ca_path, install_template=False)) as sink:
            with pytest.raises(PermanentError):
                await sink.start()
    finally:
        await server.stop()


async def test_non_ascii_password_is_sent_as_utf8(fake_es: FakeElasticsearch, ca_path: str) -> None:
    fake_es.required_authorization = basic(USER, "pässwörd")
    async with opened(config(fake_es.url, username=USER, password="pässwörd", ca_certs=ca_path)) as sink:
        await sink.start()
        assert await sink.write(RECORDS) == [DELIVERED] * 3


async def test_verify_certs_false_connects_without_the_ca(fake_es: FakeElasticsearch) -> None:
    # an explicit opt-out, documented as insecure: no Python warning on every start
    sink = build(config(fake_es.url, verify_certs=False))
    try:
        await sink.start()
        assert await sink.write(RECORDS) == [DELIVERED] * 3
    finally:
        await sink.close()
    assert fake_es.seen[-1].path == "/_bulk"
    assert set(fake_es.docs) == {r.id for r in RECORDS}
