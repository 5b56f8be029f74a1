"""``kubeobs logs`` as a user runs it: a subprocess, against the corpus in SQLite and in osmem-server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.kubeobs.search import corpus
from tests.support.collector_proc import free_port
from tests.support.servers import REPO_ROOT, EsServer

RECORDS = corpus.build()
LINES = corpus.lines(RECORDS)


def kubeobs(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubeobs", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={**os.environ, "NO_COLOR": "", **(env or {})},
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.load_sqlite(tmp_path_factory.mktemp("search-cli"), RECORDS)


def json_ids(stdout: str) -> list[str]:
    return [orjson.loads(line)["_id"] for line in stdout.splitlines()]


def test_help_shows_the_synopsis_and_the_query_language() -> None:
    r = kubeobs("logs", "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: kubeobs logs [-h] [-n NS] [--pod GLOB]")
    for text in (
        "--follow",
        "--histogram",
        "--backend URL",
        "query language",
        '"connection refused"',
        "exit codes",
    ):
        assert text in r.stdout
    top = kubeobs("--help")
    assert top.returncode == 0 and "logs" in top.stdout and "search and follow" in top.stdout


def test_json_lines_match_the_oracle(store: Path) -> None:
    r = kubeobs(
        "logs",
        "--backend",
        f"sqlite://{store}",
        "-o",
        "json",
        "--limit",
        "0",
        "-n",
        "shop",
        "--stream",
        "stderr",
        "timed OR refused",
    )
    assert r.returncode == 0, r.stderr
    want = corpus.expected(
        LINES,
        lambda x: x.namespace == "shop" and x.stream == "stderr" and (x.has("timed") or x.has("refused")),
    )
    assert json_ids(r.stdout) == want and len(want) > 20
    doc = orjson.loads(r.stdout.splitlines()[0])
    assert doc["kubernetes"]["namespace"] == "shop" and doc["@timestamp"] and doc["log"]["offset"] >= 0


def test_piped_text_is_plain_and_colour_can_be_forced(store: Path) -> None:
    r = kubeobs("logs", "--backend", str(store), "--limit", "20", "--stream", "stderr")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 20
    assert "\x1b[" not in r.stdout
    forced = kubeobs(
        "logs", "--backend", str(store), "--limit", "20", "--stream", "stderr", "--color", "always"
    )
    assert forced.stdout.count("\x1b[31m") == 20  # every stderr message highlighted
    no_color = kubeobs("logs", "--backend", str(store), "--limit", "5", env={"NO_COLOR": "1"})
    assert "\x1b[" not in no_color.stdout


def test_wide_and_histogram(store: Path) -> None:
    r = kubeobs("logs", "--backend", str(store), "-o", "wide", "--limit", "1", "-l", "k8s-app=kube-dns")
    assert r.returncode == 0
    assert r.stdout.split(" ")[1:5] == [
        "node-a",
        "kube-system/coredns-5d78c-xk2pq/coredns",
        "stdout",
        "k8s-app=kube-dns",
    ]
    h = kubeobs("logs", "--backend", str(store), "--histogram", "--interval", "1m", "error")
    assert h.returncode == 0, h.stderr
    total = sum(1 for x in LINES if x.has("error"))
    assert f"{total:,} lines, " in h.stdout and "buckets of 1m" in h.stdout
    assert "top namespaces: " in h.stdout and "top pods: " in h.stdout


@pytest.mark.parametrize(
    ("argv", "stderr"),
    [
        (["podd:web"], "kubeobs logs: unknown field 'podd' at column 1 (known: "),
        (["error AND"], "kubeobs logs: 'AND' at column 7 needs a term on its right\n"),
        (["--limit", "x"], "kubeobs logs: error: argument --limit: not a number: 'x'"),
        (["-o", "xml"], "kubeobs logs: error: argument -o/--output: invalid choice: 'xml'"),
        (["--since", "5 minutes"], "kubeobs logs: error: argument --since: bad duration '5 minutes'"),
    ],
)
def test_bad_queries_and_flags_exit_2(store: Path, argv: list[str], stderr: str) -> None:
    r = kubeobs("logs", "--backend", str(store), *argv)
    assert r.returncode == 2 and r.stdout == ""
    last = r.stderr.splitlines()[-1] + "\n"
    assert last.startswith(stderr) or r.stderr.startswith(stderr), r.stderr
    if not stderr.startswith("kubeobs logs: error:"):  # our own errors are exactly one line
        assert r.stderr.count("\n") == 1


def test_unreachable_backends_exit_3_naming_the_url(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    r = kubeobs("logs", "--backend", f"http://elastic:secret@127.0.0.1:{port}", "error")
    assert r.returncode == 3
    url = f"http://elastic:***@127.0.0.1:{port}"  # the password is not shown
    assert r.stderr == f"kubeobs logs: cannot search {url}: cannot connect: connection refused\n"
    r = kubeobs("logs", "error", env={"KUBEOBS_BACKEND": f"sqlite://{tmp_path}/missing.db"})
    assert r.returncode == 3
    assert r.stderr.startswith(f"kubeobs logs: cannot search {tmp_path}/missing.db: no such log store")


def test_elasticsearch_backend(es_server_shared: EsServer) -> None:
    index = corpus.load_es(es_server_shared.url, RECORDS)
    r = kubeobs(
        "logs",
        "--backend",
        es_server_shared.url,
        "--index",
        index,
        "-o",
        "json",
        "--limit",
        "30",
        "-l",
        "app=web",
        "--pod",
        "web-7d9f8-a*",
        "kube-probe",
    )
    assert r.returncode == 0, r.stderr
    want = corpus.expected(
        LINES,
        lambda x: x.labels.get("app") == "web" and x.pod.startswith("web-7d9f8-a") and x.has("kube", "probe"),
        limit=30,
    )
    assert json_ids(r.stdout) == want and len(want) == 30
    h = kubeobs(
        "logs",
        "--backend",
        es_server_shared.url,
        "--index",
        index,
        "--histogram",
        "-o",
        "json",
        "-n",
        "payments",
    )
    assert h.returncode == 0, h.stderr
    assert orjson.loads(h.stdout)["total"] == sum(1 for x in LINES if x.namespace == "payments")
    bad = kubeobs("logs", "--backend", es_server_shared.url, "--index", index, "labels.:x")
    assert bad.returncode == 2


def test_a_closed_pipe_ends_quietly(store: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubeobs", "logs", "--backend", str(store), "--limit", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(30) == 0
    assert first.startswith(b"2024-03-02T00:0") and err == b""
