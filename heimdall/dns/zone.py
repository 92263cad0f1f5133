"""The network's names as prepared DNS answers, and the few bytes of a query heimdall-dns reads.

Pure: no sockets, no Redis. :func:`build_zone` turns a state snapshot into a
:class:`Zone`, a dict from (lowercased wire-format name, type) to a prepared
answer body; answering a query is then :func:`parse_query` (the header and the
question, nothing else), one or two dict lookups and :func:`respond` (a packed
header, the question as the client sent it, the prepared body). Every owner
name in a body is a compression pointer to the question (offset 12), so one
body serves every spelling of the name (0x20 case randomization included).

Why not dnslib for the hot path: parsing and packing a full message per query
costs about ten times what the server does here (issue 9: a dnslib server
reaches ~0.1 of dnsmasq's rate on this machine). The encoder needed is small (A, PTR, SOA, one
OPT), so it is written out below; the unit tests check it against dnslib.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from heimdall import topology
from heimdall.state.records import Snapshot

TYPE_A, TYPE_NS, TYPE_SOA, TYPE_PTR, TYPE_AAAA, TYPE_OPT, TYPE_ANY = 1, 2, 6, 12, 28, 41, 255
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 1, 2, 3, 4

HEADER = struct.Struct("!HHHHHH")
_QR, _AA, _TC, _RD, _RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
_OPCODE = 0x7800
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength (after the owner name)
_TO_QUESTION = b"\xc0\x0c"  # compression pointer to the question's name
MAX_NAME = 255
MAX_UDP_PLAIN = 512  # a client without EDNS takes no more (RFC 1035)
EDNS_PAYLOAD = 1232  # what we advertise and the most we send over UDP (DNS flag day 2020)
# Our OPT record: root owner, our payload size, no extended rcode, version 0, no flags, no options.
OPT_RECORD = b"\x00" + _RR_FIXED.pack(TYPE_OPT, EDNS_PAYLOAD, 0, 0)


class Malformed(ValueError):
    """A query that cannot be understood: answered FORMERR (when it has a query header) or dropped."""


class Unsupported(ValueError):
    """A well-formed request for an operation we do not serve (not a QUERY): answered NOTIMP."""


@dataclass(frozen=True, slots=True)
class Query:
    """What heimdall-dns reads of a query: header fields, the question's bytes, EDNS."""

    id: int
    flags: int
    question: bytes  # the name, type and class exactly as received
    name: bytes  # wire-format name, lowercased
    qtype: int
    qclass: int
    edns_payload: int  # the client's advertised UDP payload size; 0 without EDNS


def parse_query(packet: bytes) -> Query:
    """The query's header and question. Raises Malformed (or Unsupported); never anything else."""
    if len(packet) < 12:
        raise Malformed("shorter than a DNS header")
    ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(packet)
    if flags & _QR:
        raise Malformed("a response, not a query")
    if flags & _OPCODE:
        raise Unsupported(f"opcode {(flags & _OPCODE) >> 11}")
    if qdcount != 1:
        raise Malformed(f"{qdcount} questions")
    end = 12
    size = len(packet)
    while True:
        if end >= size:
            raise Malformed("the question's name runs past the end")
        length = packet[end]
        if length == 0:
            end += 1
            break
        if length > 63:  # a compression pointer (or a reserved label type): never needed in a question
            raise Malformed("compressed or extended label in the question")
        end += length + 1
        if end - 12 > MAX_NAME - 1:
            raise Malformed("name longer than 255 bytes")
    if end + 4 > size:
        raise Malformed("question truncated")
    qtype, qclass = _TYPE_CLASS.unpack_from(packet, end)
    edns_payload = 0
    if arcount and not ancount and not nscount:
        edns_payload = _opt_payload(packet, end + 4)
    return Query(ident, flags, packet[12:end + 4], packet[12:end].lower(), qtype, qclass, edns_payload)


def _opt_payload(packet: bytes, offset: int) -> int:
    """The UDP payload size of an OPT record at ``offset`` (the first additional record), 0 if none."""
    if len(packet) < offset + 11 or packet[offset] != 0:
        return 0
    rtype, payload, _, rdlength = _RR_FIXED.unpack_from(packet, offset + 1)
    if rtype != TYPE_OPT:
        return 0
    if offset + 11 + rdlength > len(packet):
        raise Malformed("OPT record truncated")
    return max(payload, MAX_UDP_PLAIN)


@dataclass(frozen=True, slots=True)
class Prepared:
    """An answer without header and question: its rcode, section counts and the sections' bytes."""

    rcode: int
    answers: int
    authority: int
    body: bytes


def respond(query: Query, prepared: Prepared, limit: int | None) -> bytes:
    """The response to ``query``; over UDP (``limit`` = the size allowed) one too large is sent
    truncated (TC, no records) so the client asks again over TCP."""
    flags = _QR | _AA | _RA | (query.flags & _RD) | prepared.rcode
    opt = OPT_RECORD if query.edns_payload else b""
    answers, authority, body = prepared.answers, prepared.authority, prepared.body
    if limit is not None and 12 + len(query.question) + len(body) + len(opt) > limit:
        flags |= _TC
        answers = authority = 0
        body = b""
    return HEADER.pack(query.id, flags, 1, answers, authority, 1 if opt else 0) + query.question + body + opt


def udp_limit(query: Query) -> int:
    return min(query.edns_payload, EDNS_PAYLOAD) if query.edns_payload else MAX_UDP_PLAIN


def error_response(packet: bytes, rcode: int) -> bytes | None:
    """A header-only answer with ``rcode`` to whatever query ``packet`` is; None when it is not
    worth one (too short to have an ID, or itself a response: never answer those, no loops)."""
    if len(packet) < 12:
        return None
    ident, flags = struct.unpack_from("!HH", packet)
    if flags & _QR:
        return None
    return HEADER.pack(ident, _QR | (flags & (_OPCODE | _RD)) | _RA | rcode, 0, 0, 0, 0)


def rcode_response(query: Query, rcode: int) -> bytes:
    """An answer with ``rcode`` and no records to a parsed query (e.g. SERVFAIL when forwarding failed)."""
    flags = _QR | _RA | (query.flags & _RD) | rcode
    opt = OPT_RECORD if query.edns_payload else b""
    return HEADER.pack(query.id, flags, 1, 0, 0, 1 if opt else 0) + query.question + opt


def replace_id(packet: bytes, ident: int) -> bytes:
    return struct.pack("!H", ident) + packet[2:]


# -- encoding -----------------------------------------------------------------------------------
def encode_name(name: str) -> bytes:
    """``name`` (dotted, with or without the final dot) in wire format, lowercased."""
    labels = [label for label in name.lower().rstrip(".").split(".") if label]
    wire = b"".join(bytes([len(label)]) + label.encode("ascii") for label in labels) + b"\x00"
    if any(len(label) > 63 for label in labels) or len(wire) > MAX_NAME:
        raise ValueError(f"{name!r} is not a valid DNS name")
    return wire


def _record(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + _RR_FIXED.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def reverse_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer + "."


@dataclass
class Zone:
    """Prepared answers for the network's names; lookups for a parsed query."""

    domain: bytes = b"\x00"  # wire form of the domain
    exact: dict[tuple[bytes, int], Prepared] = field(default_factory=dict)
    nodata: dict[bytes, Prepared] = field(default_factory=dict)  # our names, for the types they lack
    nxdomain: Prepared | None = None
    names: int = 0  # how many names (each answered bare and in the domain)

    def lookup(self, query: Query) -> Prepared | None:
        """The prepared answer, or None when the name is not ours (it is forwarded)."""
        if query.qclass != CLASS_IN:
            return None
        prepared = self.exact.get((query.name, query.qtype))
        if prepared is not None:
            return prepared
        prepared = self.nodata.get(query.name)
        if prepared is not None:
            return prepared
        if self.nxdomain is not None and _below(query.name, self.domain):
            return self.nxdomain
        return None


def _below(name: bytes, domain: bytes) -> bool:
    """``name`` is ``domain`` or inside it, both in wire form (checked on label boundaries)."""
    offset = 0
    while offset < len(name):
        if name[offset:] == domain:
            return True
        offset += name[offset] + 1
    return False


def name_table(snapshot: Snapshot) -> dict[str, list[str]]:
    """Lowercased name -> IPv4 addresses: every usable node's tunnel address and every authorized peer's
    address. A node's name is never shared with a peer: a peer record holding one (written before
    names were checked) is left out."""
    table: dict[str, set[str]] = {}
    for node in snapshot.oldest_first():
        if topology.usable(node):
            table.setdefault(node.name.lower(), set()).add(node.tunnel_address)
    node_names = set(table)
    for peer in snapshot.peers.values():
        if peer.id in snapshot.authorized and peer.name.lower() not in node_names and topology.usable(peer):
            table.setdefault(peer.name.lower(), set()).add(peer.address)
    return {name: sorted(addresses, key=ipaddress.IPv4Address) for name, addresses in table.items()}


def build_zone(snapshot: Snapshot, domain: str, ttl: int) -> Zone:
    """The prepared answers for ``snapshot``'s names under ``domain``; the SOA serial is its revision."""
    domain_wire = encode_name(domain)
    soa_rdata = (encode_name(domain) + encode_name(f"hostmaster.{domain}")
                 + struct.pack("!IIIII", snapshot.rev & 0xFFFFFFFF, 3600, 600, 86400, ttl))
    soa = _record(domain_wire, TYPE_SOA, ttl, soa_rdata)
    negative = Prepared(NOERROR, 0, 1, soa)
    zone = Zone(domain=domain_wire, nxdomain=Prepared(NXDOMAIN, 0, 1, soa))
    zone.exact[(domain_wire, TYPE_SOA)] = Prepared(NOERROR, 1, 0, _record(_TO_QUESTION, TYPE_SOA, ttl, soa_rdata))
    zone.nodata[domain_wire] = negative
    table = name_table(snapshot)
    zone.names = len(table)
    for name, addresses in table.items():
        records = b"".join(_record(_TO_QUESTION, TYPE_A, ttl, ipaddress.IPv4Address(a).packed) for a in addresses)
        answer = Prepared(NOERROR, len(addresses), 0, records)
        for owner in (encode_name(name), encode_name(f"{name}.{domain}")):
            zone.exact[(owner, TYPE_A)] = zone.exact[(owner, TYPE_ANY)] = answer
            zone.nodata[owner] = negative
        target = encode_name(f"{name}.{domain}")
        for address in addresses:
            reverse = encode_name(reverse_name(address))
            zone.exact[(reverse, TYPE_PTR)] = Prepared(NOERROR, 1, 0, _record(_TO_QUESTION, TYPE_PTR, ttl, target))
            zone.nodata[reverse] = negative
    return zone
