"""Requests name their mesh by a short tag, to members that take one. Pure.

Every request names its mesh (a node may share several meshes with a
member): the mesh id, 17-33 bytes (a mesh ``smegctl new-mesh`` makes is three
words and 13 characters of its founding hash), in every probe, push, offer
and sync step; a probe's whole body is little more. A request to a member
that takes tags names the mesh by :func:`mesh_tag` instead: ``~`` and 8
base32 characters of a hash of the id (mesh ids are lowercase letters,
digits and hyphens, so a tag is never an id). The receiver finds its mesh
by the tag among the meshes the caller is a member of; two such meshes with
one tag (2^-40 a pair) make it refuse the call, and a refusal makes the
caller name the mesh in full again.

Which members take tags: those whose ``Ack`` or ``Want`` named the mesh as
``~`` (``core.messages.IN_REPLY``, a word no mesh id can be; older nodes
name the mesh in full in their replies, and refuse a request naming an
unknown mesh). A member's word holds for the record version it had when it
gave it: a restart publishes a new version, and so a member that went back
to an older version of the software is called with the mesh id in full
until it answers again. A member that refused a request naming the tag is
called in full for the rest of that record version, whatever it says (the
calls in flight to it then are refused, no more).

The same memory holds a second word: which members are sent records as
deltas (``core.delta``). Every member is, until a push of deltas to it
fails at its record version (an older node refuses what it cannot decode);
an ``Ack`` of a push carrying ``delta.TAKES_DELTAS`` undoes that.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field, replace

from smegmesh.core.delta import TAKES_DELTAS, TAKES_SHORT
from smegmesh.core.engine import Call, Message
from smegmesh.core.messages import IN_REPLY, Ack, JoinRequest, Refusal
from smegmesh.core.offer import Want
from smegmesh.core.state import MeshState

__all__ = ["MAX_TAKERS", "TAG_PREFIX", "MeshTags", "mesh_tag", "record_version"]

TAG_PREFIX = "~"
#: base32 characters of the hash in a tag (40 bits: two meshes that share one,
#: made on purpose, cost about 2^40 hashes; see :meth:`MeshTags.note_reply`)
TAG_LEN = 8
#: Members remembered per word (taking tags, refusing them, refusing deltas;
#: past it the oldest word is forgotten: for tags, that member is called with
#: the mesh id in full until it answers again; for deltas, it gets them again).
MAX_TAKERS = 65_536


def mesh_tag(mesh_id: str) -> str:
    """The short name of ``mesh_id`` in requests to members that take it."""
    digest = hashlib.sha256(b"smegmesh/mesh-tag/v1\0" + mesh_id.encode()).digest()
    return TAG_PREFIX + base64.b32encode(digest).decode("ascii").lower()[:TAG_LEN]


@dataclass(slots=True)
class MeshTags:
    """One node's words in one mesh: its tag, who takes tags, who refused deltas."""

    mesh_id: str
    tag: str = field(init=False)
    #: member -> its record version when its reply said it takes tags
    _takers: dict[bytes, int] = field(default_factory=dict)
    #: member -> its record version when it refused a request naming the tag
    _refused: dict[bytes, int] = field(default_factory=dict)
    #: member -> its record version when a push of records as deltas to it
    #: failed (core.delta): an older node refuses what it cannot decode
    _no_deltas: dict[bytes, int] = field(default_factory=dict)
    #: member -> its record version when an ack of a push said it takes short
    #: names and times (``delta.TAKES_SHORT``)
    _short: dict[bytes, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tag = mesh_tag(self.mesh_id)

    def note_reply(self, member: bytes, reply: Message, version: int | None) -> None:
        """``member`` (at record ``version``) answered a call of ours with ``reply``."""
        if version is None:
            return
        if isinstance(reply, Ack | Want) and reply.mesh_id == IN_REPLY:
            if self._refused.get(member) != version:
                _bounded_put(self._takers, member, version)
        elif isinstance(reply, Refusal) and reply.mesh_id == self.tag:
            # it did not take our tag (a collision there; a refusal repeats the
            # mesh as named): in full for the rest of this version
            self._takers.pop(member, None)
            _bounded_put(self._refused, member, version)

    def note_push_ack(self, member: bytes, ack: Ack, version: int | None) -> None:
        """``member`` (at record ``version``) acknowledged a push of ours with ``ack``.

        The ack may say it takes deltas, and short names and times; one that
        does not (a node of before, or one that restarted as one) ends the latter.
        """
        if ack.probe_id & TAKES_DELTAS:
            self._no_deltas.pop(member, None)
        if ack.probe_id & TAKES_SHORT and version is not None:
            _bounded_put(self._short, member, version)
        else:
            self._short.pop(member, None)

    def note_delta_failed(self, member: bytes, version: int | None) -> None:
        """A push of deltas to ``member`` (at record ``version``) failed."""
        self._short.pop(member, None)
        if version is not None:
            _bounded_put(self._no_deltas, member, version)

    def takes_short(self, member: bytes, version: int | None) -> bool:
        """Whether ``member`` (at record ``version``) said it takes short names and times.

        It did if an ack of a push at this record version said so (a node of
        before neither says it nor could read one; after a restart, the next
        ack says it again).
        """
        return version is not None and self._short.get(member) == version

    def takes_deltas(self, member: bytes, version: int | None) -> bool:
        """Whether to send ``member`` (at record ``version``) records as deltas.

        Yes, unless a push of deltas to it failed at this record version and no
        ack of a push said since that it takes them (an older node refuses a
        push it cannot decode; a newer one says so in every ack).
        """
        return version is not None and self._no_deltas.get(member) != version

    def forget(self, member: bytes) -> None:
        """``member`` is gone from the mesh: nothing kept about it."""
        self._takers.pop(member, None)
        self._refused.pop(member, None)
        self._no_deltas.pop(member, None)
        self._short.pop(member, None)

    def named(self, call: Call, version: int | None) -> Call:
        """``call`` with the mesh named by tag, if its target (at ``version``) takes one."""
        msg = call.msg
        if (
            version is None
            or len(self.mesh_id) <= len(self.tag)  # a short id (a test's) is sent as it is
            or self._takers.get(call.to) != version
            or isinstance(msg, JoinRequest)
            or getattr(msg, "mesh_id", None) != self.mesh_id
        ):
            return call
        return replace(call, msg=replace(msg, mesh_id=self.tag))

    def names(self, mesh_id: object) -> bool:
        """Whether a request's ``mesh_id`` names this mesh, in full or by tag."""
        return mesh_id in (self.mesh_id, self.tag)

    def untagged(self, msg: Message) -> Message:
        """A request as if it named the mesh in full (the engine checks ids)."""
        if getattr(msg, "mesh_id", None) == self.tag:
            return replace(msg, mesh_id=self.mesh_id)
        return msg


def record_version(mesh: MeshState, key: bytes) -> int | None:
    """The version of ``key``'s record in ``mesh`` (None: none held): what a word is tied to."""
    rec = mesh.record(key)
    return None if rec is None else rec.version


def _bounded_put(d: dict[bytes, int], key: bytes, value: int) -> None:
    """``d[key] = value``, forgetting the oldest entry past :data:`MAX_TAKERS`."""
    d.pop(key, None)  # to the end: the latest word is forgotten last
    if len(d) >= MAX_TAKERS:
        del d[next(iter(d))]
    d[key] = value
