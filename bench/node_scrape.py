"""Scrape latency and CPU per scrape of the collector's node metrics, against node_exporter, in one run.

Run::

    python bench/node_scrape.py [--scrapes 200] [--peer both|same|default] [--out results.json]

What is compared (see bench/README.md):

* **ours**: the real collector process (``python -m collector --config ...``) with a trivial config: one
  ``container_logs`` source on an empty directory, the SQLite sink, node metrics on. Its ``/metrics``
  serves the node metrics plus its own ``process_*`` and ``kubeobs_collector_*`` series.
* **node_exporter (same)**: Debian's ``prometheus-node-exporter`` with ``--collector.disable-defaults``
  and exactly the collectors we implement, with the same include/exclude settings as ours. It also
  serves its own ``go_*``, ``process_*`` and ``promhttp_*`` series. This is the fair comparison and the
  one the target (median no more than 1.5x node_exporter's) is checked against.
* **node_exporter (default)**: the same binary with its default collectors (about 45 on Debian).

The servers are scraped in turn (ours, then each node_exporter, then ours again, ...), ``--scrapes``
times each after ``--warmup`` unmeasured rounds, over one keep-alive connection per server, without
compression (``Accept-Encoding: identity``; Prometheus would ask for gzip, which costs both sides alike).
Latency is from sending the request to having read the whole body. CPU per scrape is the server's
utime+stime (``/proc/PID/stat``) over the measured rounds, less what it spends when idle (measured for
``--idle-seconds`` before), divided by the scrapes. The servers are pinned to ``--server-cpu`` and this
script to ``--client-cpu`` when the machine has two cores or more.

Every process the bench starts is stopped by its PID on the way out, also on errors and Ctrl-C.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))

from collector.config import MetricsConfig  # noqa: E402
from collector.exporters.netstat import NETSTAT_FIELDS  # noqa: E402
from collector.exporters.node import NODE_COLLECTORS  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT = 30.0
NODE_EXPORTER = "prometheus-node-exporter"
INSTALL_HINT = "apt-get update && apt-get install -y prometheus-node-exporter"
TARGET_RATIO = 1.5  # SPEC.md: median scrape time no more than 1.5x node_exporter's


class BenchError(RuntimeError):
    """A step of the bench could not run; the message says which and why."""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    conn: http.client.HTTPConnection | None = None

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def scrape(self) -> tuple[float, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        start = time.perf_counter()
        self.conn.request("GET", "/metrics", headers={"Accept": "text/plain", "Accept-Encoding": "identity"})
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise BenchError(f"{self.name}: /metrics answered {resp.status}")
        return elapsed, body

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


@dataclass
class Result:
    server: str
    what: str
    scrapes: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    cpu_ms_per_scrape: float
    idle_cpu_ms_per_s: float
    body_bytes: int
    series: int
    node_series: int
    latencies_ms: list[float] = field(repr=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(server: Server, path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if server.proc.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"{server.name} exited with {server.proc.returncode}:\n{tail}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name} did not answer {path} within {STARTUP_TIMEOUT:.0f} s")
        time.sleep(0.05)


def spawn(name: str, args: Sequence[str], workdir: Path, port: int, cpu: int | None, **kw: Any) -> Server:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=log, stderr=log, **kw)
    server = Server(name, proc, port, log_path)
    if cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    return server


def start_ours(workdir: Path, cpu: int | None) -> Server:
    port = free_port()
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    cfg = {
        "state_dir": str(workdir / "state"),
        "sources": [{"type": "container_logs", "paths": [str(logs / "*.log")]}],
        "sink": {"type": "sqlite", "path": str(workdir / "logs.db")},
        "metrics": {"listen": f"127.0.0.1:{port}", "node": True},
    }
    config = workdir / "collector.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    args = [sys.executable, "-m", "collector", "--config", str(config), "--log-level", "warning"]
    server = spawn("ours", args, workdir, port, cpu, cwd=REPO_ROOT, env=env)
    wait_ready(server, "/readyz")
    return server


def node_exporter_args(binary: str, port: int, same: bool) -> list[str]:
    """node_exporter with the settings our defaults mirror; ``same``: only the collectors we implement."""
    d = MetricsConfig()
    args = [
        binary,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--collector.filesystem.mount-points-exclude={d.filesystem_exclude_mountpoints}",
        f"--collector.filesystem.fs-types-exclude={d.filesystem_exclude_fstypes}",
        f"--collector.netdev.device-exclude={d.netdev_exclude}",
        f"--collector.netclass.ignored-devices={d.netclass_exclude}",
        f"--collector.diskstats.device-exclude={d.diskstats_exclude}",
        f"--collector.netstat.fields={NETSTAT_FIELDS}",
    ]
    if same:
        args.append("--collector.disable-defaults")
        args.extend(f"--collector.{name}" for name in NODE_COLLECTORS)
    return args


def start_node_exporter(workdir: Path, cpu: int | None, same: bool) -> Server:
    binary = shutil.which(NODE_EXPORTER)
    if binary is None:
        raise BenchError(f"{NODE_EXPORTER} is not installed: {INSTALL_HINT}")
    port = free_port()
    name = "node_exporter-same" if same else "node_exporter-default"
    server = spawn(name, node_exporter_args(binary, port, same), workdir, port, cpu)
    wait_ready(server, "/metrics")
    return server


def count_series(body: bytes) -> tuple[int, int]:
    lines = [ln for ln in body.splitlines() if ln and not ln.startswith(b"#")]
    return len(lines), sum(1 for ln in lines if ln.startswith(b"node_"))


def measure(servers: list[Server], scrapes: int, warmup: int, idle_seconds: float) -> list[Result]:
    for _ in range(warmup):
        for s in servers:
            s.scrape()
    idle0 = [s.cpu_seconds() for s in servers]
    time.sleep(idle_seconds)  # the servers' own background CPU, to take out of the per-scrape figure
    idle_rate = [(s.cpu_seconds() - c) / idle_seconds for s, c in zip(servers, idle0, strict=True)]
    latencies: list[list[float]] = [[] for _ in servers]
    bodies: list[bytes] = [b"" for _ in servers]
    cpu0 = [s.cpu_seconds() for s in servers]
    t0 = time.monotonic()
    for _ in range(scrapes):
        for i, s in enumerate(servers):
            elapsed, bodies[i] = s.scrape()
            latencies[i].append(elapsed * 1000)
    wall = time.monotonic() - t0
    cpu1 = [s.cpu_seconds() for s in servers]
    results = []
    for i, s in enumerate(servers):
        lat = sorted(latencies[i])
        cpu = max(0.0, (cpu1[i] - cpu0[i]) - idle_rate[i] * wall)
        series, node_series = count_series(bodies[i])
        results.append(
            Result(
                server=s.name,
                what=describe(s.name),
                scrapes=scrapes,
                median_ms=statistics.median(lat),
                p90_ms=lat[int(0.9 * (len(lat) - 1))],
                mean_ms=statistics.fmean(lat),
                min_ms=lat[0],
                cpu_ms_per_scrape=cpu / scrapes * 1000,
                idle_cpu_ms_per_s=idle_rate[i] * 1000,
                body_bytes=len(bodies[i]),
                series=series,
                node_series=node_series,
                latencies_ms=latencies[i],
            )
        )
    return results


def describe(name: str) -> str:
    return {
        "ours": f"python -m collector, {len(NODE_COLLECTORS)} node collectors",
        "node_exporter-same": f"node_exporter 1.5, the same {len(NODE_COLLECTORS)} collectors",
        "node_exporter-default": "node_exporter 1.5, default collectors",
    }[name]


def print_table(results: list[Result]) -> None:
    ours = next(r for r in results if r.server == "ours")
    head = (
        f"{'server':24} {'median ms':>9} {'p90 ms':>7} {'mean ms':>8} {'CPU ms/scrape':>13} {'series':>7} "
        f"{'node_*':>7} {'KiB':>6} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        ratio = ours.median_ms / r.median_ms
        print(
            f"{r.server:24} {r.median_ms:9.2f} {r.p90_ms:7.2f} {r.mean_ms:8.2f} {r.cpu_ms_per_scrape:13.2f} "
            f"{r.series:7d} {r.node_series:7d} {r.body_bytes / 1024:6.1f} {ratio:6.2f}"
        )
    print("\nratio = ours' median / that server's median (SPEC target: <= 1.5 against node_exporter)")
    for r in results:
        if r is ours:
            continue
        cpu = ours.cpu_ms_per_scrape / r.cpu_ms_per_scrape if r.cpu_ms_per_scrape else float("inf")
        verdict = "met" if ours.median_ms <= TARGET_RATIO * r.median_ms else "NOT met"
        print(
            f"  vs {r.server}: median {ours.median_ms / r.median_ms:.2f}x ({verdict}), "
            f"CPU per scrape {cpu:.2f}x"
        )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    def handler(signum: int, _: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scrapes", type=int, default=200, help="measured scrapes per server (default 200)")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured rounds first (default 10)")
    p.add_argument(
        "--peer",
        choices=["both", "same", "default"],
        default="both",
        help="node_exporter with our collector set (same), its defaults, or both (default)",
    )
    p.add_argument("--idle-seconds", type=float, default=3.0, help="idle CPU measurement (default 3 s)")
    p.add_argument("--server-cpu", type=int, default=1, help="core for the servers (default 1)")
    p.add_argument("--client-cpu", type=int, default=0, help="core for this script (default 0)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = p.parse_args(argv)

    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    server_cpu = args.server_cpu if pin else None
    if pin:
        os.sched_setaffinity(0, {args.client_cpu})
    workdir = Path(tempfile.mkdtemp(prefix="kubeobs-node-scrape-"))
    servers: list[Server] = []
    try:
        with stop_on_signals():
            servers.append(start_ours(workdir, server_cpu))
            if args.peer in ("both", "same"):
                servers.append(start_node_exporter(workdir, server_cpu, same=True))
            if args.peer in ("both", "default"):
                servers.append(start_node_exporter(workdir, server_cpu, same=False))
            results = measure(servers, args.scrapes, args.warmup, args.idle_seconds)
    except BenchError as e:
        print(f"node_scrape: {e}", file=sys.stderr)
        return 2
    finally:
        for s in servers:
            s.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}", file=sys.stderr)
    print(
        f"{args.scrapes} scrapes per server, alternating; servers on core {server_cpu}, "
        f"{platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
