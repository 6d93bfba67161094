"""One human line per event (the INFO log line and ``smegctl watch``).

This module imports nothing heavy: ``smegctl watch`` uses :func:`describe`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from smegmesh.daemon.textsafe import printable

if TYPE_CHECKING:
    pass


def key_text(key: bytes) -> str:
    """A node key as the API writes it (standard base64, like ``wg`` and get-mesh)."""
    return base64.b64encode(key).decode("ascii")


def _name(ev: Mapping[str, Any], prefix: str = "member") -> str:
    alias = ev.get("alias")
    node = ev.get("node")
    who = alias or (f"{str(node)[:8]}…" if node else "?")
    addr = ev.get("detail", {}).get("address")
    return f"{prefix} {who} ({addr})" if addr else f"{prefix} {who}"


def _peer(alias: Any, key: Any) -> str:
    if alias:
        return str(alias)
    return f"{str(key)[:8]}…" if key else "none"


def _route(r: Any) -> str:
    if not isinstance(r, Mapping):
        return "none"
    via = _peer(r.get("gateway_alias"), r.get("gateway"))
    path = r.get("path") or []
    beyond = f" (then {' > '.join(map(str, path))})" if path else ""
    return f"via {via} in {r.get('mesh')}{beyond}"


#: Member events whose line is the member and one verb.
_MEMBER_VERBS = {
    "member.joined": "joined",
    "member.left": "left",
    "member.pruned": "pruned (unreachable)",
    "member.evicted": "evicted",
}


def _describe_member(t: str, ev: Mapping[str, Any], d: Mapping[str, Any]) -> str | None:
    """The line of a member event (``member.*``, ``client.reassigned``, ``tunnel.*``);
    None: not one."""
    if t in _MEMBER_VERBS:
        return f"{_name(ev)} {_MEMBER_VERBS[t]}"
    if t == "member.returned":
        return f"{_name(ev)} came back (was {d.get('was', 'gone')})"
    if t == "member.changed":
        parts = []
        for k in ("alias", "description", "services", "role"):
            if k in d and isinstance(d[k], Mapping):
                old, new = d[k].get("old"), d[k].get("new")
                if k == "services":
                    parts.append(f"services {_services(old)} → {_services(new)}")
                else:
                    parts.append(f"{k} {old or '-'!s} → {new or '-'!s}")
        return f"{_name(ev)} changed " + "; ".join(parts)
    if t == "client.reassigned":
        old = _peer(d.get("old_alias"), d.get("old"))
        new = _peer(d.get("new_alias"), d.get("new"))
        return f"{_name(ev, 'client')} re-assigned from {old} to {new}"
    if t == "tunnel.dead":
        new = _peer(d.get("new_alias"), d.get("new")) if d.get("new") else None
        return (
            f"no WireGuard handshake with {_name(ev, 'our peer')} for {d.get('silent_s', '?')} s "
            "(is its WireGuard port reachable over UDP?): "
            + (f"moved to {new}" if new else "no other peer to move to")
        )
    if t == "tunnel.blackhole":
        new = _peer(d.get("new_alias"), d.get("new")) if d.get("new") else None
        keys, aliases = list(d.get("members") or [])[:8], list(d.get("member_aliases") or [])
        names = [_peer(aliases[i] if i < len(aliases) else None, k) for i, k in enumerate(keys)]
        return (
            f"{_name(ev, 'our peer')} answers our pings and handshakes but forwarded none of "
            f"our probes to {len(keys)} members that answer directly ({', '.join(names)}): "
            + (f"moved to {new}" if new else "no other peer to move to")
        )
    return None


def _describe_body(ev: Mapping[str, Any]) -> str:
    t = str(ev.get("type"))
    d: Mapping[str, Any] = ev.get("detail") or {}
    member = _describe_member(t, ev, d)
    if member is not None:
        return member
    if t == "route.changed" and "count" in d and "destination" not in d:
        return f"{d['count']} routes changed"
    if t in ("route.changed", "exit.changed"):
        what = "exit" if t == "exit.changed" else f"route to {d.get('destination')}"
        return f"{what}: {_route(d.get('old'))} → {_route(d.get('new'))}"
    if t in ("wg.peer_added", "wg.peer_removed"):
        verb = "added" if t == "wg.peer_added" else "removed"
        if ev.get("node") is None and "count" in d:
            return f"{d['count']} WireGuard peers {verb}"
        return f"WireGuard peer {_name(ev, '').strip()} {verb}"
    if t in ("handshake.up", "handshake.down"):
        state = "established" if t == "handshake.up" else "lost"
        return f"handshake with {_name(ev, '').strip()} {state}"
    if t.startswith("mesh."):
        return _describe_mesh(t, ev, d)
    if t == "config.reloaded":
        changed = d.get("changed")
        where = f" from {d['path']}" if d.get("path") else ""
        if isinstance(changed, Sequence) and not isinstance(changed, str) and changed:
            return f"configuration reloaded{where} (changed: {', '.join(map(str, changed))})"
        return f"configuration reloaded{where} (changed: nothing that applies live)"
    if t == "stream.dropped":
        reason = f" ({d['reason']})" if d.get("reason") else ""
        return f"{d.get('missed', '?')} events dropped{reason}"
    return f"{t} {json.dumps(dict(d), sort_keys=True)}"


def _describe_mesh(t: str, ev: Mapping[str, Any], d: Mapping[str, Any]) -> str:
    if t == "mesh.joined":
        return f"mesh {d.get('how', 'joined')} ({d.get('nodes', '?')} nodes)"
    if t == "mesh.left":
        return "left the mesh"
    if t == "mesh.evicted":
        via = d.get("through")  # by cascade: with a node it was admitted through
        through = f" with {str(via)[:8]}…, through which it was admitted," if via else ""
        return (
            f"this node was evicted from the mesh by {_name(ev, 'admin')}{through}: no member "
            f"takes anything from it (leave it: smegctl leave-mesh --meshid {ev.get('mesh')})"
        )
    return f"{t} {json.dumps(dict(d), sort_keys=True)}"


def _services(s: Any) -> str:
    if not isinstance(s, Mapping) or not s:
        return "{}"
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(s.items())) + "}"


def describe(ev: Mapping[str, Any]) -> str:
    """One human line for an event (the JSON form): the log line and ``smegctl watch``."""
    body = _describe_body(ev)
    mesh = ev.get("mesh")
    return _one_line(f"mesh {mesh}: {body}" if mesh else body)


def _one_line(text: str) -> str:
    """``text`` with what is not printable escaped (``\\n``, ``\\x1b``): a member's
    description or service may hold any text, and the line goes to the log and a
    terminal (a newline forged log lines; an escape drove the operator's terminal)."""
    return printable(text)
