"""The fault-injecting proxy (tests/support/esproxy.py) in front of a real osmem-server: rule matching."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.support.esproxy import Rule, RuleError
from tests.support.servers import EsServer


def bulk(url: str, index: str, ids: list[str]) -> tuple[int, dict[str, Any]]:
    """POST a ``_bulk`` creating one small document per id in ``index``; returns (status, body)."""
    lines = []
    for i in ids:
        lines.append(json.dumps({"create": {"_index": index, "_id": i}}))
        lines.append(json.dumps({"message": f"doc {i}"}))
    req = urllib.request.Request(
        f"{url}/_bulk?refresh=true",
        data=("\n".join(lines) + "\n").encode(),
        method="POST",
        headers={"Content-Type": "application/x-ndjson"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def count(server: EsServer, index: str) -> int:
    server.upstream("POST", f"/{index}/_refresh")
    return int(server.upstream("GET", f"/{index}/_count")["count"])


def test_body_regex_is_parsed_checked_and_described() -> None:
    rule = Rule.parse({"action": "status", "status": 503, "body_regex": "kubeobs-dead(letter)?"})
    assert rule.body_regex is not None and rule.body_regex.pattern == b"kubeobs-dead(letter)?"
    assert rule.describe()["body_regex"] == "kubeobs-dead(letter)?"
    assert Rule.parse({"action": "refuse"}).describe()["body_regex"] is None
    with pytest.raises(RuleError, match="bad body_regex"):
        Rule.parse({"action": "refuse", "body_regex": "("})
    with pytest.raises(RuleError, match="body_regex must be a string"):
        Rule.parse({"action": "refuse", "body_regex": 3})


def test_status_only_for_requests_whose_body_matches(es_server: EsServer) -> None:
    es_server.set_faults(
        [
            {
                "action": "status",
                "status": 503,
                "path_regex": "_bulk",
                "body_regex": r'"_index":\s*"kubeobs-deadletter',
                "times": 2,
            }
        ]
    )
    status, body = bulk(es_server.url, "logs-proxy", ["a", "b"])
    assert status == 200 and not body["errors"]
    status, body = bulk(es_server.url, "kubeobs-deadletter-proxy", ["c"])
    assert status == 503 and body["error"]["type"] == "esproxy_injected_fault"
    # a non-matching body did not use up one of the rule's `times`: one is left
    (rule,) = _faults(es_server)
    assert rule["times"] == 1 and rule["body_regex"] == r'"_index":\s*"kubeobs-deadletter'
    status, _ = bulk(es_server.url, "logs-proxy", ["d"])
    assert status == 200
    status, _ = bulk(es_server.url, "kubeobs-deadletter-proxy", ["e"])
    assert status == 503
    status, _ = bulk(es_server.url, "kubeobs-deadletter-proxy", ["f"])  # times used up
    assert status == 200
    assert count(es_server, "logs-proxy") == 3
    assert count(es_server, "kubeobs-deadletter-proxy") == 1  # only "f" got through
    stats = es_server.stats()
    assert stats["faults_by_action"] == {"status": 2}
    assert stats["bulk_requests"] == 5


def test_drop_after_only_for_matching_body(es_server: EsServer) -> None:
    es_server.set_faults([{"action": "drop_after", "body_regex": "poison"}])
    status, _ = bulk(es_server.url, "logs-proxy", ["fine"])
    assert status == 200
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        bulk(es_server.url, "logs-proxy", ["poison"])
    # forwarded and indexed, but the client never heard back
    assert count(es_server, "logs-proxy") == 2
    assert es_server.stats()["faults_by_action"] == {"drop_after": 1}


def _faults(server: EsServer) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{server.url}/_proxy/faults", timeout=10) as r:
        result: list[dict[str, Any]] = json.loads(r.read())
    return result


@pytest.mark.parametrize("include_conflicts", [False, True])
def test_bulk_items_rewrites_409_only_when_asked(es_server: EsServer, include_conflicts: bool) -> None:
    ids = [str(i) for i in range(10)]
    status, body = bulk(es_server.url, "logs-proxy", ids)  # stored: the re-sends below are 409s
    assert status == 200 and not body["errors"]
    es_server.set_faults(
        [{"action": "bulk_items", "status": 429, "fraction": 0.5, "include_conflicts": include_conflicts}]
    )
    status, body = bulk(es_server.url, "logs-proxy", ids)
    assert status == 200
    statuses = sorted(next(iter(item.values()))["status"] for item in body["items"])
    assert statuses == ([409] * 5 + [429] * 5 if include_conflicts else [409] * 10)
    stats = es_server.stats()
    assert stats["items_rewritten"] == (5 if include_conflicts else 0)
    assert stats["bulk_docs"] == 20
    with pytest.raises(RuleError, match="include_conflicts"):
        Rule.parse({"action": "bulk_items", "include_conflicts": "yes"})
