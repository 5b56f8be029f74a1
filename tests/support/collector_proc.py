"""Run the real collector (``python -m collector``) as a child process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.servers import ManagedProcess, spawn, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


class CollectorProcess:
    """One collector process; ``start`` waits for ``/readyz``."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        config = dict(config)
        config.setdefault("metrics", {})["listen"] = f"127.0.0.1:{self.port}"
        self.config_path = write_config(workdir / "collector.yaml", config)
        self.proc: ManagedProcess | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        self.proc = spawn(
            f"collector-{self.starts}",
            [sys.executable, "-m", "collector", "--config", str(self.config_path)],
            self.workdir,
        )
        wait_for(self.proc, "become ready", self._ready, timeout)

    def _ready(self) -> bool | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return True if r.status == 200 else None
        except (OSError, urllib.error.URLError):
            return None

    def metrics(self) -> dict[str, float]:
        """Sample values by ``name{labels}``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, name: str) -> float:
        return sum(v for k, v in self.metrics().items() if k == name or k.startswith(name + "{"))

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.process.send_signal(signal.SIGTERM)
        return self.proc.process.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def stderr(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob("collector-*.stderr"))
        )
