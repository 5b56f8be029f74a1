"""The DNS server's metrics, under CoreDNS's names and labels so CoreDNS dashboards work unchanged.

Counting happens on the hot path, so it is plain integer arithmetic in dicts (:meth:`DnsStats.record`);
prometheus_client builds the exposition at scrape time from :meth:`DnsStats.collect` (a custom
collector, registered on the registry the server was given).

Series (``server`` = ``dns://<listen>``, ``zone`` = ``.``, ``view`` = ``""``, as one CoreDNS server block):

- ``coredns_dns_requests_total{server,zone,view,proto,family,type}``
- ``coredns_dns_responses_total{server,zone,view,rcode,plugin}`` (plugin: ``kubernetes``, ``cache``,
  ``forward``, or ``""`` for errors answered by the server itself)
- ``coredns_dns_request_duration_seconds{server,zone,view,type}`` (histogram, CoreDNS's buckets)
- ``coredns_dns_request_size_bytes{server,zone,view,proto}``,
  ``coredns_dns_response_size_bytes{server,zone,view,proto}`` (histograms)
- ``coredns_panics_total``, ``coredns_build_info{version,revision,goversion}``,
  ``coredns_plugin_enabled{server,zone,view,name}``
- ``kubeobs_dns_dropped_total{reason}``: queries not answered (``malformed``: too short to answer;
  ``overload``: the forwarding queue was full) — CoreDNS has no such counter.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

DURATION_BUCKETS = tuple(0.00025 * 2**i for i in range(16))
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16000, 32000, 48000, 64000)
VERSION = "0.1.0"


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((_fmt(bound), float(running)))
        running += self.counts[-1]
        out.append(("+Inf", float(running)))
        return out


def _fmt(bound: float) -> str:
    return repr(float(bound))


class DnsStats:
    """Counters of the DNS server; see the module docstring."""

    def __init__(self, server: str, plugins: Iterable[str] = ()) -> None:
        self.server = server
        self.zone = "."
        self.plugins = tuple(plugins)
        self.requests: dict[tuple[str, str, str], int] = {}  # (proto, family, type)
        self.responses: dict[tuple[str, str], int] = {}  # (rcode, plugin)
        self.durations: dict[str, _Histogram] = {}  # type
        self.request_sizes: dict[str, _Histogram] = {}  # proto
        self.response_sizes: dict[str, _Histogram] = {}  # proto
        self.dropped: dict[str, int] = {"malformed": 0, "overload": 0}
        self.panics = 0

    def record(
        self,
        proto: str,
        family: str,
        qtype: str,
        rcode: str,
        plugin: str,
        request_size: int,
        response_size: int,
        duration: float,
    ) -> None:
        """One answered query (the hot path: a handful of dict operations)."""
        key = (proto, family, qtype)
        self.requests[key] = self.requests.get(key, 0) + 1
        rkey = (rcode, plugin)
        self.responses[rkey] = self.responses.get(rkey, 0) + 1
        h = self.durations.get(qtype)
        if h is None:
            h = self.durations[qtype] = _Histogram(DURATION_BUCKETS)
        h.observe(duration)
        h = self.request_sizes.get(proto)
        if h is None:
            h = self.request_sizes[proto] = _Histogram(SIZE_BUCKETS)
        h.observe(request_size)
        h = self.response_sizes.get(proto)
        if h is None:
            h = self.response_sizes[proto] = _Histogram(SIZE_BUCKETS)
        h.observe(response_size)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def collect(self) -> Iterable[Metric]:
        base = [self.server, self.zone, ""]
        req = CounterMetricFamily(
            "coredns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            labels=["server", "zone", "view", "proto", "family", "type"],
        )
        for (proto, family, qtype), n in sorted(self.requests.items()):
            req.add_metric([*base, proto, family, qtype], n)
        yield req
        resp = CounterMetricFamily(
            "coredns_dns_responses",
            "Counter of response status codes.",
            labels=["server", "zone", "view", "rcode", "plugin"],
        )
        for (rcode, plugin), n in sorted(self.responses.items()):
            resp.add_metric([*base, rcode, plugin], n)
        yield resp
        dur = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.",
            labels=["server", "zone", "view", "type"],
        )
        for qtype, h in sorted(self.durations.items()):
            dur.add_metric([*base, qtype], h.buckets(), h.total)
        yield dur
        for name, doc, hists in (
            (
                "coredns_dns_request_size_bytes",
                "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
                self.request_sizes,
            ),
            (
                "coredns_dns_response_size_bytes",
                "Size of the returned response in bytes.",
                self.response_sizes,
            ),
        ):
            fam = HistogramMetricFamily(name, doc, labels=["server", "zone", "view", "proto"])
            for proto, h in sorted(hists.items()):
                fam.add_metric([*base, proto], h.buckets(), h.total)
            yield fam
        panics = CounterMetricFamily("coredns_panics", "A metrics that counts the number of panics.")
        panics.add_metric([], self.panics)
        yield panics
        info = GaugeMetricFamily(
            "coredns_build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion "
            "from which CoreDNS was built.",
            labels=["version", "revision", "goversion"],
        )
        info.add_metric([f"kubeobs-{VERSION}", "", f"python{platform.python_version()}"], 1)
        yield info
        enabled = GaugeMetricFamily(
            "coredns_plugin_enabled",
            "A metric that indicates whether a plugin is enabled on per server and zone basis.",
            labels=["server", "zone", "view", "name"],
        )
        for plugin in self.plugins:
            enabled.add_metric([*base, plugin], 1)
        yield enabled
        dropped = CounterMetricFamily(
            "kubeobs_dns_dropped", "Queries not answered, by reason.", labels=["reason"]
        )
        for reason, n in sorted(self.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
