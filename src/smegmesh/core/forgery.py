"""A forgery ends the checking of its message. Pure.

Signatures are checked only for items that would change the state, but a
member can make any number of those up: newer versions of other members'
records with a made-up signature. Each cost a signature check (~0.1 ms): a
1 MiB push of 2,300 of them held the event loop for a quarter of a second,
and a member may have 16 calls in flight. An honest member never sends a
forgery (it checked what it holds before it kept it), and a forger could
leave the valid items of its message out anyway: so once one signature of a
message fails, the rest of that message is not checked and is dropped.

:class:`ForgeryStop` wraps a batch verifier for the items of one message
(``MeshState.apply_many``): it checks in chunks of 1, 2, 4, ... up to
:data:`CHUNK` signatures: a message of forgeries costs one check, a
forgery behind ``n`` valid new items at most ``min(n + 1, CHUNK)`` more,
and a batch verifier working in parallel still gets batches (a page of 3,000
new records from a join: about 20 calls).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["CHUNK", "NOT_CHECKED", "ForgeryStop"]

Job = tuple[bytes, bytes, bytes]  # (signing key, signed bytes, signature)

#: Most signatures checked in one go once the checks of a message went well:
#: what a forgery after that many valid news items costs at most (~25 ms).
CHUNK = 256
#: The reason given for the items of a message left unchecked.
NOT_CHECKED = "not checked: an earlier signature of the same message was forged"


class ForgeryStop:
    """A verifier (``jobs -> oks``) that stops checking at the first failure."""

    __slots__ = ("_chunk", "_failed", "_inner", "_unchecked", "forged")

    def __init__(self, inner: Callable[[Sequence[Job]], list[bool]]) -> None:
        self._inner = inner
        self._chunk = 1
        #: a signature failed: everything after it is reported False unchecked
        self.forged = False
        self._unchecked: set[int] = set()  # id() of the signatures not checked
        self._failed: set[int] = set()  # id() of those checked and found forged

    def __call__(self, jobs: Sequence[Job]) -> list[bool]:
        """Check ``jobs`` in growing chunks; after a failure, report the rest False unchecked."""
        out: list[bool] = []
        i = 0
        while i < len(jobs):
            if self.forged:
                self._unchecked.update(id(j[2]) for j in jobs[i:])
                out.extend([False] * (len(jobs) - i))
                break
            part = jobs[i : i + self._chunk]
            oks = self._inner(part)
            out.extend(oks)
            i += len(part)
            if not all(oks):
                self.forged = True
                self._failed.update(id(j[2]) for j, ok in zip(part, oks, strict=True) if not ok)
            else:
                self._chunk = min(CHUNK, 2 * self._chunk)
        return out

    def reason(self, signature: bytes, checked: str) -> str:
        """Why the item with ``signature`` was refused: ``checked``, or not checked."""
        sid = id(signature)
        return NOT_CHECKED if sid in self._unchecked and sid not in self._failed else checked
