"""The Elasticsearch sink against a real server (osmem-server behind the esproxy, see tests/support)."""

from __future__ import annotations

import urllib.error
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from elasticsearch import AsyncElasticsearch

from collector.config import ElasticsearchSink
from collector.record import FileInfo, Record
from collector.sinks.base import ALREADY_STORED, DELIVERED, Outcome, PermanentError, Status, TemporaryError
from collector.sinks.elasticsearch import ElasticsearchSinkImpl, build, client_options, templates
from tests.support.servers import EsServer, http_json

FILE = FileInfo(
    key="2049:77:beef",
    path="/var/log/containers/web-1_shop_nginx-0123abcd.log",
    id_prefix="c0ffee",
    kubernetes={
        "namespace": "shop",
        "pod": {"name": "web-1", "uid": "5d2c9a1e-0000-4000-8000-1234567890ab"},
        "container": {"name": "nginx"},
        "node": {"name": "node-a"},
        "labels": {"app": "web", "app_kubernetes_io/version": "1.2"},
    },
    container={"id": "0123abcd", "image": {"name": "nginx:1.25"}},
)


def make_records(n: int, *, first_offset: int = 0, day: str = "2024-03-01") -> list[Record]:
    return [
        Record(
            file=FILE,
            offset=first_offset + i * 100,
            ckpt=first_offset + (i + 1) * 100,
            timestamp=f"{day}T12:00:{i % 60:02d}.{i:09d}Z",
            stream="stdout" if i % 2 else "stderr",
            message=f"line {first_offset + i} GET /index.html 200",
            size=100,
        )
        for i in range(n)
    ]


class Env:
    """A sink with unique index names on a server, plus a plain client to look at the results."""

    def __init__(self, server: EsServer) -> None:
        tag = uuid.uuid4().hex[:10]
        self.server = server
        self.config = ElasticsearchSink(
            type="elasticsearch",
            hosts=[server.url],
            index=f"kubeobs-test-{tag}-%Y.%m.%d",
            dead_letter_index=f"kubeobs-test-{tag}-deadletter",
            template_name=f"kubeobs-test-{tag}",
            request_timeout=10,
        )
        self.sink = ElasticsearchSinkImpl(self.config)
        # straight to osmem: checks are not disturbed by the proxy's faults
        self.es = AsyncElasticsearch(hosts=[server.url], request_timeout=10)

    @property
    def index_glob(self) -> str:
        return self.config.index.replace("%Y.%m.%d", "*")

    async def count(self, index: str | None = None) -> int:
        await self.es.indices.refresh(index=index or self.index_glob)
        resp = await self.es.count(index=index or self.index_glob)
        return int(resp["count"])

    async def close(self) -> None:
        await self.sink.close()
        await self.es.close()


@pytest.fixture
async def env(es_server: EsServer) -> AsyncIterator[Env]:
    e = Env(es_server)
    yield e
    await e.close()


@pytest.fixture
async def shared_env(es_server_shared: EsServer) -> AsyncIterator[Env]:
    e = Env(es_server_shared)
    yield e
    await e.close()


async def test_start_installs_the_templates(shared_env: Env) -> None:
    env = shared_env
    await env.sink.start()
    resp = await env.es.indices.get_index_template(name=env.config.template_name)
    template = resp["index_templates"][0]["index_template"]
    assert template["index_patterns"] == [env.config.index.replace("%Y.%m.%d", "*.*.*")]
    assert template["template"]["mappings"]["properties"]["@timestamp"] == {"type": "date_nanos"}

    assert await env.sink.write(make_records(3)) == [DELIVERED] * 3
    index = "kubeobs-test-" + env.config.template_name.rsplit("-", 1)[1] + "-2024.03.01"
    mapping = (await env.es.indices.get_mapping(index=index))[index]["mappings"]
    props = mapping["properties"]
    assert props["@timestamp"]["type"] == "date_nanos"
    assert props["message"]["type"] == "text"
    assert props["log"]["properties"]["offset"]["type"] == "long"
    assert props["log"]["properties"]["file"]["properties"]["path"]["type"] == "keyword"
    labels = props["kubernetes"]["properties"]["labels"]["properties"]
    assert labels["app"]["type"] == "keyword"
    assert labels["app_kubernetes_io/version"]["type"] == "keyword"
    assert props["container"]["properties"]["image"]["properties"]["name"]["type"] == "keyword"


async def test_batch_is_delivered_searchable_and_resend_is_idempotent(env: Env) -> None:
    await env.sink.start()
    batch = make_records(50) + make_records(10, first_offset=10_000, day="2024-03-02")
    assert await env.sink.write(batch) == [DELIVERED] * 60
    assert await env.count() == 60

    hits = (
        await env.es.search(index=env.index_glob, query={"match_phrase": {"message": "line 7 GET"}}, size=5)
    )["hits"]["hits"]
    assert len(hits) == 1
    assert hits[0]["_id"] == "c0ffee-700"
    assert hits[0]["_index"].endswith("-2024.03.01")
    source = hits[0]["_source"]
    assert source["@timestamp"] == "2024-03-01T12:00:07.000000007Z"  # nanoseconds kept
    assert source["kubernetes"]["pod"]["name"] == "web-1"
    assert source["log"] == {"file": {"path": FILE.path}, "offset": 700}

    # nanosecond range query on date_nanos
    ranged = await env.es.count(
        index=env.index_glob,
        query={
            "range": {
                "@timestamp": {
                    "gt": "2024-03-01T12:00:07.000000006Z",
                    "lte": "2024-03-01T12:00:07.000000007Z",
                }
            }
        },
    )
    assert ranged["count"] == 1

    # the same batch again (a retry after a lost answer): 409s, counted as delivered, nothing doubled
    assert await env.sink.write(batch) == [ALREADY_STORED] * 60
    assert await env.count() == 60
    assert await env.sink.write([]) == []


async def test_invalid_timestamp_is_rejected_and_dead_lettered(env: Env) -> None:
    await env.sink.start()
    batch = make_records(5)
    batch[2].timestamp = "2024-02-31T00:00:00.1Z"
    outcomes = await env.sink.write(batch)
    assert [o.status for o in outcomes] == [Status.DELIVERED] * 2 + [Status.REJECTED] + [Status.DELIVERED] * 2
    bad = outcomes[2]
    assert bad.http_status == 400
    assert bad.error is not None and bad.error.startswith("mapper_parsing_exception: ")
    assert await env.count() == 4

    await env.sink.dead_letter([batch[2]], [bad])
    await env.sink.dead_letter([batch[2]], [bad])  # a re-send stores nothing twice
    dl = env.config.dead_letter_index
    assert await env.count(dl) == 1
    doc = (await env.es.get(index=dl, id=batch[2].id))["_source"]
    assert doc["message"] == batch[2].message
    assert doc["error"]["type"] == "mapper_parsing_exception"
    assert doc["error"]["status"] == 400
    original = orjson.loads(doc["kubeobs"]["original"])
    assert original["@timestamp"] == "2024-02-31T00:00:00.1Z"
    assert original == batch[2].document()

    # the delivery loop may pass just the error strings
    await env.sink.dead_letter([batch[2]], [bad.error])
    mapping = (await env.es.indices.get_mapping(index=dl))[dl]["mappings"]["properties"]
    assert mapping["kubeobs"]["properties"]["original"]["index"] is False


async def test_dead_letter_of_a_document_the_mapping_refuses(env: Env) -> None:
    await env.sink.start()
    odd = FileInfo(
        key="1:2:3", path="/var/log/containers/odd.log", id_prefix="0dd", kubernetes={"pod": "oops"}
    )
    (record,) = make_records(1)
    record.file = odd
    (outcome,) = await env.sink.write([record])
    assert outcome.status is Status.REJECTED
    # the same `kubernetes` object is refused by the dead-letter index too: it is stored without it
    await env.sink.dead_letter([record], [outcome])
    doc = (await env.es.get(index=env.config.dead_letter_index, id=record.id))["_source"]
    assert "kubernetes" not in doc
    assert doc["message"] == record.message
    assert orjson.loads(doc["kubeobs"]["original"])["kubernetes"] == {"pod": "oops"}


async def test_bulk_item_429s_are_retried(env: Env) -> None:
    await env.sink.start()
    batch = make_records(10)
    env.server.set_faults([{"action": "bulk_items", "status": 429, "fraction": 0.3, "times": 1}])
    outcomes = await env.sink.write(batch)
    retry = [r for r, o in zip(batch, outcomes, strict=True) if o.status is Status.RETRY]
    assert len(retry) == 3
    assert all(
        o == DELIVERED
        or (o.http_status == 429 and o.error and o.error.startswith("es_rejected_execution_exception"))
        for o in outcomes
    )
    assert env.server.stats()["items_rewritten"] == 3
    # the rewritten items were in fact stored (the proxy only changed the answer); a retry is harmless
    assert await env.sink.write(retry) == [ALREADY_STORED] * 3
    assert await env.count() == 10


async def test_bulk_item_400s_are_rejected(env: Env) -> None:
    await env.sink.start()
    env.server.set_faults([{"action": "bulk_items", "status": 400, "fraction": 1.0, "times": 1}])
    outcomes = await env.sink.write(make_records(2))
    assert [(o.status, o.http_status) for o in outcomes] == [(Status.REJECTED, 400)] * 2


async def test_whole_request_503_is_temporary(env: Env) -> None:
    await env.sink.start()
    env.server.set_faults([{"action": "status", "status": 503, "path_regex": "_bulk"}])
    with pytest.raises(TemporaryError, match="503"):
        await env.sink.write(make_records(3))
    with pytest.raises(TemporaryError, match="503"):
        await env.sink.dead_letter(make_records(1), ["x: y"])
    env.server.set_faults([{"action": "status", "status": 429, "path_regex": "_bulk"}])
    with pytest.raises(TemporaryError, match="429"):
        await env.sink.write(make_records(3))
    env.server.clear_faults()
    assert await env.sink.write(make_records(3)) == [DELIVERED] * 3
    # the client did not retry on its own: one request per write
    assert env.server.stats()["faults"] == 3


async def test_start_errors(env: Env) -> None:
    env.server.set_faults([{"action": "status", "status": 503, "times": 1}])
    with pytest.raises(TemporaryError):
        await env.sink.start()
    env.server.set_faults([{"action": "status", "status": 401, "times": 1}])
    with pytest.raises(PermanentError):
        await env.sink.start()
    await env.sink.start()


@pytest.mark.parametrize("action", ["drop_after", "drop_before", "refuse"])
async def test_dropped_connection_is_temporary_and_resend_is_idempotent(env: Env, action: str) -> None:
    await env.sink.start()
    batch = make_records(20)
    env.server.set_faults([{"action": action, "path_regex": "_bulk", "times": 1}])
    with pytest.raises(TemporaryError):
        await env.sink.write(batch)
    stored = await env.count() if action == "drop_after" else 0
    assert stored == (20 if action == "drop_after" else 0)
    # after drop_after Elasticsearch already has them: 409s, delivered all the same
    assert await env.sink.write(batch) == [ALREADY_STORED if action == "drop_after" else DELIVERED] * 20
    assert await env.count() == 20
    assert env.server.stats()["faults_by_action"] == {action: 1}


async def test_whole_request_auth_and_size_errors_are_permanent(env: Env) -> None:
    await env.sink.start()
    for status in (401, 403, 413):
        env.server.set_faults([{"action": "status", "status": status, "times": 1}])
        with pytest.raises(PermanentError, match=str(status)):
            await env.sink.write(make_records(1))


async def test_unreachable_server_is_temporary() -> None:
    config = ElasticsearchSink(type="elasticsearch", hosts=["http://127.0.0.1:9"], request_timeout=2)
    sink = build(config)
    try:
        with pytest.raises(TemporaryError):
            await sink.start()
        with pytest.raises(TemporaryError):
            await sink.write(make_records(1))
        with pytest.raises(TemporaryError):
            await sink.dead_letter(make_records(1), ["x: y"])
    finally:
        await sink.close()


async def test_request_timeout_is_temporary(env: Env) -> None:
    config = env.config.model_copy(update={"request_timeout": 0.5})
    sink = ElasticsearchSinkImpl(config)
    try:
        env.server.set_faults([{"action": "delay", "seconds": 2, "times": 1}])
        with pytest.raises(TemporaryError):
            await sink.write(make_records(1))
    finally:
        await sink.close()


def test_proxy_refuses_bad_rules_and_resets_stats(es_server: EsServer) -> None:
    for bad in ({"action": "explode"}, {"action": "status"}, {"action": "delay", "seconds": 1, "x": 1}):
        with pytest.raises(urllib.error.HTTPError) as e:
            es_server.set_faults([bad])
        e.value.close()
        assert e.value.code == 400
    es_server.set_faults([{"action": "status", "status": 500, "times": 1, "probability": 1}])
    with pytest.raises(urllib.error.HTTPError) as e:
        http_json("GET", es_server.url + "/")
    e.value.close()
    assert e.value.code == 500
    assert e.value.headers["X-Elastic-Product"] == "Elasticsearch"
    assert http_json("GET", es_server.url + "/")["cluster_name"]  # `times` used up
    assert es_server.stats()["requests"] == 2
    es_server.reset_stats()
    assert es_server.stats()["requests"] == 0


def test_client_options(tmp_path: Path) -> None:
    import trustme

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    base: dict[str, Any] = {"type": "elasticsearch", "hosts": ["https://es:9200"]}
    opts = client_options(ElasticsearchSink(**base, username="u", password="p", ca_certs=str(ca)))
    assert opts["max_retries"] == 0 and opts["retry_on_status"] == () and opts["retry_on_timeout"] is False
    assert opts["basic_auth"] == "dTpw"  # base64("u:p"), encoded by us as UTF-8
    assert opts["ssl_context"].check_hostname is True
    assert "verify_certs" not in opts and "api_key" not in opts
    opts = client_options(ElasticsearchSink(**base, api_key="aWQ6a2V5", verify_certs=False))
    assert opts["api_key"] == "aWQ6a2V5"
    assert opts["verify_certs"] is False
    assert "basic_auth" not in opts


def test_templates_cover_both_indices() -> None:
    config = ElasticsearchSink(type="elasticsearch", index="logs-k8s-%Y.%m.%d")
    t = templates(config)
    assert t["kubeobs-logs"]["index_patterns"] == ["logs-k8s-*.*.*"]
    assert t["kubeobs-logs"]["priority"] > 100  # above Elasticsearch's built-in logs-*-* template
    assert t["kubeobs-logs-deadletter"]["index_patterns"] == ["kubeobs-deadletter"]
    mappings = t["kubeobs-logs"]["template"]["mappings"]
    assert mappings["date_detection"] is False
    assert mappings["properties"]["@timestamp"] == {"type": "date_nanos"}


def test_outcome_equality_used_by_the_pipeline() -> None:
    # The delivery loop counts `outcomes.count(DELIVERED)`: the shared constant must compare equal.
    assert Outcome(Status.DELIVERED) == DELIVERED
