"""The one host:port parser."""

from __future__ import annotations

import pytest

from smegmesh.core.endpoint import join_host_port, split_host_port


def test_forms() -> None:
    assert split_host_port("192.0.2.1:4000") == ("192.0.2.1", 4000)
    assert split_host_port("[2001:db8::1]:51820") == ("2001:db8::1", 51820)
    assert split_host_port("node.example:1") == ("node.example", 1)
    assert split_host_port("::1", default_port=53) == ("::1", 53)
    assert split_host_port("[::1]", default_port=53) == ("::1", 53)
    assert split_host_port("localhost", default_port=53) == ("localhost", 53)
    assert join_host_port("2001:db8::1", 4000) == "[2001:db8::1]:4000"
    assert join_host_port("192.0.2.1", 4000) == "192.0.2.1:4000"


@pytest.mark.parametrize(
    "bad", ["", "nohost", ":4000", "h:0", "h:99999", "h:x", "::1:80", "[zz]:80", "[::1]x", "[::1"]
)
def test_bad(bad: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(bad)
