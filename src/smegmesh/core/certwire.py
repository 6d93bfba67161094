"""Wire form of authority statements: ``[kind, fields..., signature]``. Pure."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from smegmesh.core.cert import (
    AUTH_TYPES,
    AuthItem,
    CertError,
    Founding,
    Policy,
    PolicyChange,
    Revocation,
    check_auth_fields,
)

__all__ = ["auth_from_obj", "auth_to_obj"]

_KINDS: dict[int, type] = {c._KIND: c for c in AUTH_TYPES}  # type: ignore[attr-defined]


def _list(v: object, name: str) -> list[Any]:
    if type(v) is not list:
        raise CertError(name, "must be an array")
    return v


def auth_from_obj(obj: object) -> AuthItem:
    """Rebuild a statement from ``[kind, fields..., signature]`` (shapes checked)."""
    o = _list(obj, "auth")
    if not o or type(o[0]) is not int or o[0] not in _KINDS:
        raise CertError("auth", "unknown statement kind")
    cls = _KINDS[o[0]]
    body = o[1:]
    n = len(fields(cls))
    if len(body) != n:
        raise CertError("auth", f"{cls.__name__} must have {n} fields")
    if cls in (Founding, PolicyChange):
        at = 4 if cls is Founding else 1
        try:
            body[at] = Policy(body[at])
        except (ValueError, TypeError):
            raise CertError("policy", "must be admins, peers or members") from None
    if cls is Revocation:
        body[3] = tuple(_list(body[3], "keep"))
    item: AuthItem = cls(*body)
    check_auth_fields(item, None)
    return item


def auth_to_obj(a: AuthItem) -> list[Any]:
    """A statement as ``[kind, fields..., signature]``."""
    return [a._KIND, *a.to_obj()]
