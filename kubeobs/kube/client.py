"""A small async Kubernetes API client on aiohttp: GET, streaming watches, API discovery.

Credentials come from the ``kubernetes`` package's own loaders, so every kubeconfig feature they support
(certificate and token users, exec plugins, ``insecure-skip-tls-verify``, ``tls-server-name``,
``proxy-url``) and the in-cluster service account (with its token file re-read as the kubelet rotates
it) work unchanged::

    client = KubeClient.from_kubeconfig("~/.kube/config")     # or KubeClient.in_cluster()
    try:
        pods = await client.get("/api/v1/namespaces/default/pods", {"limit": "500"})
        async with contextlib.aclosing(client.watch("/api/v1/pods", {"resourceVersion": rv})) as events:
            async for event in events:          # {"type": "ADDED", "object": {...}}
                ...
    finally:
        await client.close()

Errors are decided here, once, and raised as :class:`KubeError` subclasses whose message names the verb
and the resource (``cannot list pods in namespace "web" ... 403 Forbidden: ...``):

- :class:`KubeAuthError` (401: the credentials were rejected) and :class:`KubeForbidden` (403: RBAC
  denies the verb) are configuration problems: retrying helps only once someone fixes them;
- :class:`KubeGone` (410, or a watch ``ERROR`` event with code 410): the resource version is too old,
  relist;
- :class:`KubeUnavailable` (connection, TLS and timeout errors, 429, 5xx, a broken stream): retry later,
  honouring ``retry_after`` when the server sent one;
- :class:`KubeNotFound` (404) and plain :class:`KubeError` for the rest (400 for a bad selector, ...);
- :class:`KubeConfigError`: the kubeconfig or service account could not be loaded.

The aiohttp session is created on first use inside the running event loop, so the constructors are
plain functions; :meth:`KubeClient.close` must be awaited (or use ``async with``).
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from kubeobs.kube.store import KubeObject

__all__ = [
    "KubeAuthError",
    "KubeClient",
    "KubeConfigError",
    "KubeCredentials",
    "KubeError",
    "KubeForbidden",
    "KubeGone",
    "KubeNotFound",
    "KubeUnavailable",
    "ResourceRef",
    "describe_path",
    "resource_path",
]

DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_WATCH_TIMEOUT = 300
WATCH_READ_MARGIN = 30.0  # a watch silent this long past its timeoutSeconds is a dead connection
USER_AGENT = "kubeobs"
_ERROR_BODY_LIMIT = 64 * 1024


# -- errors -------------------------------------------------------------------------------------------


class KubeError(Exception):
    """A request to the apiserver failed; ``status`` is the HTTP status (None: no response)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        verb: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.verb = verb
        self.path = path
        self.retry_after = retry_after


class KubeAuthError(KubeError):
    """401: the apiserver rejected the credentials (expired token, wrong CA for client certificates)."""


class KubeForbidden(KubeError):
    """403: authenticated, but RBAC does not allow the verb on the resource."""


class KubeNotFound(KubeError):
    """404: no such object, or the apiserver does not serve the resource or API version."""


class KubeGone(KubeError):
    """410: the requested resource version (or continue token) is too old: list again."""


class KubeUnavailable(KubeError):
    """The apiserver could not be reached or answered 429/5xx, or a stream broke: retry later."""


class KubeConfigError(KubeError):
    """The kubeconfig file or the in-cluster service account could not be loaded."""


# -- paths --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceRef:
    """What an API path points at; ``resource`` is empty for discovery paths."""

    group: str
    version: str
    resource: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def resource_name(self) -> str:
        """``pods``, or ``endpointslices.discovery.k8s.io`` for a named group (kubectl's spelling)."""
        return f"{self.resource}.{self.group}" if self.group and self.resource else self.resource

    def describe(self) -> str:
        if not self.resource:
            return f"API discovery for {self.group or 'the core group'}"
        what = self.resource_name
        if self.name is not None:
            what = f'{what} "{self.name}"'
            if self.subresource:
                what += f" ({self.subresource})"
        if self.namespace is not None:
            return f'{what} in namespace "{self.namespace}"'
        return what if self.name is not None else f"{what} in all namespaces"


def resource_path(
    group_version: str, resource: str, namespace: str | None = None, name: str | None = None
) -> str:
    """The API path of a collection (or of one object with ``name``).

    >>> resource_path("v1", "pods", "web")
    '/api/v1/namespaces/web/pods'
    >>> resource_path("discovery.k8s.io/v1beta1", "endpointslices")
    '/apis/discovery.k8s.io/v1beta1/endpointslices'
    """
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{resource}"
    return base + f"/{name}" if name else base


def describe_path(path: str) -> ResourceRef:
    """Parse an API path (``/api/v1/namespaces/web/pods``, ``/apis/g/v/...``) into a :class:`ResourceRef`.

    Paths that are not resource paths (``/version``, ``/apis``) give a ref with an empty resource.
    """
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return ResourceRef(group=parts[1] if len(parts) == 2 and parts[0] == "apis" else "", version="")
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return ResourceRef(group, version)
    return ResourceRef(
        group,
        version,
        resource=rest[0],
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
    )


def _error_for(status: int, body: bytes, verb: str, path: str, retry_after: str | None = None) -> KubeError:
    """Map an HTTP status (and the apiserver's ``Status`` body) to the error class callers act on."""
    reason, message = None, ""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        reason = doc.get("reason") if isinstance(doc.get("reason"), str) else None
        message = str(doc.get("message") or "")
    if not message:
        message = body[:300].decode("utf-8", "replace").strip()
    return _status_error(status, reason, message, verb, path, retry_after)


def _status_error(
    status: int, reason: str | None, message: str, verb: str, path: str, retry_after: str | None = None
) -> KubeError:
    what = describe_path(path).describe()
    label = f"{status} {reason}" if reason else str(status)
    text = f"cannot {verb} {what} (GET {path}): {label}" + (f": {message}" if message else "")
    cls: type[KubeError]
    if status == 401:
        cls, text = KubeAuthError, text + " (the apiserver rejected the credentials)"
    elif status == 403:
        cls = KubeForbidden
        ref = describe_path(path)
        if ref.resource:
            text += f' (grant "{verb}" on {ref.resource_name} to this identity with RBAC)'
    elif status == 404:
        cls = KubeNotFound
    elif status == 410:
        cls = KubeGone
    elif status == 429 or status >= 500:
        cls = KubeUnavailable
    else:
        cls = KubeError
    after = None
    if retry_after:
        try:
            after = max(0.0, float(retry_after))
        except ValueError:
            after = None
    return cls(text, status=status, reason=reason, verb=verb, path=path, retry_after=after)


# -- credentials --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeCredentials:
    """Where the apiserver is and how to authenticate; :meth:`KubeClient.from_kubeconfig` builds one.

    ``authorization`` returns the ``Authorization`` header value (``"Bearer ..."``) or None; it is called
    before every request, so a token that rotates (service account, exec plugin) stays current.
    """

    host: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_tls: bool = True
    tls_server_name: str | None = None
    proxy: str | None = None
    authorization: Callable[[], str | None] | None = None

    def ssl_context(self) -> ssl.SSLContext:
        if self.verify_tls:
            context = ssl.create_default_context(cafile=self.ca_file)
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_REREAD_SECONDS = 60.0


class _TokenFile:
    """``Bearer <token>`` from a file, read again once it is a minute old (token rotation)."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._value: str | None = None
        self._read_at = 0.0

    def __call__(self) -> str | None:
        now = self._clock()
        if self._value is None or now - self._read_at >= TOKEN_REREAD_SECONDS:
            try:
                with open(self.path, encoding="utf-8") as fh:
                    token = fh.read().strip()
            except OSError:
                if self._value is None:
                    raise
                return self._value  # keep the last one through a transient read error
            if not token:
                raise OSError(f"{self.path} is empty")
            self._value, self._read_at = f"Bearer {token}", now
        return self._value


def _credentials_from(configuration: Any) -> KubeCredentials:
    """Read a ``kubernetes.client.Configuration`` filled by one of the package's loaders."""

    def authorization() -> str | None:
        value = configuration.get_api_key_with_prefix("BearerToken")
        return str(value) if value else None

    return KubeCredentials(
        host=str(configuration.host).rstrip("/"),
        ca_file=configuration.ssl_ca_cert or None,
        cert_file=configuration.cert_file or None,
        key_file=configuration.key_file or None,
        verify_tls=bool(configuration.verify_ssl),
        tls_server_name=getattr(configuration, "tls_server_name", None) or None,
        proxy=configuration.proxy or None,
        authorization=authorization,
    )


# -- client -------------------------------------------------------------------------------------------


class KubeClient:
    """Async apiserver client; see the module docstring. One instance may serve many caches at once."""

    def __init__(
        self,
        credentials: KubeCredentials,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.credentials = credentials
        self.host = credentials.host
        self._ssl: ssl.SSLContext | bool = (
            credentials.ssl_context() if credentials.host.startswith("https:") else False
        )
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        context: str | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> KubeClient:
        """Credentials from a kubeconfig file (None: ``$KUBECONFIG`` or ``~/.kube/config``) and context
        (None: its ``current-context``). Raises :class:`KubeConfigError`."""
        from kubernetes.client import Configuration
        from kubernetes.config import kube_config

        configuration = Configuration()
        config_file = os.path.expanduser(os.fspath(path)) if path is not None else None
        try:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=config_file,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        except Exception as exc:  # the loader raises ConfigException, OSError, YAMLError, KeyError, ...
            where = config_file or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise KubeConfigError(f"cannot load kubeconfig {where}: {exc}") from exc
        return cls(
            _credentials_from(configuration), request_timeout=request_timeout, connect_timeout=connect_timeout
        )

    @classmethod
    def in_cluster(
        cls,
        *,
        account_dir: str | None = None,
        environ: Mapping[str, str] | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> KubeClient:
        """Credentials of the pod's service account: the apiserver at ``KUBERNETES_SERVICE_HOST`` /
        ``KUBERNETES_SERVICE_PORT``, the token and CA under ``/var/run/secrets/kubernetes.io/serviceaccount``
        (``account_dir``, or ``$KUBEOBS_SERVICE_ACCOUNT_DIR``). The token is read again every minute, as
        client-go does, so a rotated (projected) token is picked up. Read here, without the ``kubernetes``
        package: importing it costs about 10 MB of memory that the DNS server does not have to spare.
        Raises :class:`KubeConfigError`."""
        env = os.environ if environ is None else environ
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KubeConfigError(
                "cannot load the in-cluster service account: KUBERNETES_SERVICE_HOST and "
                "KUBERNETES_SERVICE_PORT are not set (not running in a pod? give a kubeconfig)"
            )
        directory = account_dir or env.get("KUBEOBS_SERVICE_ACCOUNT_DIR") or SERVICE_ACCOUNT_DIR
        token = _TokenFile(os.path.join(directory, "token"))
        ca_file = os.path.join(directory, "ca.crt")
        try:
            token()
            with open(ca_file, "rb"):
                pass
        except OSError as exc:
            raise KubeConfigError(f"cannot load the in-cluster service account: {exc}") from exc
        server = f"[{host}]" if ":" in host else host
        credentials = KubeCredentials(host=f"https://{server}:{port}", ca_file=ca_file, authorization=token)
        return cls(credentials, request_timeout=request_timeout, connect_timeout=connect_timeout)

    @classmethod
    def load(cls, kubeconfig: str | os.PathLike[str] | None) -> KubeClient:
        """:meth:`from_kubeconfig` for a path, :meth:`in_cluster` for None (the config file's convention)."""
        return cls.from_kubeconfig(kubeconfig) if kubeconfig is not None else cls.in_cluster()

    # -- plumbing -------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("KubeClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        auth = self.credentials.authorization() if self.credentials.authorization else None
        return {"Authorization": auth} if auth else {}

    def _request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": self._headers()}
        if self.credentials.tls_server_name:
            kwargs["server_hostname"] = self.credentials.tls_server_name
        if self.credentials.proxy:
            kwargs["proxy"] = self.credentials.proxy
        return kwargs

    def _unavailable(self, exc: BaseException, verb: str, path: str) -> KubeUnavailable:
        what = describe_path(path).describe()
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            detail = f"timed out ({detail})" if str(exc) else "timed out"
        return KubeUnavailable(f"cannot {verb} {what}: {self.host}: {detail}", verb=verb, path=path)

    # -- API ------------------------------------------------------------------------------------------

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> KubeObject:
        """GET ``path`` (e.g. ``/api/v1/namespaces/web/pods``) and return the decoded JSON object."""
        ref = describe_path(path)
        verb = "list" if ref.resource and ref.name is None else "get"
        timeout = aiohttp.ClientTimeout(total=self._request_timeout, sock_connect=self._connect_timeout)
        try:
            async with self._http().get(
                self.host + path, params=dict(params or {}), timeout=timeout, **self._request_kwargs()
            ) as resp:
                if resp.status != 200:
                    body = await resp.content.read(_ERROR_BODY_LIMIT)
                    raise _error_for(resp.status, body, verb, path, resp.headers.get("Retry-After"))
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(exc, verb, path) from exc
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise KubeUnavailable(f"cannot {verb} {ref.describe()}: the answer is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise KubeUnavailable(f"cannot {verb} {ref.describe()}: the answer is not a JSON object")
        return doc

    async def watch(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        timeout_seconds: int = DEFAULT_WATCH_TIMEOUT,
        read_timeout: float | None = None,
    ) -> AsyncGenerator[KubeObject, None]:
        """Stream the watch events of a collection: ``{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK",
        "object": {...}}``, one per JSON line, until the server ends the watch (after ``timeout_seconds``).

        ``ERROR`` events are raised, not yielded: :class:`KubeGone` for code 410, the status' class
        otherwise. No byte for ``read_timeout`` seconds (default ``timeout_seconds`` + 30) means a dead
        connection: :class:`KubeUnavailable`. Close the iterator when done early
        (``contextlib.aclosing``), which closes the connection.
        """
        query = {**(params or {}), "watch": "1", "timeoutSeconds": str(int(timeout_seconds))}
        sock_read = read_timeout if read_timeout is not None else timeout_seconds + WATCH_READ_MARGIN
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout, sock_read=sock_read)
        try:
            async with self._http().get(
                self.host + path, params=query, timeout=timeout, **self._request_kwargs()
            ) as resp:
                if resp.status != 200:
                    body = await resp.content.read(_ERROR_BODY_LIMIT)
                    raise _error_for(resp.status, body, "watch", path, resp.headers.get("Retry-After"))
                buffer = bytearray()
                # Our own line framing: aiohttp's readline() refuses lines over 128 KiB, and one event
                # carries a whole object (large ConfigMaps, pods with many containers).
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    start = 0
                    while (end := buffer.find(b"\n", start)) >= 0:
                        line = bytes(buffer[start:end])
                        start = end + 1
                        if line.strip():
                            yield _decode_event(line, path)
                    del buffer[:start]
                if bytes(buffer).strip():
                    yield _decode_event(bytes(buffer), path)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unavailable(exc, "watch", path) from exc

    async def preferred_version(self, group: str, candidates: Sequence[str]) -> str | None:
        """The first of ``candidates`` (versions, most preferred first) that the apiserver serves for
        ``group``, as a group/version string (``"discovery.k8s.io/v1beta1"``; ``"v1"`` for the core
        group ``""``), or None when it serves none of them (or not the group)."""
        if not group:
            served = (await self.get("/api")).get("versions") or []
            return next((v for v in candidates if v in served), None)
        for entry in (await self.get("/apis")).get("groups") or []:
            if isinstance(entry, dict) and entry.get("name") == group:
                versions = {v.get("version") for v in entry.get("versions") or [] if isinstance(v, dict)}
                return next((f"{group}/{v}" for v in candidates if v in versions), None)
        return None

    async def close(self) -> None:
        """Close the connections; safe to call twice."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _decode_event(line: bytes, path: str) -> KubeObject:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise KubeUnavailable(f"watch {path}: malformed event line: {exc}", verb="watch", path=path) from exc
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise KubeUnavailable(f"watch {path}: malformed event {line[:200]!r}", verb="watch", path=path)
    if event.get("type") == "ERROR":
        status = event["object"]
        code = status.get("code")
        reason = status.get("reason") if isinstance(status.get("reason"), str) else None
        message = str(status.get("message") or "")
        raise _status_error(code if isinstance(code, int) else 500, reason, message, "watch", path)
    return event
