"""Path parameters shared by the API's routes (ids in URLs, bounded before use)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from smegmesh.daemon.api_models import SERVICE_KEY_RE

__all__ = ["DeviceName", "MeshId", "ServiceKey", "TokenId"]

MeshId = Annotated[str, Path(min_length=1, max_length=128, description="Mesh id")]
ServiceKey = Annotated[
    str, Path(pattern=SERVICE_KEY_RE.pattern, description="Service name (1-64 chars)")
]
TokenId = Annotated[str, Path(min_length=1, max_length=64, description="Invitation id")]
DeviceName = Annotated[
    str, Path(min_length=1, max_length=128, description="Device alias, public key or address")
]
