"""Start and stop a real etcd + kube-apiserver v1.20.2 for tests.

:func:`start_cluster` starts etcd (free loopback ports, data under ``workdir``) and kube-apiserver (a free
secure port on 127.0.0.1, TLS with a CA and serving certificate made here with ``openssl``, token auth,
RBAC) and returns a :class:`KubeCluster` once ``/readyz`` answers ``ok``. Two users exist:

- ``admin`` (token in ``KubeCluster.admin_token``), in ``system:masters``: may do anything;
  ``KubeCluster.kubeconfig`` is a kubeconfig file for it.
- ``kubeobs-limited`` (group ``kubeobs-limited``), with no RBAC bindings at all: it gets 403 on anything
  but discovery, ``/version`` and health; tests that need a least-privilege user bind roles to it with
  the admin client. ``KubeCluster.limited_kubeconfig`` is its kubeconfig.

There is no controller-manager, scheduler or kubelet: tests create Endpoints, EndpointSlices
(``discovery.k8s.io/v1beta1`` only on 1.20) and pod status (the ``status`` subresource) themselves, and
pods must name their node in ``spec.nodeName``. The ``ServiceAccount`` admission plugin is disabled,
because without the controller-manager no namespace ever gets its ``default`` service account.

The binary comes from ``tests/support/kube/build-apiserver.sh`` (cached under
``${KUBEOBS_CACHE:-~/.cache/kubeobs}``; ``KUBEOBS_KUBE_APISERVER`` overrides the path), etcd from
``$KUBEOBS_ETCD`` or ``etcd`` on ``PATH`` (Debian ``etcd-server``, which the build script installs).

:meth:`KubeCluster.restart_apiserver` (or ``stop_apiserver``/``start_apiserver``) restarts only the
kube-apiserver process: same etcd, port, certificates and tokens. :meth:`KubeCluster.start_peer_apiserver`
starts a second one on another port against the same etcd (an HA control plane), e.g. to change objects
while the first is down. :meth:`KubeCluster.compact_etcd` compacts etcd's history now.

A server that cannot start raises :class:`ServerStartError` with the tail of its stderr: it fails the
test loudly, never skips it. Both processes get SIGTERM if the process that started them dies
(``PR_SET_PDEATHSIG``); :meth:`KubeCluster.stop` stops them by PID.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import ManagedProcess, ServerStartError, http_json, spawn, wait_for

__all__ = [
    "BUILD_SCRIPT",
    "K8S_VERSION",
    "KubeCluster",
    "ServerStartError",
    "apiserver_binary_path",
    "ensure_apiserver_binary",
    "find_etcd",
    "start_cluster",
    "start_etcd",
]

K8S_VERSION = "v1.20.2"
BUILD_SCRIPT = Path(__file__).resolve().parent / "build-apiserver.sh"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/12"
ETCD_START_TIMEOUT = 30.0
APISERVER_START_TIMEOUT = 90.0
BUILD_TIMEOUT = 1200.0
PORT_ATTEMPTS = 3

ADMIN_USER = "admin"
LIMITED_USER = "kubeobs-limited"
LIMITED_GROUP = "kubeobs-limited"


# -- binaries -----------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("KUBEOBS_CACHE") or Path.home() / ".cache" / "kubeobs")


def apiserver_binary_path() -> Path:
    """Where the kube-apiserver binary is (or will be, once built)."""
    override = os.environ.get("KUBEOBS_KUBE_APISERVER")
    return Path(override) if override else _cache_dir() / f"kube-apiserver-{K8S_VERSION}"


def find_etcd() -> Path | None:
    override = os.environ.get("KUBEOBS_ETCD")
    if override:
        return Path(override)
    found = shutil.which("etcd")
    return Path(found) if found else None


def ensure_apiserver_binary(build: bool = True, timeout: float = BUILD_TIMEOUT) -> Path:
    """Return the kube-apiserver binary, running the build script first if it (or etcd) is missing.

    The script's progress lines go to this process's stderr. ``build=False`` raises instead of building.
    """
    path = apiserver_binary_path()
    if os.access(path, os.X_OK) and find_etcd() is not None:
        return path
    if os.environ.get("KUBEOBS_KUBE_APISERVER") and not os.access(path, os.X_OK):
        raise ServerStartError(f"KUBEOBS_KUBE_APISERVER={path} is not an executable file")
    if not build:
        raise ServerStartError(f"no kube-apiserver at {path} (or no etcd): run bash {BUILD_SCRIPT}")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=None,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ServerStartError(f"{BUILD_SCRIPT} failed with exit status {result.returncode} (see its stderr)")
    lines = result.stdout.decode(errors="replace").split()
    # With KUBEOBS_KUBE_APISERVER set the script ran only to install etcd: keep the override.
    built = Path(lines[-1]) if lines and not os.environ.get("KUBEOBS_KUBE_APISERVER") else path
    if not os.access(built, os.X_OK):
        raise ServerStartError(f"{BUILD_SCRIPT} succeeded but {built} is not executable")
    return built


# -- helpers ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _spawn(name: str, args: list[str], workdir: Path) -> ManagedProcess:
    kwargs = {"preexec_fn": _die_with_parent} if sys.platform.startswith("linux") else {}
    return spawn(name, args, workdir, cwd=workdir, **kwargs)


def _port_clash(proc: ManagedProcess) -> bool:
    return not proc.running() and "address already in use" in proc.stderr_tail(200).lower()


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServerStartError("openssl is not installed (apt-get install openssl)")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, check=False)
    if result.returncode != 0:
        raise ServerStartError(
            f"openssl {' '.join(args)} failed: {result.stderr.decode(errors='replace').strip()}"
        )


_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[serving_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.96.0.1, DNS:kubernetes, DNS:kubernetes.default, \
DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
"""


@dataclass(frozen=True)
class _Pki:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path


def _make_pki(d: Path) -> _Pki:
    """A throwaway CA, a serving certificate for 127.0.0.1 signed by it, and a service-account key pair."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "openssl.cnf").write_text(_OPENSSL_CNF)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-config", "openssl.cnf", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "7", "-subj", "/CN=kubeobs-test-ca", "-extensions", "ca_ext", cwd=d)  # fmt: skip
    _openssl("req", "-config", "openssl.cnf", "-new", *ec, "-keyout", "serving.key", "-out", "serving.csr",
             "-subj", "/CN=kube-apiserver", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "serving.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "7", "-extfile", "openssl.cnf", "-extensions", "serving_ext", "-out", "serving.crt",
             cwd=d)  # fmt: skip
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=d)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    return _Pki(d / "ca.crt", d / "serving.crt", d / "serving.key", d / "sa.key", d / "sa.pub")


def _write_kubeconfig(path: Path, server: str, ca_cert: Path, user: str, token: str) -> Path:
    ca_data = base64.b64encode(ca_cert.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "kubeobs-test", "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "kubeobs-test", "user": user}}],
        "current-context": user,
        "preferences": {},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML: every client reads it
    path.chmod(0o600)
    return path


# -- etcd ---------------------------------------------------------------------------------------------


def _etcd_health(url: str) -> bool | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2.0) as resp:
            body = json.loads(resp.read() or b"{}")
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return True if str(body.get("health")) == "true" else None


def start_etcd(workdir: Path, timeout: float = ETCD_START_TIMEOUT) -> tuple[ManagedProcess, str]:
    """Start a single-member etcd on free loopback ports; returns the process and its client URL."""
    etcd = find_etcd()
    if etcd is None:
        raise ServerStartError(f"no etcd on PATH (apt-get install etcd-server, or run bash {BUILD_SCRIPT})")
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        client, peer = _free_port(), _free_port()
        url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        data_dir = workdir / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        args = [
            str(etcd),
            "--name=kubeobs",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=kubeobs={peer_url}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-level=warn",
            "--snapshot-count=100000",
        ]
        proc = _spawn("etcd", args, workdir)
        try:
            wait_for(proc, f"report healthy on {url}", functools.partial(_etcd_health, url), timeout)
        except ServerStartError:
            if attempt < PORT_ATTEMPTS and _port_clash(proc):
                continue
            raise
        return proc, url
    raise AssertionError("unreachable")


# -- kube-apiserver -----------------------------------------------------------------------------------


def _readyz(url: str, token: str, context: ssl.SSLContext) -> bool | None:
    req = urllib.request.Request(url + "/readyz", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2.0, context=context) as resp:
            return True if resp.status == 200 and resp.read().strip() == b"ok" else None
    except (OSError, urllib.error.URLError, ValueError):
        return None


@dataclass
class KubeCluster:
    """A running etcd + kube-apiserver. ``url`` is ``https://127.0.0.1:PORT``."""

    url: str
    kubeconfig: Path
    limited_kubeconfig: Path
    ca_cert: Path
    admin_token: str
    limited_token: str
    etcd_url: str
    etcd: ManagedProcess
    apiserver: ManagedProcess
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)
    limited_user: str = LIMITED_USER
    limited_group: str = LIMITED_GROUP
    apiserver_args: list[str] = field(default_factory=list)
    _peers: list[ManagedProcess] = field(default_factory=list, repr=False)
    _restarts: int = field(default=0, repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def running(self) -> bool:
        return self.etcd.running() and self.apiserver.running()

    def stop(self) -> None:
        """Stop kube-apiserver (and any peer), then etcd (SIGTERM, then SIGKILL after 5 s); safe to call
        twice."""
        try:
            for peer in self._peers:
                peer.stop()
            self.apiserver.stop()
        finally:
            self.etcd.stop()

    # -- apiserver restarts (etcd keeps running) ------------------------------------------------------

    def stop_apiserver(self) -> None:
        """Stop only the kube-apiserver process (SIGTERM: open watches are closed); etcd keeps running."""
        self.apiserver.stop()

    def start_apiserver(self, timeout: float = APISERVER_START_TIMEOUT) -> None:
        """Start kube-apiserver again after :meth:`stop_apiserver`: same binary, flags, port, certificates,
        tokens and etcd, so ``url`` and both kubeconfigs keep working. Its output goes to
        ``kube-apiserver.restart<N>.stderr`` beside the first one's."""
        if self.apiserver.running():
            raise RuntimeError(f"kube-apiserver (pid {self.apiserver.pid}) is still running")
        self._restarts += 1
        workdir = Path(self.apiserver.stderr_path).parent
        proc = _spawn(f"kube-apiserver.restart{self._restarts}", self.apiserver_args, workdir)
        _wait_ready(proc, self.url, self.ca_cert, self.admin_token, timeout)
        self.apiserver = proc

    def restart_apiserver(self, timeout: float = APISERVER_START_TIMEOUT) -> None:
        """:meth:`stop_apiserver` then :meth:`start_apiserver`."""
        self.stop_apiserver()
        self.start_apiserver(timeout)

    def start_peer_apiserver(self, timeout: float = APISERVER_START_TIMEOUT) -> tuple[str, Path]:
        """Start a second kube-apiserver on a new free port against the same etcd (as in an HA control
        plane), e.g. to change objects while the first one is stopped. Returns its URL and an admin
        kubeconfig for it; :meth:`stop_peer_apiservers` (or :meth:`stop`) stops it."""
        port_arg = next(a for a in self.apiserver_args if a.startswith("--secure-port="))
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = _free_port()
            url = f"https://127.0.0.1:{port}"
            args = [a if a != port_arg else f"--secure-port={port}" for a in self.apiserver_args]
            n = len(self._peers) + 1
            proc = _spawn(f"kube-apiserver.peer{n}", args, Path(self.apiserver.stderr_path).parent)
            try:
                _wait_ready(proc, url, self.ca_cert, self.admin_token, timeout)
            except ServerStartError:
                if attempt < PORT_ATTEMPTS and _port_clash(proc):
                    continue
                raise
            self._peers.append(proc)
            kubeconfig = self.workdir / f"peer{n}-admin.kubeconfig"
            return url, _write_kubeconfig(kubeconfig, url, self.ca_cert, ADMIN_USER, self.admin_token)
        raise AssertionError("unreachable")

    def stop_peer_apiservers(self) -> None:
        for peer in self._peers:
            peer.stop()
        self._peers.clear()

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision, as kube-apiserver itself does every five
        minutes; returns that revision. A watch from an older resourceVersion that is served by etcd
        rather than the watch cache (in 1.20: core/v1 ``events``, whose watch cache is off by default)
        then gets a real ``410 Expired`` ERROR event."""
        key = base64.b64encode(b"/").decode()
        revision = int(http_json("POST", self.etcd_url + "/v3/kv/range", {"key": key})["header"]["revision"])
        http_json("POST", self.etcd_url + "/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision


def _apiserver_args(
    binary: Path, etcd_url: str, workdir: Path, pki: _Pki, token_file: Path, port: int
) -> list[str]:
    return [
        str(binary),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        "--insecure-port=0",  # 1.20 still opens an unauthenticated :8080 unless told not to
        f"--cert-dir={workdir / 'certs'}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--token-auth-file={token_file}",
        "--authorization-mode=RBAC",
        "--anonymous-auth=true",  # anonymous may read /healthz, /readyz, /version (public-info-viewer)
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        # The `default/kubernetes` Service is still created, but its Endpoints would name 127.0.0.1,
        # which validation rejects (loopback), and the reconciler would log that error every 10 s.
        "--endpoint-reconciler-type=none",
        "--disable-admission-plugins=ServiceAccount",  # no controller-manager creates `default` SAs
        "--allow-privileged=true",
        "--profiling=false",
        "--logtostderr=true",
        "--v=1",
    ]


def _wait_ready(proc: ManagedProcess, url: str, ca_cert: Path, admin_token: str, timeout: float) -> None:
    probe = functools.partial(_readyz, url, admin_token, ssl.create_default_context(cafile=str(ca_cert)))
    wait_for(proc, f"answer ok on {url}/readyz", probe, timeout)


def start_apiserver(
    binary: Path,
    etcd_url: str,
    workdir: Path,
    pki: _Pki,
    token_file: Path,
    admin_token: str,
    timeout: float = APISERVER_START_TIMEOUT,
) -> tuple[ManagedProcess, str, list[str]]:
    """Start kube-apiserver on a free port of 127.0.0.1; returns the process, its URL and its argv."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = _free_port()
        url = f"https://127.0.0.1:{port}"
        args = _apiserver_args(binary, etcd_url, workdir, pki, token_file, port)
        proc = _spawn("kube-apiserver", args, workdir)
        try:
            _wait_ready(proc, url, pki.ca_cert, admin_token, timeout)
        except ServerStartError:
            if attempt < PORT_ATTEMPTS and _port_clash(proc):
                continue
            raise
        return proc, url, args
    raise AssertionError("unreachable")


def start_cluster(
    workdir: Path,
    *,
    build: bool = True,
    etcd_timeout: float = ETCD_START_TIMEOUT,
    apiserver_timeout: float = APISERVER_START_TIMEOUT,
) -> KubeCluster:
    """Start etcd and kube-apiserver with everything they need under ``workdir``.

    ``build=True`` runs the build script when the binary (or etcd) is missing, which takes minutes once.
    ``timings`` on the result has ``binary``, ``pki``, ``etcd_start`` and ``apiserver_start`` in seconds.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    binary = ensure_apiserver_binary(build=build)
    timings["binary"] = time.monotonic() - t0

    t0 = time.monotonic()
    pki = _make_pki(workdir / "pki")
    timings["pki"] = time.monotonic() - t0

    admin_token, limited_token = secrets.token_hex(16), secrets.token_hex(16)
    token_file = workdir / "tokens.csv"
    token_file.write_text(
        f'{admin_token},{ADMIN_USER},uid-admin,"system:masters"\n'
        f'{limited_token},{LIMITED_USER},uid-limited,"{LIMITED_GROUP}"\n'
    )
    token_file.chmod(0o600)

    t0 = time.monotonic()
    etcd, etcd_url = start_etcd(workdir / "etcd", etcd_timeout)
    timings["etcd_start"] = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        apiserver, url, apiserver_args = start_apiserver(
            binary, etcd_url, workdir / "apiserver", pki, token_file, admin_token, apiserver_timeout
        )
        timings["apiserver_start"] = time.monotonic() - t0
    except BaseException:
        etcd.stop()
        raise
    return KubeCluster(
        url=url,
        kubeconfig=_write_kubeconfig(workdir / "admin.kubeconfig", url, pki.ca_cert, ADMIN_USER, admin_token),
        limited_kubeconfig=_write_kubeconfig(
            workdir / "limited.kubeconfig", url, pki.ca_cert, LIMITED_USER, limited_token
        ),
        ca_cert=pki.ca_cert,
        admin_token=admin_token,
        limited_token=limited_token,
        etcd_url=etcd_url,
        etcd=etcd,
        apiserver=apiserver,
        workdir=workdir,
        timings=timings,
        apiserver_args=apiserver_args,
    )
