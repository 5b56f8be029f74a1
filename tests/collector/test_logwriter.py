"""The end-to-end log generator (tests/support/logwriter.py), run as the e2e tests run it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.logwriter import iter_messages, parse_seq

REPO = Path(__file__).resolve().parents[2]
KUBELET_NAME = re.compile(r"(app-\d+)_e2e_app-[0-9a-f]{64}\.log")
ROTATED_NAME = re.compile(r"(app-\d+)_e2e_app-[0-9a-f]{64}\.log\.\d{8}-\d{6}\.\d{6}(-\d+)?")
CRI_LINE = re.compile(
    rb"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z) (stdout|stderr) ([PF]) (.*)\n", re.DOTALL
)
DOCKER_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z")


def run_writer(tmp_path: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.logwriter", "--dir", str(tmp_path / "logs"), *args],
        cwd=REPO,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    summary: dict[str, Any] = orjson.loads(proc.stdout)
    return summary


def pod_files(summary: dict[str, Any], pod: str) -> list[str]:
    info = summary["pods"][pod]
    return [*info["rotated"], *info["copies"], info["file"]]


def test_parse_seq() -> None:
    assert parse_seq("seq=app-0:0 abc") == ("app-0", 0)
    assert parse_seq("prefix seq=app-12:123456 tail\n") == ("app-12", 123456)
    assert parse_seq("seq=web.v2-1:7") == ("web.v2-1", 7)
    assert parse_seq("no marker here") is None
    assert parse_seq("seq=app-0:") is None
    assert parse_seq("seq=:5") is None


def test_rotation_copytruncate_and_exactly_once(tmp_path: Path) -> None:
    lines = 3000
    summary = run_writer(
        tmp_path,
        *("--pods", "3", "--lines", str(lines), "--format", "mixed", "--line-bytes", "120"),
        *("--rotate-bytes", "100000", "--copytruncate-at-bytes", "50000", "--seed", "7"),
        *("--stderr-every", "10", "--partial-every", "7"),
    )
    assert set(summary["pods"]) == {"app-0", "app-1", "app-2"}
    assert [summary["pods"][p]["format"] for p in ("app-0", "app-1", "app-2")] == ["cri", "docker", "cri"]

    names = sorted(p.name for p in (tmp_path / "logs").iterdir())
    current = [n for n in names if n.endswith(".log")]
    assert len(current) == 3
    assert all(KUBELET_NAME.fullmatch(n) for n in current)

    for pod, info in summary["pods"].items():
        assert info["lines"] == lines
        assert Path(info["file"]).name in current
        # 3000 lines of ~120 bytes: rotated at 100 kB (after the one copytruncate at 50 kB).
        assert len(info["rotated"]) >= 2
        assert all(ROTATED_NAME.fullmatch(Path(r).name) for r in info["rotated"])
        assert not any(r.endswith(".log") for r in info["rotated"])
        assert len(info["copies"]) == 1
        assert info["copies"][0] == info["file"] + ".copy.1"
        assert 50_000 < Path(info["copies"][0]).stat().st_size <= 50_000 + 400
        assert info["deleted"] == []

        seen: Counter[int] = Counter()
        for path in pod_files(summary, pod):
            assert Path(path).stat().st_size <= 100_000 + 400
            for stream, message in iter_messages(path):
                marker = parse_seq(message)
                assert marker is not None and marker[0] == pod
                seen[marker[1]] += 1
                assert stream == ("stderr" if marker[1] % 10 == 9 else "stdout")
        assert seen == Counter(range(lines)), f"{pod}: a seq is missing or repeated"


def test_line_formats(tmp_path: Path) -> None:
    summary = run_writer(
        tmp_path,
        *("--pods", "2", "--lines", "500", "--format", "mixed", "--line-bytes", "150"),
        *("--partial-every", "5", "--stderr-every", "4"),
    )
    cri = Path(summary["pods"]["app-0"]["file"]).read_bytes().splitlines(keepends=True)
    tags = []
    for line in cri:
        m = CRI_LINE.fullmatch(line)
        assert m is not None, line
        assert len(m.group(2)) == 10  # nine fractional digits
        tags.append(m.group(4))
        if m.group(4) == b"F" and (len(tags) < 2 or tags[-2] == b"F"):
            assert len(line) == 150  # a whole line has exactly --line-bytes
    assert tags.count(b"F") == 500
    assert tags.count(b"P") == 2 * 100  # every 5th line as P, P, F
    joined = [m for _, m in iter_messages(summary["pods"]["app-0"]["file"])]
    assert [parse_seq(m) for m in joined] == [("app-0", n) for n in range(500)]

    docker = Path(summary["pods"]["app-1"]["file"]).read_bytes().splitlines(keepends=True)
    assert len(docker) == 500
    for n, line in enumerate(docker):
        assert len(line) == 150
        obj = orjson.loads(line)
        assert set(obj) == {"log", "stream", "time"}
        assert obj["log"].endswith("\n")
        assert parse_seq(obj["log"]) == ("app-1", n)
        assert obj["stream"] == ("stderr" if n % 4 == 3 else "stdout")
        assert DOCKER_TIME.fullmatch(obj["time"])


def test_docker_format_names_and_keep(tmp_path: Path) -> None:
    summary = run_writer(
        tmp_path,
        *("--pods", "1", "--lines", "2000", "--format", "docker", "--rotate-bytes", "20000", "--keep", "2"),
    )
    info = summary["pods"]["app-0"]
    assert KUBELET_NAME.fullmatch(Path(info["file"]).name)
    assert len(info["rotated"]) == 2
    assert len(info["deleted"]) >= 10
    on_disk = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert on_disk == sorted(Path(p).name for p in [info["file"], *info["rotated"]])
    assert info["rotated"] == sorted(info["rotated"])  # names sort in rotation order
    # The files kept hold the newest lines, in order.
    seqs = [parse_seq(m) for p in pod_files(summary, "app-0") for _, m in iter_messages(p)]
    numbers = [s[1] for s in seqs if s is not None]
    assert numbers == list(range(numbers[0], 2000))


def test_same_seed_same_files(tmp_path: Path) -> None:
    args = ("--lines", "50", "--format", "mixed", "--pods", "2")
    a = run_writer(tmp_path / "a", *args, "--seed", "3")
    b = run_writer(tmp_path / "b", *args, "--seed", "3")
    c = run_writer(tmp_path / "c", *args, "--seed", "4")
    name = [Path(s["pods"]["app-0"]["file"]).name for s in (a, b, c)]
    assert name[0] == name[1] != name[2]

    def messages(s: dict[str, Any]) -> list[str]:
        return [m for pod in ("app-0", "app-1") for _, m in iter_messages(s["pods"][pod]["file"])]

    assert messages(a) == messages(b) != messages(c)


def test_trim_timestamps_like_containerd(tmp_path: Path) -> None:
    summary = run_writer(tmp_path, "--lines", "3000", "--trim-timestamps")
    fractions = []
    for line in Path(summary["pods"]["app-0"]["file"]).read_bytes().splitlines(keepends=True):
        m = CRI_LINE.fullmatch(line)
        assert m is not None, line
        fractions.append(m.group(2) or b"")
    assert all(not f.endswith(b"0") for f in fractions)
    assert len({len(f) for f in fractions}) > 1


def test_copytruncate_pause(tmp_path: Path) -> None:
    started = time.monotonic()
    summary = run_writer(
        tmp_path,
        *("--pods", "2", "--lines", "500", "--copytruncate-at-bytes", "10000"),
        *("--copytruncate-pause", "0.3"),
    )
    assert time.monotonic() - started >= 0.6
    assert all(len(info["copies"]) == 1 for info in summary["pods"].values())


def test_rate_limit(tmp_path: Path) -> None:
    started = time.monotonic()
    summary = run_writer(tmp_path, "--pods", "2", "--lines", "40", "--rate", "200")
    assert time.monotonic() - started >= 0.35  # 80 lines at 200/s
    assert all(info["lines"] == 40 for info in summary["pods"].values())


@pytest.mark.parametrize(
    "args",
    [
        ["--format", "json"],
        ["--pods", "0"],
        ["--rate", "-1"],
        ["--lines", "x"],
        ["--copytruncate-pause", "-1"],
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.logwriter", "--dir", str(tmp_path), *args],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == b""
