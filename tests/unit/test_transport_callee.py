"""A call names the node it is meant for (``x-smeg-to``), and no other node answers it.

Found by a review (twenty-sixth session): the stream authenticates the server
by the TLS fingerprint the callee's own record names, two records may name
the same one, and a ``Ping`` names no target. A member X published honest
T's endpoint (as a DNS name: always over the stream) and T's fingerprint, then
died: T answered every probe of X, and X was never pruned.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from daemon_inproc import running_daemon
from smegmesh.core.engine import ProbeCtx
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import Ack, Ping, WhoAmI, YouAre
from smegmesh.core.state import MeshState
from smegmesh.core.wire import decode, encode
from smegmesh.daemon.rpc_dgram import DatagramStats
from smegmesh.daemon.rpc_dgram_client import DatagramClient
from smegmesh.daemon.transport import RpcClient, RpcError, RpcServer, TlsIdentity
from smegmesh.testbed.founded import Mesh, ident, member_node


def test_a_daemon_answers_no_call_meant_for_another_key(root: Path) -> None:
    async def main() -> None:
        async with running_daemon(root) as d:
            ep, fp = f"[::1]:{d.rpc_server.port}", d.tls.fingerprint
            client = RpcClient(NodeIdentity.generate(os.urandom), timeout=5)
            body = encode(WhoAmI("mesh"))
            try:
                # meant for it, or not saying (a caller older than x-smeg-to): answered
                for to in (d.identity.wg_public_key, None):
                    assert isinstance(decode(await client.call(ep, fp, body, to=to)), YouAre)
                other = NodeIdentity.generate(os.urandom).wg_public_key
                with pytest.raises(RpcError, match="PERMISSION_DENIED"):
                    await client.call(ep, fp, body, to=other)
            finally:
                await client.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def _node(who: NodeIdentity, mesh_id: str, st: MeshState) -> MeshNode:
    return member_node(who, mesh_id, st, control_endpoint="[::1]:4000")


def test_a_probe_of_a_dead_member_is_not_answered_by_another_node() -> None:
    """The review's case end to end: P probes dead X, whose record names T's
    endpoint by name and T's fingerprint; the probe fails, P hears nothing of X."""

    async def main() -> None:
        m = Mesh()
        p, t, x = ident(2), ident(3), ident(4)
        for i in (p, t, x):
            m.admit(i)
        t_tls = TlsIdentity.generate()
        nodes: dict[bytes, MeshNode] = {}
        now = m.t + 10_000

        async def t_handler(src: bytes, body: bytes) -> bytes:  # as engine_io._on_rpc
            reply, _outs = nodes[t.wg_public_key].handle_request(src, decode(body), now)
            assert reply is not None
            return encode(reply)

        server = RpcServer(t_tls, t_handler, is_ours=lambda k: k == t.wg_public_key)
        port = await server.start("127.0.0.1", 0)
        recs = [
            m.record(p, control_endpoint="[::1]:1", tls_fp=bytes(32)),
            m.record(t, control_endpoint=f"127.0.0.1:{port}", tls_fp=t_tls.fingerprint),
            m.record(x, control_endpoint=f"localhost:{port}", tls_fp=t_tls.fingerprint),
        ]
        for who in (p, t):
            st = MeshState(m.mesh_id, admission=True)
            assert st.apply(m.founding, now)
            assert not st.apply_many(recs, now)[1]
            nodes[who.wg_public_key] = _node(who, m.mesh_id, st)
        xrec, pn = recs[2], nodes[p.wg_public_key]
        client = RpcClient(p, timeout=3, datagrams=DatagramClient(DatagramStats()))
        try:
            assert xrec.control_endpoint is not None and xrec.tls_fp is not None
            ping = encode(Ping(m.mesh_id, 7))
            try:
                reply = decode(
                    await client.call(xrec.control_endpoint, xrec.tls_fp, ping, to=x.wg_public_key)
                )
            except RpcError:
                reply = None
            if reply is not None:
                pn.handle_reply(x.wg_public_key, ProbeCtx(x.wg_public_key, 7), reply, now)
            assert not isinstance(reply, Ack), f"dead X answered for by T: {reply}"
            assert pn.last_heard(x.wg_public_key) is None
            # T itself is still probed as before
            trec = recs[1]
            assert trec.control_endpoint is not None and trec.tls_fp is not None
            got = await client.call(trec.control_endpoint, trec.tls_fp, ping, to=t.wg_public_key)
            assert isinstance(decode(got), Ack)
        finally:
            await client.close()
            await server.stop(0)

    asyncio.run(asyncio.wait_for(main(), 30))
