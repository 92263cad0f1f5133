"""Prepared DNS answers and query parsing, checked with dnslib as an independent decoder."""
import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from heimdall.dns import zone as z
from heimdall.state.records import NodeRecord, PeerRecord, Snapshot

K = {n: (chr(ord("A") + n) * 43)[:43] + "=" for n in range(8)}

SNAP = Snapshot(
    rev=42,
    nodes={"n1": NodeRecord("n1", "router", K[1], "192.0.2.1:10100", "10.128.0.0/16"),
           "n2": NodeRecord("n2", "gw2", K[2], "192.0.2.2:10100", "10.129.0.0/16")},
    peers={"p1": PeerRecord("p1", "laptop", K[3], "10.51.0.1"),
           "p2": PeerRecord("p2", "laptop", K[4], "10.51.0.2"),  # a name shared by two peers
           "p3": PeerRecord("p3", "gone", K[5], "10.51.0.3"),  # deauthorized
           "p4": PeerRecord("p4", "Router", K[6], "10.51.0.4")},  # takes a node's name: left out
    authorized={"p1": K[3], "p2": K[4], "p4": K[6]},
)
ZONE = z.build_zone(SNAP, "heimdall", 5)


def ask(name, qtype="A", zone=ZONE, edns=False):
    query = DNSRecord.question(name, qtype)
    if edns:
        query.add_ar(EDNS0(udp_len=4096))
    packet = bytes(query.pack())
    parsed = z.parse_query(packet)
    prepared = zone.lookup(parsed)
    if prepared is None:
        return None
    reply = DNSRecord.parse(z.respond(parsed, prepared, z.udp_limit(parsed)))
    assert reply.header.id == query.header.id and reply.header.qr and reply.header.aa
    assert str(reply.q.qname) == str(query.q.qname) and reply.q.qtype == query.q.qtype
    return reply


def addresses(reply):
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A)


def test_node_and_peer_names_bare_and_in_the_domain():
    assert addresses(ask("router")) == addresses(ask("router.heimdall.")) == ["10.128.0.1"]
    assert addresses(ask("GW2.Heimdall")) == ["10.129.0.1"]
    assert addresses(ask("laptop.heimdall")) == ["10.51.0.1", "10.51.0.2"]
    reply = ask("gw2.heimdall")
    assert reply.rr[0].ttl == 5 and str(reply.rr[0].rname) == "gw2.heimdall."


def test_other_types_of_our_names_are_nodata_with_the_soa():
    for name in ("router", "laptop.heimdall", "heimdall"):
        reply = ask(name, "AAAA")
        assert reply.header.rcode == RCODE.NOERROR and not reply.rr
        assert [rr.rtype for rr in reply.auth] == [QTYPE.SOA] and str(reply.auth[0].rname) == "heimdall."
    soa = ask("heimdall", "SOA").rr[0]
    assert soa.rdata.times[0] == 42 and soa.rdata.times[-1] == 5


def test_unknown_names_in_the_domain_are_nxdomain_with_the_soa():
    for name in ("gone.heimdall", "x.router.heimdall", "nobody.heimdall"):
        reply = ask(name)
        assert reply.header.rcode == RCODE.NXDOMAIN and not reply.rr and reply.auth[0].rtype == QTYPE.SOA


def test_ptr_for_node_and_peer_addresses():
    assert str(ask("1.0.128.10.in-addr.arpa", "PTR").rr[0].rdata) == "router.heimdall."
    assert str(ask("2.0.51.10.in-addr.arpa", "PTR").rr[0].rdata) == "laptop.heimdall."
    assert ask("4.0.51.10.in-addr.arpa", "PTR") is None  # the impostor's address is not ours to name


def test_names_that_are_not_ours_are_forwarded():
    for name in ("example.org", "gone", "heimdallx", "1.1.168.192.in-addr.arpa"):
        assert ask(name) is None
    assert ZONE.lookup(z.parse_query(bytes(DNSRecord.question("router", "A", "CH").pack()))) is None


def test_edns_is_answered_with_an_opt_record():
    reply = ask("router", edns=True)
    assert [rr.rtype for rr in reply.ar] == [QTYPE.OPT] and reply.ar[0].rclass == z.EDNS_PAYLOAD


def test_an_answer_too_large_for_udp_is_truncated():
    peers = {f"p{i}": PeerRecord(f"p{i}", "ci", K[i % 8], f"10.51.{i // 250}.{i % 250 + 1}") for i in range(50)}
    zone = z.build_zone(Snapshot(peers=peers, authorized={p: "" for p in peers}), "heimdall", 5)
    plain = ask("ci", zone=zone)
    assert plain.header.tc and not plain.rr
    assert len(addresses(ask("ci", zone=zone, edns=True))) == 50
    parsed = z.parse_query(bytes(DNSRecord.question("ci").pack()))
    assert len(DNSRecord.parse(z.respond(parsed, zone.lookup(parsed), None)).rr) == 50  # TCP: no limit


def test_the_question_is_echoed_as_sent():
    packet = bytes(DNSRecord.question("RoUtEr.HeImDaLl").pack())
    parsed = z.parse_query(packet)
    assert z.respond(parsed, ZONE.lookup(parsed), 512)[12:12 + len(parsed.question)] == parsed.question


@pytest.mark.parametrize("packet", [
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06router",  # name runs past the end
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00",  # question truncated
    b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01",  # two questions
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer loop
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63
    + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x00\x00\x01\x00\x01",  # name over 255 bytes
])
def test_malformed_queries_get_formerr(packet):
    with pytest.raises(z.Malformed):
        z.parse_query(packet)
    reply = DNSRecord.parse(z.error_response(packet, z.FORMERR))
    assert reply.header.id == 0x1234 and reply.header.rcode == RCODE.FORMERR and reply.header.qr


def test_responses_and_runts_are_dropped():
    response = bytes(DNSRecord.question("router").reply().pack())
    with pytest.raises(z.Malformed):
        z.parse_query(response)
    assert z.error_response(response, z.FORMERR) is None
    assert z.error_response(b"\x00\x01", z.FORMERR) is None


def test_other_opcodes_are_not_implemented():
    packet = bytearray(DNSRecord.question("router").pack())
    packet[2] |= 0x28  # opcode 5 (UPDATE)
    with pytest.raises(z.Unsupported):
        z.parse_query(bytes(packet))
    assert DNSRecord.parse(z.error_response(bytes(packet), z.NOTIMP)).header.rcode == RCODE.NOTIMP


def test_servfail_keeps_the_question_and_the_id():
    query = DNSRecord.question("example.org")
    query.add_ar(EDNS0())
    reply = DNSRecord.parse(z.rcode_response(z.parse_query(bytes(query.pack())), z.SERVFAIL))
    assert reply.header.rcode == RCODE.SERVFAIL and reply.header.id == query.header.id
    assert str(reply.q.qname) == "example.org." and reply.ar[0].rtype == QTYPE.OPT


def test_replace_id():
    packet = bytes(DNSRecord.question("router").pack())
    assert struct.unpack("!H", z.replace_id(packet, 7)[:2]) == (7,) and z.replace_id(packet, 7)[2:] == packet[2:]
