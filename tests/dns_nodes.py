"""Test nodes for the DNS tests: deterministic keys, real overlay addresses."""

from __future__ import annotations

import hashlib

from smegmesh.core.addressing import overlay_address
from smegmesh.dns import NodeName


def key(seed: str) -> bytes:
    return hashlib.sha256(seed.encode()).digest()


def node(mesh: str, alias: str, seed: str) -> NodeName:
    k = key(seed)
    return NodeName(mesh, alias, k, overlay_address(mesh, k))


FOX = "happy-fox-1a"
OWL = "blue-owl-2b"
WEB1 = node(FOX, "web", "k-web1")
WEB2 = node(OWL, "web", "k-web2")
DB = node(FOX, "db", "k-db")
ANON = node(FOX, "", "k-anon")
