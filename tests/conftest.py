"""Shared fixtures. Keep this file thin: the logic lives in :mod:`tests.support`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import EsServer, start_es_server


@pytest.fixture
def es_server(tmp_path: Path) -> Iterator[EsServer]:
    """A fresh osmem-server behind the esproxy for one test (``.url``, ``.set_faults(rules)``, ...)."""
    server = start_es_server(tmp_path / "es-server")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def es_server_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EsServer]:
    """One server for the whole run: faster, but tests must use unique index names and must not
    inject faults (use ``es_server`` for that)."""
    server = start_es_server(tmp_path_factory.mktemp("es-server-shared"))
    yield server
    server.stop()
