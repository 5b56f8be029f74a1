"""cAdvisor-named container metrics from cgroup v2 fixture trees (fixtures/cgroup, see its README).

Both kubelet cgroup drivers and every QoS class; containers matched to pods by pod uid + the container id
of ``status.containerStatuses[].containerID`` (containerd, CRI-O, docker); values as cAdvisor computes
them; pod-level series; one bad file losing only its own series; the exposition read back with
prometheus_client's parser.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collector.exporters.containers import (
    CgroupError,
    ContainerMetrics,
    container_cgroup_name,
    find_pod_cgroups,
    keyed_values,
    parse_cpu_max,
    parse_limit,
    pod_uid_from_cgroup,
    split_container_id,
    working_set,
)
from collector.exporters.exposition import format_labels, format_value

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
SYSTEMD = FIXTURES / "systemd"
CGROUPFS = FIXTURES / "cgroupfs"
NODE = "node-a"

G, B, E = (
    "5c2f8a9e-3b1d-4c7a-9e2f-1a2b3c4d5e6f",
    "0f6d3c2a-8e4b-4f1a-b7c9-2d3e4f5a6b7c",
    "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
)
G2, B2, E2 = (
    "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b",
    "2c3d4e5f-6071-4829-9bac-1d2e3f4a5b6c",
    "3d4e5f60-7182-4a3b-acbd-2e3f4a5b6c7d",
)
G_DIR = f"/kubepods.slice/kubepods-pod{G.replace('-', '_')}.slice"
B_DIR = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{B.replace('-', '_')}.slice"
E_DIR = f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{E.replace('-', '_')}.slice"


def cid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def pod(
    namespace: str,
    name: str,
    uid: str,
    containers: Iterable[tuple[str, str | None, str]],
    *,
    node: str = NODE,
    annotations: Mapping[str, str] | None = None,
    init: Iterable[tuple[str, str | None, str]] = (),
) -> dict[str, Any]:
    """A pod object as the apiserver returns it; ``containers`` is (name, containerID or None, image)."""

    def statuses(items: Iterable[tuple[str, str | None, str]]) -> list[dict[str, Any]]:
        out = []
        for cname, container_id, image in items:
            s: dict[str, Any] = {"name": cname, "image": image, "restartCount": 0, "ready": True,
                                 "state": {"running": {"startedAt": "2024-05-01T10:00:00Z"}}}  # fmt: skip
            if container_id is not None:
                s["containerID"] = container_id
            out.append(s)
        return out

    containers = list(containers)
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": uid,
            "annotations": dict(annotations or {}),
        },
        "spec": {"nodeName": node, "containers": [{"name": c, "image": i} for c, _, i in containers]},
        "status": {
            "phase": "Running",
            "containerStatuses": statuses(containers),
            "initContainerStatuses": statuses(init),
        },
    }


def systemd_pods() -> list[dict[str, Any]]:
    return [
        pod("shop", "db-0", G, [("postgres", f"containerd://{cid('db-0/postgres')}", "postgres:16")]),
        pod("shop", "web", B, [("nginx", f"containerd://{cid('web/nginx')}", "docker.io/library/nginx:1.25"),
                               ("sidecar", f"containerd://{cid('web/sidecar')}", "ghcr.io/acme/sidecar:2")]),
        pod("batch", "job", E, [("worker", f"cri-o://{cid('job/worker')}", "quay.io/acme/worker:1")]),
    ]  # fmt: skip


def cgroupfs_pods() -> list[dict[str, Any]]:
    return [
        pod("infra", "cache-0", G2, [("redis", f"docker://{cid('cache-0/redis')}", "redis:7")]),
        pod("infra", "api-1", B2, [("api", f"docker://{cid('api-1/api')}", "acme/api:3"),
                                   ("log", f"docker://{cid('api-1/log')}", "acme/log:1")]),
        pod("infra", "debug", E2, [("shell", f"containerd://{cid('debug/shell')}", "busybox:1.36")]),
    ]  # fmt: skip


Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(*collectors: Any) -> Series:
    """The exposition of a registry holding ``collectors``, parsed back: (sample name, labels) -> value."""
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(series: Series, metric: str, /, **labels: str) -> float:
    """The one sample of ``metric`` whose labels include ``labels``."""
    found = [v for (n, ls), v in series.items() if n == metric and set(labels.items()) <= ls]
    assert len(found) == 1, f"{metric}{labels}: {len(found)} samples"
    return found[0]


def has(series: Series, metric: str, /, **labels: str) -> bool:
    return any(n == metric and set(labels.items()) <= ls for n, ls in series)


# -- values ---------------------------------------------------------------------------------------------

SYSTEMD_EXPECTED = [
    # pod, container, cpu s, (periods, throttled periods, throttled s) or None, usage, wss, rss, limit, ooms
    ("db-0", "postgres", 734.502911, (120544, 0, 0.0), 201326592, 134217728, 117440512, 268435456, 0),
    # nginx: this machine's real cgroup v2 cpu.stat (no cpu controller: no nr_periods); memory.max "max"
    ("web", "nginx", 11685.624376, None, 5537792, 4534272, 1802240, 0, 0),
    # sidecar: inactive_file (2 MiB) > memory.current (1 MiB): working set clamped at 0; throttled
    ("web", "sidecar", 2.583316, (4371, 152, 9.847213), 1048576, 0, 524288, 67108864, 2),
    ("job", "worker", 90.999111, None, 33554432, 25165824, 20971520, 0, 0),
]
CGROUPFS_EXPECTED = [
    ("cache-0", "redis", 4.9, (890, 10, 0.25), 10223616, 9175040, 8126464, 16777216, 1),
    ("api-1", "api", 2.0, None, 6291456, 6029312, 5242880, 134217728, 0),
    ("api-1", "log", 0.9, None, 1835008, 1572864, 786432, 0, 0),
    ("debug", "shell", 12.345, None, 3932160, 2883584, 2883584, 0, 0),
]


@pytest.mark.parametrize(
    ("root", "pods", "expected"),
    [(SYSTEMD, systemd_pods, SYSTEMD_EXPECTED), (CGROUPFS, cgroupfs_pods, CGROUPFS_EXPECTED)],
    ids=["systemd", "cgroupfs"],
)
def test_container_values_as_cadvisor_computes_them(
    root: Path, pods: Any, expected: list[tuple[Any, ...]]
) -> None:
    series = scrape(ContainerMetrics(str(root), pods=pods))
    for pod_name, container, cpu, cfs, usage, wss, rss, limit, ooms in expected:
        sel = {"pod": pod_name, "container": container}
        assert value(series, "container_cpu_usage_seconds_total", **sel, cpu="total") == pytest.approx(cpu)
        assert value(series, "container_memory_usage_bytes", **sel) == usage
        assert value(series, "container_memory_working_set_bytes", **sel) == wss
        assert value(series, "container_memory_rss", **sel) == rss
        assert value(series, "container_spec_memory_limit_bytes", **sel) == limit
        assert value(series, "container_oom_events_total", **sel) == ooms
        cfs_names = ("container_cpu_cfs_periods_total", "container_cpu_cfs_throttled_periods_total",
                     "container_cpu_cfs_throttled_seconds_total")  # fmt: skip
        if cfs is None:  # no CPU quota: cAdvisor publishes no CFS series
            assert not any(has(series, n, **sel) for n in cfs_names), sel
        else:
            assert [value(series, n, **sel) for n in cfs_names] == pytest.approx(list(cfs))
    containers = {dict(ls)["container"] for n, ls in series if n == "container_memory_usage_bytes"}
    assert containers == {e[1] for e in expected} | {""}


def test_labels_match_cadvisor_and_the_pod_watch() -> None:
    series = scrape(ContainerMetrics(str(SYSTEMD), pods=systemd_pods))
    nginx = cid("web/nginx")
    expected = {
        "container": "nginx",
        "id": f"{B_DIR}/cri-containerd-{nginx}.scope",
        "image": "docker.io/library/nginx:1.25",
        "name": nginx,
        "namespace": "shop",
        "pod": "web",
        "node": NODE,
    }
    [labels] = [dict(ls) for n, ls in series if n == "container_memory_working_set_bytes" and
                dict(ls)["container"] == "nginx"]  # fmt: skip
    assert labels == expected
    [labels] = [dict(ls) for n, ls in series if n == "container_cpu_usage_seconds_total" and
                dict(ls)["container"] == "nginx"]  # fmt: skip
    assert labels == {**expected, "cpu": "total"}
    worker = cid("job/worker")
    assert has(series, "container_memory_rss", container="worker", id=f"{E_DIR}/crio-{worker}.scope")


def test_pod_level_series_carry_empty_container_image_and_name() -> None:
    series = scrape(ContainerMetrics(str(SYSTEMD), pods=systemd_pods))
    pod_level = {"container": "", "image": "", "name": ""}
    assert value(series, "container_memory_usage_bytes", pod="web", **pod_level, id=B_DIR) == 6848512
    assert value(series, "container_memory_working_set_bytes", pod="web", **pod_level) == 6848512 - 3100672
    assert value(series, "container_spec_memory_limit_bytes", pod="web", **pod_level) == 0  # memory.max max
    assert value(series, "container_cpu_usage_seconds_total", pod="db-0", **pod_level, id=G_DIR) == (
        pytest.approx(734.611058)
    )
    assert value(series, "container_cpu_cfs_throttled_periods_total", pod="db-0", **pod_level) == 0
    assert value(series, "container_memory_rss", pod="job", **pod_level, id=E_DIR) == 21495808
    # what dashboards select with image!="": the containers only
    assert {dict(ls)["container"] for n, ls in series if n == "container_memory_working_set_bytes" and
            dict(ls)["image"] != ""} == {"postgres", "nginx", "sidecar", "worker"}  # fmt: skip

    without = scrape(ContainerMetrics(str(SYSTEMD), pods=systemd_pods, pod_cgroups=False))
    assert not has(without, "container_memory_usage_bytes", container="")
    assert value(without, "container_memory_usage_bytes", container="nginx") == 5537792


def test_sandbox_conmon_and_containers_without_cgroup_are_not_published() -> None:
    pods = systemd_pods()
    pods[1]["status"]["containerStatuses"].append(  # restarted: old id in lastState, new not started yet
        {
            "name": "waiting",
            "image": "x",
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        }
    )
    pods[1]["status"]["containerStatuses"].append(  # exited: its cgroup is gone
        {"name": "gone", "image": "x", "containerID": f"containerd://{cid('web/gone')}", "state": {}}
    )
    pods.append(pod("shop", "elsewhere", "7e7e7e7e-0000-4000-8000-000000000000",
                    [("c", f"containerd://{cid('x/c')}", "x")]))  # fmt: skip  # no cgroup on this node
    collector = ContainerMetrics(str(SYSTEMD), pods=lambda: pods)
    series = scrape(collector)
    names = {dict(ls)["name"] for n, ls in series if n == "container_memory_usage_bytes"}
    assert names == {"", cid("db-0/postgres"), cid("web/nginx"), cid("web/sidecar"), cid("job/worker")}
    assert cid("db-0/sandbox") not in names
    assert not has(series, "container_memory_usage_bytes", pod="elsewhere")
    # the conmon scope beside the CRI-O container is not mistaken for it
    assert value(series, "container_memory_usage_bytes", container="worker") == 33554432
    assert collector.file_errors == {}
    assert not has(series, "kubeobs_cadvisor_cgroup_file_errors_total")


def test_init_containers_unknown_runtimes_and_mirror_pods_are_matched() -> None:
    pods = [
        pod("shop", "web", B, [("nginx", f"containerd://{cid('web/nginx')}", "nginx")],
            init=[("migrate", f"containerd://{cid('web/sidecar')}", "migrate:1")]),
        # a runtime whose scope prefix we do not know: the pod cgroup is searched for the id
        pod("shop", "db-0", G, [("postgres", f"somert://{cid('db-0/postgres')}", "postgres")]),
        # the mirror pod of a static pod: the cgroup has the uid named in kubernetes.io/config.mirror
        pod("batch", "job", "11111111-2222-4333-8444-555555555555",
            [("worker", f"cri-o://{cid('job/worker')}", "w")],
            annotations={"kubernetes.io/config.mirror": E}),
    ]  # fmt: skip
    series = scrape(ContainerMetrics(str(SYSTEMD), pods=lambda: pods))
    assert value(series, "container_oom_events_total", container="migrate") == 2
    assert value(series, "container_memory_rss", container="postgres", pod="db-0") == 117440512
    assert value(series, "container_memory_rss", container="worker", pod="job") == 20971520


def test_one_bad_file_loses_only_its_own_series(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cgroup"
    shutil.copytree(SYSTEMD, root)
    nginx = root / B_DIR.lstrip("/") / f"cri-containerd-{cid('web/nginx')}.scope"
    sidecar = root / B_DIR.lstrip("/") / f"cri-containerd-{cid('web/sidecar')}.scope"
    (nginx / "cpu.stat").unlink()
    (sidecar / "memory.stat").write_text("anon twelve\ninactive_file 0\n")
    (sidecar / "memory.max").unlink()
    (sidecar / "memory.max").mkdir()  # reading it fails with EISDIR
    collector = ContainerMetrics(str(root), pods=systemd_pods)
    with caplog.at_level(logging.WARNING, logger="collector.exporters.containers"):
        series = scrape(collector)
        scrape(collector)
    assert sorted(r.getMessage().split(" in ")[0] for r in caplog.records) == [
        "cadvisor: malformed memory.stat",
        "cadvisor: missing cpu.stat",
        "cadvisor: unreadable memory.max",
    ]  # once each, not once per scrape

    assert not has(series, "container_cpu_usage_seconds_total", container="nginx")
    assert value(series, "container_memory_working_set_bytes", container="nginx") == 4534272
    assert not has(series, "container_memory_working_set_bytes", container="sidecar")
    assert not has(series, "container_memory_rss", container="sidecar")
    assert not has(series, "container_spec_memory_limit_bytes", container="sidecar")
    assert value(series, "container_memory_usage_bytes", container="sidecar") == 1048576
    assert value(series, "container_cpu_cfs_throttled_seconds_total", container="sidecar") == 9.847213
    assert value(series, "container_memory_rss", container="postgres") == 117440512
    errors = {(dict(ls)["file"], dict(ls)["reason"]): v for (n, ls), v in series.items()
              if n == "kubeobs_cadvisor_cgroup_file_errors_total"}  # fmt: skip
    assert errors == {("cpu.stat", "missing"): 1, ("memory.stat", "malformed"): 1,
                      ("memory.max", "unreadable"): 1}  # fmt: skip
    assert collector.file_errors[("cpu.stat", "missing")] == 2  # counted every scrape: a counter


def test_a_root_that_is_not_cgroup_v2_fails_the_collector(tmp_path: Path) -> None:
    shutil.copytree(SYSTEMD, tmp_path / "v1")
    (tmp_path / "v1" / "cgroup.controllers").unlink()
    collector = ContainerMetrics(str(tmp_path / "v1"), pods=systemd_pods)
    with pytest.raises(CgroupError, match="not a cgroup v2 mount"):
        collector.collect()  # raised by the call itself: a wrapper timing and isolating it sees it
    with pytest.raises(CgroupError):
        collector.expose()


def test_no_pods_and_failing_pod_source() -> None:
    assert scrape(ContainerMetrics(str(SYSTEMD), pods=list)) == {}

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("watch cache gone")

    with pytest.raises(RuntimeError, match="watch cache gone"):
        ContainerMetrics(str(SYSTEMD), pods=broken).collect()


# -- pure parts -----------------------------------------------------------------------------------------


def test_find_pod_cgroups_in_both_layouts() -> None:
    assert find_pod_cgroups(str(SYSTEMD)) == {
        G: G_DIR.lstrip("/"),
        B: B_DIR.lstrip("/"),
        E: E_DIR.lstrip("/"),
    }
    assert find_pod_cgroups(str(CGROUPFS)) == {
        G2: f"kubepods/pod{G2}",
        B2: f"kubepods/burstable/pod{B2}",
        E2: f"kubepods/besteffort/pod{E2}",
    }
    assert find_pod_cgroups(str(SYSTEMD), roots=["nowhere.slice"]) == {}


@pytest.mark.parametrize(
    ("dirname", "uid"),
    [
        (f"kubepods-burstable-pod{B.replace('-', '_')}.slice", B),
        ("kubepods-pod5C2F8A9E_3b1d_4c7a_9e2f_1a2b3c4d5e6f.slice", "5c2f8a9e-3b1d-4c7a-9e2f-1a2b3c4d5e6f"),
        ("kubelet-kubepods-besteffort-podabc_def.slice", "abc-def"),
        ("pod1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b", "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b"),
        ("poda3c4b5d6e7f8091a2b3c4d5e6f708192", "a3c4b5d6e7f8091a2b3c4d5e6f708192"),  # static pod
        ("kubepods-burstable.slice", None),
        ("burstable", None),
        ("cri-containerd-0123abcd.scope", None),
        ("podman-thing", None),
    ],
)
def test_pod_uid_from_cgroup(dirname: str, uid: str | None) -> None:
    assert pod_uid_from_cgroup(dirname) == uid


def test_container_ids_and_cgroup_names() -> None:
    assert split_container_id("containerd://abc123") == ("containerd", "abc123")
    assert split_container_id("cri-o://abc123") == ("cri-o", "abc123")
    assert split_container_id("docker://abc123") == ("docker", "abc123")
    assert split_container_id("") is None and split_container_id("containerd://") is None
    assert split_container_id("abc123") is None
    assert container_cgroup_name("containerd", "abc", systemd=True) == "cri-containerd-abc.scope"
    assert container_cgroup_name("cri-o", "abc", systemd=True) == "crio-abc.scope"
    assert container_cgroup_name("docker", "abc", systemd=True) == "docker-abc.scope"
    assert container_cgroup_name("somert", "abc", systemd=True) is None
    assert container_cgroup_name("containerd", "abc", systemd=False) == "abc"


def test_flat_keyed_and_limit_files() -> None:
    real = (SYSTEMD / B_DIR.lstrip("/") / f"cri-containerd-{cid('web/nginx')}.scope" / "cpu.stat").read_text()
    assert keyed_values(real, ["usage_usec", "nr_periods"]) == {"usage_usec": 11685624376}
    text = "usage_usec 5\nnr_periods 7\nnr_throttled 2\nthrottled_usec 9\n"
    assert keyed_values(text, ["nr_throttled", "usage_usec", "throttled_usec"]) == {
        "nr_throttled": 2, "usage_usec": 5, "throttled_usec": 9}  # fmt: skip
    # a key is matched whole, at a line start: "anon" is not "inactive_anon" nor "anon_thp"
    assert keyed_values("inactive_anon 1\nanon_thp 2\nanon 3\n", ["anon"]) == {"anon": 3}
    assert keyed_values("oom 1\noom_kill 4", ["oom_kill"]) == {"oom_kill": 4}  # no trailing newline
    with pytest.raises(ValueError):
        keyed_values("anon x\n", ["anon"])
    assert parse_limit("max\n") is None and parse_limit("268435456\n") == 268435456
    assert parse_cpu_max("max 100000\n") == (None, 100000)
    assert parse_cpu_max("50000 100000\n") == (50000, 100000)
    with pytest.raises(ValueError):
        parse_cpu_max("50000\n")
    assert working_set(100, 30) == 70 and working_set(30, 100) == 0 and working_set(5, 5) == 0


# -- text exposition ------------------------------------------------------------------------------------


def families_of(text: str) -> dict[str, tuple[str, str, Series]]:
    """Family name -> (type, help, its samples), from Prometheus text."""
    return {
        f.name: (f.type, f.documentation, {(s.name, frozenset(s.labels.items())): s.value for s in f.samples})
        for f in text_string_to_metric_families(text)
    }


def test_expose_is_what_generate_latest_writes_for_collect(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    shutil.copytree(SYSTEMD, root)
    (root / B_DIR.lstrip("/") / f"cri-containerd-{cid('web/nginx')}.scope" / "memory.stat").write_text("x")
    pods = systemd_pods()
    pods[0]["status"]["containerStatuses"][0]["image"] = 'odd "image"\\name\nwith newline'
    collector = ContainerMetrics(str(root), pods=lambda: pods)
    registry = CollectorRegistry()
    registry.register(collector)
    reference = generate_latest(registry).decode()
    exposed = collector.expose().decode()  # reads the files again: one more malformed memory.stat counted
    want, got = families_of(reference), families_of(exposed)
    assert got.keys() == want.keys()
    for name in want.keys() - {"kubeobs_cadvisor_cgroup_file_errors"}:
        assert got[name] == want[name], name
    assert got["kubeobs_cadvisor_cgroup_file_errors"][2] == {
        (
            "kubeobs_cadvisor_cgroup_file_errors_total",
            frozenset({("file", "memory.stat"), ("reason", "malformed")}),
        ): 2
    }
    assert (
        value(series_of(exposed), "container_memory_rss", image='odd "image"\\name\nwith newline')
        == 117440512
    )
    assert [line for line in exposed.splitlines() if line.startswith("# TYPE container_cpu_usage")] == [
        "# TYPE container_cpu_usage_seconds_total counter"
    ]
    assert "container_memory_usage_bytes{" in exposed and " 201326592\n" in exposed  # integers without ".0"
    again = collector.expose().decode()
    assert families_of(again).keys() == got.keys()


def series_of(text: str) -> Series:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_format_value_and_labels() -> None:
    assert [format_value(v) for v in (0.0, 2.0, 134217728.0, 2.583316, 1e-05, 2.0**60)] == [
        "0", "2", "134217728", "2.583316", "1e-05", "1.152921504606847e+18"]  # fmt: skip
    assert [format_value(v) for v in (float("nan"), float("inf"), float("-inf"))] == ["NaN", "+Inf", "-Inf"]
    assert format_labels({}) == ""
    assert format_labels({"b": "2", "a": 'q"\\\n'}) == '{a="q\\"\\\\\\n",b="2"}'
