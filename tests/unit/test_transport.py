"""Node-to-node transport: pinned TLS, per-call signatures, caller address."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from smegmesh.core.endpoint import split_host_port
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.messages import WhoAmI, YouAre
from smegmesh.core.wire import decode, encode
from smegmesh.daemon.transport import (
    FULL_METHOD,
    TLS_NAME,
    Refused,
    RpcClient,
    RpcError,
    RpcServer,
    TlsIdentity,
    caller_address,
    parse_grpc_peer,
)


def test_parse_grpc_peer_and_endpoints() -> None:
    assert parse_grpc_peer("ipv6:[2001:db8::5]:4000") == "2001:db8::5"
    assert parse_grpc_peer("ipv6:%5B::1%5D:4000") == "::1"  # gRPC escapes the brackets
    assert parse_grpc_peer("ipv4:192.0.2.7:1234") == "192.0.2.7"
    assert parse_grpc_peer("unix:/x") is None
    assert split_host_port("[2001:db8::1]:4000") == ("2001:db8::1", 4000)
    assert split_host_port("192.0.2.1:51820") == ("192.0.2.1", 51820)
    for bad in ("nohost", "[::1]:0", ":4000", "h:99999"):
        with pytest.raises(ValueError):
            split_host_port(bad)


def test_whoami_roundtrip_on_the_wire() -> None:
    assert decode(encode(YouAre("m1", "2001:db8::9"))) == YouAre("m1", "2001:db8::9")
    assert decode(encode(WhoAmI("m1"))) == WhoAmI("m1")


async def _serve(handler):  # type: ignore[no-untyped-def]
    tls = TlsIdentity.generate()
    server = RpcServer(tls, handler)
    port = await server.start("::1", 0)
    return server, tls, f"[::1]:{port}"


def test_authenticated_call_pinned_tls_and_refusals() -> None:
    seen: list[tuple[bytes, bytes, str | None]] = []

    async def handler(src: bytes, body: bytes) -> bytes:
        seen.append((src, body, caller_address.get()))
        if body == b"no":
            raise Refused("not you")
        return body[::-1]

    async def main() -> None:
        server, tls, ep = await _serve(handler)
        alice = NodeIdentity.generate(os.urandom)
        client = RpcClient(alice, timeout=3)
        try:
            assert await client.call(ep, tls.fingerprint, b"hello") == b"olleh"
            assert seen[-1][0] == alice.wg_public_key
            assert seen[-1][2] == "::1"
            with pytest.raises(RpcError, match="PERMISSION_DENIED"):
                await client.call(ep, tls.fingerprint, b"no")
            # A wrong pin: the client refuses to talk to that server at all.
            with pytest.raises(RpcError, match="unexpected TLS certificate"):
                await RpcClient(alice, timeout=3).call(ep, bytes(32), b"x")
            # No auth metadata, or a forged signature: UNAUTHENTICATED, handler not called.
            n = len(seen)
            creds = grpc.ssl_channel_credentials(root_certificates=tls.cert_pem)
            async with grpc.aio.secure_channel(
                ep, creds, options=[("grpc.ssl_target_name_override", TLS_NAME)]
            ) as ch:
                call = ch.unary_unary(FULL_METHOD)
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await call(b"hi", timeout=3)
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
                md = (
                    ("x-smeg-key", alice.wg_public_key.hex()),
                    ("x-smeg-sign", alice.sign_public_key.hex()),
                    ("x-smeg-ts", "1"),
                    ("x-smeg-sig", "00" * 64),
                )
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await call(b"hi", metadata=md, timeout=3)
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert len(seen) == n
            # The server survived all of it.
            assert await client.call(ep, tls.fingerprint, b"ab") == b"ba"
        finally:
            await client.close()
            await server.stop()

    asyncio.run(main())
