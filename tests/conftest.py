"""Shared fixtures. Keep this file thin: the logic lives in :mod:`tests.support`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubeobs.kube.client import KubeClient
from tests.support.kube.apiserver import KubeCluster, start_cluster
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


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """One real etcd + kube-apiserver v1.20.2 for the whole run (``.kubeconfig``, ``.limited_kubeconfig``,
    ``.url``; see tests/support/kube/apiserver.py). Tests use their own namespaces; a test that restarts
    or stops the apiserver starts its own cluster instead."""
    cluster = start_cluster(tmp_path_factory.mktemp("kube"))
    yield cluster
    cluster.stop()


@pytest.fixture
async def kube_client(kube_cluster: KubeCluster) -> AsyncIterator[KubeClient]:
    """A :class:`KubeClient` with the admin kubeconfig of ``kube_cluster``, closed after the test."""
    client = KubeClient.from_kubeconfig(kube_cluster.kubeconfig)
    yield client
    await client.close()
