"""Mesh ids and deterministic overlay addresses (SPEC section 2).

* mesh id: three short words + ``-`` + 4 random base32 (lowercase) characters,
  e.g. ``amber-falcon-river-k7q2``; valid ids are 1-63 chars of ``[a-z0-9-]``
  starting and ending with an alphanumeric character (a DNS label).
* mesh prefix: ``fd`` + first 6 bytes of SHA-256(mesh id, UTF-8) + ``01``, /64.
* interface id: first 8 bytes of SHA-256(32 raw key bytes), with the
  universal/local bit (0x02 of the first byte) cleared.
* address = prefix | interface id.

See docs/ADDRESSING.md for test vectors.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import re

__all__ = [
    "WORDS",
    "InvalidMeshId",
    "generate_mesh_id",
    "interface_id",
    "mesh_prefix",
    "node_id_prefix",
    "overlay_address",
    "shown",
    "validate_mesh_id",
]

# 256 short, distinct, lowercase English words (8 bits each; 24 + 20 bits per id).
_WORDLIST = """
    acorn alder amber anchor apple apricot arrow ash aspen atlas autumn axle
    badger bamboo banjo barley basil bay beacon bean bear beech bell berry
    birch bison blaze bloom bluff boat bolt bramble brass breeze brick brook
    cactus camel canal candle canyon cape cedar cello chalk cherry cider cliff
    clover cobalt comet copper coral cotton crane creek cricket crow crystal
    daisy dawn delta desert dew dingo dolphin dove dragon drift dune eagle
    ebony echo eel elder elk ember emerald falcon fern ferry fig finch fjord
    flame flint flute fog forest fox frost garnet gazelle gecko ginger glacier
    glade goose granite grape grove gull harbor hare hawk hazel heath heron
    hill holly honey horizon husky ibis iris iron island ivory ivy jade jasmine
    jay jetty juniper kelp kestrel kettle kiwi koala lagoon lake lantern larch
    lark laurel lava leaf lemon lichen lily lime linen lotus lynx magpie
    maple marble marsh meadow melon mesa mint mist moose moss moth mountain
    nectar nettle newt nutmeg oak oasis ocean olive onyx orbit orchid osprey
    otter owl oyster palm panda pebble pepper pine plum pond poppy prairie
    quail quartz quill rain raven reed reef ridge river robin rose ruby rye
    sage salmon sand sapphire shore silver sky slate sparrow spruce squid
    star stone storm stream summit swan thistle thorn thunder tide tiger
    timber topaz trout tulip tundra valley vine violet walnut wave willow
    wind wolf wren yak yarrow zebra zephyr bronze cobra cove dusk field glen
    lilac meteor nova orca pearl prism puffin rocket
    saffron sierra tango umber velvet walrus yew zinc
"""
WORDS: tuple[str, ...] = tuple(_WORDLIST.split())

_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_MESH_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class InvalidMeshId(ValueError):
    """A mesh id does not follow the mesh id rule."""


def generate_mesh_id(rand: random.Random) -> str:
    """A fresh human-friendly mesh id drawn from ``rand``.

    The daemon passes ``secrets.SystemRandom()``; tests and simulations a seeded one.
    """
    words = [rand.choice(WORDS) for _ in range(3)]
    suffix = "".join(rand.choice(_B32) for _ in range(4))
    return "-".join([*words, suffix])


def shown(value: object, limit: int = 72) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters.

    A user's 5,000-character mesh id is named, not echoed back whole.
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(str(value))} chars)"


def validate_mesh_id(s: str) -> str:
    """Return ``s`` if it is a valid mesh id, else raise :class:`InvalidMeshId`."""
    if not isinstance(s, str) or not s.isascii() or _MESH_ID_RE.fullmatch(s) is None:
        raise InvalidMeshId(
            f"invalid mesh id {shown(s)}: 1-63 chars of [a-z0-9-], starting and ending "
            "with a letter or digit"
        )
    return s


def mesh_prefix(mesh_id: str) -> ipaddress.IPv6Network:
    """The mesh's /64 ULA prefix."""
    h = hashlib.sha256(mesh_id.encode("utf-8")).digest()
    raw = b"\xfd" + h[:6] + b"\x01" + bytes(8)
    return ipaddress.IPv6Network((raw, 64))


def has_mesh_prefix_form(network: str) -> bool:
    """Whether ``network`` is a /64 of the form of a mesh prefix (``fd``, 6 bytes, ``01``).

    Mesh /64s (and ``::/0``) are all that routing ever sends between meshes
    (``core.routing``): what a member offers a device beyond them (the halves
    of a default route, IPv4 or LAN ranges) would take the device's traffic.
    """
    try:
        net = ipaddress.IPv6Network(network, strict=True)
    except ValueError:
        return False
    raw = net.network_address.packed
    return net.prefixlen == 64 and raw[0] == 0xFD and raw[7] == 0x01


def interface_id(wg_pub: bytes) -> bytes:
    """64-bit interface id of a node, from its raw 32-byte WireGuard public key."""
    if not isinstance(wg_pub, bytes) or len(wg_pub) != 32:
        raise ValueError("WireGuard public key must be 32 bytes")
    h = hashlib.sha256(wg_pub).digest()
    return bytes([h[0] & 0xFD]) + h[1:8]


def overlay_address(mesh_id: str, wg_pub: bytes) -> ipaddress.IPv6Address:
    """The node's overlay address in the mesh."""
    h = hashlib.sha256(mesh_id.encode("utf-8")).digest()
    return ipaddress.IPv6Address(b"\xfd" + h[:6] + b"\x01" + interface_id(wg_pub))


def node_id_prefix(wg_pub: bytes) -> str:
    """First 16 hex chars of SHA-256(key): a stable short name (DNS)."""
    if not isinstance(wg_pub, bytes) or len(wg_pub) != 32:
        raise ValueError("WireGuard public key must be 32 bytes")
    return hashlib.sha256(wg_pub).hexdigest()[:16]
