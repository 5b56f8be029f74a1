"""Demo logs for `kubeobs up --demo` (kubeobs/demo.py)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from kubeobs.demo import DEMO_PODS, MAX_LINE_BYTES, run_demo_writer, write_demo_logs
from tests.support.logwriter import iter_messages

NOW = datetime(2026, 11, 26, 19, 1, 2, 345678, tzinfo=UTC)
NOW_NS = 1_795_719_662_345_678_000
KUBELET_NAME = re.compile(
    r"(?P<pod>[a-z0-9-]+)_(?P<ns>[a-z0-9-]+)_(?P<container>[a-z0-9-]+)-[0-9a-f]{64}\.log"
)
CRI_LINE = re.compile(r"(\S+) (stdout|stderr) ([PF]) (.*)", re.DOTALL)
RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z")
NGINX = re.compile(
    r'\d+\.\d+\.\d+\.\d+ - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "(GET|POST) \S+ HTTP/1.1" \d{3} '
)


def ts_ns(ts: str) -> int:
    m = RFC3339.fullmatch(ts)
    assert m, ts
    seconds = int(datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int((m.group(2) or "").ljust(9, "0"))


def physical_lines(path: Path) -> list[tuple[int, str, str, str]]:
    """(timestamp ns, stream, P/F, text) per line of a CRI or docker json-file log."""
    out = []
    for raw in path.read_bytes().decode().splitlines():
        if raw.startswith("{"):
            obj = orjson.loads(raw)
            assert set(obj) == {"log", "stream", "time"}
            out.append(
                (ts_ns(obj["time"]), obj["stream"], "F" if obj["log"].endswith("\n") else "P", obj["log"])
            )
        else:
            m = CRI_LINE.fullmatch(raw)
            assert m, raw
            out.append((ts_ns(m.group(1)), m.group(2), m.group(3), m.group(4)))
    return out


@pytest.fixture
def demo(tmp_path: Path) -> dict[str, Path]:
    paths = write_demo_logs(tmp_path / "logs", lines_per_pod=200, seed=1, now=NOW)
    by_pod = {}
    for path in paths:
        m = KUBELET_NAME.fullmatch(path.name)
        assert m, path.name
        by_pod[f"{m['ns']}/{m['pod']}"] = path
    return by_pod


def test_files_named_like_the_kubelet(demo: dict[str, Path], tmp_path: Path) -> None:
    assert set(demo) == {
        "shop/web-7d9f8-abcde",
        "shop/api-5c6b7d9f4-q8x2m",
        "payments/worker-6f8b9c7d5-k2v9p",
        "kube-system/coredns-5d78c9869d-xk2pq",
    }
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(p.name for p in demo.values())
    assert [p.namespace for p in DEMO_PODS] == ["shop", "shop", "payments", "kube-system"]


def test_history_ends_at_now(demo: dict[str, Path]) -> None:
    for path in demo.values():
        lines = physical_lines(path)
        stamps = [t for t, *_ in lines]
        assert stamps == sorted(stamps), path.name
        assert stamps[-1] == NOW_NS
        assert NOW_NS - stamps[0] >= 5 * 60 * 1_000_000_000  # minutes of history
        assert len(list(iter_messages(path))) >= 200


def test_web_is_nginx_in_cri(demo: dict[str, Path]) -> None:
    path = demo["shop/web-7d9f8-abcde"]
    assert path.read_bytes()[:4].isdigit()  # CRI, not JSON
    lines = physical_lines(path)
    access = [text for _, stream, _, text in lines if stream == "stdout"]
    assert all(NGINX.match(text) for text in access)
    errors = [text for _, stream, _, text in lines if stream == "stderr"]
    assert all("[error]" in text and "upstream timed out" in text for text in errors)


def test_api_is_structured_json_in_docker_format(demo: dict[str, Path]) -> None:
    path = demo["shop/api-5c6b7d9f4-q8x2m"]
    levels = set()
    for _, stream, tag, log in physical_lines(path):
        assert tag == "F"
        doc = orjson.loads(log)
        assert {"level", "ts", "msg", "request_id", "path"} <= set(doc)
        levels.add(doc["level"])
        assert stream == ("stderr" if doc["level"] == "error" else "stdout")
    assert {"info", "warn"} <= levels


def test_worker_has_tracebacks_on_stderr_and_one_partial_line(demo: dict[str, Path]) -> None:
    path = demo["payments/worker-6f8b9c7d5-k2v9p"]
    lines = physical_lines(path)
    stderr = [text for _, stream, _, text in lines if stream == "stderr"]
    assert any("ERROR payments.worker: charge failed" in t for t in stderr)
    assert "Traceback (most recent call last):" in stderr
    assert any(t.startswith("httpx.HTTPStatusError") for t in stderr)

    tags = "".join(tag for _, _, tag, _ in lines)
    assert tags.count("P") >= 1
    assert re.fullmatch(r"F+P+F+", tags)  # one long line: P pieces ended by an F
    first_p = tags.index("P")
    pieces = lines[first_p : tags.index("F", first_p) + 1]
    assert all(len(text.encode()) == MAX_LINE_BYTES for _, _, tag, text in pieces if tag == "P")
    joined = "".join(text for *_, text in pieces)
    assert len(joined) > 2 * MAX_LINE_BYTES
    payload = orjson.loads(joined.split("payload=", 1)[1])
    assert len(payload["charges"]) == 700
    assert any(len(message) == len(joined) for _, message in iter_messages(path))


def test_coredns_query_logs(demo: dict[str, Path]) -> None:
    lines = physical_lines(demo["kube-system/coredns-5d78c9869d-xk2pq"])
    assert all(text.startswith("[INFO] 10.244.") and " IN " in text for *_, text in lines)
    assert any("NXDOMAIN" in text for *_, text in lines)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = write_demo_logs(tmp_path / "a", lines_per_pod=50, seed=3, now=NOW)
    b = write_demo_logs(tmp_path / "b", lines_per_pod=50, seed=3, now=NOW)
    c = write_demo_logs(tmp_path / "c", lines_per_pod=50, seed=4, now=NOW)
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert {p.name for p in a}.isdisjoint(p.name for p in c)
    assert a[0].read_bytes() != c[0].read_bytes()


def test_naive_now_is_utc_and_rewrite_replaces(tmp_path: Path) -> None:
    write_demo_logs(tmp_path, lines_per_pod=30, now=NOW)
    paths = write_demo_logs(tmp_path, lines_per_pod=10, now=NOW.replace(tzinfo=None))
    for path in paths:
        lines = physical_lines(path)
        assert lines[-1][0] == NOW_NS
        assert len(list(iter_messages(path))) < 30
    with pytest.raises(ValueError):
        write_demo_logs(tmp_path, lines_per_pod=0)


class SteppingClock:
    """Advances one second per reading; sets ``reached`` at the given reading."""

    def __init__(self, stop_after: int) -> None:
        self.ticks = 0
        self.stop_after = stop_after
        self.reached = asyncio.Event()

    def __call__(self) -> datetime:
        self.ticks += 1
        if self.ticks >= self.stop_after:
            self.reached.set()
        return NOW + timedelta(seconds=self.ticks)


async def test_live_writer_appends_until_stopped(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    paths = await asyncio.to_thread(write_demo_logs, folder, lines_per_pod=20, now=NOW)
    sizes = {p: p.stat().st_size for p in paths}
    clock = SteppingClock(stop_after=40)

    stop = asyncio.Event()
    task = asyncio.create_task(run_demo_writer(folder, stop, interval=0.005, clock=clock))
    await asyncio.wait_for(clock.reached.wait(), timeout=10)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    stopped_at = clock.ticks

    for path in paths:
        assert path.stat().st_size > sizes[path], path.name
        stamps = [t for t, *_ in physical_lines(path)]
        assert stamps == sorted(stamps), path.name
        assert NOW_NS < stamps[-1] <= NOW_NS + stopped_at * 1_000_000_000
        # About 1-2 events a second of clock time: a few lines per tick, not a flood.
        assert len(stamps) - len(physical_lines_before(path, sizes[path])) < 20 * stopped_at
    await asyncio.sleep(0.05)
    assert clock.ticks == stopped_at  # really stopped


def physical_lines_before(path: Path, size: int) -> list[str]:
    return path.read_bytes()[:size].decode().splitlines()


async def test_live_writer_creates_missing_files(tmp_path: Path) -> None:
    clock = SteppingClock(stop_after=20)
    stop = asyncio.Event()
    task = asyncio.create_task(run_demo_writer(tmp_path / "new", stop, interval=0.005, clock=clock))
    await asyncio.wait_for(clock.reached.wait(), timeout=10)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    names = {p.name for p in (tmp_path / "new").iterdir()}
    assert names == {pod.file_name(0) for pod in DEMO_PODS}
