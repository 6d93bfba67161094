"""The desired WireGuard configuration of one mesh (core/desired.py)."""

from __future__ import annotations

import hashlib

import pytest

from smegmesh.core.addressing import overlay_address
from smegmesh.core.desired import desired_config
from smegmesh.core.record import NodeRecord, Role
from smegmesh.daemon.config import BaseConfiguration, MeshOptions, resolve_mesh_settings

MESH = "m1"


def key(name: str) -> bytes:
    return hashlib.sha256(b"node:" + name.encode()).digest()


def rec(k: bytes, role: Role) -> NodeRecord:
    """An unsigned record (desired_config never checks signatures)."""
    return NodeRecord(
        mesh_id=MESH,
        wg_key=k,
        sign_key=bytes(32),
        version=1,
        timestamp_ms=0,
        role=role,
        wg_endpoint="192.0.2.1:51820" if role == Role.PEER else None,
        control_endpoint=None,
        tls_fp=None,
        address=str(overlay_address(MESH, k)),
        alias="",
        description="",
        services=(),
        routes=(),
        assigned_peer=None,
        invites=(),
        admitted=(),
        left=False,
        chain=(),
        proofs=(),
        signature=b"",
    )


def keepalive_of(role: Role, keepalive: int | None) -> dict[bytes, int]:
    """The keepalive of every WireGuard peer ``me`` (of ``role``) configures."""
    records = [rec(key("me"), role), rec(key("p1"), Role.PEER), rec(key("c1"), Role.CLIENT)]
    kwargs = {} if keepalive is None else {"keepalive": keepalive}
    iface, _ = desired_config(
        mesh_id=MESH,
        self_key=key("me"),
        private_key=bytes(32),
        role=role,
        listen_port=None,
        records=records,
        ifname="smegtest",
        **kwargs,
    )
    return {k: p.keepalive for k, p in iface.peers.items()}


def test_client_keepalive_zero_is_off() -> None:
    """Issue 13: a client's documented ``keepAliveWg: 0`` ("0 = off") stays off."""
    assert keepalive_of(Role.CLIENT, 0) == {key("p1"): 0}


@pytest.mark.parametrize(("role", "expected"), [(Role.CLIENT, 25), (Role.PEER, 0)])
def test_keepalive_default_by_role(role: Role, expected: int) -> None:
    assert set(keepalive_of(role, None).values()) == {expected}


def test_explicit_keepalive_applies() -> None:
    assert keepalive_of(Role.CLIENT, 7) == {key("p1"): 7}
    assert keepalive_of(Role.PEER, 7)[key("p1")] == 7


@pytest.mark.parametrize(
    ("config", "opts", "expected"),
    [
        ({"role": "client", "keepAliveWg": 0}, None, 0),
        ({"role": "client"}, None, 25),
        ({"role": "peer"}, MeshOptions(role="client", keepalive=0), 0),
        ({"role": "client", "keepAliveWg": 30}, None, 30),
    ],
)
def test_config_keepalive_reaches_client_peer(
    config: dict[str, object], opts: MeshOptions | None, expected: int
) -> None:
    """The per-mesh keepalive the daemon resolves is the one WireGuard gets."""
    s = resolve_mesh_settings(BaseConfiguration.model_validate(config), opts)
    assert keepalive_of(Role(s.role), s.keepalive) == {key("p1"): expected}
