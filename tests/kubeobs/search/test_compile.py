"""The two compilers: a table of queries to the Elasticsearch query DSL and to SQL (text + parameters)."""

from __future__ import annotations

from typing import Any

import pytest

from kubeobs.search import es, sqlite
from kubeobs.search.backend import SearchRequest
from kubeobs.search.query import parse
from kubeobs.search.timerange import TimeRange


def phrase(text: str) -> dict[str, Any]:
    return {"match_phrase": {"message": {"query": text}}}


FTS = "rid IN (SELECT rowid FROM logs_fts WHERE logs_fts MATCH ?)"

# query -> (Elasticsearch DSL, SQL text, SQL parameters)
TABLE: list[tuple[str, dict[str, Any], str, tuple[Any, ...]]] = [
    ("", {"match_all": {}}, "1", ()),
    ("error", phrase("error"), FTS, ('"error"',)),
    ('"connection refused"', phrase("connection refused"), FTS, ('"connection refused"',)),
    ("Time*", {"prefix": {"message": {"value": "time"}}}, FTS, ('"Time" *',)),
    ('say"hi"', {"bool": {"filter": [phrase("say"), phrase("hi")]}}, FTS, ('("say" AND "hi")',)),
    (
        '"a ""quoted"" word"',
        {"bool": {"filter": [phrase("a "), phrase("quoted"), phrase(" word")]}},
        FTS,
        ('("a " AND "quoted" AND " word")',),
    ),
    ('"it\\"s"', phrase('it"s'), FTS, ('"it""s"',)),
    (
        "error timeout",
        {"bool": {"filter": [phrase("error"), phrase("timeout")]}},
        FTS,
        ('("error" AND "timeout")',),
    ),
    (
        "error OR timeout",
        {"bool": {"should": [phrase("error"), phrase("timeout")], "minimum_should_match": 1}},
        FTS,
        ('("error" OR "timeout")',),
    ),
    (
        "error -retry",
        {"bool": {"filter": [phrase("error")], "must_not": [phrase("retry")]}},
        FTS,
        ('(("error") NOT ("retry"))',),
    ),
    (
        "error -retry -later",
        {"bool": {"filter": [phrase("error")], "must_not": [phrase("retry"), phrase("later")]}},
        FTS,
        ('(("error") NOT ("retry" OR "later"))',),
    ),
    ("NOT error", {"bool": {"must_not": [phrase("error")]}}, f"NOT ({FTS})", ('"error"',)),
    (
        "-a -b",
        {"bool": {"must_not": [phrase("a"), phrase("b")]}},
        f"(NOT ({FTS}) AND NOT ({FTS}))",
        ('"a"', '"b"'),
    ),
    (
        "(GET OR POST) cart*",
        {
            "bool": {
                "filter": [
                    {"bool": {"should": [phrase("GET"), phrase("POST")], "minimum_should_match": 1}},
                    {"prefix": {"message": {"value": "cart"}}},
                ]
            }
        },
        FTS,
        ('(("GET" OR "POST") AND "cart" *)',),
    ),
    ("namespace:shop", {"term": {"kubernetes.namespace": {"value": "shop"}}}, "namespace IS ?", ("shop",)),
    (
        "pod:web-*",
        {"wildcard": {"kubernetes.pod.name": {"value": "web-*"}}},
        "coalesce(pod GLOB ?, 0)",
        ("web-*",),
    ),
    (
        "file:/x/[a]\\?*",
        {"wildcard": {"log.file.path": {"value": "/x/[a]\\\\?*"}}},
        "coalesce(path GLOB ?, 0)",
        ("/x/[[]a]\\?*",),
    ),
    ("stream:stderr", {"term": {"stream": {"value": "stderr"}}}, "stream IS ?", ("stderr",)),
    ("node:n1", {"term": {"kubernetes.node.name": {"value": "n1"}}}, "node IS ?", ("n1",)),
    ("container:c", {"term": {"kubernetes.container.name": {"value": "c"}}}, "container IS ?", ("c",)),
    ("pod_uid:u", {"term": {"kubernetes.pod.uid": {"value": "u"}}}, "pod_uid IS ?", ("u",)),
    (
        "image:nginx:*",
        {"wildcard": {"container.image.name": {"value": "nginx:*"}}},
        "coalesce(json_extract(doc, '$.container.image.name') GLOB ?, 0)",
        ("nginx:*",),
    ),
    (
        "container_id:abc",
        {"term": {"container.id": {"value": "abc"}}},
        "json_extract(doc, '$.container.id') IS ?",
        ("abc",),
    ),
    (
        "labels.app.kubernetes.io/name:shop",
        {"term": {"kubernetes.labels.app_kubernetes_io/name": {"value": "shop"}}},
        "json_extract(labels, ?) IS ?",
        ('$."app_kubernetes_io/name"', "shop"),
    ),
    (
        "-namespace:kube-system error",
        {
            "bool": {
                "filter": [phrase("error")],
                "must_not": [{"term": {"kubernetes.namespace": {"value": "kube-system"}}}],
            }
        },
        f"(NOT (namespace IS ?) AND {FTS})",
        ("kube-system", '"error"'),
    ),
    (
        "error OR namespace:shop",
        {
            "bool": {
                "should": [phrase("error"), {"term": {"kubernetes.namespace": {"value": "shop"}}}],
                "minimum_should_match": 1,
            }
        },
        f"({FTS} OR namespace IS ?)",
        ('"error"', "shop"),
    ),
    (
        "a b -c pod:x*",
        {
            "bool": {
                "filter": [phrase("a"), phrase("b"), {"wildcard": {"kubernetes.pod.name": {"value": "x*"}}}],
                "must_not": [phrase("c")],
            }
        },
        f"({FTS} AND coalesce(pod GLOB ?, 0))",
        ('(("a" AND "b") NOT ("c"))', "x*"),
    ),
    (
        "-(a OR stream:stderr)",
        {
            "bool": {
                "must_not": [
                    {
                        "bool": {
                            "should": [phrase("a"), {"term": {"stream": {"value": "stderr"}}}],
                            "minimum_should_match": 1,
                        }
                    }
                ]
            }
        },
        f"NOT ({FTS} OR stream IS ?)",
        ('"a"', "stderr"),
    ),
]


@pytest.mark.parametrize(("query", "dsl", "sql", "params"), TABLE)
def test_compilers(query: str, dsl: dict[str, Any], sql: str, params: tuple[Any, ...]) -> None:
    node = parse(query)
    assert es.compile_query(node) == dsl
    assert sqlite.compile_where(node) == sqlite.Sql(sql, params)


def test_user_text_never_reaches_the_sql_text() -> None:
    nasty = "x'); DROP TABLE logs; --"
    for query in (f'"{nasty}"', f'pod:"{nasty}"', f'labels.app:"{nasty}"'):
        where = sqlite.compile_where(parse(query))
        assert "DROP" not in where.text
        assert any("DROP" in str(p) for p in where.params)


def test_request_adds_the_time_range_and_skips_rows_without_time() -> None:
    request = SearchRequest(parse("error"), TimeRange(1_709_337_420_000_000_001, 1_709_337_480_500_000_000))
    assert es.compile_request(request) == {
        "bool": {
            "filter": [
                phrase("error"),
                {
                    "range": {
                        "@timestamp": {
                            "gte": "2024-03-01T23:57:00.000000001Z",
                            "lt": "2024-03-01T23:58:00.500000000Z",
                        }
                    }
                },
            ]
        }
    }
    sql = sqlite.compile_request(request)
    assert sql.text == f"ts_ns IS NOT NULL AND {FTS} AND ts_ns >= ? AND ts_ns < ?"
    assert sql.params == ('"error"', 1_709_337_420_000_000_001, 1_709_337_480_500_000_000)
    assert es.compile_request(SearchRequest(time=TimeRange(0, None))) == {
        "bool": {"filter": [{"range": {"@timestamp": {"gte": "1970-01-01T00:00:00.000000000Z"}}}]}
    }
    assert sqlite.compile_request(SearchRequest()).text == "ts_ns IS NOT NULL"


def test_sort_is_a_total_order_without_id() -> None:
    fields = [next(iter(s)) for s in es.SORT_DESC]
    assert fields == [
        "@timestamp",
        "log.offset",
        "kubernetes.node.name",
        "log.file.path",
        "kubeobs.split.part",
    ]
    assert all(next(iter(s.values()))["order"] == "desc" for s in es.SORT_DESC)
    assert all(next(iter(s.values()))["order"] == "asc" for s in es.sort_clause(False))
    assert es.SORT_DESC[0]["@timestamp"]["numeric_type"] == "date_nanos"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://elastic:s3cret@es.example.com:9200", "https://elastic:***@es.example.com:9200"),
        ("http://127.0.0.1:9200", "http://127.0.0.1:9200"),
        ("http://user@host:9200", "http://user@host:9200"),
    ],
)
def test_urls_are_shown_without_passwords(url: str, shown: str) -> None:
    assert es.redact_url(url) == shown


@pytest.mark.parametrize(
    ("url", "dialled"),
    [
        ("https://es.example.com", "https://es.example.com:443"),
        ("http://u:p@es:9200/prefix", "http://u:p@es:9200/prefix"),
        ("http://es/prefix", "http://es:80/prefix"),
    ],
)
def test_a_url_without_port_gets_the_schemes_default(url: str, dialled: str) -> None:
    assert es.with_port(url) == dialled


def test_the_default_index_pattern_matches_what_the_collector_writes_by_default() -> None:
    import fnmatch
    from datetime import UTC, datetime

    from collector.config import ElasticsearchSink
    from kubeobs.search.cli import build_parser

    default = ElasticsearchSink(type="elasticsearch").index
    name = datetime(2024, 3, 1, tzinfo=UTC).strftime(default)
    assert fnmatch.fnmatch(name, es.DEFAULT_INDEX)
    assert build_parser().parse_args([]).index == es.DEFAULT_INDEX
