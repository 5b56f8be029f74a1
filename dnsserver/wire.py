"""DNS messages on the wire: the query fast path and response assembly. Pure functions over bytes.

The hot path never builds message objects: :func:`parse_query` walks the 12-byte header and the question
and returns where the question ends, the lookup key (the question name lower-cased, with its type and
class) and the EDNS0 payload size. A response is prepared once per (key, EDNS or not) as wire bytes
(:class:`Prepared`, built with dnslib off the hot path); answering splices the query's ID, its RD bit
and its question (so the client's case is echoed, and compression pointers into the question stay valid:
a question has the same length in any case) into the prepared bytes.

Everything unusual (several questions, compression in the question, unknown EDNS options are fine but
a malformed OPT is not, truncated packets) is classified here too, so the server answers FORMERR,
REFUSED or NOTIMP, or drops what cannot be answered (a packet too short to carry an ID).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import OPCODE, QTYPE, RCODE, RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

HEADER = 12
MAX_NAME_LEN = 255
MAX_LABELS = 128
MAX_UDP_DEFAULT = 512  # without EDNS0 (RFC 1035)
EDNS_PAYLOAD = 1232  # the UDP size we advertise (DNS flag day 2020); answers fit the client's own size
T_OPT = 41
_FLAG_QR, _FLAG_AA, _FLAG_TC, _FLAG_RD = 0x8000, 0x0400, 0x0200, 0x0100
_OPT_RR = struct.pack("!BHHIH", 0, T_OPT, EDNS_PAYLOAD, 0, 0)  # root name, OPT, payload, ttl, no rdata


class QueryError(Exception):
    """A query that gets an error answer (``rcode``) or none (``rcode`` None: drop it)."""

    def __init__(self, rcode: int | None, reason: str) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason


@dataclass(slots=True)
class Query:
    qend: int  # offset just past the question (name, type, class)
    key: bytes  # lower-cased question name (wire form) + type + class: the answer table's key
    qtype: int
    qclass: int
    rd: bool
    edns: int  # the client's UDP payload size; 0 when it sent no OPT record
    opcode: int


def parse_query(data: bytes) -> Query:
    """Header and question of a query; raises :class:`QueryError` for anything we answer with an error."""
    if len(data) < HEADER:
        raise QueryError(None, "shorter than a header")
    flags = (data[2] << 8) | data[3]
    if flags & _FLAG_QR:
        raise QueryError(None, "a response, not a query")
    opcode = (flags >> 11) & 0xF
    qdcount = (data[4] << 8) | data[5]
    if opcode != OPCODE.QUERY:
        raise QueryError(RCODE.NOTIMP, f"opcode {opcode}")
    if qdcount != 1:
        raise QueryError(RCODE.REFUSED if qdcount > 1 else RCODE.FORMERR, f"{qdcount} questions")
    try:
        key = question_key(data)  # the question's walk, shared with the cache and the forwarder
    except WireError as e:
        raise QueryError(RCODE.FORMERR, str(e)) from None
    qend = HEADER + len(key)
    qtype = (key[-4] << 8) | key[-3]
    qclass = (key[-2] << 8) | key[-1]
    edns = 0
    if data[6:10] != b"\0\0\0\0":  # e.g. an IXFR carries the client's SOA in the authority section
        if (data[6] << 8) | data[7]:
            raise QueryError(RCODE.FORMERR, "answer records in a query")
        qend_records = _skip_records(data, qend, (data[8] << 8) | data[9])
    else:
        qend_records = qend
    arcount = (data[10] << 8) | data[11]
    if arcount:
        edns = _find_opt(data, qend_records, arcount)
    return Query(qend, key, qtype, qclass, bool(flags & _FLAG_RD), edns, opcode)


class WireError(ValueError):
    """A DNS message is malformed (too short, a bad name, counts that do not match the data)."""


def skip_name(msg: bytes, off: int) -> int:
    """Return the offset just past the (possibly compressed) domain name starting at ``off``."""
    end = len(msg)
    for _ in range(MAX_LABELS):
        if off >= end:
            raise WireError("name runs past the end of the message")
        length = msg[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            if off + 2 > end:
                raise WireError("compression pointer runs past the end of the message")
            return off + 2
        if length & 0xC0:
            raise WireError(f"unsupported label type 0x{length:02x}")
        off += 1 + length
    raise WireError("name has too many labels")


def question_key(msg: bytes) -> bytes:
    """The cache key of a message with exactly one question: lowercased QNAME wire + QTYPE + QCLASS.

    The question name must not be compressed (it never is: nothing precedes it to point at). The
    key's length equals the question section's length, which :meth:`ResponseCache.get` relies on.
    Raises :class:`WireError` if ``msg`` is not a single-question message.
    """
    if len(msg) < HEADER or msg[4] != 0 or msg[5] != 1:
        raise WireError("not a message with exactly one question")
    off = HEADER
    end = len(msg)
    while True:
        if off >= end:
            raise WireError("question name runs past the end of the message")
        length = msg[off]
        if length == 0:
            break
        if length > 63:
            raise WireError("compressed or invalid label in the question name")
        off += 1 + length
        if off - HEADER >= MAX_NAME_LEN:
            raise WireError("question name longer than 255 bytes")
    name_end = off + 1
    if name_end + 4 > end:
        raise WireError("question section runs past the end of the message")
    return bytes(msg[HEADER:name_end].lower() + msg[name_end : name_end + 4])


def _skip_name(data: bytes, i: int) -> int:
    try:
        return skip_name(data, i)
    except WireError as e:
        raise QueryError(RCODE.FORMERR, f"record: {e}") from None


def _skip_records(data: bytes, i: int, count: int) -> int:
    for _ in range(count):
        i = _skip_name(data, i)
        if i + 10 > len(data):
            raise QueryError(RCODE.FORMERR, "authority record runs past the packet")
        i += 10 + ((data[i + 8] << 8) | data[i + 9])
        if i > len(data):
            raise QueryError(RCODE.FORMERR, "authority record data runs past the packet")
    return i


def _find_opt(data: bytes, i: int, count: int) -> int:
    """The OPT record's payload size among the additional records (at least 512); 0 if there is none."""
    payload = 0
    for _ in range(count):
        i = _skip_name(data, i)
        if i + 10 > len(data):
            raise QueryError(RCODE.FORMERR, "additional record runs past the packet")
        rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", data, i)
        i += 10 + rdlen
        if i > len(data):
            raise QueryError(RCODE.FORMERR, "additional record data runs past the packet")
        if rtype == T_OPT:
            if payload:
                raise QueryError(RCODE.FORMERR, "two OPT records")
            payload = max(rclass, MAX_UDP_DEFAULT)
    return payload


@dataclass(slots=True)
class Prepared:
    """A response as wire bytes, less the ID and the question: ``headers[rd]`` are header bytes 2..12."""

    rcode: int
    headers: tuple[bytes, bytes]
    tail: bytes  # everything after the question
    truncated_headers: tuple[bytes, bytes]  # the same with TC set and no records (answer too big)
    truncated_tail: bytes

    def assemble(self, data: bytes, q: Query, limit: int) -> bytes:
        """The response to ``data``; ``limit`` is the UDP size (0 over TCP: no limit)."""
        rd = 1 if q.rd else 0
        out = data[:2] + self.headers[rd] + data[HEADER : q.qend] + self.tail
        if limit and len(out) > limit:
            return data[:2] + self.truncated_headers[rd] + data[HEADER : q.qend] + self.truncated_tail
        return out


def _header_bytes(flags: int, an: int, ns: int, ar: int) -> bytes:
    """Header bytes 2..12: flags and the four counts (one question)."""
    return struct.pack("!HHHHH", flags, 1, an, ns, ar)


def prepare(
    key: bytes,
    rcode: int,
    answer: list[RR],
    authority: list[RR],
    additional: list[RR],
    *,
    edns: bool,
    authoritative: bool = True,
    recursion_available: bool = False,
) -> Prepared:
    """Pack a response once; the question is ``key`` (lower-case: the client's question has its length)."""
    name_end = len(key) - 4
    qtype, qclass = struct.unpack_from("!HH", key, name_end)
    qname = DNSLabel(_labels(key[:name_end]))
    header = DNSHeader(id=0, qr=1, aa=int(authoritative), ra=int(recursion_available), rcode=rcode)
    record = DNSRecord(header, q=DNSQuestion(qname, qtype, qclass))
    for rr in answer:
        record.add_answer(rr)
    for rr in authority:
        record.add_auth(rr)
    for rr in additional:
        record.add_ar(rr)
    packed = record.pack()
    qend = HEADER + len(key)
    tail = packed[qend:]
    flags = struct.unpack_from("!H", packed, 2)[0] & ~_FLAG_RD  # dnslib sets RD; the query's is copied
    an, ns, ar = len(answer), len(authority), len(additional)
    opt = b""
    if edns:
        opt = _OPT_RR
        ar += 1
    headers = (_header_bytes(flags, an, ns, ar), _header_bytes(flags | _FLAG_RD, an, ns, ar))
    tflags = flags | _FLAG_TC
    tar = 1 if edns else 0
    truncated = (_header_bytes(tflags, 0, 0, tar), _header_bytes(tflags | _FLAG_RD, 0, 0, tar))
    return Prepared(rcode, headers, tail + opt, truncated, opt)


def _labels(wire_name: bytes) -> list[bytes]:
    labels = []
    i = 0
    while i < len(wire_name) and wire_name[i]:
        labels.append(wire_name[i + 1 : i + 1 + wire_name[i]])
        i += 1 + wire_name[i]
    return labels


def name_of(key: bytes) -> str:
    """The question name of a key as text, lower-case, with the final dot (``web.default.svc.x.``).

    Labels are decoded as Latin-1 so every byte string has a name; names with dots or other odd bytes
    inside a label match nothing in the cluster zone."""
    labels = _labels(key[:-4])
    return ".".join(label.decode("latin-1") for label in labels) + "."


def error_response(data: bytes, rcode: int) -> bytes:
    """A header-only answer with ``rcode`` (the question echoed when it can be found), for queries that
    do not parse far enough to be answered normally."""
    flags = (data[2] << 8 | data[3]) if len(data) >= 4 else 0
    out_flags = _FLAG_QR | (flags & (_FLAG_RD | 0x7800)) | (rcode & 0xF)
    end = _plain_question_end(data) if not flags & 0x7800 else 0  # other opcodes' sections differ
    question = data[HEADER:end] if end else b""
    return data[:2] + struct.pack("!HHHHH", out_flags, 1 if question else 0, 0, 0, 0) + question


def _plain_question_end(data: bytes) -> int:
    """Where a first question without compression ends, or 0 if there is none such."""
    if len(data) < HEADER or not (data[4] << 8 | data[5]):
        return 0
    i, n = HEADER, len(data)
    while i < n and 0 < data[i] <= 63:
        i += data[i] + 1
    if i >= n or data[i] != 0 or i + 5 > n or i - HEADER > 255:
        return 0
    return i + 5


def rcode_response(data: bytes, q: Query, rcode: int, *, ra: bool = False) -> bytes:
    """An answer with ``rcode`` and no records (REFUSED, SERVFAIL, ...), question echoed."""
    flags = _FLAG_QR | (_FLAG_RD if q.rd else 0) | (0x80 if ra else 0) | rcode
    ar = 1 if q.edns else 0
    return (
        data[:2]
        + struct.pack("!HHHHH", flags, 1, 0, 0, ar)
        + data[HEADER : q.qend]
        + (_OPT_RR if q.edns else b"")
    )


def qtype_name(qtype: int) -> str:
    """Type label for metrics, as CoreDNS: known types by name, others ``other``."""
    return _QTYPE_NAMES.get(qtype, "other")


_QTYPE_NAMES = {
    int(t): str(QTYPE[t])
    for t in (
        QTYPE.A,
        QTYPE.AAAA,
        QTYPE.NS,
        QTYPE.PTR,
        QTYPE.SOA,
        QTYPE.SRV,
        QTYPE.TXT,
        QTYPE.CNAME,
        QTYPE.MX,
        QTYPE.ANY,
        QTYPE.HTTPS,
        QTYPE.IXFR,
        QTYPE.AXFR,
        QTYPE.DS,
        QTYPE.DNSKEY,
        QTYPE.NAPTR,
        QTYPE.CAA,
    )
}

__all__ = [
    "RR",
    "Prepared",
    "Query",
    "QueryError",
    "error_response",
    "name_of",
    "parse_query",
    "prepare",
    "qtype_name",
    "rcode_response",
]
