"""The DNS server as users start it: --help, config mistakes, records file mistakes and reloads,
SIGTERM with a lame-duck period, metrics that pass promtool. Real processes, real sockets."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.rcode
import pytest

from tests.support.dns import metric_total, query, start_dns_server
from tests.support.servers import REPO_ROOT

RECORDS = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dnsserver", *args], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )


def wait_for(what: str, probe: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_help_lists_every_flag() -> None:
    out = run("--help")
    assert out.returncode == 0
    for flag in (
        "--listen",
        "--zone",
        "--kubeconfig",
        "--records",
        "--upstream",
        "--metrics-listen",
        "--health-listen",
        "--config",
        "--pods",
        "--ttl",
        "--lameduck",
    ):
        assert flag in out.stdout
    kubeobs = subprocess.run(
        [sys.executable, "-m", "kubeobs", "dns", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert kubeobs.returncode == 0 and "usage: kubeobs dns" in kubeobs.stdout


def test_config_typo_names_the_key_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "dns.yaml"
    cfg.write_text("listen: 127.0.0.1:5353\nforward:\n  polcy: random\n")
    out = run("--config", str(cfg))
    assert out.returncode == 2
    assert "forward.polcy" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    bad = run("--listen", "nowhere")
    assert bad.returncode == 2 and "listen" in bad.stderr
    assert run("--pods", "sometimes").returncode == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: Service\nmetadata: {namespace: ns}\n", "without metadata.name"),
        ("kind: Deployment\nmetadata: {name: x}\n", "expected one of"),
        ("kind: Service\nmetadata: {name: x\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a Kubernetes object"),
    ],
)
def test_bad_records_file_is_one_clear_line_and_exit_2(tmp_path: Path, content: str, message: str) -> None:
    records = tmp_path / "records.yaml"
    records.write_text(content)
    out = run(
        "--records", str(records), "--listen", "127.0.0.1:0", "--health-listen", "", "--metrics-listen", ""
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and str(records) in out.stderr
    assert "Traceback" not in out.stderr


def test_records_file_reload_and_broken_edit_keeps_last_good(tmp_path: Path) -> None:
    records = tmp_path / "records.yaml"
    records.write_text(RECORDS)
    server = start_dns_server(tmp_path, "--records", str(records))
    try:
        server.wait_ready(10)
        assert [str(r) for r in query(server.port, "web.ns.svc.cluster.local", "A").answer[0]] == [
            "10.96.0.10"
        ]
        records.write_text(
            RECORDS.replace("10.96.0.10", "10.96.0.11") + "---\n" + RECORDS.replace("web", "api")
        )

        def changed() -> bool:
            r = query(server.port, "api.ns.svc.cluster.local", "A")
            return r.rcode() == dns.rcode.NOERROR and bool(r.answer)

        wait_for("the edited records to answer", changed)
        assert [str(r) for r in query(server.port, "web.ns.svc.cluster.local", "A").answer[0]] == [
            "10.96.0.11"
        ]
        records.write_text("kind: Service\nmetadata: {name: [\n")
        wait_for("the broken edit to be logged", lambda: "keeping the last good records" in server.stderr())
        assert query(server.port, "api.ns.svc.cluster.local", "A").answer
    finally:
        server.stop()


def test_sigterm_lame_duck_then_exit_0(tmp_path: Path) -> None:
    records = tmp_path / "records.yaml"
    records.write_text(RECORDS)
    server = start_dns_server(tmp_path, "--records", str(records), "--lameduck", "2")
    server.wait_ready(10)
    server.process.send_signal(signal.SIGTERM)
    wait_for("/ready to fail during the lame duck", lambda: not server.ready(), 5)
    assert server.healthy()
    assert query(server.port, "web.ns.svc.cluster.local", "A").answer  # still answering
    assert server.process.wait(15) == 0
    assert "stopped" in server.stderr()


def test_metrics_have_coredns_names_and_pass_promtool(tmp_path: Path) -> None:
    records = tmp_path / "records.yaml"
    records.write_text(RECORDS)
    server = start_dns_server(tmp_path, "--records", str(records))
    try:
        server.wait_ready(10)
        for _ in range(3):
            query(server.port, "web.ns.svc.cluster.local", "A")
        query(server.port, "nope.ns.svc.cluster.local", "A", tcp=True)
        query(server.port, "example.org", "A")
        m = server.metrics()
        assert metric_total(m, "coredns_dns_requests_total", proto="udp", type="A", zone=".") == 4
        assert metric_total(m, "coredns_dns_requests_total", proto="tcp", family="1") == 1
        assert metric_total(m, "coredns_dns_responses_total", rcode="NOERROR", plugin="kubernetes") == 3
        assert metric_total(m, "coredns_dns_responses_total", rcode="NXDOMAIN") == 1
        assert metric_total(m, "coredns_dns_responses_total", rcode="REFUSED") == 1
        assert metric_total(m, "coredns_dns_request_duration_seconds_count", type="A") == 5
        assert metric_total(m, "coredns_dns_request_size_bytes_count", proto="udp") == 4
        assert metric_total(m, "coredns_dns_response_size_bytes_count", proto="tcp") == 1
        assert m.get("coredns_panics_total") == 0
        assert metric_total(m, "coredns_build_info") == 1
        text = server.metrics_text()
    finally:
        server.stop()
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian prometheus) is needed; tests/run.sh installs it"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
