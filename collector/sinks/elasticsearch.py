"""The Elasticsearch sink: ships batches with one ``_bulk`` request each, on the official async client.

Config (``sink:`` with ``type: elasticsearch``, see :class:`collector.config.ElasticsearchSink`): ``hosts``,
``index`` (strftime pattern on each record's timestamp, in UTC), ``dead_letter_index``,
``template_name``/``install_template``, auth (``username``/``password``, ``api_key``), TLS
(``ca_certs``, ``verify_certs``) and ``request_timeout``.

Lifecycle: :meth:`~ElasticsearchSinkImpl.start` installs two composable index templates (the log
indices', named ``template_name``, and the dead-letter index's, ``<template_name>-deadletter``);
:meth:`~ElasticsearchSinkImpl.write` sends a batch and returns one Outcome per record;
:meth:`~ElasticsearchSinkImpl.dead_letter` stores rejected records; :meth:`~ElasticsearchSinkImpl.close`.

Errors (decided here, acted on by the delivery loop): connection problems, timeouts, and HTTP 429/5xx for
a whole request raise :class:`TemporaryError`; authentication/authorization failures, TLS verification
failures, a server that is not Elasticsearch, and other 4xx for a whole request (e.g. 413: lower
``batch_max_bytes``) raise :class:`PermanentError`. The client's own retries are off: the delivery loop
owns retries. Every write is idempotent (``create`` with deterministic ids; 409 counts as delivered).

Example::

    sink = build(ElasticsearchSink(type="elasticsearch", hosts=["http://127.0.0.1:9200"]))
    await sink.start()
    outcomes = await sink.write(batch)
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from elastic_transport import TlsError
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    AuthenticationException,
    AuthorizationException,
    TransportError,
    UnsupportedProductError,
)
from elasticsearch.serializer import NdjsonSerializer, OrjsonSerializer

from collector.clock import Clock, SystemClock
from collector.config import ElasticsearchSink
from collector.record import Record
from collector.sinks.base import Outcome, PermanentError, Sink, Status, TemporaryError
from collector.sinks.bulk import (
    BULK_OK_PREFIX,
    BulkEncoder,
    classify_bulk_response,
    encode_dead_letters,
    index_patterns,
    parse_bulk_response,
)

# What classification reads; everything else in a bulk response is skipped by the server.
BULK_FILTER_PATH = "errors,items.*.status,items.*.error"
_BULK_HEADERS = {"accept": "application/json", "content-type": "application/x-ndjson"}
TEMPLATE_PRIORITY = 200  # above Elasticsearch's built-in "logs" template (logs-*-*, priority 100)

_KEYWORD: dict[str, Any] = {"type": "keyword"}

T = TypeVar("T")


def logs_mappings() -> dict[str, Any]:
    """Mappings for the log indices (Elastic Common Schema names, see SPEC.md "Collector contract")."""
    return {
        "date_detection": False,
        "dynamic_templates": [
            {
                "kubernetes_labels": {
                    "path_match": "kubernetes.labels.*",
                    "match_mapping_type": "string",
                    "mapping": _KEYWORD,
                }
            },
            {
                "strings_as_keyword": {
                    "match_mapping_type": "string",
                    "mapping": {"type": "keyword", "ignore_above": 1024},
                }
            },
        ],
        "properties": {
            "@timestamp": {"type": "date_nanos"},
            "message": {"type": "text"},
            "stream": _KEYWORD,
            "tags": _KEYWORD,
            "log": {"properties": {"file": {"properties": {"path": _KEYWORD}}, "offset": {"type": "long"}}},
            "kubernetes": {
                "properties": {
                    "namespace": _KEYWORD,
                    "pod": {"properties": {"name": _KEYWORD, "uid": _KEYWORD}},
                    "container": {"properties": {"name": _KEYWORD}},
                    "node": {"properties": {"name": _KEYWORD}},
                    "labels": {"type": "object", "dynamic": True},
                }
            },
            "container": {"properties": {"id": _KEYWORD, "image": {"properties": {"name": _KEYWORD}}}},
            "error": {"properties": {"message": {"type": "text"}}},
            "kubeobs": {
                "properties": {
                    "split": {"properties": {"part": {"type": "integer"}, "last": {"type": "boolean"}}}
                }
            },
        },
    }


def dead_letter_mappings() -> dict[str, Any]:
    """Mappings for the dead-letter index: the log fields plus the error; the original is stored only."""
    mappings = logs_mappings()
    props = mappings["properties"]
    props["error"] = {
        "properties": {
            "type": _KEYWORD,
            "reason": {"type": "text"},
            "status": {"type": "short"},
            "message": {"type": "text"},
        }
    }
    props["kubeobs"] = {"properties": {"original": {"type": "keyword", "index": False, "doc_values": False}}}
    return mappings


def templates(config: ElasticsearchSink) -> dict[str, dict[str, Any]]:
    """The index templates :meth:`ElasticsearchSinkImpl.start` installs, by name."""
    meta = {"managed_by": "kubeobs"}
    return {
        config.template_name: {
            "index_patterns": index_patterns(config.index),
            "priority": TEMPLATE_PRIORITY,
            "template": {"mappings": logs_mappings()},
            "meta": meta,
        },
        f"{config.template_name}-deadletter": {
            "index_patterns": [config.dead_letter_index],
            # one above: wins (rather than clashing) if the logs pattern also matches this name
            "priority": TEMPLATE_PRIORITY + 1,
            "template": {"mappings": dead_letter_mappings()},
            "meta": meta,
        },
    }


class _BulkAwareJsonSerializer(OrjsonSerializer):
    """orjson, except that an error-free bulk response is only counted, not parsed item by item."""

    def loads(self, data: bytes) -> Any:
        if data.startswith(BULK_OK_PREFIX):
            return parse_bulk_response(data)
        return super().loads(data)


class _BytesNdjsonSerializer(NdjsonSerializer):
    """Sends an already encoded NDJSON body as is (the stock serializer copies it line by line)."""

    def dumps(self, data: Any) -> bytes:
        if isinstance(data, bytes):
            return data
        return super().dumps(data)


def client_options(config: ElasticsearchSink) -> dict[str, Any]:
    """Keyword arguments for :class:`AsyncElasticsearch` from the sink's settings."""
    options: dict[str, Any] = {
        "hosts": list(config.hosts),
        "request_timeout": config.request_timeout,
        # The delivery loop owns retries and backoff: the client must not retry on its own.
        "max_retries": 0,
        "retry_on_status": (),
        "retry_on_timeout": False,
        "serializers": {
            "application/json": _BulkAwareJsonSerializer(),
            "application/vnd.elasticsearch+json": _BulkAwareJsonSerializer(),
            "application/x-ndjson": _BytesNdjsonSerializer(),
        },
    }
    if config.username is not None:
        # pre-encoded: the client would encode a (user, password) tuple as ASCII only
        pair = f"{config.username}:{config.password or ''}".encode()
        options["basic_auth"] = base64.b64encode(pair).decode("ascii")
    if config.api_key is not None:
        options["api_key"] = config.api_key
    if any(h.startswith("https:") for h in config.hosts):
        if config.verify_certs:
            # our own context: the transport turns hostname checks off for IP-address hosts; Python
            # matches IP addresses against the certificate's subjectAltName, so keep the check on
            ctx = ssl.create_default_context(cafile=config.ca_certs)
            ctx.check_hostname = True
            options["ssl_context"] = ctx
        else:
            options["verify_certs"] = False
            options["ssl_show_warn"] = False  # the operator asked for it; config docs say it is insecure
    return options


def _raise_for(exc: Exception, what: str) -> NoReturn:
    """Translate a client exception into the sink contract's two kinds of error."""
    if isinstance(exc, AuthenticationException | AuthorizationException | UnsupportedProductError):
        raise PermanentError(f"{what}: {exc}") from exc
    if isinstance(exc, ApiError):
        status = exc.meta.status
        if status == 429 or status >= 500:
            raise TemporaryError(f"{what}: HTTP {status}: {exc}") from exc
        raise PermanentError(f"{what}: HTTP {status}: {exc}", status) from exc
    if isinstance(exc, TransportError):
        # with retries off the transport leaves ``errors`` empty and str(exc) loses the reason
        reason = exc.message if isinstance(exc.message, str) and exc.message else repr(exc)
        if isinstance(exc, TlsError):
            raise PermanentError(f"{what}: TLS error: {reason}") from exc
        raise TemporaryError(f"{what}: {reason}") from exc
    raise TemporaryError(f"{what}: {exc}") from exc


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ElasticsearchSinkImpl:
    """See the module docstring. ``clock.time()`` dates dead letters and names the index of records
    whose timestamp cannot be parsed; ``client`` replaces the one built from the config (tests)."""

    name = "elasticsearch"

    def __init__(
        self,
        config: ElasticsearchSink,
        *,
        clock: Clock | None = None,
        client: AsyncElasticsearch | None = None,
    ) -> None:
        self.config = config
        self._clock = clock if clock is not None else SystemClock()
        self._client = client if client is not None else AsyncElasticsearch(**client_options(config))
        self._encoder = BulkEncoder(config.index)

    @property
    def client(self) -> AsyncElasticsearch:
        return self._client

    async def _call(self, what: str, request: Awaitable[T]) -> T:
        try:
            return await request
        except (ApiError, TransportError) as e:
            _raise_for(e, what)

    async def start(self) -> None:
        if not self.config.install_template:
            await self._call("connecting to Elasticsearch", self._client.info())
            return
        for name, body in templates(self.config).items():
            await self._call(
                f"installing index template {name}",
                self._client.indices.put_index_template(name=name, **body),
            )

    async def _bulk(self, what: str, body: bytes, count: int) -> list[Outcome]:
        # POST, not the PUT of the client's bulk(): aiohttp silently re-sends an idempotent-method
        # request once when the connection drops, and retries belong to the delivery loop (one place
        # retries, counts and logs). The body goes through _BytesNdjsonSerializer untouched.
        response = await self._call(
            what,
            self._client.perform_request(
                "POST",
                "/_bulk",
                params={"filter_path": BULK_FILTER_PATH},
                headers=_BULK_HEADERS,
                body=body,
                endpoint_id="bulk",
                path_parts={},
            ),
        )
        return classify_bulk_response(response.body, count)

    async def write(self, batch: Sequence[Record]) -> list[Outcome]:
        if not batch:
            return []
        fallback = self._encoder.namer.for_datetime(datetime.fromtimestamp(self._clock.time(), UTC))
        return await self._bulk("bulk request", self._encoder.encode(batch, fallback), len(batch))

    async def dead_letter(self, records: Sequence[Record], errors: Sequence[str | Outcome]) -> None:
        """Store rejected records in the dead-letter index (ids are the records' own: idempotent).

        ``errors`` are the rejection texts (``"type: reason"``) or the Outcomes themselves, which also
        carry the HTTP status. Raises TemporaryError if the index is unreachable or any document must
        be retried. A document the index rejects is re-sent without its ``kubernetes``/``container``
        objects; if even that is rejected, PermanentError (the dead-letter index mapping is broken).
        """
        if not records:
            return
        index = self.config.dead_letter_index
        failed_at = _rfc3339(self._clock.time())
        body = encode_dead_letters(records, errors, index, failed_at)
        outcomes = await self._bulk("dead-letter bulk request", body, len(records))
        self._raise_if_retry(outcomes)
        rejected = [i for i, o in enumerate(outcomes) if o.status is Status.REJECTED]
        if not rejected:
            return
        body = encode_dead_letters(
            [records[i] for i in rejected], [errors[i] for i in rejected], index, failed_at, minimal=True
        )
        outcomes = await self._bulk("dead-letter bulk request", body, len(rejected))
        self._raise_if_retry(outcomes)
        still = [o for o in outcomes if o.status is Status.REJECTED]
        if still:
            raise PermanentError(
                f"dead-letter index {index} rejected {len(still)} document(s): {still[0].error}"
            )

    @staticmethod
    def _raise_if_retry(outcomes: Sequence[Outcome]) -> None:
        retry = [o for o in outcomes if o.status is Status.RETRY]
        if retry:
            raise TemporaryError(f"dead-letter index: {len(retry)} document(s) to retry: {retry[0].error}")

    async def close(self) -> None:
        await self._client.close()


def build(config: ElasticsearchSink) -> Sink:
    """The factory for ``sink.type: elasticsearch``."""
    return ElasticsearchSinkImpl(config)
