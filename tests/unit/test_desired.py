"""The desired WireGuard configuration of one mesh (core/desired.py)."""

from __future__ import annotations

import pytest

from smegmesh.core.desired import desired_config
from smegmesh.core.record import Role
from smegmesh.daemon.config import BaseConfiguration, MeshOptions, resolve_mesh_settings
from test_routing import key, rec  # unsigned records (desired_config checks no signature)

MESH = "m1"


def keepalive_of(role: Role, keepalive: int | None) -> dict[bytes, int]:
    """The keepalive of every WireGuard peer ``me`` (of ``role``) configures."""
    nodes = (("me", role), ("p1", Role.PEER), ("c1", Role.CLIENT))
    records = [rec(MESH, key(name), r) for name, r in nodes]
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
