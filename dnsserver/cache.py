"""Response cache for forwarded answers, like CoreDNS ``cache``; also the small wire-format helpers it needs.

Interface::

    cache = ResponseCache(capacity=10000, max_ttl=3600, max_negative_ttl=1800, min_ttl=0,
                          serve_stale=0.0, server="dns://:53", now=time.monotonic)
    key = question_key(query)          # dnsserver.wire: lowercased QNAME wire + QTYPE + QCLASS
    reply = cache.get(query, key)      # bytes for THIS query, or None
    if reply is None:
        reply = await forwarder.forward(query)
        cache.put(key, reply)          # stores only what may be cached, silently ignores the rest

What is cached (:meth:`ResponseCache.put`): NOERROR with answers (type ``success``), NOERROR without
answers (NODATA) and NXDOMAIN (type ``denial``). Never SERVFAIL, REFUSED, FORMERR or any other rcode,
truncated (TC) answers, non-QUERY opcodes, answers whose question does not match the key, answers with
TSIG/SIG(0), or denials without an SOA in the authority section (RFC 2308 §5). The entry's TTL is the
minimum TTL of all its records (like CoreDNS; OPT excluded), for denials also capped by the SOA MINIMUM
field (RFC 2308 §5: min(SOA TTL, SOA MINIMUM)), then capped at ``max_ttl`` (``max_negative_ttl`` for
denials) and floored at ``min_ttl``; an entry whose TTL comes out as 0 is not stored.

What a hit returns (:meth:`ResponseCache.get`): the stored response with the query's ID, the query's
question bytes (so the client sees its own case back, also in owner names compressed onto the question
name), RD and CD copied from the query, AA cleared (cached data is not authoritative), and every record's
TTL set to the entry's remaining TTL (CoreDNS does the same: ``original TTL - whole seconds in cache``).
The upstream's OPT record is removed at ``put``; when the query carries an OPT record, the answer gets
one (UDP payload size 1232, the query's DO bit). The answer is NOT truncated to the client's UDP payload
size: the caller must do that (the same as for any answer it sends over UDP).

Serve-stale: with ``serve_stale > 0`` an expired entry is still returned for up to ``serve_stale`` seconds
after it expired, with every TTL set to :data:`STALE_TTL` (30 s, as RFC 8767 §4 recommends). Use
:meth:`ResponseCache.lookup` to learn that an answer was stale (and refresh it from upstream).

Capacity: at most ``capacity`` entries; inserting into a full cache evicts the least recently used entry.
Expired entries are removed when looked up past their (stale) lifetime or when evicted.

Metrics (:meth:`ResponseCache.collect`, CoreDNS names; ``server`` is the constructor argument):

=========================================================  ==========================================
coredns_cache_entries{server,type}                         entries now, type = success | denial
coredns_cache_requests_total{server}                       lookups (``get``/``lookup`` calls)
coredns_cache_hits_total{server,type}                      lookups answered (stale ones included)
coredns_cache_misses_total{server}                         lookups not answered
coredns_cache_served_stale_total{server}                   lookups answered with an expired entry
coredns_cache_evictions_total{server,type}                 entries evicted to make room
=========================================================  ==========================================

Example::

    registry.register(cache)   # anything with collect() can be registered
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from dnsserver.wire import HEADER, WireError, question_key, skip_name

TYPE_SIG: Final = 24
TYPE_SOA: Final = 6
TYPE_OPT: Final = 41
TYPE_TSIG: Final = 250
RCODE_NOERROR: Final = 0
RCODE_NXDOMAIN: Final = 3
STALE_TTL: Final = 30
"""TTL given to every record of an answer served stale (RFC 8767 §4)."""
EDNS_UDP_SIZE: Final = 1232
"""UDP payload size announced in the OPT record added to cached answers for EDNS queries."""

_MAX_TTL: Final = 0x7FFFFFFF  # RFC 2181 §8
_TTL: Final = struct.Struct(">I")
_U16: Final = struct.Struct(">H")
_OPT: Final = b"\x00\x00\x29" + _U16.pack(EDNS_UDP_SIZE) + b"\x00\x00\x00\x00\x00\x00"
_OPT_DO: Final = b"\x00\x00\x29" + _U16.pack(EDNS_UDP_SIZE) + b"\x00\x00\x80\x00\x00\x00"

CacheType = Literal["success", "denial"]
_TYPES: Final[tuple[CacheType, ...]] = ("success", "denial")


@dataclass(frozen=True, slots=True)
class _Record:
    start: int
    rtype: int
    ttl_offset: int
    ttl: int
    rdata: int
    end: int


def _records(msg: bytes, off: int, count: int) -> tuple[list[_Record], int]:
    out: list[_Record] = []
    for _ in range(count):
        start = off
        off = skip_name(msg, off)
        if off + 10 > len(msg):
            raise WireError("record header runs past the end of the message")
        rtype, _rclass, ttl, rdlen = struct.unpack_from(">HHIH", msg, off)
        rdata = off + 10
        end = rdata + rdlen
        if end > len(msg):
            raise WireError("record data runs past the end of the message")
        if ttl > _MAX_TTL:
            ttl = 0  # RFC 2181 §8: a TTL with the top bit set is treated as zero
        out.append(_Record(start, rtype, off + 4, ttl, rdata, end))
        off = end
    return out, off


def _soa_minimum(msg: bytes, rec: _Record) -> int:
    p = skip_name(msg, rec.rdata)
    p = skip_name(msg, p)
    if p + 20 > rec.end:
        raise WireError("SOA record data too short")
    minimum: int = _TTL.unpack_from(msg, p + 16)[0]
    return minimum


@dataclass(frozen=True, slots=True)
class _Entry:
    """A stored response, cut at put time so that get is one join: ``flags`` (AA, RD and CD cleared),
    the section counts without and with an added OPT record, and the records after the question split
    at every TTL field (the 4 TTL bytes left out: ``ttl_bytes.join(segments)`` puts them back)."""

    flags: int
    counts: bytes
    counts_opt: bytes
    segments: tuple[bytes, ...]
    ttl: int
    stored: float
    kind: CacheType


class ResponseCache:
    """CoreDNS ``cache`` for forwarded answers: positive and negative (NXDOMAIN/NODATA) entries with TTL
    caps, capacity-bounded with LRU eviction, optional serve-stale. See the module docstring.

    ``now`` returns monotonic seconds; it is the only clock the cache reads.
    """

    def __init__(
        self,
        *,
        capacity: int = 10000,
        max_ttl: float = 3600,
        max_negative_ttl: float = 1800,
        min_ttl: float = 0,
        serve_stale: float = 0.0,
        server: str = "dns://127.0.0.1:5353",
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if min(max_ttl, max_negative_ttl, min_ttl, serve_stale) < 0:
            raise ValueError("TTL limits and serve_stale must not be negative")
        self._capacity = capacity
        self._max_ttl = int(min(max_ttl, _MAX_TTL))
        self._max_negative_ttl = int(min(max_negative_ttl, _MAX_TTL))
        self._min_ttl = int(min(min_ttl, _MAX_TTL))
        self._serve_stale = serve_stale
        self._server = server
        self._now = now
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._counts: dict[CacheType, int] = dict.fromkeys(_TYPES, 0)
        self._hits: dict[CacheType, int] = dict.fromkeys(_TYPES, 0)
        self._evictions: dict[CacheType, int] = dict.fromkeys(_TYPES, 0)
        self._requests = 0
        self._misses = 0
        self._served_stale = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: bytes, key: bytes) -> bytes | None:
        """The cached response for ``query`` (see the module docstring), or None on a miss or expiry.

        ``key`` must be ``question_key(query)``. Raises ValueError if ``query`` is too short for ``key``
        or its QTYPE/QCLASS differ from the key's (a caller bug).
        """
        found = self.lookup(query, key)
        return None if found is None else found[0]

    def lookup(self, query: bytes, key: bytes) -> tuple[bytes, bool] | None:
        """Like :meth:`get`, but returns ``(response, stale)``; ``stale`` is True for a serve-stale answer."""
        qend = HEADER + len(key)
        if len(query) < qend or query[qend - 4 : qend] != key[-4:]:
            raise ValueError("the key was not built from this query (use question_key(query))")
        self._requests += 1
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        elapsed = self._now() - entry.stored
        ttl = entry.ttl - int(elapsed)
        stale = ttl <= 0
        if stale:
            if elapsed >= entry.ttl + self._serve_stale:
                del self._entries[key]
                self._counts[entry.kind] -= 1
                self._misses += 1
                return None
            ttl = STALE_TTL
            self._served_stale += 1
        self._entries.move_to_end(key)
        self._hits[entry.kind] += 1

        body = _TTL.pack(ttl).join(entry.segments)
        flags = _U16.pack(entry.flags | (((query[2] << 8) | query[3]) & 0x0110))  # RD and CD of the query
        # An OPT record right after the question (the usual EDNS query): answer with one.
        if (query[10] or query[11]) and len(query) >= qend + 11 and query[qend : qend + 3] == b"\x00\x00\x29":
            opt = _OPT_DO if query[qend + 7] & 0x80 else _OPT
            return b"".join((query[0:2], flags, entry.counts_opt, query[HEADER:qend], body, opt)), stale
        return b"".join((query[0:2], flags, entry.counts, query[HEADER:qend], body)), stale

    def put(self, key: bytes, response: bytes) -> None:
        """Store ``response`` (an upstream answer to a query whose key is ``key``) if it may be cached.

        Anything that may not be cached (see the module docstring), including malformed messages, is
        ignored. A new entry for an existing key replaces it; a full cache evicts its LRU entry.
        """
        try:
            entry = self._make_entry(key, response)
        except WireError:
            return
        if entry is None:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._counts[old.kind] -= 1
        while len(self._entries) >= self._capacity:
            _, victim = self._entries.popitem(last=False)
            self._counts[victim.kind] -= 1
            self._evictions[victim.kind] += 1
        self._entries[key] = entry
        self._counts[entry.kind] += 1

    def _make_entry(self, key: bytes, response: bytes) -> _Entry | None:
        msg = bytes(response)
        if len(msg) < HEADER:
            return None
        flags_hi, flags_lo = msg[2], msg[3]
        if not flags_hi & 0x80 or flags_hi & 0x78 or flags_hi & 0x02:  # not a response / not QUERY / TC
            return None
        rcode = flags_lo & 0x0F
        if rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
            return None
        if question_key(msg) != key:
            return None
        ancount, nscount, arcount = struct.unpack_from(">HHH", msg, 6)
        off = HEADER + len(key)
        answers, off = _records(msg, off, ancount)
        authority, off = _records(msg, off, nscount)
        additional, off = _records(msg, off, arcount)
        if off != len(msg):
            return None  # trailing bytes: do not splice what we do not understand
        data = msg
        opts = [r for r in additional if r.rtype == TYPE_OPT]
        if any(r.rtype in (TYPE_TSIG, TYPE_SIG) for r in additional):
            return None
        if opts:
            opt = opts[0]
            if len(opts) > 1 or opt is not additional[-1] or msg[opt.ttl_offset] != 0:
                return None  # OPT not last (cannot cut it out safely), or an extended rcode
            data = msg[: opt.start]
            additional = additional[:-1]
            data = data[:10] + _U16.pack(arcount - 1) + data[12:]
        records = answers + authority + additional
        ttl = min((r.ttl for r in records), default=0)
        kind: CacheType
        if rcode == RCODE_NOERROR and answers:
            kind = "success"
            ttl = min(ttl, self._max_ttl)
        else:
            kind = "denial"
            soas = [r for r in authority if r.rtype == TYPE_SOA]
            if not soas:
                return None
            ttl = min(ttl, *(_soa_minimum(msg, r) for r in soas), self._max_negative_ttl)
        ttl = max(ttl, self._min_ttl)
        if ttl <= 0:
            return None
        flags = _U16.unpack_from(data, 2)[0] & ~0x0510  # AA (not authoritative when cached), RD, CD
        ancount, nscount, arcount = struct.unpack_from(">HHH", data, 6)
        counts_opt = struct.pack(">HHHH", 1, ancount, nscount, arcount + 1)
        segments: list[bytes] = []
        start = HEADER + len(key)
        for r in records:
            segments.append(data[start : r.ttl_offset])
            start = r.ttl_offset + 4
        segments.append(data[start:])
        return _Entry(flags, data[4:12], counts_opt, tuple(segments), ttl, self._now(), kind)

    def collect(self) -> Iterable[Metric]:
        """Metric families with CoreDNS names (see the module docstring)."""
        server = self._server
        entries = GaugeMetricFamily(
            "coredns_cache_entries", "The number of elements in the cache.", labels=["server", "type"]
        )
        hits = CounterMetricFamily(
            "coredns_cache_hits", "The count of cache hits.", labels=["server", "type"]
        )
        evictions = CounterMetricFamily(
            "coredns_cache_evictions", "The count of cache evictions.", labels=["server", "type"]
        )
        for kind in _TYPES:
            entries.add_metric([server, kind], self._counts[kind])
            hits.add_metric([server, kind], self._hits[kind])
            evictions.add_metric([server, kind], self._evictions[kind])
        requests = CounterMetricFamily(
            "coredns_cache_requests", "The count of cache requests.", labels=["server"]
        )
        requests.add_metric([server], self._requests)
        misses = CounterMetricFamily("coredns_cache_misses", "The count of cache misses.", labels=["server"])
        misses.add_metric([server], self._misses)
        stale = CounterMetricFamily(
            "coredns_cache_served_stale",
            "The number of requests served from stale cache entries.",
            labels=["server"],
        )
        stale.add_metric([server], self._served_stale)
        return [entries, requests, hits, misses, stale, evictions]
