"""What the daemon's port knows of the engine's answers (daemon/engineport.py), shared by
smegd (daemon/engine_io.py), the datagram client (daemon/rpc_dgram.py) and the swarm."""

from __future__ import annotations

import pytest

from smegmesh.core.messages import WhoAmI, YouAre
from smegmesh.core.wire import PROTOCOL, decode
from smegmesh.daemon.engineport import answer_shows_caller_known, answer_who_am_i
from smegmesh.daemon.rpc_common import Refused


def test_only_an_answer_a_stranger_cannot_get_shows_the_caller_is_known() -> None:
    names = [c.cls.__name__ for c in PROTOCOL.codecs()]
    for request in names:
        assert not answer_shows_caller_known(request, "Refusal"), request
    assert not answer_shows_caller_known("Push", "Ack")  # a just-admitted node's own record
    assert not answer_shows_caller_known("JoinRequest", "JoinReply")
    assert answer_shows_caller_known("Ping", "Ack")
    assert answer_shows_caller_known("SyncStart", "SyncEnd")


def test_who_am_i_is_answered_with_the_address_seen_or_refused() -> None:
    assert decode(answer_who_am_i(WhoAmI("m1"), "2001:db8::9")) == YouAre("m1", "2001:db8::9")
    with pytest.raises(Refused, match="address unknown"):
        answer_who_am_i(WhoAmI("m1"), None)
