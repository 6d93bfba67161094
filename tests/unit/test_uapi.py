"""UAPI text protocol formatting and parsing (no process needed)."""

from __future__ import annotations

import pytest

from smegmesh.core.wgconfig import PeerConfig
from smegmesh.core.wgdiff import (
    AddPeer,
    RemovePeer,
    SetListenPort,
    SetPrivateKey,
    UpdatePeer,
    public_key_of,
)
from smegmesh.wg.uapi import UapiError, format_set, parse_get

K1, K2 = b"\x01" * 32, b"\x02" * 32


def test_format_set() -> None:
    ops = [
        SetPrivateKey(b"\x03" * 32),
        SetListenPort(51820),
        RemovePeer(K2),
        AddPeer(PeerConfig(K1, "[2001:db8::1]:51820", frozenset({"fd00::1/128"}), 25)),
        UpdatePeer(K2, keepalive=0),
        SetListenPort(1),
    ]
    assert format_set(ops) == [
        "set=1\n"
        f"private_key={'03' * 32}\n"
        "listen_port=51820\n"
        f"public_key={K2.hex()}\nremove=true\n"
        f"public_key={K1.hex()}\nendpoint=[2001:db8::1]:51820\n"
        "persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=fd00::1/128\n"
        f"public_key={K2.hex()}\nupdate_only=true\npersistent_keepalive_interval=0\n"
        "\n",
        "set=1\nlisten_port=1\n\n",
    ]


def test_parse_get() -> None:
    priv = b"\x05" * 32
    text = (
        f"private_key={priv.hex()}\nlisten_port=51820\n"
        f"public_key={K1.hex()}\npreshared_key={'00' * 32}\nprotocol_version=1\n"
        "endpoint=[2001:db8::1]:51820\nlast_handshake_time_sec=1700000000\n"
        "last_handshake_time_nsec=500000000\ntx_bytes=10\nrx_bytes=20\n"
        "persistent_keepalive_interval=25\nallowed_ip=fd00::1/128\nallowed_ip=fd01::/64\n"
        f"public_key={K2.hex()}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
        "tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n"
        "errno=0\n\n"
    )
    st = parse_get("wgu0", text)
    assert st.private_key == priv and st.public_key == public_key_of(priv)
    assert st.listen_port == 51820
    p1 = st.peers[K1]
    assert p1.endpoint == "[2001:db8::1]:51820"
    assert p1.allowed_ips == frozenset({"fd00::1/128", "fd01::/64"})
    assert p1.keepalive == 25 and p1.rx_bytes == 20 and p1.tx_bytes == 10
    assert p1.last_handshake == pytest.approx(1700000000.5)
    p2 = st.peers[K2]
    assert p2.endpoint is None and p2.last_handshake is None and p2.allowed_ips == frozenset()
    with pytest.raises(UapiError):
        parse_get("wgu0", "errno=19\n\n")
