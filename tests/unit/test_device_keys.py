"""The public key given to ``add-device --public-key``: one WireGuard can handshake with."""

from __future__ import annotations

import base64

import pytest

from smegmesh.daemon.devices_wgquick import device_key
from smegmesh.daemon.service import ServiceError

# X25519 points of small order: WireGuard's Diffie-Hellman with them gives all
# zeros, so no handshake with the device can ever complete.
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("raw", LOW_ORDER)
def test_a_low_order_public_key_is_refused(raw: bytes) -> None:
    text = base64.b64encode(raw).decode()
    with pytest.raises(ServiceError) as ei:
        device_key(text, False)
    assert ei.value.code == "invalid_argument"
    assert ei.value.message.startswith("public_key: ")
    assert "WireGuard" in ei.value.message


def test_a_real_public_key_is_taken_and_a_generated_one_is_real() -> None:
    key, private = device_key(None, False)
    assert private is not None and len(key) == 32
    again, none = device_key(" " + base64.b64encode(key).decode() + "\n", False)
    assert (again, none) == (key, None)
