"""The signed-item base shared by records, prunes and authority statements. Pure."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import msgpack

__all__ = ["Signed"]


class Signed:
    """Wire form and signed payload shared by records, prunes and statements.

    The signature covers ``_TAG + msgpack(fields_obj())``; msgpack of ints,
    strings, bytes, bools, nil and arrays is canonical, so the payload is a pure
    function of the field values. The wire form is ``fields_obj()`` followed by
    the signature.
    """

    _TAG: ClassVar[bytes]
    signature: bytes

    def fields_obj(self) -> list[Any]:
        """The signed fields, in wire order."""
        raise NotImplementedError

    def to_obj(self) -> list[Any]:
        """Wire form: :meth:`fields_obj` followed by the signature."""
        return [*self.fields_obj(), self.signature]

    def signed_payload(self) -> bytes:
        """What the signature covers."""
        return self._payload

    @cached_property
    def _payload(self) -> bytes:
        return self._TAG + msgpack.packb(self.fields_obj(), use_bin_type=True)
