"""The disk-fault helper (tests/support/diskfault.py) really makes writes fail, and undoes it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.diskfault import FILLER, full_filesystem, readonly_filesystem


def write(path: Path, data: bytes) -> None:
    """Like the checkpoint store: a new file, fsynced, renamed over."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def test_full_then_restored_keeps_files_and_copies_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoints.json").write_text("before")
    with full_filesystem(state) as disk:
        assert os.path.ismount(state)
        assert (state / "checkpoints.json").read_text() == "before"  # still visible over the mount
        with pytest.raises(OSError) as e:
            write(state / "checkpoints.json", b"x" * 100)
        assert e.value.errno == errno.ENOSPC
        disk.restore()
        write(state / "checkpoints.json", b"after")
    assert not os.path.ismount(state)
    assert (state / "checkpoints.json").read_text() == "after"
    assert not (state / FILLER).exists()


def test_readonly_then_restored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with readonly_filesystem(state) as disk:
        with pytest.raises(OSError) as e:
            write(state / "checkpoints.json", b"x")
        assert e.value.errno == errno.EROFS
        disk.restore()
        write(state / "checkpoints.json", b"ok")
        disk.fill()
        with pytest.raises(OSError):
            write(state / "checkpoints.json", b"x" * 5000)
    assert not os.path.ismount(state)
    assert (state / "checkpoints.json").read_text() == "ok"
