"""Queries per second of the kubeobs DNS server and of Knot DNS (the peer), side by side, with dnsperf.

Run::

    python bench/dns_qps.py [--services 1000] [--seconds 10] [--json results.json]

What happens (see bench/README.md for what the figures mean):

1. A deterministic data set of ``--services`` Services spread over 20 namespaces is generated: 90%
   ClusterIP services with one named port ``http`` (80/TCP), 10% headless services with three ready
   endpoints and a named port ``tcp-db`` (5432/TCP). It is written twice: as a multi-document YAML file
   of Service and EndpointSlice objects (what ``python -m dnsserver --records FILE`` reads), and as a
   Knot zone file for ``cluster.local`` holding the records the Kubernetes DNS specification asks for.
2. A dnsperf query file (``--queries`` lines, shuffled, seeded) mixes 85% A queries for existing
   services, 10% SRV queries for their named ports and 5% names under the zone that do not exist.
3. For each server in turn (``--repeat`` times, alternating): the server is started pinned to
   ``--server-cpu`` (``taskset``), its answers are checked with dnspython against the data set, dnsperf
   (pinned to ``--client-cpu``) warms it up, then runs once unthrottled (``-q --outstanding``) for the
   throughput and mean latency, and once at ``-Q --rate`` with ``-v`` (one line per query, with its
   latency) for the p99. The server's RSS is read with psutil after loading and every 50 ms during the
   runs. The server is then stopped.
4. A Markdown table (each server's median run) and the kubeobs/Knot ratios are printed; ``--json`` gets
   every run as JSON.

Every process the bench started is stopped by its PID (SIGTERM, then SIGKILL after a timeout), also on
errors and Ctrl-C. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import yaml

try:  # both checked in check_environment(), with the command that installs them
    import psutil
except ImportError:
    psutil = None
try:
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype
except ImportError:
    dns = None  # type: ignore[assignment]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
ZONE = "cluster.local"
TTL = 5  # CoreDNS's default for the kubernetes plugin
NAMESPACES = 20
HEADLESS_SHARE = 0.10
HEADLESS_ENDPOINTS = 3
MIX = (("A", 0.85), ("SRV", 0.10), ("NXDOMAIN", 0.05))
SAMPLE_INTERVAL = 0.05
STOP_TIMEOUT = 10.0
T = TypeVar("T")

# SPEC.md "Where the bar is": the DNS server's throughput against Knot's, on one core.
TARGET_RATIOS = (0.25, 0.3)


class BenchError(RuntimeError):
    """The bench could not run a step; the message says which and why."""


# -- the data set ----------------------------------------------------------------------------------------

_APPS = (
    "api",
    "web",
    "auth",
    "cart",
    "orders",
    "payments",
    "search",
    "users",
    "inventory",
    "billing",
    "checkout",
    "catalog",
    "gateway",
    "notify",
    "reports",
    "profile",
    "session",
    "shipping",
    "media",
    "ledger",
)


@dataclass(frozen=True)
class Endpoint:
    ip: str
    hostname: str | None  # None: the DNS name uses the dashed IP, as CoreDNS does

    @property
    def label(self) -> str:
        return self.hostname or self.ip.replace(".", "-")


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    cluster_ip: str | None  # None: headless
    port_name: str
    port: int
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{ZONE}."

    @property
    def srv_name(self) -> str:
        return f"_{self.port_name}._tcp.{self.fqdn}"

    def a_records(self) -> set[str]:
        return {self.cluster_ip} if self.cluster_ip else {e.ip for e in self.endpoints}

    def srv_records(self) -> set[tuple[int, str]]:
        """(port, target) of each SRV record (Kubernetes DNS specification 1.1.0, 2.3.3 and 2.4.3)."""
        if self.cluster_ip:
            return {(self.port, self.fqdn)}
        return {(self.port, f"{e.label}.{self.fqdn}") for e in self.endpoints}


def generate_services(count: int, seed: int) -> list[Service]:
    """``count`` services over ``NAMESPACES`` namespaces; the same ``seed`` gives the same set."""
    rng = random.Random(seed)
    namespaces = ["default", "kube-system"] + [f"team-{i:02d}" for i in range(1, NAMESPACES - 1)]
    service_net = ipaddress.ip_network("10.96.0.0/12")
    # .0 is the network, .1 the kubernetes service, .10 kube-dns: leave them out
    offsets = rng.sample(range(11, service_net.num_addresses - 1), count)
    headless = set(rng.sample(range(count), round(count * HEADLESS_SHARE)))
    pod_ips = iter(rng.sample(range(256, 256 * 255), len(headless) * HEADLESS_ENDPOINTS))
    services = []
    for i in range(count):
        name = f"{_APPS[i % len(_APPS)]}-{i:04d}"
        namespace = namespaces[rng.randrange(len(namespaces))]
        if i not in headless:
            ip = str(service_net.network_address + offsets[i])
            services.append(Service(name, namespace, ip, "http", 80))
            continue
        with_hostnames = rng.random() < 0.5  # StatefulSet-style pods carry a hostname; others do not
        endpoints = []
        for j in range(HEADLESS_ENDPOINTS):
            n = next(pod_ips)
            ip = f"10.244.{n // 256}.{n % 256}"
            endpoints.append(Endpoint(ip, f"{name}-{j}" if with_hostnames else None))
        services.append(Service(name, namespace, None, "tcp-db", 5432, tuple(endpoints)))
    return services


def kubernetes_objects(services: Sequence[Service], seed: int) -> list[dict[str, Any]]:
    """Service and EndpointSlice objects as the apiserver would list them."""
    rng = random.Random(seed + 1)
    docs: list[dict[str, Any]] = []
    for s in services:
        port = {"name": s.port_name, "port": s.port, "protocol": "TCP"}
        spec: dict[str, Any] = {
            "type": "ClusterIP",
            "clusterIP": s.cluster_ip or "None",
            "clusterIPs": [s.cluster_ip or "None"],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "selector": {"app": s.name},
            "ports": [{**port, "targetPort": s.port}],
        }
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": s.name, "namespace": s.namespace, "labels": {"app": s.name}},
                "spec": spec,
            }
        )
        if not s.endpoints:
            continue
        suffix = "".join(rng.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        endpoints = []
        for e in s.endpoints:
            ep: dict[str, Any] = {"addresses": [e.ip], "conditions": {"ready": True}}
            if e.hostname:
                ep["hostname"] = e.hostname
            endpoints.append(ep)
        docs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{s.name}-{suffix}",
                    "namespace": s.namespace,
                    "labels": {
                        "kubernetes.io/service-name": s.name,
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    },
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [port],
            }
        )
    return docs


def zone_text(services: Sequence[Service]) -> str:
    """The Knot zone file: the records of the Kubernetes DNS specification 1.1.0 for these services."""
    lines = [
        f"$ORIGIN {ZONE}.",
        f"$TTL {TTL}",
        f"@ IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 {TTL}",
        f"@ IN NS ns.dns.{ZONE}.",
        "ns.dns IN A 10.96.0.10",
        'dns-version IN TXT "1.1.0"',
    ]
    for s in services:
        if s.cluster_ip:
            lines.append(f"{s.fqdn} IN A {s.cluster_ip}")
            lines.append(f"{s.srv_name} IN SRV 0 100 {s.port} {s.fqdn}")
            continue
        weight = 100 // len(s.endpoints)
        for e in s.endpoints:
            lines.append(f"{s.fqdn} IN A {e.ip}")
            lines.append(f"{e.label}.{s.fqdn} IN A {e.ip}")
            lines.append(f"{s.srv_name} IN SRV 0 {weight} {s.port} {e.label}.{s.fqdn}")
    return "\n".join(lines) + "\n"


def knot_conf(work: Path, port: int) -> str:
    return f"""\
server:
    rundir: "{work / "run"}"
    pidfile: "{work / "run" / "knot.pid"}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: "{work / "run" / "knot.sock"}"
database:
    storage: "{work / "storage"}"
log:
  - target: stderr
    any: info
template:
  - id: default
    storage: "{work / "zones"}"
    file: "%s.zone"
    zonefile-load: whole
    zonefile-sync: -1
    journal-content: none
    semantic-checks: on
zone:
  - domain: {ZONE}
"""


def nxdomain_names(services: Sequence[Service], count: int, rng: random.Random) -> list[str]:
    """Names under the zone that do not exist: unknown services in known namespaces, unknown namespaces."""
    existing = {s.fqdn for s in services}
    namespaces = sorted({s.namespace for s in services})
    names: list[str] = []
    while len(names) < count:
        k = len(names)
        if k % 2 == 0:
            name = f"{_APPS[k % len(_APPS)]}-missing-{k:05d}.{rng.choice(namespaces)}.svc.{ZONE}."
        else:
            name = f"{rng.choice(services).name}.nons-{k:05d}.svc.{ZONE}."
        if name not in existing:
            names.append(name)
    return names


def query_lines(services: Sequence[Service], count: int, seed: int) -> list[str]:
    """dnsperf input lines (``name type``), ``MIX`` proportions, shuffled."""
    rng = random.Random(seed + 2)
    counts = {kind: round(count * share) for kind, share in MIX}
    counts["A"] = count - counts["SRV"] - counts["NXDOMAIN"]
    lines = [f"{rng.choice(services).fqdn} A" for _ in range(counts["A"])]
    lines += [f"{rng.choice(services).srv_name} SRV" for _ in range(counts["SRV"])]
    lines += [f"{name} A" for name in nxdomain_names(services, counts["NXDOMAIN"], rng)]
    rng.shuffle(lines)
    return lines


@dataclass
class DataSet:
    services: list[Service]
    records: Path
    zone_dir: Path
    queries: Path
    query_count: int
    nxdomain_share: float
    nxdomain_sample: list[str]


def write_data_set(work: Path, services_count: int, queries: int, seed: int) -> DataSet:
    services = generate_services(services_count, seed)
    records = work / "records.yaml"
    with records.open("w") as f:
        yaml.safe_dump_all(kubernetes_objects(services, seed), f, sort_keys=False)
    zone_dir = work / "zones"
    zone_dir.mkdir()
    (zone_dir / f"{ZONE}.zone").write_text(zone_text(services))
    lines = query_lines(services, queries, seed)
    query_file = work / "queries.txt"
    query_file.write_text("\n".join(lines) + "\n")
    missing = [line.split()[0] for line in lines if "-missing-" in line]
    no_namespace = [line.split()[0] for line in lines if ".nons-" in line]
    nx_share = (len(missing) + len(no_namespace)) / len(lines)
    sample = missing[:2] + no_namespace[:2]
    return DataSet(services, records, zone_dir, query_file, len(lines), nx_share, sample)


# -- processes -------------------------------------------------------------------------------------------


@dataclass
class Child:
    """A process the bench started; its stdout and stderr go to files in the work directory."""

    name: str
    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, lines: int = 40) -> str:
        parts = []
        for label, path in (("stderr", self.err_path), ("stdout", self.out_path)):
            with contextlib.suppress(OSError):
                text = path.read_text(encoding="utf-8", errors="replace").strip()
                if text:
                    tail = "\n".join(f"    {line}" for line in text.splitlines()[-lines:])
                    parts.append(f"  {self.name} {label} (last {lines} lines):\n{tail}")
        return "\n".join(parts) or f"  ({self.name} wrote nothing to stdout or stderr)"

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        return self.proc.returncode


class Children:
    """Every process the bench started, stopped by PID in reverse order by :meth:`stop_all`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Child] = []

    def spawn(self, name: str, argv: Sequence[str], **kwargs: Any) -> Child:
        out_path, err_path = self.log_dir / f"{name}.out", self.log_dir / f"{name}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err, **kwargs)
        child = Child(name, proc, out_path, err_path)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.started):
            with contextlib.suppress(Exception):
                child.stop()
        self.started.clear()


def find_tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        raise BenchError(f"{name} not found: install it with `apt-get install -y {package}`")
    return path


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    """``argv`` run on one CPU (taskset execs the command, so the PID is the command's own)."""
    return [find_tool("taskset", "util-linux"), "-c", str(cpu), *argv]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the DNS servers listen on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise BenchError("no free UDP+TCP port found on 127.0.0.1")


def wait_until(what: str, check: Callable[[], T | None], timeout: float, child: Child) -> T:
    """Poll ``check()`` until it returns something other than None; BenchError (with the child's
    stderr) when the child exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None:
            return got
        if not child.running():
            raise BenchError(
                f"{child.name} exited with code {child.proc.returncode} before {what}\n{child.stderr_tail()}"
            )
        if time.monotonic() > deadline:
            raise BenchError(
                f"{child.name}: timed out after {timeout:.0f}s waiting for {what}\n{child.stderr_tail()}"
            )
        time.sleep(0.05)


# -- memory sampling -------------------------------------------------------------------------------------


def tree_rss(pid: int) -> int | None:
    """RSS in bytes of the process and all its descendants; None once the process is gone."""
    try:
        proc = psutil.Process(pid)
        total: int = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
    except psutil.Error:
        return None
    return total


def vm_hwm(pid: int) -> int | None:
    """The kernel's peak RSS (VmHWM) of one process, in bytes."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def threads_off_cpu(pid: int, cpu: int) -> list[tuple[int, str, set[int]]]:
    """(tid, name, allowed CPUs) of every thread of the process tree whose affinity is not ``{cpu}``."""
    out = []
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error, OSError):
                for thread in proc.threads():
                    allowed = os.sched_getaffinity(thread.id)
                    if allowed != {cpu}:
                        name = Path(f"/proc/{proc.pid}/task/{thread.id}/comm").read_text().strip()
                        out.append((thread.id, name, allowed))
    return out


def pin_threads(pid: int, cpu: int) -> list[str]:
    """Pin every thread of the process tree to ``cpu``; returns the threads that had to be moved.

    ``taskset`` sets the affinity a process starts with, but a server may change it per thread: knotd's
    UDP worker N pins itself to CPU N modulo the online CPUs (udp_master() in knot's udp-handler.c), so
    on two cores its first worker lands on CPU 0, next to dnsperf. Threads are started when the server
    answers, and knotd does not pin them again."""
    moved = []
    for tid, name, allowed in threads_off_cpu(pid, cpu):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, {cpu})
            moved.append(f"{name} (thread {tid}) was on CPUs {sorted(allowed)}")
    left = threads_off_cpu(pid, cpu)
    if left:
        raise BenchError(f"could not pin these threads to CPU {cpu}: {left}")
    return moved


def process_cpu_seconds(pid: int) -> float | None:
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    return None


class RssSampler:
    """Reads the server's RSS (psutil, process tree) every ``SAMPLE_INTERVAL`` seconds in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss(self.pid)
            if rss is not None:
                self.peak = max(self.peak, rss)
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- answers ---------------------------------------------------------------------------------------------


def query(port: int, name: str, rdtype: str, timeout: float = 1.0) -> Any:
    q = dns.message.make_query(name, rdtype)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def answers_zone(port: int, probe: Service) -> bool | None:
    """True once the server answers ``probe``'s A query with NOERROR and a record; None until then."""
    try:
        r = query(port, probe.fqdn, "A", timeout=0.5)
    except Exception:  # not listening yet, or timed out
        return None
    return True if r.rcode() == dns.rcode.NOERROR and r.answer else None


Expectation = tuple[str, str, str, set[str]]  # name, type, rcode, answer records as text


def expectations(data: DataSet, sample: int, seed: int) -> list[Expectation]:
    """What the servers must answer: each kind of name (ClusterIP and headless services, with and without
    endpoint hostnames, their SRV records and endpoint names, missing names), then ``sample`` lines of the
    query file. A records are the addresses; SRV records are ``port target``."""
    services = data.services
    chosen = [s for s in services if s.cluster_ip][:3]
    chosen += [s for s in services if s.endpoints and s.endpoints[0].hostname][:2]
    chosen += [s for s in services if s.endpoints and not s.endpoints[0].hostname][:2]
    by_name = {s.fqdn: s for s in services} | {s.srv_name: s for s in services}

    def expect(name: str, rdtype: str) -> Expectation:
        svc = by_name.get(name)
        if svc is None:
            return name, rdtype, "NXDOMAIN", set()
        if rdtype == "SRV":
            return name, rdtype, "NOERROR", {f"{port} {target}" for port, target in svc.srv_records()}
        return name, rdtype, "NOERROR", svc.a_records()

    out = []
    for svc in chosen:
        out += [expect(svc.fqdn, "A"), expect(svc.srv_name, "SRV")]
        out += [(f"{e.label}.{svc.fqdn}", "A", "NOERROR", {e.ip}) for e in svc.endpoints]
    out += [expect(name, "A") for name in data.nxdomain_sample]
    lines = data.queries.read_text().splitlines()
    for line in random.Random(seed + 3).sample(lines, min(sample, len(lines))):
        name, rdtype = line.split()
        out.append(expect(name, rdtype))
    return out


def check_answers(port: int, data: DataSet, sample: int = 300, seed: int = 1) -> list[str]:
    """Ask the server every :func:`expectations` name over UDP; returns the differences found."""
    problems: list[str] = []
    for name, rdtype, want_rcode, want in expectations(data, sample, seed):
        try:
            r = query(port, name, rdtype)
        except Exception as e:  # a timeout is a wrong answer too
            problems.append(f"{name} {rdtype}: no answer ({type(e).__name__})")
            continue
        got = set()
        for rrset in r.answer:
            if rrset.rdtype == dns.rdatatype.from_text(rdtype):
                got |= {rd.address if rdtype == "A" else f"{rd.port} {rd.target}" for rd in rrset}
        rcode = dns.rcode.to_text(r.rcode())
        if rcode != want_rcode or got != want:
            problems.append(f"{name} {rdtype}: got {rcode} {sorted(got)}, want {want_rcode} {sorted(want)}")
    return problems


# -- dnsperf ---------------------------------------------------------------------------------------------

_STAT_PATTERNS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "run_time_s": r"Run time \(s\):\s+([\d.]+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "mean_latency_s": r"Average Latency \(s\):\s+([\d.]+)",
    "min_latency_s": r"Average Latency \(s\):\s+[\d.]+ \(min ([\d.]+)",
    "max_latency_s": r"Average Latency \(s\):.*max ([\d.]+)\)",
    "latency_stddev_s": r"Latency StdDev \(s\):\s+([\d.]+)",
    "request_bytes": r"Average packet size:\s+request (\d+)",
    "response_bytes": r"Average packet size:.*response (\d+)",
}


def parse_dnsperf_stats(text: str) -> dict[str, Any]:
    """The figures of dnsperf's closing "Statistics:" block (dnsperf 2.x)."""
    if "Statistics:" not in text:
        raise BenchError(f"dnsperf printed no statistics:\n{text[-2000:]}")
    stats_text = text[text.rindex("Statistics:") :]
    out: dict[str, Any] = {}
    for key, pattern in _STAT_PATTERNS.items():
        m = re.search(pattern, stats_text)
        if m is None:
            if key.startswith(("min_", "max_", "latency_")):
                continue  # absent when no query completed
            raise BenchError(f"dnsperf output has no {key!r} ({pattern}):\n{stats_text}")
        out[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    m = re.search(r"Response codes:\s+(.*)", stats_text)
    out["rcodes"] = {k: int(v) for k, v in re.findall(r"([A-Z]+) (\d+)", m.group(1))} if m else {}
    return out


def parse_verbose(path: Path) -> tuple[list[float], int, int]:
    """Per-query latencies (seconds) from ``dnsperf -v`` output (``> RCODE name type latency``), the
    number of timed-out queries (``> T ...``) and of interrupted ones (``> I ...``: still in flight when
    the time limit hit)."""
    latencies: list[float] = []
    timeouts = interrupted = 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("> "):
                continue
            parts = line.split()
            if parts[1] == "T":
                timeouts += 1
            elif parts[1] == "I":
                interrupted += 1
            else:
                with contextlib.suppress(ValueError, IndexError):
                    latencies.append(float(parts[-1]))
    return latencies, timeouts, interrupted


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def dnsperf_version(dnsperf: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([dnsperf, "-h"], capture_output=True, text=True, timeout=10)
        m = re.search(r"Version (\S+)", out.stdout + out.stderr)
        if m:
            return m.group(1)
    return "unknown"


def knot_version(knotd: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([knotd, "--version"], capture_output=True, text=True, timeout=10)
        m = re.search(r"version (\S+)", out.stdout + out.stderr)
        if m:
            return m.group(1)
    return "unknown"


# -- one server ------------------------------------------------------------------------------------------


@dataclass
class Result:
    server: str  # "ours" or "knot"
    label: str
    run: int = 1
    stand_in: bool = False  # a second knotd standing in for ours (--debug-ours-knotd): not our figures
    qps: float | None = None
    mean_latency_ms: float | None = None
    lost: int | None = None
    lost_pct: float | None = None
    server_cpu_util: float | None = None  # server CPU seconds (all threads) / run time, unthrottled run
    qps_per_cpu_s: float | None = None  # answered queries / server CPU seconds, unthrottled run
    core_busy: float | None = None  # non-idle share of --server-cpu (/proc/stat), unthrottled run
    client_core_util: float | None = None  # busy share of --client-cpu (dnsperf), unthrottled run
    # busy time of --server-cpu that the server's own CPU time does not cover: other processes, and
    # interrupts handled outside the server's context; unthrottled run
    others_on_core_s: float | None = None
    irq_on_core_s: float | None = None  # /proc/stat irq + softirq of --server-cpu (overlaps the server's)
    steal_on_core_s: float | None = None  # time the hypervisor took from --server-cpu
    rate_target_qps: int | None = None
    rate_achieved_qps: float | None = None
    rate_mean_latency_ms: float | None = None
    rate_p50_latency_ms: float | None = None
    rate_p99_latency_ms: float | None = None
    rate_p999_latency_ms: float | None = None
    rate_timeouts: int | None = None
    rss_loaded_mb: float | None = None
    peak_rss_mb: float | None = None
    vm_hwm_mb: float | None = None
    startup_s: float | None = None
    repinned_threads: list[str] = field(default_factory=list)  # see pin_threads()
    rcodes: dict[str, int] = field(default_factory=dict)
    unthrottled: dict[str, Any] = field(default_factory=dict)
    fixed_rate: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def core_seconds(cpu: int) -> dict[str, float] | None:
    """Seconds CPU ``cpu`` spent since boot (/proc/stat): ``tasks`` (user, nice, system: processes),
    ``irq`` (hard and soft interrupts, loopback packet delivery among them) and ``steal`` (hypervisor)."""
    clk_tck = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError), open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                t = [int(x) / clk_tck for x in line.split()[1:9]]
                return {"tasks": t[0] + t[1] + t[2], "irq": t[5] + t[6], "steal": t[7]}
    return None


def core_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float]:
    if before is None or after is None:
        return {}
    return {k: after[k] - before[k] for k in after}


def run_dnsperf(
    children: Children, name: str, args: argparse.Namespace, port: int, extra: Sequence[str]
) -> Child:
    """Run dnsperf to completion (pinned to ``--client-cpu``); its output is in the child's files."""
    argv = [
        find_tool("dnsperf", "dnsperf"),
        "-s", "127.0.0.1", "-p", str(port), "-d", str(args.data.queries),
        "-c", "1", "-T", "1", "-q", str(args.outstanding),
        "-O", "suppress=timeouts,congestion,sendfailed,sockready,unexpected",
        *extra,
    ]  # fmt: skip
    child = children.spawn(name, pinned(args.client_cpu, argv))
    limit = float(extra[extra.index("-l") + 1]) if "-l" in extra else 60.0
    try:
        child.proc.wait(limit + 30)
    except subprocess.TimeoutExpired:
        child.stop()
        raise BenchError(f"{name}: dnsperf did not finish within {limit + 30:.0f}s") from None
    if child.proc.returncode != 0:
        raise BenchError(f"{name}: dnsperf exited with code {child.proc.returncode}\n{child.stderr_tail()}")
    return child


def rcode_check(rcodes: dict[str, int], nx_share: float) -> list[str]:
    """Notes when the answers' rcodes do not match the query mix (wrong answers make fast servers)."""
    total = sum(rcodes.values())
    if not total:
        return ["no query was answered"]
    notes = []
    other = {k: v for k, v in rcodes.items() if k not in ("NOERROR", "NXDOMAIN")}
    if other:
        notes.append(f"unexpected response codes: {other}")
    got = rcodes.get("NXDOMAIN", 0) / total
    if abs(got - nx_share) > 0.01:
        notes.append(f"NXDOMAIN share {got:.1%}, the query file has {nx_share:.1%}")
    return notes


def measure(
    children: Children, which: str, label: str, server: Child, port: int, args: argparse.Namespace
) -> Result:
    """Check the answers, warm up, run dnsperf unthrottled and at a fixed rate; sample the RSS."""
    result = Result(server=which, label=label)
    data: DataSet = args.data
    if not args.no_verify:
        problems = check_answers(port, data, seed=args.seed)
        if problems:
            shown = "\n  ".join(problems[:20]) + (
                f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else ""
            )
            raise BenchError(f"{label} answers differently from the data set:\n  {shown}")
    time.sleep(0.5)  # let allocations from start-up and the checks settle before reading the RSS
    rss = tree_rss(server.pid)
    result.rss_loaded_mb = rss / 1e6 if rss is not None else None
    name = server.name
    with RssSampler(server.pid) as sampler:
        if args.warmup > 0:
            run_dnsperf(children, f"{name}-dnsperf-warmup", args, port, ["-l", str(args.warmup)])
        cpu0, core0 = process_cpu_seconds(server.pid), core_seconds(args.server_cpu)
        client0 = core_seconds(args.client_cpu)
        run = run_dnsperf(children, f"{name}-dnsperf-max", args, port, ["-l", str(args.seconds)])
        cpu1, core1 = process_cpu_seconds(server.pid), core_seconds(args.server_cpu)
        client1 = core_seconds(args.client_cpu)
        stats = parse_dnsperf_stats(run.out_path.read_text())
        fixed = run_dnsperf(
            children,
            f"{name}-dnsperf-rate",
            args,
            port,
            ["-l", str(args.seconds), "-Q", str(args.rate), "-v"],
        )
        if not server.running():
            raise BenchError(f"{label} exited during the run\n{server.stderr_tail()}")
    fixed_stats = parse_dnsperf_stats(fixed.out_path.read_text())
    result.unthrottled, result.fixed_rate = stats, fixed_stats
    result.qps = stats["qps"]
    result.mean_latency_ms = stats["mean_latency_s"] * 1e3
    result.lost = stats["lost"]
    result.lost_pct = 100 * stats["lost"] / stats["sent"] if stats["sent"] else None
    result.rcodes = stats["rcodes"]
    run_time = stats["run_time_s"]
    server_core = core_delta(core0, core1)
    if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
        server_cpu = cpu1 - cpu0
        result.server_cpu_util = server_cpu / run_time
        result.qps_per_cpu_s = stats["completed"] / server_cpu
        if server_core:
            # /proc/stat is sampled per tick, and without CONFIG_IRQ_TIME_ACCOUNTING the softirq work done
            # in the server's context (packet delivery of its sends) is in both its CPU time and "irq"
            busy = server_core["tasks"] + server_core["irq"]
            result.core_busy = busy / run_time
            result.others_on_core_s = max(0.0, busy - server_cpu)
            result.irq_on_core_s = server_core["irq"]
            result.steal_on_core_s = server_core["steal"]
    client_core = core_delta(client0, client1)
    if client_core:
        result.client_core_util = sum(client_core.values()) / run_time
    result.peak_rss_mb = sampler.peak / 1e6 if sampler.peak else None
    hwm = vm_hwm(server.pid)
    result.vm_hwm_mb = hwm / 1e6 if hwm is not None else None

    latencies, timeouts, interrupted = parse_verbose(fixed.out_path)
    latencies.sort()
    result.rate_target_qps = args.rate
    result.rate_achieved_qps = fixed_stats["qps"]
    result.rate_timeouts = timeouts
    if latencies:
        result.rate_mean_latency_ms = 1e3 * sum(latencies) / len(latencies)
        result.rate_p50_latency_ms = 1e3 * percentile(latencies, 50)
        # a query that timed out took longer than any answered one: it counts as +inf in the ranking
        ranked = latencies + [math.inf] * timeouts
        p99, p999 = percentile(ranked, 99), percentile(ranked, 99.9)
        result.rate_p99_latency_ms = 1e3 * p99 if math.isfinite(p99) else None
        result.rate_p999_latency_ms = 1e3 * p999 if math.isfinite(p999) else None
        if not math.isfinite(p99):
            result.notes.append(
                f"p99 undefined: {timeouts} of {len(ranked)} queries timed out at -Q {args.rate}"
            )
    fixed_stats["verbose_answers"] = len(latencies)
    fixed_stats["verbose_interrupted"] = interrupted

    result.notes += rcode_check(stats["rcodes"], data.nxdomain_share)
    if stats["sent"] and stats["lost"] / stats["sent"] > 0.001:
        result.notes.append(f"{result.lost_pct:.2f}% of the queries were lost in the unthrottled run")
    others = (result.others_on_core_s or 0.0) + (result.steal_on_core_s or 0.0)
    if result.server_cpu_util is not None and result.server_cpu_util < 0.9 and others < 0.1 * run_time:
        client = ""
        if result.client_core_util is not None:
            client = f" while dnsperf's CPU {args.client_cpu} was {result.client_core_util:.0%} busy"
        result.notes.append(
            f"the server used {result.server_cpu_util:.0%} of its core in the unthrottled run{client}: "
            "dnsperf set the pace, so the QPS is a lower bound of what one core does; compare QPS per CPU-s"
        )
    if fixed_stats["qps"] < 0.97 * args.rate:
        result.notes.append(
            f"did not sustain -Q {args.rate} ({fixed_stats['qps']:.0f} QPS): the p99 includes queueing"
        )
    if others > 0.05 * run_time:
        result.notes.append(
            f"other processes, interrupts and the hypervisor took {others:.2f}s of CPU {args.server_cpu} "
            f"in the {run_time:.0f}s unthrottled run: the figures are disturbed, the QPS most"
        )
    return result


def start_knot(
    children: Children, name: str, work: Path, args: argparse.Namespace
) -> tuple[Child, int, float]:
    knotd = find_tool("knotd", "knot")
    port = free_port()
    knot_dir = work / name
    for sub in ("run", "storage"):
        (knot_dir / sub).mkdir(parents=True)
    shutil.copytree(args.data.zone_dir, knot_dir / "zones")
    conf = knot_dir / "knot.conf"
    conf.write_text(knot_conf(knot_dir, port))
    t0 = time.monotonic()
    child = children.spawn(name, pinned(args.server_cpu, [knotd, "-c", str(conf)]))
    probe = args.data.services[-1]
    wait_until(
        f"answering {probe.fqdn} on port {port}",
        lambda: answers_zone(port, probe),
        args.startup_timeout,
        child,
    )
    return child, port, time.monotonic() - t0


def ready(port: int) -> bool | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
            return True if r.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def start_ours(children: Children, name: str, args: argparse.Namespace) -> tuple[Child, int, float]:
    port, health, metrics = free_port(), free_port(), free_port()
    argv = [
        sys.executable, "-m", "dnsserver",
        "--records", str(args.data.records),
        "--listen", f"127.0.0.1:{port}",
        "--zone", ZONE,
        "--health-listen", f"127.0.0.1:{health}",
        "--metrics-listen", f"127.0.0.1:{metrics}",
        *args.ours_arg,
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    t0 = time.monotonic()
    child = children.spawn(name, pinned(args.server_cpu, argv), cwd=REPO_ROOT, env=env)
    wait_until(
        f"GET http://127.0.0.1:{health}/ready to return 200",
        lambda: ready(health),
        args.startup_timeout,
        child,
    )
    probe = args.data.services[-1]
    # ready: the records are loaded; the first answer should follow at once
    wait_until(
        f"answering {probe.fqdn} on port {port} (it reported ready)",
        lambda: answers_zone(port, probe),
        min(args.startup_timeout, 15.0),
        child,
    )
    return child, port, time.monotonic() - t0


def run_server(which: str, run: int, children: Children, work: Path, args: argparse.Namespace) -> Result:
    """Start one server, measure it, stop it. ``run`` numbers the repeats (names of logs and dirs)."""
    if which == "knot":
        label = f"Knot DNS {args.versions['knotd']}"
        child, port, startup = start_knot(children, f"knot-{run}", work, args)
    elif args.debug_ours_knotd:
        label = "knotd standing in for kubeobs (--debug-ours-knotd: NOT kubeobs figures)"
        child, port, startup = start_knot(children, f"ours-knot-{run}", work, args)
    else:
        label = "kubeobs dnsserver"
        child, port, startup = start_ours(children, f"kubeobs-{run}", args)
    print(f"{label}: answering on 127.0.0.1:{port} after {startup:.2f}s (PID {child.pid})", flush=True)
    try:
        moved = pin_threads(child.pid, args.server_cpu)
        result = measure(children, which, label, child, port, args)
        strays = threads_off_cpu(child.pid, args.server_cpu)
    finally:
        code = child.stop()
    result.repinned_threads = moved
    if strays:
        result.notes.append(f"threads off CPU {args.server_cpu} after the runs: {strays}")
    result.run = run
    result.startup_s = startup
    result.stand_in = which == "ours" and args.debug_ours_knotd
    if code not in (0, -signal.SIGTERM):
        result.notes.append(f"exit code {code} after SIGTERM")
    print(
        f"  run {run}: {_fmt(result.qps, ',.0f')} QPS, server CPU {_fmt(result.server_cpu_util, '.0%')} "
        f"(its core {_fmt(result.core_busy, '.0%')} busy), {_fmt(result.qps_per_cpu_s, ',.0f')} QPS per "
        f"CPU-s, others on its core {_fmt(result.others_on_core_s, '.2f')}s",
        flush=True,
    )
    return result


def median_run(runs: Sequence[Result]) -> Result:
    """The run with the median QPS per server CPU-second (the upper median of an even count)."""
    ranked = sorted(runs, key=lambda r: r.qps_per_cpu_s or 0.0)
    return ranked[len(ranked) // 2]


# -- report ----------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def ratios(ours: Result | None, knot: Result | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if ours is None or knot is None:
        return out
    if ours.qps and knot.qps:
        out["qps_ours_over_knot"] = ours.qps / knot.qps
    if ours.qps_per_cpu_s and knot.qps_per_cpu_s:
        out["qps_per_cpu_s_ours_over_knot"] = ours.qps_per_cpu_s / knot.qps_per_cpu_s
    if ours.peak_rss_mb and knot.peak_rss_mb:
        out["peak_rss_ours_over_knot"] = ours.peak_rss_mb / knot.peak_rss_mb
    return out


def table(results: Sequence[Result], ratio: dict[str, float]) -> str:
    rate = results[0].rate_target_qps or 0
    rows = [
        f"| server | QPS | server CPU | QPS per CPU-s | mean latency | mean / p99 latency at {rate:,} QPS "
        "| lost | RSS after load / peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        util = _fmt(None if r.server_cpu_util is None else 100 * r.server_cpu_util, ".0f")
        rows.append(
            f"| {r.label} | {_fmt(r.qps, ',.0f')} | {util}% | {_fmt(r.qps_per_cpu_s, ',.0f')} | "
            f"{_fmt(r.mean_latency_ms, '.3f')} ms | {_fmt(r.rate_mean_latency_ms, '.3f')} / "
            f"{_fmt(r.rate_p99_latency_ms, '.3f')} ms | {r.lost} ({_fmt(r.lost_pct, '.2f')}%) | "
            f"{_fmt(r.rss_loaded_mb, '.1f')} / {_fmt(r.peak_rss_mb, '.1f')} MB |"
        )
    if ratio:
        targets = ", then ".join(f">= {t}" for t in TARGET_RATIOS)
        rows.append("")
        who = "knotd stand-in (NOT kubeobs)" if any(r.stand_in for r in results) else "kubeobs"
        rows.append(
            f"{who} / Knot: QPS **{_fmt(ratio.get('qps_ours_over_knot'), '.3f')}**, QPS per server "
            f"CPU-second **{_fmt(ratio.get('qps_per_cpu_s_ours_over_knot'), '.3f')}** (SPEC: {targets}), "
            f"peak RSS {_fmt(ratio.get('peak_rss_ours_over_knot'), '.2f')}"
        )
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# -- main ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Measure the kubeobs DNS server and Knot DNS side by side with dnsperf: QPS on one "
        "core, mean latency, p99 latency at a fixed rate, RSS.",
    )
    p.add_argument("--services", type=int, default=1000, help="Services in the data set (default 1000)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each dnsperf run (default 10)")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per server, interleaved; the table shows the median run"
    )
    only = p.add_mutually_exclusive_group()
    only.add_argument("--ours-only", action="store_true", help="measure the kubeobs server only")
    only.add_argument("--knot-only", action="store_true", help="measure Knot DNS only")
    p.add_argument(
        "--queries", type=int, default=100_000, help="lines in the dnsperf query file (default 100000)"
    )
    p.add_argument(
        "--outstanding", type=int, default=100, help="dnsperf -q: queries in flight at once (default 100)"
    )
    p.add_argument("--rate", type=int, default=20_000, help="dnsperf -Q for the p99 run (default 20000)")
    p.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of dnsperf load before measuring (default 2)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the data set and the query file (default 1)")
    p.add_argument("--server-cpu", type=int, default=1, help="CPU the DNS server is pinned to (default 1)")
    p.add_argument("--client-cpu", type=int, default=0, help="CPU for dnsperf and this script (default 0)")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds allowed to start a server")
    p.add_argument(
        "--ours-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for python -m dnsserver (repeatable), e.g. --ours-arg=--config=x.yaml",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the dnspython answer checks")
    p.add_argument("--workdir", type=Path, help="where the data set and logs go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (data set, configs, logs)")
    # a second knotd in the "ours" slot, to exercise that path before the server runs: never kubeobs figures
    p.add_argument("--debug-ours-knotd", action="store_true", help=argparse.SUPPRESS)
    return p


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def work_directory(given: Path | None, keep: bool) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=False)
        yield given
        return
    path = Path(tempfile.mkdtemp(prefix="kubeobs-dnsbench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def check_environment(args: argparse.Namespace) -> None:
    if (
        args.repeat < 1
        or args.services < 10
        or args.queries < 100
        or args.seconds <= 0
        or args.rate < 1
        or args.outstanding < 1
    ):
        raise BenchError(
            "need --repeat >= 1, --services >= 10, --queries >= 100, --seconds > 0, --rate >= 1 and "
            "--outstanding >= 1"
        )
    cpus = os.sched_getaffinity(0)
    for cpu in {args.server_cpu, args.client_cpu}:
        if cpu not in cpus:
            raise BenchError(f"CPU {cpu} is not available (have {sorted(cpus)})")
    if dns is None:
        raise BenchError("dnspython is missing (it checks the answers): pip install dnspython")
    if psutil is None:
        raise BenchError("psutil is missing (it reads the RSS): pip install psutil")
    args.versions = {"dnsperf": dnsperf_version(find_tool("dnsperf", "dnsperf"))}
    if not args.ours_only or args.debug_ours_knotd:
        args.versions["knotd"] = knot_version(find_tool("knotd", "knot"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_environment(args)
    except BenchError as e:
        print(f"dns_qps: {e}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {args.client_cpu})  # keep this script off the server's core
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    which = ["ours"] * (not args.knot_only) + ["knot"] * (not args.ours_only)
    runs: dict[str, list[Result]] = {server: [] for server in which}
    try:
        with work_directory(args.workdir, args.keep) as work:
            logs = work / "logs"
            logs.mkdir()
            children = Children(logs)
            try:
                args.data = write_data_set(work, args.services, args.queries, args.seed)
                print(
                    f"data set: {args.services} services, {args.data.records.stat().st_size / 1e6:.1f} MB of "
                    f"YAML; {args.data.query_count} queries ({', '.join(f'{k} {v:.0%}' for k, v in MIX)})",
                    flush=True,
                )
                for run in range(1, args.repeat + 1):
                    for server in which:
                        runs[server].append(run_server(server, run, children, work, args))
                        children.stop_all()
            except BenchError as e:
                print(f"dns_qps: {e}", file=sys.stderr)
                if args.keep or args.workdir:
                    print(f"logs: {logs}", file=sys.stderr)
                return 1
            finally:
                children.stop_all()
    except KeyboardInterrupt:
        print("\ninterrupted: the processes the bench started were stopped", file=sys.stderr)
        return 130

    chosen = {server: median_run(rs) for server, rs in runs.items()}
    results = list(chosen.values())
    ratio = ratios(chosen.get("ours"), chosen.get("knot"))
    print()
    if args.repeat > 1:
        print(f"median run of {args.repeat} by QPS per CPU-second:")
    print(table(results, ratio))
    for r in results:
        for note in r.notes:
            print(f"  {r.label}: {note}")
    if args.json is not None:
        doc = {
            "params": {
                "services": args.services,
                "queries": args.queries,
                "mix": dict(MIX),
                "seconds": args.seconds,
                "warmup": args.warmup,
                "repeat": args.repeat,
                "outstanding": args.outstanding,
                "rate": args.rate,
                "seed": args.seed,
                "server_cpu": args.server_cpu,
                "client_cpu": args.client_cpu,
                "ours_args": args.ours_arg,
            },
            "versions": args.versions,
            "machine": machine(),
            "results": [asdict(r) for r in results],
            "runs": {server: [asdict(r) for r in rs] for server, rs in runs.items()},
            "ratios": ratio,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
