"""Node-to-node transport: pinned TLS, per-call signatures, caller address."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

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
    TlsIdentityError,
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


def _damage(d: Path, case: str) -> None:
    TlsIdentity.load_or_create(d)
    if case == "empty key":
        (d / "tls.key").write_bytes(b"")
    elif case == "empty certificate":
        (d / "tls.crt").write_bytes(b"")
    elif case == "truncated key":
        (d / "tls.key").write_bytes((d / "tls.key").read_bytes()[:60])
    else:  # a pair mixed from two backups
        (d / "tls.crt").write_bytes(TlsIdentity.generate().cert_pem)


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("empty key", "tls.key"),
        ("truncated key", "tls.key"),
        ("empty certificate", "tls.crt"),
        ("mixed pair", "tls.crt"),
    ],
)
def test_a_damaged_tls_identity_is_named_and_left_alone(
    tmp_path: Path, case: str, named: str
) -> None:
    """tls.key and tls.crt were read without a check: grpc refused the pair, and the
    daemon said "cannot listen on ... (gRPCPort): address already in use"."""
    _damage(tmp_path, case)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TlsIdentityError) as ei:
        TlsIdentity.load_or_create(tmp_path)
    msg = str(ei.value)
    assert str(tmp_path / named) in msg and "\n" not in msg, msg
    assert "tls.key and tls.crt" in msg  # what to do about it
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_smegd_with_a_damaged_tls_key_says_which_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import shutil
    import tempfile

    from smegmesh.daemon.config import parse_config
    from smegmesh.daemon.process import _amain
    from smegmesh.testbed.ports import free_port

    root = Path(tempfile.mkdtemp(prefix="tl-", dir="/tmp"))  # a short socket path
    try:
        state = root / "state"
        state.mkdir(mode=0o700)
        (state / "tls.key").write_bytes(b"")
        (state / "tls.crt").write_bytes(b"")
        cfg = parse_config(
            {
                "stubWg": True,
                "stateDir": str(state),
                "controlSocket": str(root / "s.sock"),
                "gRPCPort": free_port(),
                "bindAddress": "::1",
            }
        )
        with caplog.at_level(logging.ERROR, logger="smegd"):
            assert asyncio.run(_amain(cfg)) == 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"{state / 'tls.key'}: " in line and "already in use" not in line, line
