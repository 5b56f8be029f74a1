"""Put a directory (the collector's ``state_dir``) on a full or read-only filesystem, for real.

How: a small tmpfs is mounted over the directory (``mount -t tmpfs -o size=512k``), after copying the
directory's files into it so a running process keeps seeing them. "Full" is a filler file that takes
every free byte (writes then fail with ENOSPC); "read-only" is ``mount -o remount,ro`` (EROFS). Both
are undone in place while the process runs (:meth:`FaultyFilesystem.restore`), and on exit the tmpfs's
files (except the filler) are copied back to the directory underneath and the tmpfs is unmounted, so the
directory holds what the process last wrote there.

Needs root (CAP_SYS_ADMIN) in the test's mount namespace; measured to work as root on the CI machines
(no container). When mounting is not permitted, :class:`DiskFaultError` says why: the test fails with it,
it is never skipped.

Example::

    with full_filesystem(state) as disk:
        ...  # writes under `state` fail with ENOSPC
        disk.restore()  # space again
    with faulty_filesystem(state) as disk:
        disk.fill(); ...; disk.restore(); disk.make_readonly(); ...; disk.restore()
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

FILLER = ".diskfault-filler"
DEFAULT_SIZE = 512 * 1024


class DiskFaultError(RuntimeError):
    """The fault could not be set up (or undone); the message says what the system answered."""


def _run(*args: str) -> None:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DiskFaultError(
            f"`{' '.join(args)}` failed with exit code {proc.returncode}: {proc.stderr.strip()} "
            f"(mounting needs root with CAP_SYS_ADMIN; running as uid {os.getuid()})"
        )


def _snapshot(directory: Path) -> dict[str, bytes]:
    """The regular files directly in ``directory`` (the filler excluded), by name."""
    files: dict[str, bytes] = {}
    for p in directory.iterdir():
        if p.name != FILLER and p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):  # removed meanwhile by the process under test
                files[p.name] = p.read_bytes()
    return files


def _write_back(directory: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        tmp = directory / f".{name}.diskfault-tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)


class FaultyFilesystem:
    """A tmpfs mounted over ``path``; see the module docstring."""

    def __init__(self, path: Path, size: int = DEFAULT_SIZE) -> None:
        self.path = Path(path)
        self.size = size
        self.mounted = False
        self.readonly = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        before = _snapshot(self.path)
        _run("mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "kubeobs-diskfault", str(self.path))
        self.mounted = True
        _write_back(self.path, before)

    def fill(self) -> int:
        """Take every free byte with a filler file; returns its size. Writes then fail with ENOSPC."""
        self._check_writable("fill")
        written = 0
        block = b"\0" * 65536
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while block:
                try:
                    written += os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    block = block[: len(block) // 2]  # fill the last partial page too
        finally:
            os.close(fd)
        if shutil.disk_usage(self.path).free != 0:
            raise DiskFaultError(f"{self.path} still has {shutil.disk_usage(self.path).free} bytes free")
        return written

    def make_readonly(self) -> None:
        """Remount read-only: writes (and creating files) fail with EROFS."""
        self._check_mounted("make read-only")
        _run("mount", "-o", "remount,ro", str(self.path))
        self.readonly = True

    def restore(self) -> None:
        """Writable again, with free space: remount read-write and remove the filler."""
        self._check_mounted("restore")
        if self.readonly:
            _run("mount", "-o", "remount,rw", str(self.path))
            self.readonly = False
        (self.path / FILLER).unlink(missing_ok=True)

    def unmount(self) -> None:
        """Copy the files back to the directory underneath, then unmount (lazily if still busy)."""
        if not self.mounted:
            return
        files = _snapshot(self.path)
        proc = subprocess.run(["umount", str(self.path)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            _run("umount", "-l", str(self.path))
        self.mounted = False
        self.readonly = False
        _write_back(self.path, files)

    def _check_mounted(self, what: str) -> None:
        if not self.mounted:
            raise DiskFaultError(f"cannot {what} {self.path}: not mounted")

    def _check_writable(self, what: str) -> None:
        self._check_mounted(what)
        if self.readonly:
            raise DiskFaultError(f"cannot {what} {self.path}: it is read-only, restore() first")


@contextlib.contextmanager
def faulty_filesystem(path: Path, size: int = DEFAULT_SIZE) -> Iterator[FaultyFilesystem]:
    """A healthy tmpfs over ``path``; call ``fill``/``make_readonly``/``restore``; unmounted at the end."""
    disk = FaultyFilesystem(path, size)
    disk.mount()
    try:
        yield disk
    finally:
        disk.unmount()


@contextlib.contextmanager
def full_filesystem(path: Path, size: int = DEFAULT_SIZE) -> Iterator[FaultyFilesystem]:
    """``path`` on a full filesystem until ``restore()`` or the end of the block."""
    with faulty_filesystem(path, size) as disk:
        disk.fill()
        yield disk


@contextlib.contextmanager
def readonly_filesystem(path: Path, size: int = DEFAULT_SIZE) -> Iterator[FaultyFilesystem]:
    """``path`` on a read-only filesystem until ``restore()`` or the end of the block."""
    with faulty_filesystem(path, size) as disk:
        disk.make_readonly()
        yield disk
