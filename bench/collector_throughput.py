"""Throughput of the collector (and of rsyslog, the peer) shipping CRI log files to a null ``_bulk`` endpoint.

Run::

    python bench/collector_throughput.py [--lines 1000000] [--files 200] [--line-bytes 150]
                                         [--peer rsyslog|none] [--out results.json]

What happens (see bench/README.md for what the figures mean):

1. ``--files`` kubelet-named CRI files holding ``--lines`` lines of ``--line-bytes`` bytes in total are
   written under a temporary directory before any shipper starts (both read them from the head).
2. For each shipper, a fresh null endpoint (bench/null_es.py) is started pinned to ``--aux-cpu``; the
   shipper is started pinned to ``--shipper-cpu`` (``taskset``); the bench samples the shipper's CPU time
   (utime+stime from /proc/PID/stat) and peak RSS (VmHWM) until the endpoint has counted every line, then
   stops the shipper with SIGTERM.
3. A table with both rows and the ratios is printed; ``--out`` gets the results as JSON.

Every wait is bounded (``--timeout``, ``--stall-timeout``) and every process the bench started is
stopped by its PID on the way out, also on errors and Ctrl-C. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
NULL_ES = BENCH_DIR / "null_es.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL = 0.05
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
TIMESTAMP_PREFIX = "2026-11-26T10:"
INDEX_PATTERN = "logs-bench-%Y.%m.%d"
RSYSLOG_INSTALL = "apt-get update && apt-get install -y rsyslog rsyslog-elasticsearch"

# What the shipper targets are (SPEC.md "Where the bar is").
TARGET_LINES_PER_S = 100_000
TARGET_RSS_MB = 100.0


class BenchError(RuntimeError):
    """The bench could not run a step; the message says which and why."""


# -- processes -------------------------------------------------------------------------------------------


@dataclass
class Child:
    """A process the bench started; output goes to files in the run's directory."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> tuple[int | None, float]:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns (exit code, seconds to exit)."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode, time.monotonic() - t0


class Children:
    """Every process the bench started, stopped by PID in reverse order by :meth:`stop_all`."""

    def __init__(self) -> None:
        self.started: list[Child] = []

    def spawn(self, name: str, argv: Sequence[str], run_dir: Path, **kwargs: Any) -> Child:
        log_path = run_dir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **kwargs
            )
        child = Child(name, proc, log_path)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.started):
            with contextlib.suppress(Exception):
                child.stop(timeout=10)
        self.started.clear()


def pinned(cpu: int, argv: Sequence[str]) -> list[str]:
    """``argv`` run on one CPU (taskset execs the command, so the PID is the command's own)."""
    taskset = shutil.which("taskset")
    if taskset is None:
        raise BenchError("taskset not found (Debian package util-linux): cannot pin the processes")
    return [taskset, "-c", str(cpu), *argv]


def wait_until(what: str, check: Any, timeout: float, child: Child | None = None) -> Any:
    """Poll ``check()`` until it returns something truthy; BenchError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if child is not None and not child.running():
            raise BenchError(
                f"{child.name} exited ({child.proc.returncode}) before {what}:\n{child.log_tail()}"
            )
        time.sleep(0.05)
    tail = f":\n{child.log_tail()}" if child is not None else ""
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


# -- /proc sampling --------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of a process, all its threads; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5): utime is field 14, stime field 15
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS (kB) from /proc/PID/status; empty once the process is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


def core_busy_seconds(cpu: int) -> float | None:
    """Seconds CPU ``cpu`` spent on anything but idle and iowait since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    ticks = [int(x) for x in line.split()[1:]]
                    # user nice system idle iowait irq softirq steal [guest guest_nice: inside user]
                    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK
    except OSError:
        return None
    return None


def thread_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


# -- input -----------------------------------------------------------------------------------------------

_WORDS = (
    b"GET /api/v1/orders?page=2 200 OK user=alice latency_ms=12 upstream=orders-7f9c "
    b"cache=miss bytes=5120 trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 "
)


def file_names(count: int) -> list[str]:
    """kubelet names: ``<pod>_<namespace>_<container>-<64 hex container id>.log``."""
    names = []
    for i in range(count):
        cid = f"{i:08x}" * 8
        pod = f"web-{i:04d}-7d9f8c6b5-x{i % 97:02d}kq"
        names.append(f"{pod}_bench-ns-{i % 10}_app-{i % 3}-{cid}.log")
    return names


def cri_line(seq: int, line_bytes: int) -> bytes:
    """One CRI line of exactly ``line_bytes`` bytes (newline included) carrying ``seq=<n>``."""
    minute, rest = divmod(seq, 60_000_000)
    second, frac = divmod(rest, 1_000_000)
    head = f"{TIMESTAMP_PREFIX}{minute % 60:02d}:{second:02d}.{frac:06d}789Z stdout F seq={seq:09d} ".encode()
    pad = line_bytes - len(head) - 1
    if pad < 0:
        raise BenchError(f"--line-bytes {line_bytes} is too small: a line needs at least {len(head) + 1}")
    body = (_WORDS * (pad // len(_WORDS) + 1))[:pad]
    return head + body + b"\n"


def write_input(log_dir: Path, lines: int, files: int, line_bytes: int) -> list[Path]:
    """Write the files; line ``seq`` numbers 0..lines-1 are spread round-robin over the files."""
    log_dir.mkdir(parents=True, exist_ok=True)
    paths = [log_dir / name for name in file_names(files)]
    per_file = [lines // files + (1 if i < lines % files else 0) for i in range(files)]
    seq = 0
    for path, count in zip(paths, per_file, strict=True):
        with path.open("wb", buffering=1024 * 1024) as f:
            chunk: list[bytes] = []
            for _ in range(count):
                chunk.append(cri_line(seq, line_bytes))
                seq += 1
                if len(chunk) >= 4096:
                    f.write(b"".join(chunk))
                    chunk.clear()
            f.write(b"".join(chunk))
    return paths


# -- the null endpoint -----------------------------------------------------------------------------------


@dataclass
class Endpoint:
    child: Child
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/_bench/count", timeout=5) as r:
                data: dict[str, Any] = json.load(r)
                return data
        except (OSError, urllib.error.URLError, ValueError):
            return None


def start_endpoint(children: Children, run_dir: Path, cpu: int, expect: int) -> Endpoint:
    port_file = run_dir / "null-es.port"
    argv = [sys.executable, str(NULL_ES), "--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    child = children.spawn("null-es", pinned(cpu, [*argv, "--expect", str(expect)]), run_dir)

    def port() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(port_file.read_text())
        return None

    endpoint = Endpoint(child, wait_until("the null endpoint to listen", port, STARTUP_TIMEOUT, child))
    wait_until("the null endpoint to answer", endpoint.count, STARTUP_TIMEOUT, child)
    return endpoint


# -- one shipper run -------------------------------------------------------------------------------------


@dataclass
class Result:
    shipper: str
    version: str
    status: str = "not run"  # ok | timeout | stalled | exited | error: ... | skipped: ...
    lines_expected: int = 0
    items_received: int = 0
    distinct_lines: int = 0
    duplicates: int = 0
    wall_s: float | None = None  # process start -> the endpoint counted every line
    first_item_s: float | None = None  # process start -> first bulk item received
    steady_lines_per_s: float | None = None  # from the first item to the last one
    cpu_s: float | None = None  # utime + stime of the shipper when the last line arrived
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    peak_rss_mb: float | None = None  # VmHWM
    rss_at_end_mb: float | None = None
    threads: int = 0
    lines_per_s: float | None = None  # lines / wall_s
    lines_per_cpu_s: float | None = None  # lines / cpu_s
    bulk_requests: int = 0
    bulk_bytes: int = 0
    content_types: dict[str, int] = field(default_factory=dict)
    sample: str = ""  # the first action and document the endpoint received
    endpoint_cpu_s: float | None = None  # the null endpoint's own CPU: near wall_s means it was the limit
    others_on_core_s: float | None = None  # CPU time other processes took on the shipper's core meanwhile
    exit_code: int | None = None
    shutdown_s: float | None = None  # SIGTERM -> exit
    notes: list[str] = field(default_factory=list)


def measure(
    result: Result,
    shipper: Child,
    endpoint: Endpoint,
    started: float,
    args: argparse.Namespace,
    core_busy: float | None,
) -> None:
    """Sample the shipper until the endpoint has every line (or a limit is hit); fill ``result``."""
    expect = result.lines_expected
    timeout, stall = args.timeout, args.stall_timeout
    deadline = started + timeout
    last_items, last_progress = -1, time.monotonic()
    cpu: tuple[float, float] | None = None
    mem: dict[str, int] = {}
    count: dict[str, Any] | None = None
    while True:
        time.sleep(SAMPLE_INTERVAL)
        now = time.monotonic()
        cpu = cpu_seconds(shipper.pid) or cpu
        mem = memory_kb(shipper.pid) or mem
        result.threads = max(result.threads, thread_count(shipper.pid))
        count = endpoint.count() or count
        items = int(count["items"]) if count else 0
        if items >= expect:
            result.status = "ok"
            break
        if items != last_items:
            last_items, last_progress = items, now
        if not shipper.running():
            result.status = "exited"
            result.notes.append(
                f"{shipper.name} exited with {shipper.proc.returncode}: {shipper.log_tail(5)}"
            )
            break
        if now >= deadline:
            result.status = "timeout"
            result.notes.append(f"{items} of {expect} lines after the {timeout:.0f}s limit")
            break
        if now - last_progress >= stall:
            result.status = "stalled"
            result.notes.append(f"no new line for {stall:.0f}s at {items} of {expect}")
            break
    end = time.monotonic()
    if cpu is not None:
        result.cpu_user_s, result.cpu_sys_s = cpu
        result.cpu_s = cpu[0] + cpu[1]
    if mem:
        result.peak_rss_mb = mem.get("VmHWM", 0) / 1024
        result.rss_at_end_mb = mem.get("VmRSS", 0) / 1024
    busy_now = core_busy_seconds(args.shipper_cpu)
    if busy_now is not None and core_busy is not None and result.cpu_s is not None:
        result.others_on_core_s = max(0.0, busy_now - core_busy - result.cpu_s)
    ep_cpu = cpu_seconds(endpoint.child.pid)
    if ep_cpu is not None:
        result.endpoint_cpu_s = ep_cpu[0] + ep_cpu[1]
    if count is None:
        return
    result.items_received = int(count["items"])
    result.distinct_lines = int(count["distinct_seq"])
    result.bulk_requests = int(count["requests"])
    result.bulk_bytes = int(count["bytes"])
    result.content_types = dict(count["content_types"])
    result.sample = str(count.get("sample", ""))
    done_at = count.get("done_at") or end
    result.wall_s = done_at - started
    if count.get("first_item_at") is not None:
        first = float(count["first_item_at"])
        result.first_item_s = first - started
        last = float(count["last_item_at"])
        if last > first:
            result.steady_lines_per_s = result.items_received / (last - first)
    if result.status == "ok":
        result.lines_per_s = expect / result.wall_s
        if result.cpu_s:
            result.lines_per_cpu_s = expect / result.cpu_s


def run_shipper(
    result: Result,
    argv: Sequence[str],
    args: argparse.Namespace,
    run_dir: Path,
    children: Children,
    endpoint: Endpoint,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    profile: Path | None = None,
) -> None:
    """Start the shipper pinned, measure it, stop it, and check what the endpoint received."""
    core_busy = core_busy_seconds(args.shipper_cpu)
    started = time.monotonic()
    shipper = children.spawn(result.shipper, pinned(args.shipper_cpu, argv), run_dir, cwd=cwd, env=env)
    spy: Child | None = None
    if profile is not None:
        spy = start_py_spy(children, run_dir, args.aux_cpu, shipper.pid, profile)
    try:
        measure(result, shipper, endpoint, started, args, core_busy)
        if result.status == "ok":
            time.sleep(args.settle)  # late duplicates (a re-sent batch) would show up here
            count = endpoint.count()
            if count is not None:
                result.items_received = int(count["items"])
                result.distinct_lines = int(count["distinct_seq"])
        result.duplicates = max(0, result.items_received - result.distinct_lines)
        if result.status == "ok" and result.distinct_lines < result.lines_expected:
            result.notes.append(
                f"only {result.distinct_lines} distinct lines of {result.lines_expected} "
                "(items counted without their seq marker?)"
            )
    finally:
        result.exit_code, result.shutdown_s = shipper.stop()
        if spy is not None:
            code = finish_py_spy(spy)
            result.notes.append(
                f"profiled with py-spy ({profile}, exit {code}): figures include its overhead"
            )


def finish_py_spy(spy: Child) -> int | None:
    """py-spy writes its file once the target exited: let it, then SIGINT (it saves), then stop it."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        return spy.proc.wait(60)
    with contextlib.suppress(ProcessLookupError):
        os.kill(spy.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        return spy.proc.wait(30)
    return spy.stop()[0]


def start_py_spy(children: Children, run_dir: Path, cpu: int, pid: int, out: Path) -> Child:
    spy = shutil.which("py-spy")
    if spy is None:
        raise BenchError("--profile needs py-spy: pip install py-spy")
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    argv = [spy, "record", "--pid", str(pid), "--rate", "250", "--gil", "--format", fmt, "--output", str(out)]
    return children.spawn("py-spy", pinned(cpu, argv), run_dir)


# -- ours ------------------------------------------------------------------------------------------------


def git_version() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"kubeobs {out.stdout.strip()}"


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``sink.workers=4`` style overrides of the collector config (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--set expects KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def collector_config(args: argparse.Namespace, log_dir: Path, run_dir: Path, endpoint: Endpoint) -> Path:
    cfg: dict[str, Any] = {
        "node_name": "bench",
        "state_dir": str(run_dir / "state"),
        "sources": [{"type": "container_logs", "paths": [str(log_dir / "*.log")]}],
        "sink": {
            "type": "elasticsearch",
            "hosts": [endpoint.url],
            "index": INDEX_PATTERN,
            "install_template": True,
        },
        "metrics": {"listen": "127.0.0.1:0"},
    }
    for key, value in parse_overrides(args.set).items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            if p == "sources":
                node = node["sources"][0]
                continue
            node = node.setdefault(p, {})
        node[last] = value
    path = run_dir / "collector.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_ours(args: argparse.Namespace, log_dir: Path, run_dir: Path, children: Children) -> Result:
    result = Result("kubeobs collector", git_version(), lines_expected=args.lines)
    run_dir.mkdir()
    try:
        endpoint = start_endpoint(children, run_dir, args.aux_cpu, args.lines)
        config = collector_config(args, log_dir, run_dir, endpoint)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "collector", "--config", str(config), "--log-level", "warning"]
        run_shipper(
            result, argv, args, run_dir, children, endpoint, cwd=REPO_ROOT, env=env, profile=args.profile
        )
        endpoint.child.stop()
    except BenchError as e:
        result.status = f"error: {e}"
    return result


# -- the peer: rsyslog imfile -> omelasticsearch ---------------------------------------------------------


def rsyslog_version(rsyslogd: str) -> str:
    try:
        out = subprocess.run([rsyslogd, "-v"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "rsyslog (version unknown)"
    first = out.stdout.splitlines()[0] if out.stdout else "rsyslog"
    return " ".join(first.split(" compiled")[0].replace("rsyslogd", "rsyslog").split())


def find_rsyslog(install: bool) -> tuple[str | None, str]:
    """(path of rsyslogd or None, why not) — installs the Debian packages when ``install`` and root."""
    rsyslogd = shutil.which("rsyslogd") or (
        "/usr/sbin/rsyslogd" if Path("/usr/sbin/rsyslogd").exists() else None
    )
    lib = Path("/usr/lib")
    have_es = any(lib.glob("*/rsyslog/omelasticsearch.so")) or (lib / "rsyslog/omelasticsearch.so").exists()
    if rsyslogd and have_es:
        return rsyslogd, ""
    if not install:
        return None, f"rsyslog with omelasticsearch is not installed (run: {RSYSLOG_INSTALL})"
    if os.geteuid() != 0:
        return None, f"--install-peer needs root (run: {RSYSLOG_INSTALL})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "rsyslog", "rsyslog-elasticsearch"],
    ):
        try:
            subprocess.run(argv, env=env, capture_output=True, timeout=600, check=True)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"installing rsyslog failed ({' '.join(argv)}: {e})"
    return find_rsyslog(install=False)


PEER_DOCS = {
    "full": "our document: CRI fields, file path and offset, node, and the Kubernetes names from the "
    "file name (mmnormalize on the line and on the file name)",
    "cri": "CRI fields (mmnormalize), file path and offset; no Kubernetes names",
    "raw": "the raw line as message and the file path (the least work)",
}


def rsyslog_config(log_dir: Path, run_dir: Path, endpoint: Endpoint, doc: str, batch: int) -> str:
    """imfile (read from the head) -> omelasticsearch (bulk, create, deterministic ids, ES 8).

    ``doc`` is one of :data:`PEER_DOCS`. Every variant uses ``create`` with a deterministic ``_id``
    (file path and offset) and a daily index named from the line's timestamp, like ours.
    """
    work = run_dir / "work"
    work.mkdir()
    where = [
        'property(outname="log.file.path" name="$!metadata!filename" format="jsonf")',
        'property(outname="log.offset" name="$!metadata!fileoffset" format="jsonf" datatype="number")',
    ]
    if doc == "raw":
        fields = ['property(outname="message" name="msg" format="jsonf")', where[0]]
    else:
        fields = [
            'property(outname="@timestamp" name="$!timestamp" format="jsonf")',
            'property(outname="message" name="$!message" format="jsonf")',
            'property(outname="stream" name="$!stream" format="jsonf")',
            *where,
        ]
    if doc == "full":
        fields.append('constant(outname="kubernetes.node.name" value="bench" format="jsonf")')
        for key, var in (
            ("kubernetes.namespace", "$!k8s!namespace"),
            ("kubernetes.pod.name", "$!k8s!pod"),
            ("kubernetes.container.name", "$!container"),
            ("container.id", "$!container_id"),
        ):
            fields.append(f'property(outname="{key}" name="{var}" format="jsonf")')
    parse = ""
    if doc != "raw":
        rule = "rule=:%timestamp:word% %stream:word% %tag:word% %message:rest%"
        parse = f'action(type="mmnormalize" useRawMsg="on" rule=["{rule}"])\n'
    if doc == "full":
        # <pod>_<namespace>_<container>-<64 hex id>.log: liblognorm splits at "_", RainerScript cuts the rest
        rule = f"rule=:{log_dir}/%pod:char-to:_%_%namespace:char-to:_%_%rest:rest%"
        parse += (
            f'action(type="mmnormalize" variable="$!metadata!filename" path="$!k8s" rule=["{rule}"])\n'
            "set $!container = substring($!k8s!rest, 0, strlen($!k8s!rest) - 69);\n"
            "set $!container_id = substring($!k8s!rest, strlen($!k8s!rest) - 68, 64);\n"
        )
    body = "\n  ".join(fields)
    return f"""# generated by bench/collector_throughput.py (--peer-doc {doc}: {PEER_DOCS[doc]})
global(workDirectory="{work}" maxMessageSize="64k")
main_queue(queue.type="FixedArray" queue.dequeueBatchSize="{batch}")
module(load="imfile" mode="inotify")
module(load="mmnormalize")
module(load="omelasticsearch")

template(name="doc" type="list" option.jsonf="on") {{
  {body}
}}
template(name="index" type="string" string="logs-bench-%msg:1:4%.%msg:6:7%.%msg:9:10%")
template(name="docid" type="string" string="%$!metadata!filename%-%$!metadata!fileoffset%")

input(type="imfile" file="{log_dir}/*.log" tag="kube:" addMetadata="on" freshStartTail="off")

{parse}action(type="omelasticsearch" server="127.0.0.1" serverport="{endpoint.port}"
       template="doc" searchIndex="index" dynSearchIndex="on"
       bulkmode="on" maxbytes="4m" esVersion.major="8"
       writeoperation="create" bulkid="docid" dynbulkid="on")
"""


def run_rsyslog(args: argparse.Namespace, log_dir: Path, run_dir: Path, children: Children) -> Result:
    rsyslogd, why = find_rsyslog(args.install_peer)
    if rsyslogd is None:
        return Result("rsyslog", "not installed", status=f"skipped: {why}", lines_expected=args.lines)
    result = Result(
        f"rsyslog imfile+omelasticsearch ({args.peer_doc})",
        rsyslog_version(rsyslogd),
        lines_expected=args.lines,
    )
    run_dir.mkdir()
    try:
        endpoint = start_endpoint(children, run_dir, args.aux_cpu, args.lines)
        conf = run_dir / "rsyslog.conf"
        conf.write_text(rsyslog_config(log_dir, run_dir, endpoint, args.peer_doc, args.peer_batch))
        check = subprocess.run(
            [rsyslogd, "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise BenchError(f"rsyslogd -N1 rejected the config: {check.stderr.strip() or check.stdout}")
        argv = [rsyslogd, "-n", "-f", str(conf), "-i", str(run_dir / "rsyslogd.pid")]
        run_shipper(result, argv, args, run_dir, children, endpoint)
        endpoint.child.stop()
    except BenchError as e:
        result.status = f"error: {e}"
    return result


# -- report ----------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: Sequence[Result]) -> str:
    head = (
        f"{'shipper':<44} {'status':<8} {'wall s':>7} {'lines/s':>9} {'CPU s':>7} {'CPU s/M':>7} "
        f"{'lines/CPU-s':>11} "
        f"{'peak RSS MB':>11} {'1st item s':>10} {'steady l/s':>10} {'dups':>5}"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        status = r.status if len(r.status) <= 8 else r.status.split(":")[0]
        rows.append(
            f"{r.shipper[:44]:<44} {status:<8} {_fmt(r.wall_s, '.2f'):>7} {_fmt(r.lines_per_s, ',.0f'):>9} "
            f"{_fmt(r.cpu_s, '.2f'):>7} "
            f"{_fmt(None if not r.lines_per_cpu_s else 1e6 / r.lines_per_cpu_s, '.2f'):>7} "
            f"{_fmt(r.lines_per_cpu_s, ',.0f'):>11} "
            f"{_fmt(r.peak_rss_mb, '.1f'):>11} {_fmt(r.first_item_s, '.2f'):>10} "
            f"{_fmt(r.steady_lines_per_s, ',.0f'):>10} {r.duplicates:>5}"
        )
    return "\n".join(rows)


def ratios(ours: Result, peer: Result | None) -> dict[str, Any]:
    ok = ours.status == "ok"
    out: dict[str, Any] = {
        "ours_meets_100k_lines_per_s": ok and (ours.lines_per_s or 0.0) >= TARGET_LINES_PER_S,
        "ours_rss_under_100_mb": ok and (ours.peak_rss_mb or TARGET_RSS_MB) < TARGET_RSS_MB,
    }
    if peer is None or peer.status != "ok" or ours.status != "ok":
        return out
    if ours.lines_per_cpu_s and peer.lines_per_cpu_s:
        out["lines_per_cpu_s_ours_over_peer"] = ours.lines_per_cpu_s / peer.lines_per_cpu_s
        out["ours_at_least_peer_per_cpu_s"] = ours.lines_per_cpu_s >= peer.lines_per_cpu_s
    if ours.lines_per_s and peer.lines_per_s:
        out["lines_per_s_ours_over_peer"] = ours.lines_per_s / peer.lines_per_s
    if ours.peak_rss_mb and peer.peak_rss_mb:
        out["peak_rss_ours_over_peer"] = ours.peak_rss_mb / peer.peak_rss_mb
    return out


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
        description="Ship CRI log files through the collector (and rsyslog) into a null _bulk endpoint; "
        "report wall time, CPU seconds, peak RSS.",
    )
    p.add_argument("--lines", type=int, default=1_000_000, help="lines in total (default 1000000)")
    p.add_argument("--files", type=int, default=200, help="log files (default 200)")
    p.add_argument("--line-bytes", type=int, default=150, help="bytes per line, newline included")
    p.add_argument("--peer", choices=["rsyslog", "none"], default="rsyslog", help="the peer to run too")
    p.add_argument(
        "--peer-doc",
        choices=sorted(PEER_DOCS),
        default="full",
        help="rsyslog's document: "
        + "; ".join(f"{k} = {v}" for k, v in PEER_DOCS.items())
        + " (default full)",
    )
    p.add_argument("--peer-batch", type=int, default=1024, help="rsyslog main queue dequeue batch size")
    p.add_argument(
        "--install-peer", action="store_true", help=f"as root, install rsyslog ({RSYSLOG_INSTALL})"
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per shipper (interleaved); rows show the median"
    )
    p.add_argument("--shipper-cpu", type=int, default=1, help="CPU the shipper is pinned to (default 1)")
    p.add_argument("--aux-cpu", type=int, default=0, help="CPU for the endpoint and this script (default 0)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per shipper (default 600)")
    p.add_argument(
        "--stall-timeout", type=float, default=60.0, help="give up after this long without progress"
    )
    p.add_argument("--settle", type=float, default=1.0, help="seconds to watch for late duplicates")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a collector config key (value in YAML), e.g. --set sink.workers=4 "
        "--set queue_batches=2 --set sources.read_chunk_bytes=65536",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="run py-spy record on the collector into this file (.svg, .json, else raw)",
    )
    p.add_argument("--workdir", type=Path, help="where input and run files go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    return p


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def work_directory(given: Path | None, keep: bool) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=False)
        yield given
        return
    path = Path(tempfile.mkdtemp(prefix="kubeobs-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def median_run(runs: Sequence[Result]) -> Result:
    """The run with the median CPU time among the successful ones (else the first run)."""
    ok = sorted((r for r in runs if r.status == "ok" and r.cpu_s is not None), key=lambda r: r.cpu_s or 0.0)
    return ok[(len(ok) - 1) // 2] if ok else runs[0]


def report(args: argparse.Namespace, runs: dict[str, list[Result]]) -> tuple[str, dict[str, Any]]:
    """The printed summary and the JSON document."""
    chosen = {name: median_run(rs) for name, rs in runs.items() if rs}
    ours = chosen["ours"]
    peer = chosen.get("peer")
    summary = ratios(ours, peer)
    lines = [table(list(chosen.values())), ""]
    if args.repeat > 1:
        lines.append(f"each row is the median run by CPU time of {args.repeat}; all runs are in the JSON")
    if "lines_per_cpu_s_ours_over_peer" in summary:
        lines.append(f"lines per CPU-second, ours / rsyslog: {summary['lines_per_cpu_s_ours_over_peer']:.2f}")
        lines.append(f"peak RSS, ours / rsyslog:             {summary['peak_rss_ours_over_peer']:.2f}")

    def yes(key: str) -> str:
        return "yes" if summary.get(key) else "no"

    targets = (
        f"targets: >= {TARGET_LINES_PER_S:,} lines/s: {yes('ours_meets_100k_lines_per_s')}; "
        f"peak RSS < {TARGET_RSS_MB:.0f} MB: {yes('ours_rss_under_100_mb')}"
    )
    if "ours_at_least_peer_per_cpu_s" in summary:
        targets += f"; >= rsyslog per CPU-second: {yes('ours_at_least_peer_per_cpu_s')}"
    lines.append(targets)
    for rs in runs.values():
        for r in rs:
            notes = ([r.status] if r.status != "ok" else []) + r.notes
            if r.wall_s and r.others_on_core_s is not None and r.others_on_core_s > 0.05 * r.wall_s:
                notes.append(
                    f"other processes took {r.others_on_core_s:.2f}s of CPU {args.shipper_cpu} during the "
                    "run: wall-time figures are disturbed (CPU seconds much less so)"
                )
            lines.extend(f"  {r.shipper}: {note}" for note in notes)
    doc = {
        "params": {
            "lines": args.lines,
            "files": args.files,
            "line_bytes": args.line_bytes,
            "repeat": args.repeat,
            "peer": args.peer,
            "peer_doc": args.peer_doc,
            "peer_batch": args.peer_batch,
            "shipper_cpu": args.shipper_cpu,
            "aux_cpu": args.aux_cpu,
            "collector_overrides": args.set,
        },
        "machine": machine(),
        "results": [asdict(r) for r in chosen.values()],
        "runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
        "summary": summary,
    }
    return "\n".join(lines), doc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.lines < 1 or args.files < 1 or args.files > args.lines or args.repeat < 1:
        print("collector_throughput: need --lines >= --files >= 1 and --repeat >= 1", file=sys.stderr)
        return 2
    cpus = os.sched_getaffinity(0)
    for cpu in (args.shipper_cpu, args.aux_cpu):
        if cpu not in cpus:
            print(f"collector_throughput: CPU {cpu} is not available (have {sorted(cpus)})", file=sys.stderr)
            return 2
    os.sched_setaffinity(0, {args.aux_cpu})  # keep this script off the shipper's core
    signal.signal(signal.SIGTERM, _raise_exit)
    children = Children()
    runs: dict[str, list[Result]] = {"ours": []}
    if args.peer == "rsyslog":
        runs["peer"] = []
    try:
        with work_directory(args.workdir, args.keep) as work:
            log_dir = work / "logs"
            t0 = time.monotonic()
            write_input(log_dir, args.lines, args.files, args.line_bytes)
            mb = args.lines * args.line_bytes / 1e6
            print(
                f"input: {args.files} files, {args.lines} lines, {mb:.0f} MB, in {time.monotonic() - t0:.1f}s"
            )
            for i in range(1, args.repeat + 1):
                print(f"run {i}/{args.repeat}: kubeobs collector ...", flush=True)
                runs["ours"].append(run_ours(args, log_dir, work / f"ours-{i}", children))
                children.stop_all()
                if "peer" in runs:
                    print(f"run {i}/{args.repeat}: rsyslog ...", flush=True)
                    runs["peer"].append(run_rsyslog(args, log_dir, work / f"rsyslog-{i}", children))
                    children.stop_all()
    except KeyboardInterrupt:
        print("\ninterrupted: the processes the bench started were stopped", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
    text, doc = report(args, runs)
    print()
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.out}")
    every = [r for rs in runs.values() for r in rs]
    return 0 if all(r.status == "ok" or r.status.startswith("skipped") for r in every) else 1


if __name__ == "__main__":
    sys.exit(main())
