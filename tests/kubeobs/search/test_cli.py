"""``kubeobs logs`` in process, on a real store: each flag, each output, each exit code.

(The subprocess runs, and the Elasticsearch side, are in tests/integration/test_search_cli.py.)
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from collector.config import CollectorConfig
from dnsserver.config import DnsConfig
from kubeobs.cli import try_commands, up_config
from kubeobs.search.cli import main
from tests.kubeobs.search import corpus
from tests.kubeobs.search.corpus import Line

NOW = corpus.START_NS + corpus.SPAN_NS + 60_000_000_000  # a minute after the last line


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.load_sqlite(tmp_path_factory.mktemp("cli"), corpus.build())


@pytest.fixture(scope="module")
def lines() -> list[Line]:
    return corpus.lines(corpus.build())


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, now_ns=lambda: NOW)
    return code, out.getvalue(), err.getvalue()


def ids(store: Path, *argv: str) -> list[str]:
    code, out, err = run("--backend", str(store), "-o", "json", *argv)
    assert code == 0, err
    return [orjson.loads(line)["_id"] for line in out.splitlines()]


def test_default_is_the_newest_100_lines(store: Path, lines: list[Line]) -> None:
    assert ids(store) == corpus.expected(lines, lambda x: True, limit=100)


FLAGS: list[tuple[list[str], Callable[[Line], bool]]] = [
    (["-n", "shop"], lambda x: x.namespace == "shop"),
    (["-n", "shop", "-n", "payments"], lambda x: x.namespace in ("shop", "payments")),
    (["--namespace", "kube-*"], lambda x: x.namespace == "kube-system"),
    (["--pod", "web-*"], lambda x: x.pod.startswith("web-")),
    (["-c", "sidecar"], lambda x: x.container == "sidecar"),
    (["--node", "node-b", "--stream", "stderr"], lambda x: x.node == "node-b" and x.stream == "stderr"),
    (["-l", "app=web"], lambda x: x.labels.get("app") == "web"),
    (["-l", "tier!=backend"], lambda x: x.labels.get("tier") != "backend"),
    (
        ["-l", "app.kubernetes.io/name=shop,tier=backend"],
        lambda x: x.labels.get("app_kubernetes_io/name") == "shop" and x.labels.get("tier") == "backend",
    ),
    (["-l", "!app"], lambda x: "app" not in x.labels),
    (["-l", "app", "-l", "tier"], lambda x: "app" in x.labels and "tier" in x.labels),
    (["error", "OR", "refused"], lambda x: x.has("error") or x.has("refused")),
    (["--", "-namespace:shop", "stream:stderr"], lambda x: x.namespace != "shop" and x.stream == "stderr"),
    (["--since", "2m"], lambda x: x.ts_ns >= NOW - 120_000_000_000),
    (
        ["--from", "2024-03-01T23:59:00Z", "--to", "2024-03-02T00:00:30.5Z"],
        lambda x: 1_709_337_540_000_000_000 <= x.ts_ns < 1_709_337_630_500_000_000,
    ),
    (["--from", "5m", "--to", "4m"], lambda x: NOW - 300_000_000_000 <= x.ts_ns < NOW - 240_000_000_000),
]


@pytest.mark.parametrize(("argv", "pred"), FLAGS)
def test_filter_flags(store: Path, lines: list[Line], argv: list[str], pred: Callable[[Line], bool]) -> None:
    want = corpus.expected(lines, pred)
    got = ids(store, "--limit", "0", *argv)
    assert got == want
    assert 0 < len(got) < len(lines)


def test_limit_and_reverse(store: Path, lines: list[Line]) -> None:
    assert ids(store, "--limit", "7") == corpus.expected(lines, lambda x: True, limit=7)
    assert ids(store, "--limit", "7", "--reverse") == corpus.expected(
        lines, lambda x: True, newest_first=False, limit=7
    )
    assert len(ids(store, "--limit", "0")) == len(lines)


def test_text_and_wide_output(store: Path) -> None:
    code, out, _ = run("--backend", str(store), "--limit", "1", "--color", "never", "-n", "default")
    assert code == 0
    assert out.startswith("2024-03-02T00:0") and " default/job-42-abcde/main " in out
    code, out, _ = run("--backend", f"sqlite://{store}", "--limit", "1", "-o", "wide", "-n", "default")
    assert code == 0
    fields = out.split(" ")
    assert fields[1] == "node-a" and fields[2] == "default/job-42-abcde/main" and fields[3] == "stdout"
    assert fields[4] == "app=batch"
    assert len(fields[0]) == len("2024-03-02T00:00:00.123456789Z")


def test_colour_always_marks_stderr(store: Path) -> None:
    code, out, _ = run("--backend", str(store), "--limit", "3", "--stream", "stderr", "--color", "always")
    assert code == 0
    assert out.count("\x1b[31m") == 3


def test_histogram_json(store: Path, lines: list[Line]) -> None:
    code, out, _ = run(
        "--backend", str(store), "--histogram", "-o", "json", "-n", "monitoring", "--interval", "1m"
    )
    assert code == 0
    hist = orjson.loads(out)
    assert hist["interval"] == "1m"
    assert hist["total"] == sum(1 for x in lines if x.namespace == "monitoring")
    assert hist["top_namespaces"] == [{"namespace": "monitoring", "count": hist["total"]}]
    times = [x.ts_ns for x in lines if x.namespace == "monitoring"]
    minute = 60_000_000_000
    assert len(hist["buckets"]) == max(times) // minute - min(times) // minute + 1
    assert sum(b["count"] for b in hist["buckets"]) == hist["total"]


def test_histogram_text_and_nothing_found(store: Path) -> None:
    code, out, _ = run("--backend", str(store), "--histogram", "--color", "never", "timeouts")
    assert code == 0
    assert "top pods: payments/worker-6f8b9-k2v9p" in out
    code, out, err = run("--backend", str(store), "--histogram", "nosuchword")
    assert (code, out, err) == (0, "", "kubeobs logs: no matching lines\n")


def test_explain_shows_the_sql_without_running_it(tmp_path: Path) -> None:
    code, out, _ = run("--backend", str(tmp_path / "none.db"), "--explain", "-n", "shop", "error")
    assert code == 0
    assert out.splitlines() == [
        "WHERE ts_ns IS NOT NULL AND (rid IN (SELECT rowid FROM logs_fts WHERE logs_fts MATCH ?)"
        " AND namespace IS ?)",
        'params: ["\\"error\\"","shop"]',
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["podd:web"], "unknown field 'podd' at column 1"),
        (["error", "(x"], "'(' at column 7 is never closed"),
        (["-l", "app="], "-l: empty label value"),
        (["--since", "5m", "--from", "1h"], "--since and --from cannot be used together"),
        (["--from", "2024-03-02", "--to", "2024-03-01"], "--to must be after --from"),
        (["--from", "yesterday"], "bad time 'yesterday'"),
        (["-f", "--to", "now"], "--to cannot be used with --follow"),
        (["-f", "--histogram"], "--histogram cannot be used with --follow"),
        (["--pod", ""], "--pod: empty value"),
        (
            ["-namespace:kube-system error"],
            "-n/--namespace: 'amespace:kube-system error' is not a Kubernetes name (a query starting with '-'"
            " goes after '--': kubeobs logs -- '-word ...')",
        ),
        (["--backend", "redis://x"], "--backend: unknown scheme in 'redis://x'"),
        (
            ["--backend", "http://:9200"],
            "--backend http://:9200: URL must include a 'scheme', 'host', and 'port'",
        ),
        (
            ["--backend", "http://127.0.0.1:9", "--username", "u", "--api-key", "k"],
            "--backend http://127.0.0.1:9: Can only set one of 'api_key', 'basic_auth'",
        ),
        (["--backend", "https://127.0.0.1:9", "--ca-certs", "/no/such/ca.pem"], "--ca-certs: no such file"),
    ],
)
def test_usage_errors_exit_2_with_one_line(store: Path, argv: list[str], message: str) -> None:
    args = argv if "--backend" in argv else ["--backend", str(store), *argv]
    code, out, err = run(*args)
    assert code == 2 and out == ""
    assert err.startswith(f"kubeobs logs: {message}") and err.count("\n") == 1


def test_missing_store_exits_3_naming_it(tmp_path: Path) -> None:
    code, _, err = run("--backend", str(tmp_path / "nope.db"))
    assert code == 3
    assert err == f"kubeobs logs: cannot search {tmp_path / 'nope.db'}: no such log store" + (
        " (start one with 'kubeobs up', or pass --backend)\n"
    )


def test_backend_from_the_environment(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEOBS_BACKEND", str(store))
    code, out, _ = run("--limit", "2")
    assert code == 0 and len(out.splitlines()) == 2


def test_up_suggests_a_search_a_dig_and_a_curl() -> None:
    args = argparse.Namespace(
        data_dir="/tmp/kd", logs=None, demo=True, metrics_listen="0.0.0.0:2021", dns_listen="127.0.0.1:5353"
    )
    cfg: CollectorConfig = up_config(args)
    dns = DnsConfig(listen="127.0.0.1:5353", records="/tmp/kd/records.yaml")
    assert try_commands(args, cfg, dns).splitlines() == [
        "kubeobs: try",
        "  kubeobs logs --backend /tmp/kd/kubeobs-logs.db -n shop --since 15m 'error OR \"timed out\"'",
        "  dig @127.0.0.1 -p 5353 web.shop.svc.cluster.local",
        "  curl -s http://127.0.0.1:2021/metrics | head",
    ]
    args = argparse.Namespace(
        data_dir="./kubeobs-data", logs=None, demo=False, metrics_listen="", dns_listen=""
    )
    assert try_commands(args, up_config(args), None).splitlines() == [
        "kubeobs: try",
        "  kubeobs logs --since 15m",
    ]
