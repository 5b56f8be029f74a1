"""Pod state with kube-state-metrics' names, for the pods on this node.

:class:`PodStateMetrics` is a Prometheus custom collector over this node's pod objects (from the pod
watch: one collector DaemonSet pod per node serves its own node's pods, so together they publish what a
cluster-wide kube-state-metrics would for pods). Values and labels follow kube-state-metrics v2
(``internal/store/pod.go``). Every series carries ``namespace``, ``pod`` and ``uid``, plus:

- ``kube_pod_info``: ``host_ip, pod_ip, node, created_by_kind, created_by_name, priority_class,
  host_network`` (``created_by_*`` are ``<none>`` without a controller owner);
- ``kube_pod_owner``: ``owner_kind, owner_name, owner_is_controller``, one per owner reference
  (``<none>`` three times without any);
- ``kube_pod_labels``: ``label_<key>`` per pod label (characters outside ``[a-zA-Z0-9_]`` become ``_``;
  keys that collide that way all get ``_conflict<N>``);
- ``kube_pod_start_time``: ``status.startTime`` in unix seconds;
- ``kube_pod_status_phase``: ``phase`` Pending/Succeeded/Failed/Unknown/Running, 1 for the current one
  and 0 for the others; ``kube_pod_status_qos_class`` (``qos_class``) and ``kube_pod_status_reason``
  (``reason`` Evicted/NodeAffinity/NodeLost/Shutdown/UnexpectedAdmissionError) likewise;
- ``kube_pod_status_ready``, ``kube_pod_status_scheduled``: ``condition`` true/false/unknown, 1/0, when
  the pod has the Ready / PodScheduled condition;
- ``kube_pod_container_info``: ``container, image_spec, image, image_id, container_id``;
- ``kube_pod_container_status_restarts_total`` (counter), ``kube_pod_container_status_ready``,
  ``_running``, ``_waiting``, ``_terminated`` (1/0): ``container``;
- ``kube_pod_container_status_waiting_reason`` / ``_terminated_reason`` (1, only while in that state),
  ``kube_pod_container_status_last_terminated_reason`` (1) and ``_last_terminated_exitcode`` (the exit
  code), when the container has a last terminated state: ``container, reason``;
- ``kube_pod_container_resource_requests``, ``kube_pod_container_resource_limits``: ``container, node,
  resource, unit``: cpu in cores (``unit="core"``), memory, storage, ephemeral-storage and hugepages in
  bytes (``byte``), extended resources as ``integer`` (``nvidia.com/gpu`` -> ``nvidia_com_gpu``), rounded
  up as Kubernetes' ``MilliValue()`` / ``Value()`` do.

Container series cover ``spec.containers`` / ``status.containerStatuses``; kube-state-metrics'
``kube_pod_init_container_*`` families are not published.

Scrape cost: a pod's series only change with the pod object, so they are kept per pod uid and
``resourceVersion`` and rebuilt only for pods that changed. A pod that cannot be turned into metrics
(malformed object) loses only its own series and is counted in
``kubeobs_kube_state_pod_errors_total{reason="pod"}``; a resource quantity that does not parse loses
that one series (``reason="quantity"``).

``collect()`` yields ``Metric`` objects for any ``CollectorRegistry``; ``expose()`` returns the same
families as Prometheus text, each pod version's text rendered once (for 110 pods of 3 containers, about
5,300 series: a fraction of a millisecond while pods do not change, where ``generate_latest`` spends
tens; bench/pod_scrape.py).

Example::

    kube_state = PodStateMetrics(node_name, pods=metadata.pod_objects)
    registry.register(kube_state)         # through generate_latest(registry), or
    body = generate_latest(other) + kube_state.expose()   # families of its own, appended to a body
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from collector.exporters.exposition import family_header, format_labels, format_value, render_metric

__all__ = [
    "PodSource",
    "PodStateMetrics",
    "cpu_cores",
    "parse_quantity",
    "pod_series",
    "resource_unit",
    "sanitize_label_name",
    "whole_units",
]

log = logging.getLogger(__name__)

PodSource = Callable[[], Iterable[Mapping[str, Any]]]

# -- Kubernetes resource quantities ----------------------------------------------------------------------

_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"  # the number
    r"(?:(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE]([+-]?[0-9]+))?$"  # a binary or decimal suffix, or an exponent
)
_SUFFIX: dict[str, Decimal] = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity (``100m``, ``1Gi``, ``500M``, ``1e3``, ``0.5``) as an exact number;
    ValueError when it is not one."""
    m = _QUANTITY.match(text.strip())
    if m is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix, exponent = m.groups()
    try:
        value = Decimal(number)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise ValueError(f"not a quantity: {text!r}") from None
    if suffix:
        return value * _SUFFIX[suffix]
    if exponent:
        return value.scaleb(int(exponent))
    return value


def cpu_cores(q: Decimal) -> float:
    """Cores as kube-state-metrics reports them: ``MilliValue() / 1000`` (rounded up to a millicore)."""
    return math.ceil(q * 1000) / 1000


def whole_units(q: Decimal) -> float:
    """Bytes or counts as kube-state-metrics reports them: ``Value()`` (rounded up to a whole unit)."""
    return float(math.ceil(q))


_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_label_name(name: str) -> str:
    """kube-state-metrics' label name sanitizing: characters outside ``[a-zA-Z0-9_]`` become ``_``."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def resource_unit(resource: str) -> str | None:
    """kube-state-metrics' ``unit`` for a resource name; None for resources it does not publish."""
    if resource == "cpu":
        return "core"
    if resource in ("memory", "storage", "ephemeral-storage"):
        return "byte"
    if resource.startswith(("hugepages-", "attachable-volumes-")):
        return "byte"
    native = "/" not in resource or "kubernetes.io/" in resource
    if not native and not resource.startswith("requests."):
        return "integer"  # extended resource, e.g. nvidia.com/gpu
    return None


def _labels_of(labels: Mapping[str, str]) -> dict[str, str]:
    """``label_<sanitized key>`` -> value, with kube-state-metrics' ``_conflict<N>`` for colliding keys."""
    by_name: dict[str, list[str]] = {}
    for key in sorted(labels):
        by_name.setdefault(sanitize_label_name(key), []).append(key)
    out: dict[str, str] = {}
    for name, keys in by_name.items():
        if len(keys) == 1:
            out[f"label_{name}"] = str(labels[keys[0]])
        else:
            for i, key in enumerate(keys, 1):
                out[f"label_{name}_conflict{i}"] = str(labels[key])
    return out


def _unix(ts: Any) -> float | None:
    if not isinstance(ts, str) or not ts:
        return None
    return float(int(datetime.fromisoformat(ts).timestamp()))


# -- the families ------------------------------------------------------------------------------------

_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("kube_pod_info", "Information about pod.", "gauge"),
    ("kube_pod_owner", "Information about the Pod's owner.", "gauge"),
    ("kube_pod_labels", "Kubernetes labels converted to Prometheus labels.", "gauge"),
    ("kube_pod_start_time", "Start time in unix timestamp for a pod.", "gauge"),
    ("kube_pod_status_phase", "The pods current phase.", "gauge"),
    ("kube_pod_status_ready", "Describes whether the pod is ready to serve requests.", "gauge"),
    ("kube_pod_status_scheduled", "Describes the status of the scheduling process for the pod.", "gauge"),
    ("kube_pod_status_qos_class", "The pods current qosClass.", "gauge"),
    ("kube_pod_status_reason", "The pod status reasons", "gauge"),
    ("kube_pod_container_info", "Information about a container in a pod.", "gauge"),
    ("kube_pod_container_status_restarts_total", "The number of container restarts per container.",
     "counter"),
    ("kube_pod_container_status_ready", "Describes whether the containers readiness check succeeded.",
     "gauge"),
    ("kube_pod_container_status_running", "Describes whether the container is currently in running state.",
     "gauge"),
    ("kube_pod_container_status_waiting", "Describes whether the container is currently in waiting state.",
     "gauge"),
    ("kube_pod_container_status_waiting_reason",
     "Describes the reason the container is currently in waiting state.", "gauge"),
    ("kube_pod_container_status_terminated",
     "Describes whether the container is currently in terminated state.", "gauge"),
    ("kube_pod_container_status_terminated_reason",
     "Describes the reason the container is currently in terminated state.", "gauge"),
    ("kube_pod_container_status_last_terminated_reason",
     "Describes the last reason the container was in terminated state.", "gauge"),
    ("kube_pod_container_status_last_terminated_exitcode",
     "Describes the exit code for the last container in terminated state.", "gauge"),
    ("kube_pod_container_resource_requests", "The number of requested request resource by a container.",
     "gauge"),
    ("kube_pod_container_resource_limits", "The number of requested limit resource by a container.",
     "gauge"),
)  # fmt: skip
(
    _INFO, _OWNER, _LABELS, _START, _PHASE, _READY, _SCHEDULED, _QOS, _REASON, _C_INFO, _C_RESTARTS,
    _C_READY, _C_RUNNING, _C_WAITING, _C_WAITING_REASON, _C_TERMINATED, _C_TERMINATED_REASON,
    _C_LAST_REASON, _C_LAST_EXITCODE, _C_REQUESTS, _C_LIMITS,
) = range(len(_FAMILIES))  # fmt: skip
_NAMES = [f[0] for f in _FAMILIES]
_ERRORS_NAME = "kubeobs_kube_state_pod_errors_total"
_ERRORS_HELP = "Pod objects (reason=pod) or resource quantities (reason=quantity) that could not be published"

_PHASES = ("Pending", "Succeeded", "Failed", "Unknown", "Running")
_QOS_CLASSES = ("BestEffort", "Burstable", "Guaranteed")
_STATUS_REASONS = ("Evicted", "NodeAffinity", "NodeLost", "Shutdown", "UnexpectedAdmissionError")
_CONDITION_VALUES = (("true", "True"), ("false", "False"), ("unknown", "Unknown"))
NONE = "<none>"


def _bool(v: bool) -> float:
    return 1.0 if v else 0.0


def pod_series(pod: Mapping[str, Any], quantity_errors: list[str] | None = None) -> list[list[Sample]]:
    """The samples of one pod, one list per family (in ``_FAMILIES`` order). Pure: depends only on
    ``pod``. Quantities that do not parse are skipped and their texts appended to ``quantity_errors``."""
    out: list[list[Sample]] = [[] for _ in _FAMILIES]
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    base = {"namespace": str(meta["namespace"]), "pod": str(meta["name"]), "uid": str(meta.get("uid", ""))}
    node = str(spec.get("nodeName") or "")

    def add(family: int, value: float, **labels: str) -> None:
        out[family].append(Sample(_NAMES[family], {**base, **labels}, value))

    owners = meta.get("ownerReferences") or []
    controller = next((o for o in owners if o.get("controller") is True), None)
    add(_INFO, 1.0, host_ip=str(status.get("hostIP") or ""), pod_ip=str(status.get("podIP") or ""),
        node=node, created_by_kind=str((controller or {}).get("kind") or NONE),
        created_by_name=str((controller or {}).get("name") or NONE),
        priority_class=str(spec.get("priorityClassName") or ""),
        host_network="true" if spec.get("hostNetwork") is True else "false")  # fmt: skip
    if not owners:
        add(_OWNER, 1.0, owner_kind=NONE, owner_name=NONE, owner_is_controller=NONE)
    for o in owners:
        add(_OWNER, 1.0, owner_kind=str(o.get("kind", "")), owner_name=str(o.get("name", "")),
            owner_is_controller="true" if o.get("controller") is True else "false")  # fmt: skip
    add(_LABELS, 1.0, **_labels_of(meta.get("labels") or {}))
    start = _unix(status.get("startTime"))
    if start is not None:
        add(_START, start)

    phase = status.get("phase")
    if phase:
        for p in _PHASES:
            add(_PHASE, _bool(phase == p), phase=p)
    for cond in status.get("conditions") or ():
        family = {"Ready": _READY, "PodScheduled": _SCHEDULED}.get(str(cond.get("type")))
        if family is not None:
            for label, value in _CONDITION_VALUES:
                add(family, _bool(cond.get("status") == value), condition=label)
    qos = status.get("qosClass")
    if qos:
        for cls in _QOS_CLASSES:
            add(_QOS, _bool(qos == cls), qos_class=cls)
    reason = status.get("reason")
    for r in _STATUS_REASONS:
        add(_REASON, _bool(reason == r), reason=r)

    spec_images = {str(c.get("name")): str(c.get("image") or "") for c in spec.get("containers") or ()}
    for cs in status.get("containerStatuses") or ():
        name = str(cs.get("name", ""))
        add(_C_INFO, 1.0, container=name, image_spec=spec_images.get(name, ""),
            image=str(cs.get("image") or ""), image_id=str(cs.get("imageID") or ""),
            container_id=str(cs.get("containerID") or ""))  # fmt: skip
        add(_C_RESTARTS, float(cs.get("restartCount") or 0), container=name)
        add(_C_READY, _bool(cs.get("ready") is True), container=name)
        state = cs.get("state") or {}
        running, waiting, terminated = state.get("running"), state.get("waiting"), state.get("terminated")
        add(_C_RUNNING, _bool(running is not None), container=name)
        add(_C_WAITING, _bool(waiting is not None), container=name)
        if waiting is not None:
            add(_C_WAITING_REASON, 1.0, container=name, reason=str(waiting.get("reason") or ""))
        add(_C_TERMINATED, _bool(terminated is not None), container=name)
        if terminated is not None:
            add(_C_TERMINATED_REASON, 1.0, container=name, reason=str(terminated.get("reason") or ""))
        last = (cs.get("lastState") or {}).get("terminated")
        if last is not None:
            add(_C_LAST_REASON, 1.0, container=name, reason=str(last.get("reason") or ""))
            add(_C_LAST_EXITCODE, float(last.get("exitCode") or 0), container=name)

    for c in spec.get("containers") or ():
        name = str(c.get("name", ""))
        resources = c.get("resources") or {}
        for family, key in ((_C_REQUESTS, "requests"), (_C_LIMITS, "limits")):
            for resource, text in (resources.get(key) or {}).items():
                unit = resource_unit(resource)
                if unit is None:
                    continue
                try:
                    q = parse_quantity(str(text))
                except ValueError:
                    if quantity_errors is not None:
                        quantity_errors.append(f"{name} {key}.{resource}={text!r}")
                    continue
                amount = cpu_cores(q) if unit == "core" else whole_units(q)
                add(family, amount, container=name, node=node, resource=sanitize_label_name(resource),
                    unit=unit)  # fmt: skip
    return out


class _Entry:
    """One pod version's series, and their text once :meth:`PodStateMetrics.expose` needed it."""

    __slots__ = ("series", "text", "version")

    def __init__(self, version: str, series: list[list[Sample]]) -> None:
        self.version = version
        self.series = series
        self.text: list[str] | None = None

    def texts(self) -> list[str]:
        if self.text is None:
            self.text = ["".join(f"{x.name}{format_labels(x.labels)} {format_value(x.value)}\n" for x in s)
                         for s in self.series]  # fmt: skip
        return self.text


class PodStateMetrics:
    """kube-state-metrics-named pod metrics for the pods of ``node``; see the module docstring.

    ``pods`` returns this node's pod objects at scrape time (pods of other nodes are ignored).
    ``collect()`` (and ``expose()``) raise only what ``pods()`` raises.
    """

    name = "kube_state"

    def __init__(self, node: str, pods: PodSource) -> None:
        self.node = node
        self.pods = pods
        self.errors: dict[str, int] = {}
        self._cache: dict[str, _Entry] = {}
        self._logged: set[tuple[str, str]] = set()

    def _entries(self) -> list[_Entry]:
        """The series of every pod of this node now: cached per pod uid and resourceVersion."""
        entries: list[_Entry] = []
        cache: dict[str, _Entry] = {}
        for pod in self.pods():
            if str((pod.get("spec") or {}).get("nodeName") or "") != self.node:
                continue
            meta = pod.get("metadata") or {}
            uid, version = str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))
            entry = self._cache.get(uid)
            if entry is None or not version or entry.version != version:
                entry = _Entry(version, self._build(pod, uid, version))
            if uid and version:
                cache[uid] = entry
            entries.append(entry)
        self._cache = cache  # deleted pods drop out
        if len(self._logged) > 4 * len(entries) + 64:
            self._logged.clear()
        return entries

    def _build(self, pod: Mapping[str, Any], uid: str, version: str) -> list[list[Sample]]:
        meta = pod.get("metadata") or {}
        what = f"pod {meta.get('namespace')}/{meta.get('name')}"
        bad: list[str] = []
        try:
            series = pod_series(pod, bad)
        except Exception as e:  # a malformed object loses only its own series
            self._count("pod", uid, version, f"{what}: {e!r}")
            return [[] for _ in _FAMILIES]
        for text in bad:
            self._count("quantity", uid, version, f"{what}: {text}")
        return series

    def _count(self, reason: str, uid: str, version: str, what: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1
        if (uid, version) not in self._logged:  # once per pod version, not once per scrape
            self._logged.add((uid, version))
            log.warning("kube_state: skipped malformed %s (%s)", what, reason)

    def _errors_family(self) -> Metric:
        errors = Metric("kubeobs_kube_state_pod_errors", _ERRORS_HELP, "counter")
        for reason in ("pod", "quantity"):
            errors.samples.append(Sample(_ERRORS_NAME, {"reason": reason}, self.errors.get(reason, 0)))
        return errors

    def collect(self) -> list[Metric]:
        """Build now (eagerly, as ``ContainerMetrics.collect``); every family, the error counter last."""
        families = [Metric(n[:-6] if t == "counter" else n, doc, t) for n, doc, t in _FAMILIES]
        for entry in self._entries():
            for family, s in zip(families, entry.series, strict=True):
                if s:
                    family.samples.extend(s)
        families.append(self._errors_family())
        return families

    def expose(self) -> bytes:
        """The same metrics as :meth:`collect`, as Prometheus text exposition (format 0.0.4); each pod
        version's text is rendered once and reused while the pod does not change."""
        texts = [entry.texts() for entry in self._entries()]
        out = [family_header(*f) + "".join(t[i] for t in texts) for i, f in enumerate(_FAMILIES)]
        out.append(render_metric(self._errors_family()))
        return "".join(out).encode()
