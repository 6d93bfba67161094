"""Errors of the configuration and of API input, as one line a user can act on.

:class:`ConfigError` is what the loader raises; :func:`describe` turns one
pydantic error of the config models into ``key.path: what is wrong (got X)``;
:func:`request_error` does the same for a request the API refuses. Both
write a location with :func:`loc_str`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

__all__ = ["SECRET_KEYS", "ConfigError", "describe", "loc_str", "request_error"]

#: Keys whose values are secrets: never echoed back in an error message.
SECRET_KEYS = frozenset({"apiToken"})


class ConfigError(Exception):
    """A bad configuration. ``str(err)`` is a single line suitable for users.

    ``problems`` lists every problem found, one line each (``smegd --check``
    prints them all); ``str(err)`` is the first, with a count of the others.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems else [message]


def loc_str(loc: Iterable[int | str]) -> str:
    """``("a", "b", 0, "c")`` -> ``a.b[0].c``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def request_error(errors: Iterable[Mapping[str, Any]]) -> str:
    """One line for a request the API refuses (FastAPI's validation errors)."""
    msgs = []
    for err in errors:
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "missing":
            msg = "required"
        elif err.get("type") == "json_invalid":
            return "request body is not valid JSON"
        loc = list(err.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        msgs.append(f"{loc_str(loc) or 'body'}: {msg}")
    return "invalid request: " + "; ".join(msgs)


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    model = root
    for part in loc:
        if not isinstance(part, str):
            continue
        for name, f in model.model_fields.items():
            if part in (name, f.alias):
                ann = f.annotation
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    model = ann
                break
    return model


def describe(err: ErrorDetails, root: type[BaseModel]) -> str:
    """One pydantic error of ``root`` (the config model) as ``key.path: problem``."""
    loc = err["loc"]
    typ = err["type"]
    inp = err.get("input")
    ctx = err.get("ctx") or {}
    if typ == "extra_forbidden":
        parent = loc[:-1]
        model = _model_at(root, parent)
        where = f" in {loc_str(parent)}" if parent else ""
        keys = [f.alias or n for n, f in model.model_fields.items()]
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        allowed = ", ".join(sorted(keys))
        return f"{loc_str(loc)}: unknown key{where}{hint}; allowed keys: {allowed}"
    if typ == "literal_error":
        return f"{loc_str(loc)}: must be one of {ctx.get('expected')} (got {inp!r})"
    if typ == "value_error" and not loc:
        # model-level check: the message starts with the key it is about
        return str(ctx.get("error", err["msg"]))
    problem = _problem(err, typ, ctx)
    got = f" (got {inp!r})" if not isinstance(inp, dict | list) else ""
    if any(part in SECRET_KEYS for part in loc) or "(got " in problem:
        got = ""  # a secret, even a bad one, is never echoed; nor twice what a check said
    return f"{loc_str(loc)}: {problem}{got}"


_PROBLEMS = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list of strings",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
}


def _problem(err: ErrorDetails, typ: str, ctx: Mapping[str, Any]) -> str:
    msg = err["msg"]
    if typ == "value_error":
        return str(ctx.get("error", msg))
    if typ in _PROBLEMS:
        return _PROBLEMS[typ]
    msg = msg[0].lower() + msg[1:] if msg else msg
    return msg.replace("Input should be", "must be").replace("input should be", "must be")
