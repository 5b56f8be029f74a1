"""A real knotd serving ``example.test.`` for DNS tests (an upstream for the forwarder, the cache and the
whole server): started from a config in a temp dir on free loopback ports, stopped by PID. If it does not
start and answer, :func:`start_knot` raises (the test fails, it is never skipped)."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dnslib import EDNS0, DNSRecord

from tests.support.dns import free_dns_port

KNOTD = "/usr/sbin/knotd"
ZONE = "example.test."
WWW_A = "192.0.2.10"
WWW_AAAA = "2001:db8::10"
BIG_TXT_COUNT = 10
SOA_MINIMUM = 60
KNOT_START_TIMEOUT = 15.0

ZONE_TEXT = f"""$ORIGIN {ZONE}
$TTL 300
@ SOA ns1 hostmaster 1 3600 600 86400 {SOA_MINIMUM}
@ NS ns1
ns1 A 127.0.0.1
www A {WWW_A}
www AAAA {WWW_AAAA}
alias CNAME www
short 5 A 192.0.2.20
""" + "".join(f'big TXT "{"t" * 60} {i:02d}"\n' for i in range(BIG_TXT_COUNT))


# ---------------------------------------------------------------- knotd


@dataclass
class Knot:
    """A running knotd; ``ports`` are the loopback ports it answers on (UDP and TCP)."""

    process: subprocess.Popen[bytes]
    ports: list[int]
    workdir: Path

    def addr(self, i: int = 0) -> tuple[str, int]:
        return ("127.0.0.1", self.ports[i])

    def name(self, i: int = 0) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    def stderr_tail(self) -> str:
        log = self.workdir / "knotd.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def query_wire(name: str, qtype: str = "A", *, qid: int = 0x1234, edns: bool = False) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns:
        q.add_ar(EDNS0(udp_len=1232))
    wire = bytes(q.pack())
    return wire


def sync_query(port: int, wire: bytes, *, tcp: bool = False, timeout: float = 1.0) -> bytes | None:
    """One blocking exchange (independent of the code under test); None on timeout or refusal."""
    try:
        if tcp:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                s.sendall(struct.pack(">H", len(wire)) + wire)
                data = b""
                while len(data) < 2 or len(data) < 2 + struct.unpack(">H", data[:2])[0]:
                    chunk = s.recv(65536)
                    if not chunk:
                        return None
                    data += chunk
                return data[2:]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect(("127.0.0.1", port))
            s.send(wire)
            return s.recv(65536)
    except OSError:
        return None


def _knot_answers(port: int) -> bool:
    for tcp in (False, True):
        reply = sync_query(port, query_wire("www." + ZONE), tcp=tcp, timeout=0.3)
        if reply is None:
            return False
        rec = DNSRecord.parse(reply)
        if [str(rr.rdata) for rr in rec.rr] != [WWW_A]:
            return False
    return True


def _start_knot_once(workdir: Path, nports: int) -> Knot:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{ZONE}zone").write_text(ZONE_TEXT)
    ports = [free_dns_port() for _ in range(nports)]
    listen = ", ".join(f"127.0.0.1@{p}" for p in ports)
    (workdir / "knot.conf").write_text(
        f"""server:
    rundir: "{workdir}"
    listen: [ {listen} ]
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{workdir}/db"
log:
  - target: stderr
    any: info
template:
  - id: default
    storage: "{workdir}"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: {ZONE}
"""
    )
    with open(workdir / "knotd.log", "wb") as log:
        proc = subprocess.Popen(
            [KNOTD, "-c", str(workdir / "knot.conf")], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    knot = Knot(proc, ports, workdir)
    deadline = time.monotonic() + KNOT_START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if all(_knot_answers(p) for p in ports):
            return knot
        time.sleep(0.05)
    exited = proc.poll()
    knot.stop()
    why = f"exited with status {exited}" if exited is not None else f"was silent for {KNOT_START_TIMEOUT} s"
    raise RuntimeError(f"knotd on ports {ports} {why}; log tail:\n{knot.stderr_tail()}")


def start_knot(workdir: Path, nports: int = 1) -> Knot:
    """Start knotd serving ``example.test.`` on ``nports`` free loopback ports; raise if it cannot.

    A second try with fresh ports covers another process grabbing a port between the probe and bind.
    """
    try:
        return _start_knot_once(workdir / "try1", nports)
    except RuntimeError:
        return _start_knot_once(workdir / "try2", nports)
