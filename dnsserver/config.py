"""DNS server settings: one YAML file (``--config``) and/or flags, validated at the edge.

Flags override the file's keys. Unknown keys are errors naming the key's path (exit code 2).

Example (every key, with its default)::

    listen: 127.0.0.1:5353        # UDP and TCP
    zone: cluster.local
    kubeconfig: null              # absent, with no records file: in-cluster service account
    records: null                 # a YAML file of Services/EndpointSlices/Pods instead of an apiserver
    upstream: []                  # HOST:PORT resolvers for names outside the zone ([] = REFUSED)
    ttl: 5
    pods: insecure                # disabled | insecure | verified
    metrics_listen: 127.0.0.1:9153
    health_listen: 127.0.0.1:8080 # /health and /ready
    lameduck: 5                   # seconds of answering after SIGTERM, /ready failing
    max_pending: 1000             # queries waiting on upstreams; more are dropped and counted
    tcp_idle_timeout: 10
    forward: {policy: random, timeout: 2, max_concurrent: 1000, health_check_interval: 0.5, max_fails: 2}
    cache: {enabled: true, capacity: 9984, max_ttl: 3600, max_negative_ttl: 1800, serve_stale: 0}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(Exception):
    """A settings mistake, in one line that names the key."""


def _hostport(value: str, *, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ForwardConfig(_Model):
    policy: Literal["random", "round_robin", "sequential"] = "random"
    """Which healthy upstream gets a query first."""
    timeout: float = Field(2.0, gt=0)
    """Seconds to wait for all upstreams together before answering SERVFAIL."""
    max_concurrent: int = Field(1000, ge=1)
    """Queries in flight upstream at once; more get REFUSED (as CoreDNS)."""
    health_check_interval: float = Field(0.5, gt=0)
    max_fails: int = Field(2, ge=1)
    """Consecutive failures that mark an upstream down until a health check succeeds."""


class CacheConfig(_Model):
    enabled: bool = True
    capacity: int = Field(9984, ge=1)
    max_ttl: float = Field(3600, ge=0)
    max_negative_ttl: float = Field(1800, ge=0)
    serve_stale: float = Field(0, ge=0)
    """Seconds an expired answer may still be served when the upstreams fail (0: never)."""


class DnsConfig(_Model):
    listen: str = "127.0.0.1:5353"
    zone: str = "cluster.local"
    kubeconfig: str | None = None
    records: str | None = None
    upstream: list[str] = Field(default_factory=list)
    ttl: int = Field(5, ge=0, le=3600)
    pods: Literal["disabled", "insecure", "verified"] = "insecure"
    metrics_listen: str = "127.0.0.1:9153"
    health_listen: str = "127.0.0.1:8080"
    lameduck: float = Field(5.0, ge=0)
    max_pending: int = Field(1000, ge=1)
    tcp_idle_timeout: float = Field(10.0, gt=0)
    forward: ForwardConfig = Field(default_factory=ForwardConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _hostport(v)

    @field_validator("metrics_listen", "health_listen")
    @classmethod
    def _optional_listen(cls, v: str) -> str:
        return _hostport(v, allow_empty=True)

    @field_validator("upstream")
    @classmethod
    def _upstreams(cls, v: list[str]) -> list[str]:
        """``HOST:PORT``; a bare host gets port 53 (IPv6 as ``[::1]:53``)."""
        return [_hostport(u if ":" in u and not u.endswith("]") else f"{u}:53") for u in v]

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        v = v.strip().strip(".").lower()
        if not v or any(not label for label in v.split(".")):
            raise ValueError(f"not a domain name: {v!r}")
        return v


def _describe(e: ValidationError) -> str:
    err = e.errors()[0]
    path = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key {path!r}"
    return f"{path}: {err['msg']}"


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> DnsConfig:
    """The file's keys (if any) with ``overrides`` (flags given) on top; raises :class:`ConfigError`."""
    data: dict[str, Any] = {}
    if path is not None:
        import yaml  # only with a file: the DNS server keeps its memory small

        try:
            with open(path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data = dict(loaded or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return DnsConfig.model_validate(data)
    except ValidationError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(where + _describe(e)) from None
