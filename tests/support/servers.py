"""Start and stop the real servers the integration tests talk to.

:func:`start_es_server` starts osmem-server (the in-memory OpenSearch-API server, see SPEC.md "Test
environment") and :mod:`tests.support.esproxy` in front of it, and returns an :class:`EsServer`:
``.url`` is the proxy (give it to the Elasticsearch client), ``.upstream_url`` the osmem server itself.
Every start waits a bounded time for the server to answer and raises :class:`ServerStartError` with the
tail of its stderr otherwise: a server that cannot start fails the test loudly, never skips it.

Both processes exit with the test run even if it is killed (``--parent-pid``); :meth:`EsServer.stop`
stops them by PID (terminate, wait, kill).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import osmem_server

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0

T = TypeVar("T")


class ServerStartError(RuntimeError):
    """A test server did not start; the message carries its stderr tail."""


@dataclass
class ManagedProcess:
    """A child process with its output captured in files under a work directory."""

    name: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, why: str) -> ServerStartError:
        self.stop()
        tail = self.stderr_tail() or "(stderr is empty)"
        return ServerStartError(f"{self.name} (pid {self.pid}) {why}; stderr tail:\n{tail}")

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def spawn(name: str, args: Sequence[str], workdir: Path, **kwargs: Any) -> ManagedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    out, err = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, **kwargs)
    return ManagedProcess(name, proc, out, err)


def wait_for(proc: ManagedProcess, what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Call ``probe`` until it returns a value; fail with the stderr tail on exit or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if not proc.running():
            raise proc.fail(f"exited with status {proc.process.returncode} while waiting to {what}")
        if time.monotonic() > deadline:
            raise proc.fail(f"did not {what} within {timeout:.0f} s")
        time.sleep(0.02)


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read()
    return json.loads(text) if text else None


def _answers(url: str) -> bool | None:
    try:
        http_json("GET", url, timeout=2.0)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return True


def start_osmem(workdir: Path, timeout: float = STARTUP_TIMEOUT) -> tuple[ManagedProcess, str]:
    """Start osmem-server on a free port; returns the process and its base URL.

    The server is given port 0 and announces the port it bound as a JSON line on stdout
    (``{"url": "http://127.0.0.1:PORT", ...}``), so there is no free-port race to retry.
    """
    args = [
        osmem_server.resolve_binary(),
        "--addr",
        "127.0.0.1:0",
        "--no-ja",
        "--no-stdin-watch",
        "--parent-pid",
        str(os.getpid()),
    ]
    proc = spawn("osmem", args, workdir)

    def announced() -> str | None:
        for line in proc.stdout_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and isinstance(msg.get("url"), str):
                return str(msg["url"])
        return None

    url = wait_for(proc, "announce its address", announced, timeout)
    wait_for(proc, f"answer on {url}", lambda: _answers(url + "/"), timeout)
    return proc, url


def start_esproxy(
    upstream: str, workdir: Path, timeout: float = STARTUP_TIMEOUT
) -> tuple[ManagedProcess, str]:
    """Start :mod:`tests.support.esproxy` in front of ``upstream``; returns the process and its URL."""
    port_file = workdir / "esproxy.port"
    port_file.unlink(missing_ok=True)
    args = [
        sys.executable,
        "-m",
        "tests.support.esproxy",
        "--upstream",
        upstream,
        "--listen",
        "127.0.0.1:0",
        "--port-file",
        str(port_file),
        "--parent-pid",
        str(os.getpid()),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = spawn("esproxy", args, workdir, cwd=REPO_ROOT, env=env)

    def port() -> int | None:
        try:
            return int(port_file.read_text())
        except (OSError, ValueError):
            return None

    url = f"http://127.0.0.1:{wait_for(proc, 'write its port file', port, timeout)}"
    wait_for(proc, f"answer on {url}", lambda: _answers(url + "/_proxy/stats"), timeout)
    return proc, url


@dataclass
class EsServer:
    """osmem-server behind the esproxy: ``url`` for clients, control methods for fault injection."""

    url: str
    upstream_url: str
    osmem: ManagedProcess
    proxy: ManagedProcess

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        """Replace the proxy's fault rules (see :mod:`tests.support.esproxy` for the rule format)."""
        http_json("POST", f"{self.url}/_proxy/faults", rules)

    def clear_faults(self) -> None:
        http_json("DELETE", f"{self.url}/_proxy/faults")

    def stats(self) -> dict[str, Any]:
        """``requests``, ``bulk_requests``, ``bulk_docs``, ``faults``, ``faults_by_action``,
        ``items_rewritten`` (see :mod:`tests.support.esproxy`)."""
        result: dict[str, Any] = http_json("GET", f"{self.url}/_proxy/stats")
        return result

    def reset_stats(self) -> None:
        http_json("DELETE", f"{self.url}/_proxy/stats")

    def upstream(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON request straight to osmem (bypassing the proxy and its faults)."""
        return http_json(method, self.upstream_url + path, body)

    def stop(self) -> None:
        self.proxy.stop()
        self.osmem.stop()


def start_es_server(workdir: Path, timeout: float = STARTUP_TIMEOUT) -> EsServer:
    osmem, upstream = start_osmem(workdir, timeout)
    try:
        proxy, url = start_esproxy(upstream, workdir, timeout)
    except BaseException:
        osmem.stop()
        raise
    return EsServer(url, upstream, osmem, proxy)
