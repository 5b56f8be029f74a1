"""values.schema.json: a typo or a wrong type in values fails the install, naming the key."""

from __future__ import annotations

import json
from typing import Any

import helm_python
import pytest

from tests.chart.helm import ALL_FEATURES, CHART, render


def _walk(schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of object schemas that declare properties but allow any other key."""
    loose = []
    if "properties" in schema and schema.get("additionalProperties") is not False:
        loose.append(path or "(top level)")
    for key, sub in schema.get("properties", {}).items():
        if isinstance(sub, dict):
            loose += _walk(sub, f"{path}.{key}" if path else key)
    return loose


def test_every_declared_object_is_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _walk(schema) == []


def test_defaults_and_all_features_pass() -> None:
    chart = helm_python.Chart.load(CHART)
    try:
        chart.validate_schema({})
        chart.validate_schema(ALL_FEATURES)
    finally:
        chart.close()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"collecter": {"enabled": True}}, "collecter", id="typo-top-level"),
        pytest.param({"collector": {"hostNetwrok": True}}, "hostNetwrok", id="typo-nested"),
        pytest.param({"dns": {"hpa": {"maxReplica": 3}}}, "maxReplica", id="typo-deep"),
        pytest.param(
            {"elasticsearch": {"auth": {"existingSecrets": "x"}}}, "existingSecrets", id="typo-auth"
        ),
        pytest.param({"dns": {"replicas": "two"}}, "replicas", id="string-for-integer"),
        pytest.param({"collector": {"hostNetwork": "yes"}}, "hostNetwork", id="string-for-boolean"),
        pytest.param({"elasticsearch": {"hosts": "http://es:9200"}}, "hosts", id="string-for-list"),
        pytest.param({"dns": {"pods": "verify"}}, "pods", id="not-in-enum"),
        pytest.param({"dns": {"service": {"port": 70000}}}, "port", id="port-out-of-range"),
        pytest.param({"elasticsearch": {"hosts": ["es:9200"]}}, "hosts", id="host-without-scheme"),
        pytest.param({"dns": {"upstream": ["dns.google"]}}, "upstream", id="upstream-not-an-ip"),
        pytest.param({"collector": {"securityContext": {"runAsUser": 0}}}, "runAsUser", id="root-user"),
    ],
)
def test_bad_values_are_rejected(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=message):
        render(values)
