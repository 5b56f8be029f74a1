"""Config loading: defaults, env expansion, and one-line errors naming the key's path (exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import ConfigError, ElasticsearchSink, expand_env, load_config, parse_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_spec_example(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """
node_name: ${NODE:-n1}
state_dir: /var/lib/kubeobs
sources:
  - type: container_logs
    paths: ["/var/log/containers/*.log"]
    exclude_paths: []
kubernetes:
  kubeconfig: null
sink:
  type: elasticsearch
  hosts: ["http://127.0.0.1:9200"]
  index: "logs-k8s-%Y.%m.%d"
metrics:
  listen: "0.0.0.0:2021"
  procfs: /proc
  sysfs: /sys
  cgroupfs: /sys/fs/cgroup
""",
        )
    )
    assert cfg.node_name == "n1"
    assert isinstance(cfg.sink, ElasticsearchSink) and cfg.sink.index == "logs-k8s-%Y.%m.%d"
    assert cfg.sources[0].max_line_bytes == 1024 * 1024
    assert cfg.kubernetes is not None and cfg.kubernetes.kubeconfig is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sink: {type: elasticsearch, hostz: [x]}", "sink.hostz: unknown key"),
        ("sources: [{paths: [a], max_line_byte: 5}]", "sources[0].max_line_byte: unknown key"),
        ("sink: {type: kafka}", "sink"),
        ("metrics: {listen: nope}", "metrics.listen: expected host:port"),
        ("state_dir: [1, 2]", "state_dir: Input should be a valid string"),
        ("sink: {type: sqlite, workers: 0}", "sink.workers: Input should be greater than or equal to 1"),
        ("- a\n- b", "expected a mapping at the top level"),
        ("sink: {type: elasticsearch\n", "invalid YAML at line"),
        ("node_name: ${SURELY_UNSET_VARIABLE}", "environment variable SURELY_UNSET_VARIABLE is not set"),
        (
            "sink: {type: elasticsearch, username: u, api_key: k}",
            "sink: set either username/password or api_key, not both",
        ),
        (
            "sink: {type: elasticsearch, ca_certs: /nonexistent.pem}",
            "ca_certs: no such file: /nonexistent.pem",
        ),
        ("sink: {type: elasticsearch, hosts: [es:9200]}", "hosts: expected http(s)://host:port"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_env_expansion() -> None:
    assert expand_env("a ${X} ${Y:-d} ${Z:-}", {"X": "1", "Z": ""}) == "a 1 d "
    assert parse_config(None).sink.type == "sqlite"


def test_typo_exits_2_with_the_key_path(tmp_path: Path) -> None:
    cfg = write(tmp_path, "sink:\n  type: elasticsearch\n  indx: foo\n")
    r = subprocess.run(
        [sys.executable, "-m", "collector", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "kubeobs collector: config error: sink.indx: unknown key"


def test_missing_file_exits_2(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "collector", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "cannot read config file" in r.stderr


def test_help_documents_every_key() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "collector", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0
    for key in (
        "node_name",
        "state_dir",
        "sources[].paths",
        "sources[].exclude_paths",
        "kubernetes.kubeconfig",
        "sink[elasticsearch].hosts",
        "sink[elasticsearch].index",
        "sink[sqlite].path",
        "metrics.listen",
        "shutdown_timeout",
    ):
        assert key in r.stdout, key
    r = subprocess.run(
        [sys.executable, "-m", "kubeobs", "collector", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "sink[sqlite].path" in r.stdout
