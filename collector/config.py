"""Collector configuration: one YAML file, parsed and checked at the edge.

Every key is declared here with its default and a one-line description; unknown keys are errors that
name the key's path (``sink.hostz: unknown key``). ``${VAR}`` and ``${VAR:-default}`` are expanded
from the environment before parsing. Components receive these frozen models, never raw dicts.

Example::

    node_name: ${NODE_NAME}
    state_dir: /var/lib/kubeobs
    sources:
      - type: container_logs
        paths: ["/var/log/containers/*.log"]
    sink:
      type: elasticsearch
      hosts: ["http://127.0.0.1:9200"]
      index: "logs-k8s-%Y.%m.%d"
    metrics:
      listen: "0.0.0.0:2021"
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A configuration problem, phrased for the user in one line."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MultilineRule(_Model):
    """Which containers get multiline joining, and how. The first rule that matches a file wins; a pod
    annotation ``kubeobs.io/multiline: <rules>`` overrides them (``none`` turns joining off)."""

    namespaces: list[str] = Field(default_factory=lambda: ["*"], description="namespace globs")
    pods: list[str] = Field(default_factory=lambda: ["*"], description="pod name globs")
    containers: list[str] = Field(default_factory=lambda: ["*"], description="container name globs")
    rules: Literal["auto", "java", "python", "go", "ruby", "node", "custom", "none"] = Field(
        "auto", description="built-in rules, custom (start/continuation below) or none"
    )
    start: str | None = Field(None, description="custom: regex of a line that starts an event")
    continuation: str | None = Field(None, description="custom: regex of a line that continues it")
    timeout: float = Field(2.0, gt=0, description="seconds before a quiet container's held event is shipped")
    max_bytes: int = Field(1024 * 1024, ge=1024, description="an event is cut into several beyond this size")

    @model_validator(mode="after")
    def _custom(self) -> MultilineRule:
        if self.rules == "custom":
            if not self.start or not self.continuation:
                raise ValueError("rules: custom needs start and continuation regexes")
            for name, pattern in (("start", self.start), ("continuation", self.continuation)):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"{name}: invalid regex: {e}") from None
        return self


class ContainerLogsSource(_Model):
    """Tails container log files (CRI and docker json-file, auto-detected per line)."""

    type: Literal["container_logs"] = "container_logs"
    paths: list[str] = Field(
        default_factory=lambda: ["/var/log/containers/*.log"], description="glob patterns of files to tail"
    )
    exclude_paths: list[str] = Field(default_factory=list, description="glob patterns of files to skip")
    include_namespaces: list[str] = Field(
        default_factory=list, description="namespace globs to ship (empty: all); from the file name"
    )
    exclude_namespaces: list[str] = Field(default_factory=list, description="namespace globs not to ship")
    read_from: Literal["head", "tail"] = Field(
        "head", description="where to start a file seen for the first time (no checkpoint)"
    )
    max_line_bytes: int = Field(
        1024 * 1024, ge=1024, description="joined lines longer than this are split into marked parts"
    )
    read_chunk_bytes: int = Field(64 * 1024, ge=4096, description="bytes read from a file per turn")
    rescan_interval: float = Field(1.0, gt=0, description="seconds between glob rescans (safety net)")
    poll_interval: float = Field(0.25, gt=0, description="seconds between checks of open files for growth")
    rotate_wait: float = Field(
        5.0, ge=0, description="seconds a rotated-away file stays open after its last new byte"
    )
    multiline: list[MultilineRule] = Field(
        default_factory=list, description="multiline joining (stack traces) per container; none by default"
    )
    max_deleted_files: int = Field(
        100,
        ge=0,
        description="deleted files held open (unread data kept on disk) before the oldest is dropped",
    )
    max_deleted_bytes: int = Field(
        2 * 1024**3, ge=0, description="unread bytes of deleted files held open before the oldest is dropped"
    )


class KubernetesConfig(_Model):
    """Metadata enrichment from the apiserver (omit the section to run without it)."""

    kubeconfig: str | None = Field(None, description="path to a kubeconfig; null: in-cluster")
    annotations: list[str] = Field(
        default_factory=list, description="pod annotations copied into documents (allow-list of keys)"
    )
    deleted_pod_keep: float = Field(
        60.0, ge=0, description="seconds a deleted pod's metadata still enriches its last lines"
    )
    sync_timeout: float = Field(
        10.0, ge=0, description="seconds to wait at start for the first pod list before shipping without it"
    )


class _BatchSettings(_Model):
    batch_max_bytes: int = Field(
        1024 * 1024, ge=1024, description="flush a batch at this many bytes of log lines (a bulk body is ~3x)"
    )
    batch_max_records: int = Field(2_000, ge=1, description="flush a batch at this many records")
    flush_interval: float = Field(1.0, gt=0, description="flush a non-empty batch after this many seconds")
    workers: int = Field(2, ge=1, le=64, description="batches in flight to the sink at once")
    retry_initial_backoff: float = Field(0.5, gt=0, description="first retry delay in seconds")
    retry_max_backoff: float = Field(30.0, gt=0, description="retry delay cap in seconds")


class ElasticsearchSink(_BatchSettings):
    """Ships documents to Elasticsearch 8/9 (or an OpenSearch-API server) with the `_bulk` API."""

    type: Literal["elasticsearch"]
    hosts: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:9200"])
    index: str = Field("logs-k8s-%Y.%m.%d", description="strftime pattern applied to the record's timestamp")
    dead_letter_index: str = Field("kubeobs-deadletter", description="index for items rejected with a 4xx")
    template_name: str = Field("kubeobs-logs", description="name of the index template installed at start")
    install_template: bool = Field(True, description="install the index template at start")
    username: str | None = None
    password: str | None = None
    api_key: str | None = Field(None, description="base64 'id:key' API key")
    ca_certs: str | None = Field(None, description="CA bundle for https hosts")
    verify_certs: bool = True
    request_timeout: float = Field(30.0, gt=0, description="seconds per bulk request")

    @model_validator(mode="after")
    def _auth(self) -> ElasticsearchSink:
        if self.api_key is not None and self.username is not None:
            raise ValueError("set either username/password or api_key, not both")
        if self.password is not None and self.username is None:
            raise ValueError("password given without username")
        if self.ca_certs is not None and not os.path.isfile(self.ca_certs):
            raise ValueError(f"ca_certs: no such file: {self.ca_certs}")
        for h in self.hosts:
            if not re.match(r"https?://[^/\s]+", h):
                raise ValueError(f"hosts: expected http(s)://host:port, got {h!r}")
        return self


class SqliteSink(_BatchSettings):
    """The embedded store: one SQLite file with an FTS5 index on `message`."""

    type: Literal["sqlite"]
    path: str = Field("./kubeobs-logs.db", description="database file")


SinkConfig = Annotated[ElasticsearchSink | SqliteSink, Field(discriminator="type")]


# node_exporter's collector names that collector/exporters/node.py implements (NODE_COLLECTORS)
NodeCollectorName = Literal[
    "arp", "conntrack", "cpu", "cpufreq", "diskstats", "entropy", "filefd", "filesystem", "loadavg",
    "meminfo", "netclass", "netdev", "netstat", "os", "pressure", "schedstat", "sockstat", "softnet", "stat",
    "thermal_zone", "time", "timex", "udp_queues", "uname", "vmstat",
]  # fmt: skip


class MetricsConfig(_Model):
    listen: str = Field("0.0.0.0:2021", description="host:port for /metrics, /healthz, /readyz; '' disables")
    procfs: str = "/proc"
    sysfs: str = "/sys"
    cgroupfs: str = "/sys/fs/cgroup"
    # node metrics (collector/exporters/node.py); regex defaults are Debian's node_exporter 1.5's
    node: bool = Field(True, description="publish node metrics (node_exporter's names) on /metrics")
    pods: bool = Field(
        True,
        description="publish this node's container metrics (cAdvisor's names, from cgroupfs) and pod state "
        "(kube-state-metrics' names) on /metrics; needs kubernetes:",
    )
    rootfs: str = Field(
        "/", description="the node's / (statfs of mount points, os-release); /host/root in a pod"
    )
    udev_data: str = Field(
        "/run/udev/data", description="udev's database (node_disk_info's model, serial, ...)"
    )
    node_collectors_disabled: list[NodeCollectorName] = Field(
        default_factory=list, description="node_exporter collectors to leave out, e.g. [netclass, arp]"
    )
    netdev_exclude: str = Field(
        r"^lo$", description="regex of interfaces left out of node_network_{receive,transmit}_*_total"
    )
    netclass_exclude: str = Field(
        r"^$", description="regex of interfaces left out of node_network_{up,info,mtu_bytes,...} (sysfs)"
    )
    diskstats_exclude: str = Field(
        r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$",
        description="regex of block devices left out of node_disk_*",
    )
    filesystem_exclude_mountpoints: str = Field(
        r"^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)",
        description="regex of mount points left out of node_filesystem_*",
    )
    filesystem_exclude_fstypes: str = Field(
        r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue"
        r"|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$",
        description="regex of filesystem types left out of node_filesystem_* (pseudo filesystems)",
    )
    filesystem_mount_timeout: float = Field(
        5.0, ge=0, description="seconds a statfs may block (dead NFS server) before its mount is skipped"
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if v and not re.fullmatch(r"\[?[^\s\]]*\]?:\d{1,5}", v):
            raise ValueError("expected host:port")
        return v

    @field_validator(
        "netdev_exclude",
        "netclass_exclude",
        "diskstats_exclude",
        "filesystem_exclude_mountpoints",
        "filesystem_exclude_fstypes",
    )
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regex: {e}") from None
        return v


class CollectorConfig(_Model):
    node_name: str = Field(
        default_factory=lambda: os.environ.get("NODE_NAME") or socket.gethostname(),
        description="this node's name; default $NODE_NAME, else the hostname",
    )
    state_dir: str = Field("/var/lib/kubeobs", description="checkpoints live here")
    sources: list[ContainerLogsSource] = Field(default_factory=lambda: [ContainerLogsSource()])
    kubernetes: KubernetesConfig | None = None
    sink: SinkConfig = Field(default_factory=lambda: SqliteSink(type="sqlite"))
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    checkpoint_interval: float = Field(1.0, gt=0, description="seconds between checkpoint writes")
    shutdown_timeout: float = Field(10.0, gt=0, description="seconds to flush in-flight data on SIGTERM")
    queue_batches: int = Field(2, ge=1, description="full batches queued ahead of the sink (backpressure)")


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}``; an unset variable without default is an error."""
    environ = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(f"environment variable {name} is not set (used as ${{{name}}})")
            return default
        return value

    return _ENV.sub(sub, text)


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, p in enumerate(loc):
        # drop discriminated-union tags, e.g. ('sink', 'elasticsearch', 'hostz')
        if i > 0 and loc[i - 1] == "sink" and p in ("elasticsearch", "sqlite"):
            continue
        parts.append(f"[{p}]" if isinstance(p, int) else ("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: ``<key path>: <what is wrong>``."""
    lines = []
    for e in err.errors():
        where = _path(tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and not isinstance(e["input"], dict | list):
                msg += f" (got {e['input']!r})"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def parse_config(data: Any) -> CollectorConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping at the top level")
    try:
        return CollectorConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def load_config(path: str | Path) -> CollectorConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(expand_env(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    return parse_config(data)
