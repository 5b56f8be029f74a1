"""KubeClient without an apiserver: paths, error mapping, kubeconfig loading, and watch streaming against a
small local aiohttp server (odd chunking, huge events, ERROR events, read timeouts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from kubeobs.kube.client import (
    KubeAuthError,
    KubeClient,
    KubeConfigError,
    KubeCredentials,
    KubeError,
    KubeForbidden,
    KubeGone,
    KubeNotFound,
    KubeUnavailable,
    ResourceRef,
    _TokenFile,
    describe_path,
    resource_path,
)


def test_resource_paths() -> None:
    assert resource_path("v1", "pods") == "/api/v1/pods"
    assert resource_path("v1", "pods", "web", "web-0") == "/api/v1/namespaces/web/pods/web-0"
    assert resource_path("v1", "namespaces", None, "kube-system") == "/api/v1/namespaces/kube-system"
    assert (
        resource_path("discovery.k8s.io/v1", "endpointslices", "web")
        == "/apis/discovery.k8s.io/v1/namespaces/web/endpointslices"
    )


@pytest.mark.parametrize(
    ("path", "ref", "text"),
    [
        ("/api/v1/pods", ResourceRef("", "v1", "pods"), "pods in all namespaces"),
        (
            "/api/v1/namespaces/web/pods?limit=5",
            ResourceRef("", "v1", "pods", "web"),
            'pods in namespace "web"',
        ),
        (
            "/api/v1/namespaces/web/pods/web-0/status",
            ResourceRef("", "v1", "pods", "web", "web-0", "status"),
            'pods "web-0" (status) in namespace "web"',
        ),
        ("/api/v1/namespaces", ResourceRef("", "v1", "namespaces"), "namespaces in all namespaces"),
        (
            "/api/v1/namespaces/kube-system",
            ResourceRef("", "v1", "namespaces", None, "kube-system"),
            'namespaces "kube-system"',
        ),
        (
            "/apis/discovery.k8s.io/v1beta1/namespaces/web/endpointslices",
            ResourceRef("discovery.k8s.io", "v1beta1", "endpointslices", "web"),
            'endpointslices.discovery.k8s.io in namespace "web"',
        ),
        ("/apis", ResourceRef("", ""), "API discovery for the core group"),
        ("/apis/discovery.k8s.io", ResourceRef("discovery.k8s.io", ""), "API discovery for discovery.k8s.io"),
    ],
)
def test_describe_path(path: str, ref: ResourceRef, text: str) -> None:
    assert describe_path(path) == ref
    assert ref.describe() == text


# -- a tiny apiserver stand-in ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[KubeClient]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    client = KubeClient(KubeCredentials(host=f"http://127.0.0.1:{port}", authorization=lambda: "Bearer t0k"))
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()


def status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}  # fmt: skip
    return web.json_response(body, status=code)


async def test_get_sends_the_token_and_decodes() -> None:
    seen: dict[str, str] = {}

    async def pods(request: web.Request) -> web.Response:
        seen.update(auth=request.headers["Authorization"], limit=request.query["limit"])
        return web.json_response({"kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": []})

    async with serve({"/api/v1/pods": pods}) as client:
        page = await client.get("/api/v1/pods", {"limit": "5"})
    assert page["metadata"]["resourceVersion"] == "7"
    assert seen == {"auth": "Bearer t0k", "limit": "5"}


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (401, "Unauthorized", KubeAuthError),
        (403, "Forbidden", KubeForbidden),
        (404, "NotFound", KubeNotFound),
        (410, "Expired", KubeGone),
        (429, "TooManyRequests", KubeUnavailable),
        (503, "ServiceUnavailable", KubeUnavailable),
        (400, "BadRequest", KubeError),
    ],
)
async def test_http_errors_map_to_classes_naming_verb_and_resource(
    code: int, reason: str, cls: type[KubeError]
) -> None:
    async def denied(request: web.Request) -> web.Response:
        resp = status(code, reason, "the server's own words")
        if code == 429:
            resp.headers["Retry-After"] = "3"
        return resp

    async with serve({"/api/v1/namespaces/web/pods": denied}) as client:
        with pytest.raises(KubeError) as info:
            await client.get("/api/v1/namespaces/web/pods")
    err = info.value
    assert type(err) is cls and err.status == code and err.verb == "list"
    text = str(err)
    assert text.startswith(
        f'cannot list pods in namespace "web" (GET /api/v1/namespaces/web/pods): {code} {reason}'
    )
    assert "the server's own words" in text
    if code == 403:
        assert 'grant "list" on pods to this identity with RBAC' in text
    if code == 429:
        assert err.retry_after == 3.0


async def test_watch_frames_lines_across_odd_chunks_including_huge_events() -> None:
    big = {"metadata": {"name": "big", "resourceVersion": "2"}, "data": {"x": "y" * 300_000}}
    events = [
        {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "1"}}},
        {"type": "MODIFIED", "object": big},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "3"}}},
    ]
    seen: dict[str, str] = {}

    async def watch(request: web.Request) -> web.StreamResponse:
        seen.update(request.query)
        resp = web.StreamResponse()
        await resp.prepare(request)
        stream = b"".join(orjson.dumps(e) + b"\n" for e in events)
        for i in range(0, len(stream), 777):  # chunk boundaries fall anywhere, mid-line included
            await resp.write(stream[i : i + 777])
        await resp.write_eof()
        return resp

    async with serve({"/api/v1/pods": watch}) as client:
        got = [e async for e in client.watch("/api/v1/pods", {"resourceVersion": "1"}, timeout_seconds=5)]
    assert got == events
    assert seen == {"resourceVersion": "1", "watch": "1", "timeoutSeconds": "5"}


async def test_watch_error_events_raise_gone_and_others() -> None:
    def error_stream(code: int, reason: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            await resp.prepare(request)
            ok = {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "5"}}}
            message = f"too old resource version: 1 ({code})"
            err = {
                "type": "ERROR",
                "object": {"kind": "Status", "code": code, "reason": reason, "message": message},
            }
            await resp.write(orjson.dumps(ok) + b"\n" + orjson.dumps(err) + b"\n")
            return resp

        return handler

    async with serve(
        {"/api/v1/pods": error_stream(410, "Expired"), "/api/v1/nodes": error_stream(500, "x")}
    ) as c:
        got = []
        with pytest.raises(KubeGone, match=r"cannot watch pods in all namespaces .*410 Expired: too old"):
            async for event in c.watch("/api/v1/pods"):
                got.append(event)
        assert [e["type"] for e in got] == ["ADDED"]
        with pytest.raises(KubeUnavailable):
            async for _ in c.watch("/api/v1/nodes"):
                pass


async def test_watch_read_timeout_and_refused_connections_are_unavailable() -> None:
    async def silent(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await asyncio.sleep(1.5)
        return resp

    async with serve({"/api/v1/pods": silent}) as client:
        with pytest.raises(KubeUnavailable, match="timed out"):
            async for _ in client.watch("/api/v1/pods", timeout_seconds=60, read_timeout=0.3):
                pass
    refused = KubeClient(KubeCredentials(host=f"http://127.0.0.1:{_free_port()}"))
    try:
        with pytest.raises(KubeUnavailable, match=r"cannot list pods in all namespaces: http://127\.0\.0\.1"):
            await refused.get("/api/v1/pods")
    finally:
        await refused.close()


async def test_preferred_version_walks_the_candidates() -> None:
    async def apis(request: web.Request) -> web.Response:
        groups = [
            {"name": "apps", "versions": [{"version": "v1"}]},
            {"name": "discovery.k8s.io", "versions": [{"version": "v1beta1"}]},
        ]
        return web.json_response({"kind": "APIGroupList", "groups": groups})

    async def api(request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"]})

    async with serve({"/apis": apis, "/api": api}) as client:
        assert (
            await client.preferred_version("discovery.k8s.io", ["v1", "v1beta1"])
            == "discovery.k8s.io/v1beta1"
        )
        assert await client.preferred_version("discovery.k8s.io", ["v1"]) is None
        assert await client.preferred_version("nope.example.com", ["v1"]) is None
        assert await client.preferred_version("", ["v1"]) == "v1"


# -- kubeconfig ---------------------------------------------------------------------------------------


def test_from_kubeconfig_reads_host_token_and_tls_settings(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": "https://10.0.0.1:6443",
                    "insecure-skip-tls-verify": True,
                    "tls-server-name": "kubernetes",
                },
            }
        ],
        "users": [{"name": "u", "user": {"token": "s3cret"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    client = KubeClient.from_kubeconfig(path)
    creds = client.credentials
    assert creds.host == "https://10.0.0.1:6443" and creds.verify_tls is False
    assert creds.tls_server_name == "kubernetes"
    assert creds.authorization is not None and creds.authorization() == "Bearer s3cret"


@pytest.mark.parametrize("content", ["", "not: [yaml", '{"apiVersion": "v1", "contexts": []}'])
def test_bad_kubeconfig_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    with pytest.raises(KubeConfigError, match="cannot load kubeconfig"):
        KubeClient.from_kubeconfig(path)
    with pytest.raises(KubeConfigError, match="cannot load kubeconfig"):
        KubeClient.from_kubeconfig(tmp_path / "missing")


def test_in_cluster_outside_a_cluster_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeConfigError, match="in-cluster service account"):
        KubeClient.in_cluster()


def test_in_cluster_reads_the_service_account_and_rereads_the_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "ca.crt").write_text("not read here")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeConfigError, match="in-cluster service account"):
        KubeClient.in_cluster(account_dir=str(tmp_path / "missing"), environ=env)
    now = [0.0]
    token = _TokenFile(str(tmp_path / "token"), clock=lambda: now[0])
    assert token() == "Bearer first"
    (tmp_path / "token").write_text("second")
    now[0] = 59.0
    assert token() == "Bearer first"  # read again only once a minute old
    now[0] = 61.0
    assert token() == "Bearer second"
    (tmp_path / "token").unlink()
    now[0] = 200.0
    assert token() == "Bearer second"  # a transient read error keeps the last token
