"""smegd's ``/v1`` API as typed calls: requests and answers are the API's own models.

The models are :mod:`smegmesh.daemon.api_models`, the ones the daemon
validates requests with and serialises answers from, so the two sides
cannot drift. A request is built without validation (``model_construct``):
the daemon checks it and answers a bad value with its own one-line error,
as it did when the CLI sent dicts. An answer is validated ignoring keys this
smegctl does not know (a newer daemon may add some). Each call returns an
:class:`Answer`: the model for people, the JSON as received for ``--json``
(printed unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from smegmesh.cli.client import ClientError, Transport, seg
from smegmesh.daemon.api_models import (
    AliasResponse,
    InviteResponse,
    JoinRequest,
    MeshDetail,
    MeshIdResponse,
    MeshOptions,
    MeshSummary,
    OkResponse,
    QueryResponse,
)

__all__ = ["Answer", "Smegd"]

T = TypeVar("T")


@dataclass(frozen=True)
class Answer(Generic[T]):
    """A typed answer (``data``) and the JSON it was read from (``raw``)."""

    data: T
    raw: Any


def _body(model: BaseModel) -> dict[str, Any]:
    """The JSON body of a request: the fields given, ``None`` ones left out."""
    return model.model_dump(mode="json", exclude_none=True)


class Smegd:
    """The calls smegctl makes, over either transport (socket or ``--api``)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def call(
        self,
        answer: Any,
        method: str,
        url: str,
        *,
        body: BaseModel | dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer[Any]:
        """``method url`` with ``body``; the answer validated as ``answer`` (a type)."""
        json_body = _body(body) if isinstance(body, BaseModel) else body
        raw = self.transport.json(method, url, json_body=json_body, params=params)
        try:
            data = TypeAdapter(answer).validate_python(raw, extra="ignore")
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "answer"
            raise ClientError(
                f"smegd sent an answer this smegctl does not understand ({where}: {err['msg']})"
            ) from None
        return Answer(data, raw)

    # -- meshes

    def new_mesh(self, opts: MeshOptions) -> Answer[MeshIdResponse]:
        return self.call(MeshIdResponse, "POST", "/v1/meshes", body=opts)

    def join_mesh(self, req: JoinRequest) -> Answer[MeshIdResponse]:
        return self.call(MeshIdResponse, "POST", "/v1/join", body=req)

    def leave_mesh(self, mesh_id: str, *, force: bool = False) -> Answer[OkResponse]:
        params = {"force": "true"} if force else None
        return self.call(OkResponse, "DELETE", f"/v1/meshes/{seg(mesh_id)}", params=params)

    def list_meshes(self) -> Answer[list[MeshSummary]]:
        return self.call(list[MeshSummary], "GET", "/v1/meshes")

    def get_mesh(self, mesh_id: str) -> Answer[MeshDetail]:
        return self.call(MeshDetail, "GET", f"/v1/meshes/{seg(mesh_id)}")

    def invite(self, mesh_id: str, ttl_s: int, uses: int, strict: bool) -> Answer[InviteResponse]:
        body = {"ttl_s": ttl_s, "uses": uses, "strict": strict}
        return self.call(InviteResponse, "POST", f"/v1/meshes/{seg(mesh_id)}/invites", body=body)

    def query(self, mesh_id: str, expr: str) -> Answer[QueryResponse]:
        url = f"/v1/meshes/{seg(mesh_id)}/query"
        return self.call(QueryResponse, "GET", url, params={"q": expr})

    def put_alias(self, mesh_id: str, alias: str) -> Answer[AliasResponse]:
        url = f"/v1/meshes/{seg(mesh_id)}/alias"
        return self.call(AliasResponse, "PUT", url, body={"alias": alias})
