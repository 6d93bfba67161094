"""Mesh authority with real daemons (memory backend): evict, admins, invitations, policy.

``SMEG_EVICT_NODES=10 pytest tests/proc/test_authority_daemon.py -k propagation -s``
measures the eviction time in a 10-daemon mesh (issue 11 asks for <= 3 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from smegmesh.testbed.loopback import Cluster, create_mesh, wait_until
from smegmesh.testbed.measured import parse_metrics


@pytest.fixture(scope="module")
def quad() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.add(4, wait=False)
        c.wait_ready()
        yield c
        assert not c.tracebacks(), "tracebacks in smegd logs"
    finally:
        c.close()


def _one_line(r: object, *words: str) -> None:
    assert r.code == 1, r  # type: ignore[attr-defined]
    err = r.stderr  # type: ignore[attr-defined]
    assert err.startswith("smegctl: ") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err.lower(), (w, err)


def test_evict_admins_and_invites(quad: Cluster) -> None:
    owner, a, b, c = quad.daemons
    mesh = create_mesh(owner, [a, b, c])
    key_b = b.self_key(mesh)
    a.ctl("put-alias", "--meshid", mesh, "--alias", "alpha")
    b.ctl("put-alias", "--meshid", mesh, "--alias", "bravo")
    wait_until(lambda: owner.node(mesh, key_b) and owner.node(mesh, key_b)["alias"] == "bravo")
    detail = owner.mesh(mesh)
    assert detail["admins"] == [owner.self_key(mesh)] and detail["invite_policy"] == "peers"

    # A member that is not an admin gets a clear refusal.
    _one_line(a.ctl("evict", "--meshid", mesh, "bravo", code=None), "admin")
    # NODE forms: an unknown name and an ambiguous prefix are clear errors.
    _one_line(owner.ctl("evict", "--meshid", mesh, "nosuchnode", code=None), "no node", "matches")

    # The admin evicts: gone from every member, and it stays gone.
    t0 = time.monotonic()
    res = owner.ctl_json("evict", "--meshid", mesh, "bravo")
    assert res["evicted"] == [key_b]
    for d in (owner, a, c):
        wait_until(lambda d=d: key_b not in d.mesh_keys(mesh), 20, 0.05, f"{d.name} drops bravo")
    elapsed = time.monotonic() - t0
    print(f"\neviction reached 3 members in {elapsed:.2f} s")
    everywhere = owner.mesh(mesh)
    assert [e["public_key"] for e in everywhere["evicted"]] == [key_b]
    # A restart of the evicted node does not bring it back (it re-signs its record).
    assert b.stop() == 0  # a real restart: stop, then start on the same state
    b.restart()
    time.sleep(3)  # several gossip rounds: there is no event to wait for in an absence
    assert all(key_b not in d.mesh_keys(mesh) for d in (owner, a, c))

    # Admins: make `a` an admin; now it can evict, and list/revoke invitations.
    owner.ctl("admin", "add", "--meshid", mesh, "alpha")
    wait_until(lambda: a.mesh(mesh)["admins"] and a.self_key(mesh) in a.mesh(mesh)["admins"])
    tok = owner.ctl("invite", "--meshid", mesh, "--uses", "2").stdout.strip()
    invites = wait_until(lambda: [i for i in a.ctl_json("list-invites", "--meshid", mesh)])
    tid = next(i["token_id"] for i in invites if not i["revoked"] and i["used"] == 0)
    assert tok not in str(invites)  # ids, never secrets
    a.ctl("revoke-invite", "--meshid", mesh, tid[:10])
    wait_until(
        lambda: any(
            i["revoked"]
            for i in owner.ctl_json("list-invites", "--meshid", mesh)
            if i["token_id"] == tid
        )
    )


def test_client_cannot_invite_under_peers_policy() -> None:
    c = Cluster()
    try:
        owner, client = c.add(2)
        mesh = create_mesh(owner, [])
        tok = owner.ctl("invite", "--meshid", mesh).stdout.strip()
        client.ctl("join-mesh", "--token", tok, "--role", "client")
        r = client.ctl("invite", "--meshid", mesh, code=None)
        _one_line(r, "invite policy", "peers")
        # Only an admin changes the policy; then the client may invite.
        _one_line(client.ctl("set-invite-policy", "--meshid", mesh, "members", code=None), "admin")
        owner.ctl("set-invite-policy", "--meshid", mesh, "members")
        wait_until(lambda: client.mesh(mesh)["invite_policy"] == "members")
        assert client.ctl("invite", "--meshid", mesh).stdout.startswith("smeg1.")
        # An admin reserves an alias for the client: the owner, who had it, is
        # named in a warning (the reservation outranks it), and cannot take it again.
        owner.ctl("put-alias", "--meshid", mesh, "--alias", "db1")
        r = owner.ctl("reserve-alias", "--meshid", mesh, "db1", client.self_key(mesh)[:12])
        assert r.stdout.startswith("alias db1 of ") and "reserved for" in r.stdout, r
        mine = owner.self_key(mesh)[:12]
        said = "claims alias db1 too: the reservation outranks it in DNS"
        assert r.stderr == f"smegctl: warning: node {mine}… {said}\n", r
        _one_line(owner.ctl("put-alias", "--meshid", mesh, "--alias", "db1", code=None), "reserved")
        # A mesh created with --invite-policy members lets it.
        mesh2 = owner.ctl("new-mesh", "--invite-policy", "members").stdout.strip()
        tok2 = owner.ctl("invite", "--meshid", mesh2).stdout.strip()
        client.ctl("join-mesh", "--token", tok2, "--role", "client")
        assert client.ctl("invite", "--meshid", mesh2).stdout.startswith("smeg1.")
    finally:
        c.close()


def test_eviction_propagation() -> None:
    n = int(os.environ.get("SMEG_EVICT_NODES", "6"))
    c = Cluster()
    try:
        c.add(n, wait=False)
        c.wait_ready()
        owner, *rest = c.daemons
        mesh = create_mesh(owner, rest)
        victim = rest[-1]
        key = victim.self_key(mesh)
        t0 = time.monotonic()
        owner.ctl("evict", "--meshid", mesh, key[:10])
        seen: dict[str, float] = {}

        def gone() -> bool:
            for d in c.daemons[:-1]:
                if d.name not in seen and key not in d.mesh_keys(mesh):
                    seen[d.name] = time.monotonic() - t0
            return len(seen) == n - 1

        wait_until(gone, 30, 0.05, "every member drops the evicted node")
        print(f"\neviction in a {n}-daemon mesh: gone everywhere in {max(seen.values()):.2f} s")
        assert max(seen.values()) < 15
    finally:
        c.close()


def test_a_members_forged_items_are_dropped_and_logged_once() -> None:
    """Findings 1 and 2 against a real daemon: a member pushes a forged future prune of
    the owner and records of identities nobody admitted; the owner stays live, no
    sock puppet appears, and the log says so in one line, not one per item."""
    import asyncio

    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.invite import parse_token
    from smegmesh.core.messages import Ack
    from smegmesh.core.record import NodeRecord, Prune
    from smegmesh.core.sync import Push
    from smegmesh.core.wire import decode, encode
    from smegmesh.daemon.transport import RpcClient

    c = Cluster()
    try:
        owner, member = c.add(2)
        mesh = create_mesh(owner, [])
        tok = owner.ctl("invite", "--meshid", mesh).stdout.strip()
        member.ctl("join-mesh", "--token", tok)
        boot = parse_token(tok).bootstrap[0]
        seed = (member.dir / "state" / "identity.key").read_bytes()
        attacker = NodeIdentity.from_seed(seed)
        owner_key = owner.self_key(mesh)
        import base64

        now = int(time.time() * 1000)
        forged = Prune.create(
            attacker,
            mesh,
            target=base64.b64decode(owner_key),
            target_version=now + 9 * 60_000,
            now_ms=now,
        )
        puppets = [
            NodeRecord.create(NodeIdentity.generate(os.urandom), mesh, version=now, now_ms=now)
            for _ in range(10)
        ]

        async def attack() -> list[object]:
            rpc = RpcClient(attacker, timeout=5)
            try:
                replies = []
                for _ in range(20):
                    body = encode(Push(mesh, (forged, *puppets)))
                    replies.append(decode(await rpc.call(boot.control_endpoint, boot.tls_fp, body)))
                return replies
            finally:
                await rpc.close()

        replies = asyncio.run(attack())
        assert all(isinstance(r, Ack) for r in replies), replies  # a member's call is served
        keys = owner.mesh_keys(mesh)
        assert owner_key in keys and len(keys) == 2, keys  # no sock puppet, owner live
        detail = owner.mesh(mesh)
        assert next(n for n in detail["nodes"] if n["is_self"])["status"] == "live"
        lines = [ln for ln in owner.log().splitlines() if "dropped item" in ln]
        assert len(lines) == 1, lines  # 220 refused items: one line (then a summary a minute)
        assert "admission" in lines[0] or "target_record" in lines[0], lines
    finally:
        c.close()


def _owner_member_witness(c: Cluster, metrics: str) -> tuple[Any, Any, Any, str]:
    """Three daemons in a mesh the first founded; the third serves metrics at ``metrics``."""
    from smegmesh.testbed.loopback import wait_converged

    owner, member = c.add(2)
    (witness,) = c.add(1, extra={"metricsListen": metrics})
    mesh = create_mesh(owner, [])
    for d in (member, witness):
        tok = owner.ctl("invite", "--meshid", mesh).stdout.strip()
        d.ctl("join-mesh", "--token", tok)
    wait_converged([owner, member, witness], mesh)
    return owner, member, witness, mesh


def _call_as(who: Any, rec: Any, msg: object) -> object:
    """``msg`` sent as member ``who`` to the daemon of record ``rec``; its decoded reply."""
    import asyncio

    from smegmesh.core.wire import decode, encode
    from smegmesh.daemon.transport import RpcClient

    assert rec.control_endpoint is not None and rec.tls_fp is not None

    async def call() -> object:
        rpc = RpcClient(who, timeout=5)
        try:
            return decode(await rpc.call(rec.control_endpoint, rec.tls_fp, encode(msg)))
        finally:
            await rpc.close()

    return asyncio.run(call())


def test_a_member_pruning_a_live_member_is_named_in_the_log_and_counted() -> None:
    """Nineteenth session (docs/SECURITY.md, prunes of live members): a member that
    prunes a live member leaves a trace. The member refutes; a node that held it
    as pruned logs the pruner once (a WARNING, then a summary a minute) and
    counts it in ``smegd_prunes_refuted``."""
    import base64

    import httpx
    import msgpack

    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.messages import Ack
    from smegmesh.core.record import NodeRecord, Prune
    from smegmesh.core.sync import Push
    from smegmesh.core.wire import decode_item
    from smegmesh.testbed.loopback import free_port

    c = Cluster()
    try:
        metrics = f"127.0.0.1:{free_port('127.0.0.1')}"
        owner, member, witness, mesh = _owner_member_witness(c, metrics)
        attacker = NodeIdentity.from_seed((member.dir / "state" / "identity.key").read_bytes())
        owner_key = base64.b64decode(owner.self_key(mesh))
        owner.ctl("put-alias", "--meshid", mesh, "--alias", "boss")  # on disk when it answers
        saved = (owner.dir / "state" / "meshes" / f"{mesh}.state").read_bytes()
        records = [decode_item(o) for o in msgpack.unpackb(saved, raw=False)]
        recs = {r.wg_key: r for r in records if isinstance(r, NodeRecord)}
        target, mine = recs[owner_key], recs[attacker.wg_public_key]
        prune = Prune.create(
            attacker,
            mesh,
            now_ms=int(time.time() * 1000),
            target_record=target,
            target=owner_key,
            target_version=target.version,
            by_chain=mine.chain,
        )
        w = recs[base64.b64decode(witness.self_key(mesh))]
        assert isinstance(_call_as(attacker, w, Push(mesh, (prune,))), Ack)
        short = base64.b64encode(attacker.wg_public_key).decode()[:12]

        def named() -> bool:
            return any(
                "refuted prune by member " + short in ln and "WARNING" in ln
                for ln in witness.log().splitlines()
            )

        wait_until(named, 20, what="the witness names the pruner")
        port = metrics.rsplit(":", 1)[1]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert f'smegd_prunes_refuted_total{{mesh="{mesh}"}} 1.0' in text, text[-2000:]
        assert next(n for n in owner.mesh(mesh)["nodes"] if n["is_self"])["status"] == "live"
    finally:
        c.close()


def test_a_prune_pushed_by_reference_is_made_whole_by_a_real_daemon() -> None:
    """Twentieth session (core/elide.py): a push may carry a prune without its
    target's record and its pruner's chain, which every member holds. A real
    daemon puts them back from its own state, checks the prune (its signature
    covers them), takes it, and counts it in
    ``smegd_pushed_items_by_reference``; the owner, told, refutes."""
    import base64

    import httpx
    import msgpack

    from smegmesh.core.codec import Elided
    from smegmesh.core.elide import SETTLED_MS, elide
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.messages import Ack
    from smegmesh.core.record import NodeRecord, Prune
    from smegmesh.core.sync import Push
    from smegmesh.core.wire import decode_item, encode
    from smegmesh.testbed.loopback import free_port

    c = Cluster()
    try:
        metrics = f"127.0.0.1:{free_port('127.0.0.1')}"
        owner, member, witness, mesh = _owner_member_witness(c, metrics)
        pruner = NodeIdentity.from_seed((member.dir / "state" / "identity.key").read_bytes())
        owner_key = base64.b64decode(owner.self_key(mesh))
        saved = (witness.dir / "state" / "meshes" / f"{mesh}.state").read_bytes()
        records = [decode_item(o) for o in msgpack.unpackb(saved, raw=False)]
        recs = {r.wg_key: r for r in records if isinstance(r, NodeRecord)}
        now = int(time.time() * 1000)
        prune = Prune.create(
            pruner,
            mesh,
            now_ms=now,
            target_record=recs[owner_key],
            by_chain=recs[pruner.wg_public_key].chain,
        )
        short = elide(prune, now + SETTLED_MS + 60_000)  # as if all were long settled
        assert type(short) is Elided
        assert len(encode(Push(mesh, (short,)))) < len(encode(Push(mesh, (prune,)))) // 2
        w = recs[base64.b64decode(witness.self_key(mesh))]
        ack = _call_as(pruner, w, Push(mesh, (short,)))
        assert isinstance(ack, Ack) and ack.ok  # news: the prune was taken
        port = metrics.rsplit(":", 1)[1]

        def counted() -> bool:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            got = parse_metrics(text)
            # (the owner's refutation may come as a delta of its record: resolved too)
            resolved = f'smegd_pushed_items_by_reference_total{{mesh="{mesh}",outcome="resolved"}}'
            return (
                got.get(resolved, 0) >= 1
                and got.get(f'smegd_prunes_refuted_total{{mesh="{mesh}"}}') == 1.0
            )

        wait_until(counted, 20, what="the witness takes the prune and sees it refuted")
        assert next(n for n in owner.mesh(mesh)["nodes"] if n["is_self"])["status"] == "live"
    finally:
        c.close()
