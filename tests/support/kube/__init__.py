"""A real Kubernetes apiserver (v1.20.2, built from Debian's source package) plus etcd for tests.

``bash tests/support/kube/build-apiserver.sh`` builds and caches the binary (minutes once, then
milliseconds); :func:`tests.support.kube.apiserver.start_cluster` starts etcd and kube-apiserver and
returns a :class:`~tests.support.kube.apiserver.KubeCluster`. ``python -m tests.support.kube.smoke``
checks the whole chain end to end.
"""
