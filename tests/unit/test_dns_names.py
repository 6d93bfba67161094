"""Pure resolution layer: smegmesh.dns.names."""

from __future__ import annotations

import hashlib
import ipaddress
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dns_nodes import ANON, DB, FOX, OWL, WEB1, WEB2, key, node
from hypo import examples
from smegmesh.core import addressing
from smegmesh.core.addressing import overlay_address
from smegmesh.dns.names import (
    AAAA,
    ANY,
    NS,
    NXDOMAIN,
    PTR,
    REFUSED,
    SOA,
    TXT,
    NameView,
    NodeName,
    address_text,
    node_id_prefix,
    parse_address,
    resolve,
)

A_TYPE = 1
MX = 15


DB_OWL = node(OWL, "db", "k-db")  # same node as DB, other mesh
BAD_ALIAS = node(OWL, "has space", "k-bad")


@pytest.fixture(scope="module")
def view() -> NameView:
    return NameView([WEB1, DB, ANON, WEB2, DB_OWL, BAD_ALIAS], serial=42)


def aaaa(view: NameView, name: str) -> set[str]:
    ans = resolve(view, name, AAAA)
    assert ans.rcode == 0, (name, ans)
    return {r.data for r in ans.answer if r.rtype == AAAA}


def test_node_id_prefix_is_sha256_of_key() -> None:
    k = key("x")
    assert node_id_prefix(k) == hashlib.sha256(k).hexdigest()[:16]


@given(st.binary(min_size=32, max_size=32))
def test_node_id_prefix_matches_core(k: bytes) -> None:
    """The DNS node-id label is the ``node_id`` the API and the CLI show (core)."""
    assert node_id_prefix(k) == addressing.node_id_prefix(k)


def test_alias_meshid(view: NameView) -> None:
    ans = resolve(view, "db.happy-fox-1a.smeg.", AAAA, ttl=7)
    assert ans.rcode == 0 and ans.authoritative
    assert [(r.name, r.rtype, r.ttl, r.data) for r in ans.answer] == [
        ("db.happy-fox-1a.smeg.", AAAA, 7, str(DB.address))
    ]
    assert aaaa(view, "web.blue-owl-2b.smeg") == {str(WEB2.address)}


def test_prototype_order(view: NameView) -> None:
    assert aaaa(view, "happy-fox-1a.db.smeg.") == {str(DB.address)}
    assert aaaa(view, "blue-owl-2b.web.smeg.") == {str(WEB2.address)}
    nid = node_id_prefix(ANON.wg_key)
    assert aaaa(view, f"{FOX}.{nid}.smeg.") == {str(ANON.address)}


def test_nodeid_forms(view: NameView) -> None:
    for n in (WEB1, ANON, WEB2, BAD_ALIAS):
        nid = node_id_prefix(n.wg_key)
        assert aaaa(view, f"{nid}.{n.mesh_id}.smeg.") == {str(n.address)}
    # NODEID.smeg. gives every address of the node.
    assert aaaa(view, f"{node_id_prefix(DB.wg_key)}.smeg.") == {
        str(DB.address),
        str(DB_OWL.address),
    }


def test_case_insensitive_and_trailing_dot(view: NameView) -> None:
    assert aaaa(view, "DB.Happy-Fox-1A.SMEG") == {str(DB.address)}
    nid = node_id_prefix(ANON.wg_key).upper()
    assert aaaa(view, f"{nid}.{FOX.upper()}.smeg.") == {str(ANON.address)}


def test_short_alias_same_node_in_two_meshes_returns_all(view: NameView) -> None:
    assert aaaa(view, "db.smeg.") == {str(DB.address), str(DB_OWL.address)}


def test_ambiguous_short_alias_is_nodata_with_txt_hint(view: NameView) -> None:
    ans = resolve(view, "web.smeg.", AAAA)
    assert ans.rcode == 0 and ans.answer == ()
    assert [r.rtype for r in ans.authority] == [SOA]
    txt = resolve(view, "web.smeg.", TXT)
    assert len(txt.answer) == 1
    text = txt.answer[0].data
    assert "ambiguous" in text
    assert f"{node_id_prefix(WEB1.wg_key)}.{FOX}.smeg." in text
    assert f"{node_id_prefix(WEB2.wg_key)}.{OWL}.smeg." in text
    # The qualified names still work, and so does the name below it.
    assert aaaa(view, "web.happy-fox-1a.smeg.") == {str(WEB1.address)}
    assert aaaa(view, "happy-fox-1a.web.smeg.") == {str(WEB1.address)}


def test_ambiguous_within_one_mesh() -> None:
    a, b = node(FOX, "twin", "k-a"), node(FOX, "twin", "k-b")
    v = NameView([a, b])
    ans = resolve(v, "twin.happy-fox-1a.smeg.", AAAA)
    assert ans.rcode == 0 and ans.answer == ()
    assert aaaa(v, f"{node_id_prefix(a.wg_key)}.{FOX}.smeg.") == {str(a.address)}


def test_nodata_for_other_types(view: NameView) -> None:
    for qtype in (A_TYPE, MX, TXT, PTR):
        ans = resolve(view, "db.happy-fox-1a.smeg.", qtype)
        assert ans.rcode == 0 and ans.answer == ()
        assert len(ans.authority) == 1
        soa = ans.authority[0]
        assert soa.rtype == SOA and soa.name == "smeg."
        assert soa.data.split()[2] == "42"  # serial


def test_mesh_id_is_an_empty_non_terminal(view: NameView) -> None:
    ans = resolve(view, "happy-fox-1a.smeg.", AAAA)
    assert ans.rcode == 0 and ans.answer == () and ans.authority


def test_nxdomain(view: NameView) -> None:
    for name in ("nope.smeg.", "nope.happy-fox-1a.smeg.", "a.db.happy-fox-1a.smeg.", "x.y.z.smeg"):
        ans = resolve(view, name, AAAA)
        assert ans.rcode == NXDOMAIN, name
        assert [r.rtype for r in ans.authority] == [SOA]


def test_outside_zone_refused(view: NameView) -> None:
    for name in ("example.com.", "smeg.example.", "com.", ".", "1.0.0.127.in-addr.arpa."):
        ans = resolve(view, name, AAAA)
        assert ans.rcode == REFUSED and not ans.authoritative, name


def test_apex_soa_ns(view: NameView) -> None:
    soa = resolve(view, "smeg.", SOA)
    assert [r.rtype for r in soa.answer] == [SOA]
    assert soa.answer[0].data.startswith("smeg. hostmaster.smeg. 42 ")
    ns = resolve(view, "SMEG", NS)
    assert [(r.rtype, r.data) for r in ns.answer] == [(NS, "smeg.")]
    anyq = resolve(view, "smeg.", ANY)
    assert {r.rtype for r in anyq.answer} == {SOA, NS}
    assert resolve(view, "smeg.", AAAA).answer == ()


def rev(a: ipaddress.IPv6Address) -> str:
    return a.reverse_pointer + "."


def test_ptr(view: NameView) -> None:
    ans = resolve(view, rev(DB.address), PTR)
    assert [r.data for r in ans.answer] == ["db.happy-fox-1a.smeg."]
    ans = resolve(view, rev(ANON.address).upper(), PTR)
    assert [r.data for r in ans.answer] == [f"{node_id_prefix(ANON.wg_key)}.{FOX}.smeg."]
    # An alias that is not a DNS label falls back to the node id.
    ans = resolve(view, rev(BAD_ALIAS.address), PTR)
    assert [r.data for r in ans.answer] == [f"{node_id_prefix(BAD_ALIAS.wg_key)}.{OWL}.smeg."]
    # Ambiguous-in-the-mesh alias is not used either.
    a, b = node(FOX, "twin", "k-a"), node(FOX, "twin", "k-b")
    ans = resolve(NameView([a, b]), rev(a.address), PTR)
    assert [r.data for r in ans.answer] == [f"{node_id_prefix(a.wg_key)}.{FOX}.smeg."]
    # AAAA on a reverse name: NODATA.
    assert resolve(view, rev(DB.address), AAAA).answer == ()


def test_ptr_unknown(view: NameView) -> None:
    unknown = ipaddress.IPv6Address(int(DB.address) ^ 1)
    ans = resolve(view, rev(unknown), PTR)
    assert ans.rcode == NXDOMAIN
    assert ans.authority[0].name == rev(DB.address)[32:]
    partial = rev(DB.address)[8:]  # 28 nibbles, inside the mesh /64
    assert resolve(view, partial, PTR).rcode == 0
    assert resolve(view, rev(DB.address)[32:], SOA).answer[0].rtype == SOA
    foreign = ipaddress.IPv6Address("fd00::1")
    assert resolve(view, rev(foreign), PTR).rcode == REFUSED


def test_invalid_alias_not_published(view: NameView) -> None:
    assert resolve(view, "has space.smeg.", AAAA).rcode == NXDOMAIN


def test_nodeid_beats_alias() -> None:
    a = node(FOX, "", "k-a")
    nid = node_id_prefix(a.wg_key)
    impostor = node(FOX, nid, "k-impostor")
    v = NameView([impostor, a])
    assert aaaa(v, f"{nid}.{FOX}.smeg.") == {str(a.address)}
    assert aaaa(v, f"{nid}.smeg.") == {str(a.address)}


def test_duplicate_entries_last_wins() -> None:
    old = node(FOX, "old", "k")
    new = node(FOX, "new", "k")
    v = NameView([old, new])
    assert len(v.nodes) == 1
    assert resolve(v, "old.happy-fox-1a.smeg.", AAAA).rcode == NXDOMAIN
    assert aaaa(v, "new.happy-fox-1a.smeg.") == {str(new.address)}


def test_lookup_cost_does_not_grow_with_view() -> None:
    """A lookup in a 3,000-node view costs what it costs in a 30-node view.

    Measured as a ratio against the small view in the same run (best of five),
    so a loaded machine slows both alike.
    """

    def view(n: int) -> tuple[NameView, list[str]]:
        nodes = [node(f"mesh-{i % 7}", f"host-{i}", f"k{i}") for i in range(n)]
        v = NameView(nodes)
        assert len(v) > 3 * n
        return v, [f"host-{i}.mesh-{i % 7}.smeg." for i in range(n)]

    def per_query(v: NameView, names: list[str]) -> float:
        picked = [names[i % len(names)] for i in range(0, 3000, 3)]
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for name in picked:
                assert resolve(v, name, AAAA).answer
            best = min(best, (time.perf_counter() - t0) / len(picked))
        return best

    small, big = view(30), view(3000)
    ratio = per_query(*big) / per_query(*small)
    assert ratio < 3.0, f"a lookup in 3,000 nodes costs {ratio:.1f}x one in 30"


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
mesh_id = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@settings(max_examples=examples(60), deadline=None)
@given(
    st.lists(
        st.tuples(mesh_id, st.one_of(st.just(""), label), st.binary(min_size=32, max_size=32)),
        max_size=20,
    )
)
def test_every_node_resolves_and_ptr_round_trips(entries: list[tuple[str, str, bytes]]) -> None:
    nodes = [NodeName(m, al, k, overlay_address(m, k)) for m, al, k in entries]
    v = NameView(nodes)
    for n in v.nodes:
        assert str(n.address) in aaaa(v, f"{node_id_prefix(n.wg_key)}.{n.mesh_id}.smeg.")
        ptr = resolve(v, rev(n.address), PTR)
        assert ptr.answer, n
        for r in ptr.answer:
            assert str(n.address) in aaaa(v, r.data)


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=300), st.integers(min_value=0, max_value=65535))
def test_resolve_never_raises(qname: str, qtype: int) -> None:
    v = NameView([WEB1, DB, ANON])
    ans = resolve(v, qname, qtype)
    assert ans.rcode in (0, NXDOMAIN, REFUSED)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.integers(0, 2**128 - 1),
        st.integers(0, 2**64 - 1),  # leading zeros, the IPv4-compatible forms
        st.integers(0, 2**32 - 1).map(lambda v: (0xFFFF << 32) | v),  # IPv4-mapped
        st.lists(st.sampled_from([0, 1, 0xFFFF, 0xFD00]), min_size=8, max_size=8).map(
            lambda ws: sum(w << (16 * i) for i, w in enumerate(ws))  # runs of zero words
        ),
    )
)
def test_address_text_and_parse_equal_ipaddress(value: int) -> None:
    """The names are built with C's inet_ntop / inet_pton (a view holds one
    address per node: ~2 µs each instead of ~11-13): the same text and the
    same address as the ipaddress module gives, for every form."""
    a = ipaddress.IPv6Address(value)
    assert address_text(a) == str(a)
    assert parse_address(str(a)) == a
    assert parse_address(a.exploded.upper()) == a


def test_parse_address_errors_as_ipaddress_does() -> None:
    for bad in ("", "fd00::1::2", "1.2.3.4", "fd00::g", "fd00::1%"):
        with pytest.raises(ValueError):
            parse_address(bad)
    assert parse_address("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1%eth0")
