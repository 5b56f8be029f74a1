"""Grafana dashboard ConfigMaps (one per dashboards/*.json) and the alert rules file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.helm import CHART, MONITORING_API, render

ALERTS = CHART / "files" / "alerts.yaml"


def _chart_copy(tmp_path: Path, dashboards: dict[str, str]) -> Path:
    copy = tmp_path / "kubeobs"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("dashboards"))
    (copy / "dashboards").mkdir()
    for name, text in dashboards.items():
        (copy / "dashboards" / name).write_text(text)
    return copy


def _dashboard_maps(chart: Path) -> list[dict[str, object]]:
    return [
        o
        for o in render(chart=chart).of("ConfigMap")
        if o["metadata"]["name"].startswith("kubeobs-dashboard")
    ]


def test_no_dashboards_render_nothing(tmp_path: Path) -> None:
    assert _dashboard_maps(_chart_copy(tmp_path, {})) == []


def test_one_configmap_per_dashboard(tmp_path: Path) -> None:
    files = {
        "logs.json": json.dumps({"title": "Logs", "panels": [{"expr": 'sum(rate(x{a="{{b}}"}[5m]))'}]}),
        "Node_Exporter.json": json.dumps({"title": "Nodes", "uid": "nodes"}, indent=2),
    }
    maps = _dashboard_maps(_chart_copy(tmp_path, files))
    by_name = {m["metadata"]["name"]: m for m in maps}  # type: ignore[index]
    assert set(by_name) == {"kubeobs-dashboard-logs", "kubeobs-dashboard-node-exporter"}
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # type: ignore[index]
        ((key, text),) = cm["data"].items()  # type: ignore[attr-defined]
        assert text == files[key]  # shipped byte for byte, "{{" untouched


def test_shipped_dashboards_are_valid_json() -> None:
    maps = [o for o in render().of("ConfigMap") if o["metadata"]["name"].startswith("kubeobs-dashboard")]
    assert len(maps) == len(list((CHART / "dashboards").glob("*.json")))
    for cm in maps:
        for text in cm["data"].values():
            assert "panels" in json.loads(text) or "title" in json.loads(text)


def test_prometheus_rule_embeds_the_alerts_file() -> None:
    rule = render(api_versions=[MONITORING_API]).get("PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def test_alerts_use_the_real_metric_names() -> None:
    exprs = " ".join(r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"])
    for metric in (
        "kubeobs_collector_records_dropped_total",
        "kubeobs_collector_records_dead_lettered_total",
        "kubeobs_collector_backlog_bytes",
        "kubeobs_collector_sink_up",
        "kubeobs_collector_oldest_unacked_age_seconds",
        'coredns_dns_responses_total{rcode="SERVFAIL"}',
        "coredns_dns_request_duration_seconds_bucket",
    ):
        assert metric in exprs


def test_alerts_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package prometheus; tests/run.sh installs it)")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout
