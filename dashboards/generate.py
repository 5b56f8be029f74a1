"""Generate kubeobs' Grafana dashboards: ``dashboards/*.json`` and the chart's copies.

Run ``python -m dashboards.generate`` (or ``python dashboards/generate.py``) after changing this file; it
writes every dashboard to ``dashboards/<uid minus "kubeobs-">.json`` and an identical copy to
``charts/kubeobs/dashboards/`` (the chart's ConfigMaps, labelled for the Grafana sidecar, glob those).
``--check`` writes nothing and exits 1 if a file on disk differs from what would be generated (a test
runs the same comparison).

Each dashboard is a list of panels in reading order; :func:`layout` gives them ids and ``gridPos`` (rows of
24 columns, panels placed left to right and wrapped). Every panel and target names the templated
datasource ``${datasource}``, never a fixed one, so the dashboards work with whatever datasource
the Grafana instance has.

Prometheus dashboards assume the chart's scrape configuration: ``honor_labels: true`` and the collector
pod's node as the target label ``node`` (relabelled from ``__meta_kubernetes_pod_node_name``), so node
and pipeline series can be selected by node; the ``node`` variable's "All" is ``.*``, which also
matches series without that label. The Logs dashboard assumes an Elasticsearch datasource on the
collector's indices (``logs-k8s-*``) with ``@timestamp`` as its time field and ``message`` as the log
message field; it uses only fields of the collector's index template.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIRS = (ROOT / "dashboards", ROOT / "charts" / "kubeobs" / "dashboards")
SCHEMA_VERSION = 39
RATE = "$__rate_interval"
Json = dict[str, Any]

PROM_DS = {"type": "prometheus", "uid": "${datasource}"}
ES_DS = {"type": "elasticsearch", "uid": "${datasource}"}


# ----------------------------------------------------------------------------------------- building blocks


def datasource_var(kind: str) -> Json:
    label = {"prometheus": "Prometheus", "elasticsearch": "Elasticsearch"}[kind]
    return {
        "name": "datasource",
        "label": label,
        "type": "datasource",
        "query": kind,
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "includeAll": False,
        "multi": False,
        "options": [],
    }


def prom_var(name: str, label: str, query: str) -> Json:
    """A multi-value query variable over Prometheus label values, "All" meaning ``.*``."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROM_DS,
        "definition": query,
        "query": {"query": query, "refId": f"var-{name}"},
        "refresh": 2,
        "sort": 1,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {},
        "hide": 0,
        "regex": "",
        "options": [],
    }


def es_terms_var(name: str, label: str, field: str, query: str = "*") -> Json:
    """A multi-value variable over the values of an Elasticsearch keyword field ("All" is ``*``)."""
    q = json.dumps({"find": "terms", "field": field, "query": query, "size": 500})
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": ES_DS,
        "definition": q,
        "query": q,
        "refresh": 2,
        "sort": 1,
        "includeAll": True,
        "allValue": "*",
        "multi": True,
        "current": {},
        "hide": 0,
        "regex": "",
        "options": [],
    }


def textbox_var(name: str, label: str, default: str) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "textbox",
        "query": default,
        "current": {"text": default, "value": default},
        "hide": 0,
        "options": [],
    }


def prom(expr: str, legend: str = "__auto") -> Json:
    return {"datasource": PROM_DS, "expr": expr, "legendFormat": legend, "range": True}


def timeseries(
    title: str,
    targets: list[Json],
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    description: str = "",
    stack: bool = False,
    min_zero: bool = True,
) -> Json:
    custom: Json = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    defaults: Json = {"unit": unit, "custom": custom}
    if min_zero:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": PROM_DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "_size": (width, height),
    }


def stat(
    title: str,
    targets: list[Json],
    unit: str = "short",
    width: int = 4,
    height: int = 4,
    description: str = "",
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: list[Json] | None = None,
) -> Json:
    steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "green")])]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": PROM_DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "mappings": mappings or [],
            },
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
        "_size": (width, height),
    }


def table(title: str, targets: list[Json], width: int = 24, height: int = 8, description: str = "") -> Json:
    for t in targets:
        t.update({"format": "table", "instant": True, "range": False})
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": PROM_DS,
        "targets": targets,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
        "transformations": [{"id": "merge", "options": {}}],
        "_size": (width, height),
    }


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def layout(panels: Iterable[Json]) -> list[Json]:
    """Ids from 1 and ``gridPos`` left to right, wrapping at 24 columns; a row starts a new line."""
    out: list[Json] = []
    x = y = line_height = 0
    for pid, panel in enumerate(panels, start=1):
        w, h = panel.pop("_size")
        for i, target in enumerate(panel.get("targets", [])):
            target.setdefault("refId", chr(ord("A") + i))
        if panel["type"] == "row" or x + w > 24:
            x, y, line_height = 0, y + line_height, 0
        out.append({"id": pid, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **panel})
        x += w
        line_height = max(line_height, h)
        if panel["type"] == "row":
            x, y, line_height = 0, y + h, 0
    return out


def dashboard(uid: str, title: str, description: str, variables: list[Json], panels: list[Json]) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["kubeobs"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["kubeobs"],
                "title": "kubeobs",
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "templating": {"list": variables},
        "panels": layout(panels),
    }


# ----------------------------------------------------------------------------------------------- dashboards

NODE = 'node=~"$node"'


def collector_dashboard() -> Json:
    n = NODE
    return dashboard(
        "kubeobs-collector",
        "kubeobs / Collector pipeline",
        "The log collector's pipeline: lines in and out, retries, dead letters, backlog, lag, sink health.",
        [
            datasource_var("prometheus"),
            prom_var("node", "Node", "label_values(kubeobs_collector_lines_read_total, node)"),
        ],
        [
            stat(
                "Elasticsearch up",
                [prom(f"min(kubeobs_collector_sink_up{{{n}}})", "sink up")],
                description="1 when every selected collector's last request to its sink succeeded.",
                thresholds=[(None, "red"), (1, "green")],
                mappings=[{"type": "value", "options": {"0": {"text": "DOWN"}, "1": {"text": "UP"}}}],
            ),
            stat(
                "Sinks down",
                [prom(f"count(kubeobs_collector_sink_up{{{n}}} == 0) or vector(0)", "down")],
                description="Collectors whose last sink request failed (0 when none: the meaningful value).",
                thresholds=[(None, "green"), (1, "red")],
            ),
            stat(
                "Lines in /s",
                [prom(f"sum(rate(kubeobs_collector_lines_read_total{{{n}}}[{RATE}]))", "in")],
                unit="cps",
            ),
            stat(
                "Records out /s",
                [prom(f"sum(rate(kubeobs_collector_records_delivered_total{{{n}}}[{RATE}]))", "out")],
                unit="cps",
            ),
            stat(
                "Backlog",
                [prom(f"sum(kubeobs_collector_backlog_bytes{{{n}}})", "backlog")],
                unit="bytes",
                thresholds=[(None, "green"), (100 << 20, "orange")],
            ),
            stat(
                "State dir writable",
                [prom(f"min(kubeobs_collector_state_dir_writable{{{n}}})", "writable")],
                thresholds=[(None, "red"), (1, "green")],
                mappings=[{"type": "value", "options": {"0": {"text": "NO"}, "1": {"text": "YES"}}}],
            ),
            timeseries(
                "Lines in and records out",
                [
                    prom(
                        f"sum by (node) (rate(kubeobs_collector_lines_read_total{{{n}}}[{RATE}]))",
                        "in {{node}}",
                    ),
                    prom(
                        "sum by (node, sink) "
                        f"(rate(kubeobs_collector_records_delivered_total{{{n}}}[{RATE}]))",
                        "out {{node}} ({{sink}})",
                    ),
                ],
                unit="cps",
                description="Physical lines read from files, and records acknowledged by the sink.",
            ),
            timeseries(
                "Bytes read",
                [
                    prom(
                        f"sum by (node) (rate(kubeobs_collector_bytes_read_total{{{n}}}[{RATE}]))", "{{node}}"
                    )
                ],
                unit="Bps",
            ),
            timeseries(
                "Retries by reason",
                [
                    prom(
                        f"sum by (reason) (rate(kubeobs_collector_records_retried_total{{{n}}}[{RATE}]))",
                        "{{reason}}",
                    )
                ],
                unit="cps",
                description=(
                    "Record deliveries retried: item (429/5xx items), request_failed, dead_letter_failed."
                ),
            ),
            timeseries(
                "Dead-lettered and conflicts",
                [
                    prom(
                        f"sum by (sink) (rate(kubeobs_collector_records_dead_lettered_total{{{n}}}[{RATE}]))",
                        "dead-lettered ({{sink}})",
                    ),
                    prom(
                        f"sum by (sink) (rate(kubeobs_collector_records_conflicts_total{{{n}}}[{RATE}]))",
                        "already stored, 409 ({{sink}})",
                    ),
                ],
                unit="cps",
                description="Records rejected by the sink with a 4xx (stored in the dead-letter index), and "
                "re-sent records the index already had (counted as delivered).",
            ),
            timeseries(
                "Backlog by state",
                [prom(f"sum by (state) (kubeobs_collector_backlog_bytes{{{n}}})", "{{state}}")],
                unit="bytes",
                stack=True,
                description=(
                    "Unread bytes in open files: active, rotated (still on disk), deleted (held open)."
                ),
            ),
            timeseries(
                "Lag",
                [
                    prom(f"max by (node) (kubeobs_collector_read_lag_bytes{{{n}}})", "read lag {{node}}"),
                    prom(
                        f"max by (node) (kubeobs_collector_oldest_unacked_age_seconds{{{n}}})",
                        "oldest unacked line age {{node}}",
                    ),
                ],
                unit="short",
                description="Bytes written to the most lagging file and not yet read; age in seconds of the "
                "oldest line read and not yet acknowledged by the sink (absent while nothing waits).",
            ),
            timeseries(
                "Sink requests by result",
                [
                    prom(
                        f"sum by (sink, result) (rate(kubeobs_collector_bulk_requests_total{{{n}}}[{RATE}]))",
                        "{{sink}} {{result}}",
                    )
                ],
                unit="reqps",
            ),
            timeseries(
                "Sink request latency",
                [
                    prom(
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(kubeobs_collector_bulk_request_duration_seconds_bucket{{{n}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.9, 0.99)
                ],
                unit="s",
            ),
            timeseries(
                "Queue and retry backoff",
                [
                    prom(
                        f"sum by (node) (kubeobs_collector_queue_batches{{{n}}})", "queued batches {{node}}"
                    ),
                    prom(
                        f"max by (node) (kubeobs_collector_retry_backoff_seconds{{{n}}})",
                        "backoff s {{node}}",
                    ),
                ],
            ),
            timeseries(
                "Files open",
                [prom(f"sum by (node) (kubeobs_collector_files_open{{{n}}})", "{{node}}")],
            ),
        ],
    )


def dns_dashboard() -> Json:
    i = 'instance=~"$instance"'
    return dashboard(
        "kubeobs-dns",
        "kubeobs / DNS",
        "The DNS server (CoreDNS metric names): requests, response codes, latency, cache, forwarding.",
        [
            datasource_var("prometheus"),
            prom_var("instance", "Instance", "label_values(coredns_build_info, instance)"),
        ],
        [
            stat(
                "Requests /s",
                [prom(f"sum(rate(coredns_dns_requests_total{{{i}}}[{RATE}]))", "requests")],
                unit="reqps",
            ),
            stat(
                "Cache hit ratio",
                [
                    prom(
                        f"sum(rate(coredns_cache_hits_total{{{i}}}[{RATE}])) / "
                        f"sum(rate(coredns_cache_requests_total{{{i}}}[{RATE}]))",
                        "hit ratio",
                    )
                ],
                unit="percentunit",
            ),
            stat(
                "SERVFAIL ratio",
                [
                    prom(
                        f'(sum(rate(coredns_dns_responses_total{{{i},rcode="SERVFAIL"}}[{RATE}])) or '
                        "vector(0)) / "
                        f"sum(rate(coredns_dns_responses_total{{{i}}}[{RATE}]))",
                        "SERVFAIL",
                    )
                ],
                unit="percentunit",
                description="Share of answers that are SERVFAIL (0 when there are none).",
                thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")],
            ),
            stat(
                "Upstreams failing health checks",
                [
                    prom(
                        f"count(rate(coredns_proxy_healthcheck_failures_total{{{i}}}[{RATE}]) > 0) or "
                        "vector(0)",
                        "failing",
                    )
                ],
                description="Upstreams with failed health checks in the interval (0 when all are healthy).",
                thresholds=[(None, "green"), (1, "red")],
            ),
            timeseries(
                "Requests by type",
                [prom(f"sum by (type) (rate(coredns_dns_requests_total{{{i}}}[{RATE}]))", "{{type}}")],
                unit="reqps",
                stack=True,
            ),
            timeseries(
                "Requests by protocol and family",
                [
                    prom(
                        f"sum by (proto, family) (rate(coredns_dns_requests_total{{{i}}}[{RATE}]))",
                        "{{proto}} ipv{{family}}",
                    )
                ],
                unit="reqps",
            ),
            timeseries(
                "Responses by rcode",
                [prom(f"sum by (rcode) (rate(coredns_dns_responses_total{{{i}}}[{RATE}]))", "{{rcode}}")],
                unit="reqps",
                stack=True,
            ),
            timeseries(
                "Responses by plugin",
                [
                    prom(
                        f"sum by (plugin) (rate(coredns_dns_responses_total{{{i}}}[{RATE}]))",
                        "{{plugin}}",
                    )
                ],
                unit="reqps",
            ),
            timeseries(
                "Request latency",
                [
                    prom(
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(coredns_dns_request_duration_seconds_bucket{{{i}}}[{RATE}])))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.9, 0.99)
                ],
                unit="s",
            ),
            timeseries(
                "Response size p90",
                [
                    prom(
                        "histogram_quantile(0.9, sum by (le, proto) "
                        f"(rate(coredns_dns_response_size_bytes_bucket{{{i}}}[{RATE}])))",
                        "{{proto}}",
                    )
                ],
                unit="bytes",
            ),
            timeseries(
                "Cache hits and misses",
                [
                    prom(f"sum by (type) (rate(coredns_cache_hits_total{{{i}}}[{RATE}]))", "hits {{type}}"),
                    prom(f"sum(rate(coredns_cache_misses_total{{{i}}}[{RATE}]))", "misses"),
                ],
                unit="reqps",
            ),
            timeseries(
                "Cache entries",
                [prom(f"sum by (type) (coredns_cache_entries{{{i}}})", "{{type}}")],
            ),
            timeseries(
                "Forwarded requests by upstream",
                [
                    prom(f"sum by (to) (rate(coredns_forward_requests_total{{{i}}}[{RATE}]))", "{{to}}"),
                ],
                unit="reqps",
            ),
            timeseries(
                "Forward responses by rcode",
                [
                    prom(
                        f"sum by (to, rcode) (rate(coredns_forward_responses_total{{{i}}}[{RATE}]))",
                        "{{to}} {{rcode}}",
                    )
                ],
                unit="reqps",
            ),
            timeseries(
                "Forward latency p99",
                [
                    prom(
                        "histogram_quantile(0.99, sum by (le, to) "
                        f"(rate(coredns_proxy_request_duration_seconds_bucket{{{i}}}[{RATE}])))",
                        "{{to}}",
                    )
                ],
                unit="s",
            ),
            timeseries(
                "Forward health",
                [
                    prom(
                        f"sum by (to) (rate(coredns_proxy_healthcheck_failures_total{{{i}}}[{RATE}]))",
                        "health check failures {{to}}",
                    ),
                    prom(
                        f"sum(rate(coredns_forward_healthcheck_broken_total{{{i}}}[{RATE}]))",
                        "all upstreams down",
                    ),
                    prom(
                        f"sum(rate(coredns_forward_max_concurrent_rejects_total{{{i}}}[{RATE}]))",
                        "max_concurrent rejects",
                    ),
                ],
                unit="cps",
            ),
            timeseries(
                "Queries dropped",
                [prom(f"sum by (reason) (rate(kubeobs_dns_dropped_total{{{i}}}[{RATE}]))", "{{reason}}")],
                unit="cps",
                description="Queries not answered: malformed (too short to answer), overload (queue full).",
            ),
        ],
    )


def nodes_dashboard() -> Json:
    n = NODE
    fs = f'{n},fstype!~"tmpfs|ramfs|squashfs|overlay|nsfs|fuse.*"'
    return dashboard(
        "kubeobs-nodes",
        "kubeobs / Nodes",
        "Node metrics under node_exporter's names, served by the collector on each node.",
        [
            datasource_var("prometheus"),
            prom_var("node", "Node", "label_values(node_uname_info, node)"),
        ],
        [
            stat(
                "CPU busy",
                [prom(f'1 - avg(rate(node_cpu_seconds_total{{{n},mode="idle"}}[{RATE}]))', "busy")],
                unit="percentunit",
                thresholds=[(None, "green"), (0.8, "orange"), (0.95, "red")],
            ),
            stat(
                "Memory used",
                [
                    prom(
                        f"1 - sum(node_memory_MemAvailable_bytes{{{n}}}) / "
                        f"sum(node_memory_MemTotal_bytes{{{n}}})",
                        "used",
                    )
                ],
                unit="percentunit",
                thresholds=[(None, "green"), (0.8, "orange"), (0.95, "red")],
            ),
            stat("Load 1m", [prom(f"sum(node_load1{{{n}}})", "load1")]),
            stat("CPUs", [prom(f'count(node_cpu_seconds_total{{{n},mode="idle"}})', "cpus")]),
            stat(
                "Pods",
                [prom(f"count(kube_pod_info{{{n}}})", "pods")],
                description="Pods scheduled on the selected nodes.",
            ),
            stat(
                "Uptime",
                [prom(f"min(time() - node_boot_time_seconds{{{n}}})", "uptime")],
                unit="s",
            ),
            timeseries(
                "CPU by mode",
                [
                    prom(
                        f'sum by (node, mode) (rate(node_cpu_seconds_total{{{n},mode!="idle"}}[{RATE}]))'
                        " / on (node) group_left count by (node) "
                        f'(node_cpu_seconds_total{{{n},mode="idle"}})',
                        "{{node}} {{mode}}",
                    )
                ],
                unit="percentunit",
                stack=True,
            ),
            timeseries(
                "Load",
                [prom(f"node_load{m}{{{n}}}", f"{{{{node}}}} load{m}") for m in (1, 5, 15)],
            ),
            timeseries(
                "Memory",
                [
                    prom(
                        f"node_memory_MemTotal_bytes{{{n}}} - node_memory_MemAvailable_bytes{{{n}}}",
                        "{{node}} used",
                    ),
                    prom(f"node_memory_MemAvailable_bytes{{{n}}}", "{{node}} available"),
                    prom(
                        f"node_memory_Cached_bytes{{{n}}} + node_memory_Buffers_bytes{{{n}}}",
                        "{{node}} cache",
                    ),
                ],
                unit="bytes",
            ),
            timeseries(
                "Filesystem used",
                [
                    prom(
                        f"1 - node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}}",
                        "{{node}} {{mountpoint}}",
                    )
                ],
                unit="percentunit",
            ),
            timeseries(
                "Disk I/O",
                [
                    prom(f"sum by (node) (rate(node_disk_read_bytes_total{{{n}}}[{RATE}]))", "{{node}} read"),
                    prom(
                        f"sum by (node) (rate(node_disk_written_bytes_total{{{n}}}[{RATE}]))",
                        "{{node}} written",
                    ),
                ],
                unit="Bps",
            ),
            timeseries(
                "Disk busy",
                [
                    prom(
                        f"max by (node, device) (rate(node_disk_io_time_seconds_total{{{n}}}[{RATE}]))",
                        "{{node}} {{device}}",
                    )
                ],
                unit="percentunit",
            ),
            timeseries(
                "Network",
                [
                    prom(
                        f'sum by (node) (rate(node_network_receive_bytes_total{{{n},device!="lo"}}[{RATE}]))',
                        "{{node}} received",
                    ),
                    prom(
                        "sum by (node) "
                        f'(rate(node_network_transmit_bytes_total{{{n},device!="lo"}}[{RATE}]))',
                        "{{node}} sent",
                    ),
                ],
                unit="Bps",
            ),
            timeseries(
                "Network errors and drops",
                [
                    prom(
                        f"sum by (node) (rate(node_network_{d}_{k}_total{{{n}}}[{RATE}]))",
                        f"{{{{node}}}} {d} {k}",
                    )
                    for d in ("receive", "transmit")
                    for k in ("errs", "drop")
                ],
                unit="pps",
            ),
            timeseries(
                "Pressure (PSI, some)",
                [
                    prom(
                        f"rate(node_pressure_{r}_waiting_seconds_total{{{n}}}[{RATE}])",
                        f"{{{{node}}}} {r}",
                    )
                    for r in ("cpu", "memory", "io")
                ],
                unit="percentunit",
            ),
            stat(
                "Exporter collectors failing",
                [prom(f"count(node_scrape_collector_success{{{n}}} == 0) or vector(0)", "failing")],
                description="node_exporter collectors (and cadvisor, kube_state) whose last scrape failed "
                "(0 when all succeed).",
                thresholds=[(None, "green"), (1, "red")],
            ),
        ],
    )


def pods_dashboard() -> Json:
    sel = 'namespace=~"$namespace",pod=~"$pod"'
    c = f'{sel},container!=""'
    return dashboard(
        "kubeobs-pods",
        "kubeobs / Pods",
        "Pod state (kube-state-metrics names) and container resources (cAdvisor names), per node.",
        [
            datasource_var("prometheus"),
            prom_var("node", "Node", "label_values(kube_pod_info, node)"),
            prom_var("namespace", "Namespace", 'label_values(kube_pod_info{node=~"$node"}, namespace)'),
            prom_var("pod", "Pod", 'label_values(kube_pod_info{node=~"$node",namespace=~"$namespace"}, pod)'),
        ],
        [
            stat("Pods", [prom(f'count(kube_pod_info{{{sel},node=~"$node"}})', "pods")]),
            stat(
                "Pods running",
                [prom(f'sum(kube_pod_status_phase{{{sel},phase="Running"}})', "running")],
            ),
            stat(
                "Pods not ready",
                [prom(f'sum(kube_pod_status_ready{{{sel},condition!="true"}})', "not ready")],
                description="Pods whose Ready condition is false or unknown.",
                thresholds=[(None, "green"), (1, "orange")],
            ),
            stat(
                "Restarts (1h)",
                [prom(f"sum(increase(kube_pod_container_status_restarts_total{{{sel}}}[1h]))", "restarts")],
                thresholds=[(None, "green"), (1, "orange")],
            ),
            stat(
                "OOM kills (1h)",
                [prom(f"sum(increase(container_oom_events_total{{{c}}}[1h]))", "OOM kills")],
                thresholds=[(None, "green"), (1, "red")],
            ),
            stat(
                "Containers waiting",
                [prom(f"sum(kube_pod_container_status_waiting{{{sel}}})", "waiting")],
                thresholds=[(None, "green"), (1, "orange")],
            ),
            timeseries(
                "Pods by phase",
                [prom(f"sum by (phase) (kube_pod_status_phase{{{sel}}})", "{{phase}}")],
                stack=True,
            ),
            timeseries(
                "CPU usage by pod",
                [
                    prom(
                        f"sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{{{c}}}[{RATE}]))",
                        "{{namespace}}/{{pod}}",
                    )
                ],
                unit="cores",
            ),
            timeseries(
                "CPU usage vs requests and limits",
                [
                    prom(
                        f"sum by (pod, container) (rate(container_cpu_usage_seconds_total{{{c}}}[{RATE}]))",
                        "{{pod}}/{{container}} used",
                    ),
                    prom(
                        "sum by (pod, container) "
                        f'(kube_pod_container_resource_requests{{{sel},resource="cpu"}})',
                        "{{pod}}/{{container}} requested",
                    ),
                    prom(
                        "sum by (pod, container) "
                        f'(kube_pod_container_resource_limits{{{sel},resource="cpu"}})',
                        "{{pod}}/{{container}} limit",
                    ),
                ],
                unit="cores",
            ),
            timeseries(
                "CPU throttling",
                [
                    prom(
                        "sum by (pod, container) "
                        f"(rate(container_cpu_cfs_throttled_periods_total{{{c}}}[{RATE}]))"
                        " / sum by (pod, container) "
                        f"(rate(container_cpu_cfs_periods_total{{{c}}}[{RATE}]))",
                        "{{pod}}/{{container}}",
                    )
                ],
                unit="percentunit",
                description="Share of CFS periods in which the container was throttled (containers with a "
                "CPU limit only; NaN while no period elapsed).",
            ),
            timeseries(
                "Memory working set vs requests and limits",
                [
                    prom(
                        f"sum by (pod, container) (container_memory_working_set_bytes{{{c}}})",
                        "{{pod}}/{{container}} working set",
                    ),
                    prom(
                        "sum by (pod, container) "
                        f'(kube_pod_container_resource_requests{{{sel},resource="memory"}})',
                        "{{pod}}/{{container}} requested",
                    ),
                    prom(
                        f"sum by (pod, container) (container_spec_memory_limit_bytes{{{c}}} > 0)",
                        "{{pod}}/{{container}} limit",
                    ),
                ],
                unit="bytes",
            ),
            timeseries(
                "Memory RSS and usage by pod",
                [
                    prom(f"sum by (pod) (container_memory_rss{{{c}}})", "{{pod}} rss"),
                    prom(f"sum by (pod) (container_memory_usage_bytes{{{c}}})", "{{pod}} usage"),
                ],
                unit="bytes",
            ),
            timeseries(
                "Container restarts",
                [
                    prom(
                        f"sum by (pod, container) (increase(kube_pod_container_status_restarts_total{{{sel}}}"
                        f"[{RATE}]))",
                        "{{pod}}/{{container}}",
                    )
                ],
            ),
            table(
                "Containers",
                [
                    prom(
                        f"max by (namespace, pod, container, image) (kube_pod_container_info{{{sel}}})",
                        "info",
                    ),
                    prom(
                        f"max by (namespace, pod, container) (kube_pod_container_status_ready{{{sel}}})",
                        "ready",
                    ),
                    prom(
                        f"max by (namespace, pod, container) (kube_pod_container_status_running{{{sel}}})",
                        "running",
                    ),
                    prom(
                        "max by (namespace, pod, container) "
                        f"(kube_pod_container_status_restarts_total{{{sel}}})",
                        "restarts",
                    ),
                ],
            ),
        ],
    )


LOG_FILTER = (
    "kubernetes.namespace:$namespace AND kubernetes.pod.name:$pod AND kubernetes.node.name:$node "
    "AND kubernetes.container.name:$container AND ($search)"
)
ERROR_FILTER = "message:(error OR ERROR OR Error OR fatal OR FATAL OR panic OR exception OR Exception)"


def es_target(ref: str, query: str, metrics: list[Json], bucket_aggs: list[Json], alias: str = "") -> Json:
    return {
        "refId": ref,
        "datasource": ES_DS,
        "query": query,
        "alias": alias,
        "metrics": metrics,
        "bucketAggs": bucket_aggs,
        "timeField": "@timestamp",
    }


def _histogram(bucket_id: str) -> Json:
    return {
        "id": bucket_id,
        "type": "date_histogram",
        "field": "@timestamp",
        "settings": {"interval": "auto", "min_doc_count": "0", "trimEdges": "0"},
    }


def _terms(bucket_id: str, field: str, size: int = 10) -> Json:
    return {
        "id": bucket_id,
        "type": "terms",
        "field": field,
        "settings": {"size": str(size), "order": "desc", "orderBy": "_count", "min_doc_count": "1"},
    }


def es_panel(kind: str, title: str, targets: list[Json], size: tuple[int, int], **extra: Any) -> Json:
    return {
        "type": kind,
        "title": title,
        "datasource": ES_DS,
        "targets": targets,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "_size": size,
        **extra,
    }


def logs_dashboard() -> Json:
    count = [{"id": "1", "type": "count"}]
    bars: Json = {
        "defaults": {
            "unit": "short",
            "custom": {"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal", "group": "A"}},
        },
        "overrides": [],
    }
    return dashboard(
        "kubeobs-logs",
        "kubeobs / Logs",
        "Container logs shipped by the collector to Elasticsearch (Elastic Common Schema fields).",
        [
            datasource_var("elasticsearch"),
            es_terms_var("namespace", "Namespace", "kubernetes.namespace"),
            es_terms_var("pod", "Pod", "kubernetes.pod.name", "kubernetes.namespace:$namespace"),
            es_terms_var("container", "Container", "kubernetes.container.name", "kubernetes.pod.name:$pod"),
            es_terms_var("node", "Node", "kubernetes.node.name"),
            textbox_var("search", "Search", "*"),
        ],
        [
            es_panel(
                "timeseries",
                "Log volume by namespace",
                [
                    es_target(
                        "A",
                        LOG_FILTER,
                        count,
                        [_terms("3", "kubernetes.namespace"), _histogram("2")],
                        "{{term}}",
                    )
                ],
                (12, 8),
                fieldConfig=bars,
                options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["sum"]}},
            ),
            es_panel(
                "timeseries",
                "Error lines by namespace",
                [
                    es_target(
                        "A",
                        f"({LOG_FILTER}) AND {ERROR_FILTER}",
                        count,
                        [_terms("3", "kubernetes.namespace"), _histogram("2")],
                        "{{term}}",
                    )
                ],
                (12, 8),
                description="Lines whose message says error, fatal, panic or exception.",
                fieldConfig=bars,
                options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["sum"]}},
            ),
            es_panel(
                "timeseries",
                "Lines by stream",
                [es_target("A", LOG_FILTER, count, [_terms("3", "stream", 2), _histogram("2")], "{{term}}")],
                (12, 7),
                fieldConfig=bars,
            ),
            es_panel(
                "bargauge",
                "Top pods by volume",
                [es_target("A", LOG_FILTER, count, [_terms("2", "kubernetes.pod.name", 15)], "{{term}}")],
                (12, 7),
                options={
                    "orientation": "horizontal",
                    "displayMode": "gradient",
                    "reduceOptions": {"calcs": ["sum"]},
                },
            ),
            es_panel(
                "logs",
                "Logs",
                [es_target("A", LOG_FILTER, [{"id": "1", "type": "logs", "settings": {"limit": "500"}}], [])],
                (24, 16),
                options={
                    "showTime": True,
                    "wrapLogMessage": True,
                    "sortOrder": "Descending",
                    "enableLogDetails": True,
                    "dedupStrategy": "none",
                    "prettifyLogMessage": False,
                    "showCommonLabels": False,
                    "showLabels": False,
                },
            ),
        ],
    )


DASHBOARDS = {
    "logs": logs_dashboard,
    "collector": collector_dashboard,
    "dns": dns_dashboard,
    "nodes": nodes_dashboard,
    "pods": pods_dashboard,
}


def render(board: Json) -> str:
    return json.dumps(board, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def generated() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": render(build()) for name, build in DASHBOARDS.items()}


def outdated(out_dirs: Iterable[Path] = OUT_DIRS) -> list[Path]:
    """Files that are missing or differ from what :func:`generated` produces (and stray ``*.json``)."""
    files = generated()
    bad: list[Path] = []
    for d in out_dirs:
        for name, text in files.items():
            path = d / name
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                bad.append(path)
        bad.extend(p for p in sorted(d.glob("*.json")) if p.name not in files)
    return bad


def write(out_dirs: Iterable[Path] = OUT_DIRS) -> list[Path]:
    written: list[Path] = []
    files = generated()
    for d in out_dirs:
        d.mkdir(parents=True, exist_ok=True)
        for stray in d.glob("*.json"):
            if stray.name not in files:
                stray.unlink()
        for name, text in files.items():
            path = d / name
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        bad = outdated()
        for path in bad:
            print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
        if bad:
            print("run: python -m dashboards.generate", file=sys.stderr)
        return 1 if bad else 0
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
