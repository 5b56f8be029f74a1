"""Run the DNS server (``python -m dnsserver``) as a subprocess for tests, and ask it questions.

:func:`start_dns_server` picks free loopback ports (DNS on UDP and TCP, health, metrics), starts the
server with its stdout/stderr in files under the given directory and returns a :class:`DnsServerProc`
once ``/health`` answers 200; a server that exits early or never becomes healthy raises
:class:`~tests.support.servers.ServerStartError` with its stderr tail (it fails the test, never skips
it). ``/ready`` is not waited for: call :meth:`DnsServerProc.wait_ready` (a server pointed at an
unreachable apiserver is healthy but never ready, and some tests want exactly that).

:func:`query` asks one question with dnspython over UDP or TCP (EDNS0 with ``payload``, none by
default); :func:`query_wire` sends raw bytes and returns the raw response, for messages dnspython would
not accept back (e.g. two questions answered with one).

    server = start_dns_server(tmp_path, "--kubeconfig", str(cluster.kubeconfig))
    server.wait_ready(30)
    resp = query(server.port, "web.default.svc.cluster.local", "A", tcp=True)
    server.stop()
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import REPO_ROOT, ServerStartError

__all__ = [
    "DnsServerProc",
    "ServerStartError",
    "free_dns_port",
    "make_query",
    "metric_total",
    "query",
    "query_wire",
    "start_dns_server",
]

START_TIMEOUT = 30.0
PORT_ATTEMPTS = 3
POLL = 0.02


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_dns_port() -> int:
    """A loopback port free for both UDP and TCP right now (the server binds both on one port)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise ServerStartError("no loopback port free for both UDP and TCP")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET (4xx/5xx included); None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        e.close()
        return int(e.code)
    except (OSError, urllib.error.URLError, ValueError):
        return None


@dataclass
class DnsServerProc:
    """A running ``python -m dnsserver``: ``port`` (UDP and TCP), ``health_port``, ``metrics_port``."""

    process: subprocess.Popen[bytes]
    args: list[str]
    port: int
    health_port: int
    metrics_port: int
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(self.stderr().splitlines()[-lines:]) or "(stderr is empty)"

    def health_status(self, path: str) -> int | None:
        """The status of ``GET http://127.0.0.1:<health_port><path>`` (None: no answer)."""
        return _http_status(f"http://127.0.0.1:{self.health_port}{path}")

    def healthy(self) -> bool:
        return self.health_status("/health") == 200

    def ready(self) -> bool:
        return self.health_status("/ready") == 200

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Poll ``/ready`` until it answers 200; returns the seconds it took. Raises
        :class:`ServerStartError` (with the stderr tail) if the server exits or the deadline passes."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not self.ready():
            if not self.running():
                raise ServerStartError(
                    f"dnsserver (pid {self.pid}) exited with status {self.process.returncode} before "
                    f"/ready answered 200; stderr tail:\n{self.stderr_tail()}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"dnsserver (pid {self.pid}) was not ready within {timeout:.0f} s "
                    f"(/ready: {self.health_status('/ready')}); stderr tail:\n{self.stderr_tail()}"
                )
            time.sleep(POLL)
        return time.monotonic() - t0

    def metrics_text(self) -> str:
        if not self.metrics_port:
            raise RuntimeError("this server was started without a metrics listener")
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5.0) as resp:
            return bytes(resp.read()).decode()

    def metrics(self) -> dict[str, float]:
        """``/metrics`` parsed: ``{'name{label="value",...}': value}`` (labels sorted; no braces without
        labels), counters under their sample name (``..._total``)."""
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
        return out

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID, wait ``timeout`` seconds, then SIGKILL; returns the exit status. Safe twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def _spawn(workdir: Path, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=REPO_ROOT,
            env=env,
            preexec_fn=preexec,
        )
    return proc, out, err


def start_dns_server(
    tmp_path: Path, *args: str, timeout: float = START_TIMEOUT, name: str = "dnsserver"
) -> DnsServerProc:
    """Start ``python -m dnsserver`` with ``args`` plus ``--listen`` and ``--health-listen`` (free loopback
    ports, always), ``--metrics-listen`` (a free port) and ``--lameduck 0`` (unless ``args`` set them), and
    wait until ``/health`` answers 200 (raising :class:`ServerStartError` with the stderr tail if it exits
    first or the deadline passes). Output goes to ``<tmp_path>/<name>[.N].stdout|stderr``."""
    workdir = Path(tmp_path)
    workdir.mkdir(parents=True, exist_ok=True)
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if given & {"--listen", "--health-listen"}:
        raise ValueError("start_dns_server picks --listen and --health-listen itself")
    last_error = ""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port, health_port, metrics_port = free_dns_port(), _free_tcp_port(), _free_tcp_port()
        argv = [sys.executable, "-m", "dnsserver", *args]
        argv += ["--listen", f"127.0.0.1:{port}", "--health-listen", f"127.0.0.1:{health_port}"]
        if "--metrics-listen" not in given:
            argv += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
        if "--lameduck" not in given:
            argv += ["--lameduck", "0"]
        suffix = "" if attempt == 1 else f".{attempt}"
        proc, out, err = _spawn(workdir, name + suffix, argv)
        server = DnsServerProc(proc, argv, port, health_port, metrics_port, out, err)
        deadline = time.monotonic() + timeout
        while not server.healthy():
            if not server.running():
                break
            if time.monotonic() > deadline:
                server.stop()
                raise ServerStartError(
                    f"dnsserver (pid {server.pid}) did not answer /health within {timeout:.0f} s; "
                    f"stderr tail:\n{server.stderr_tail()}"
                )
            time.sleep(POLL)
        else:
            return server
        last_error = server.stderr_tail()
        clash = "address already in use" in last_error.lower() or "cannot listen" in last_error.lower()
        if not clash or attempt == PORT_ATTEMPTS:
            break
    raise ServerStartError(
        f"dnsserver exited with status {server.process.returncode} before /health answered; "
        f"stderr tail:\n{last_error}"
    )


def make_query(
    name: str, rdtype: str | int, *, payload: int | None = None, rd: bool = True, id: int | None = None
) -> dns.message.QueryMessage:
    """A query for ``name``/``rdtype``; EDNS0 with ``payload`` as the UDP size when given, none else."""
    flags = dns.flags.RD if rd else 0
    return dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(rdtype),
        use_edns=0 if payload is not None else False,
        payload=payload,
        flags=flags,
        id=id,
    )


def query(
    port: int,
    name: str,
    rdtype: str | int,
    *,
    tcp: bool = False,
    payload: int | None = None,
    edns: int | None = None,
    rd: bool = True,
    timeout: float = 3.0,
    host: str = "127.0.0.1",
) -> dns.message.Message:
    """Ask ``name``/``rdtype`` of the server on ``host:port`` over UDP (or TCP); the parsed response.

    ``payload`` (or its alias ``edns``) adds an EDNS0 OPT record with that UDP size. Over UDP a
    truncated response is returned as it came (TC set), not retried over TCP."""
    q = make_query(name, rdtype, payload=payload if payload is not None else edns, rd=rd)
    if tcp:
        return dns.query.tcp(q, host, timeout=timeout, port=port)
    return dns.query.udp(q, host, timeout=timeout, port=port)


def query_wire(
    port: int, wire: bytes, *, tcp: bool = False, timeout: float = 3.0, host: str = "127.0.0.1"
) -> bytes:
    """Send one raw DNS message and return the raw response (no checks that it matches)."""
    if tcp:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            head = _recv_exactly(s, 2)
            return _recv_exactly(s, struct.unpack("!H", head)[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, (host, port))
        data, _ = s.recvfrom(65535)
        return data


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def metric_total(series: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples (from :meth:`DnsServerProc.metrics`) whose labels include ``labels``."""
    total = 0.0
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for key, value in series.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        have = set(rest.rstrip("}").split(",")) if rest else set()
        if all(w in have for w in want):
            total += value
    return total
