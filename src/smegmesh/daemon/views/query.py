"""JMESPath queries over a mesh's JSON view (``query-mesh``), bounded in work and time."""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.parser
import jmespath.visitor

from smegmesh.daemon.api_models import MeshDetail
from smegmesh.daemon.service import ServiceError, invalid_argument
from smegmesh.daemon.views.detail import model_json

__all__ = [
    "MAX_QUERY_COST",
    "MAX_QUERY_LEN",
    "MAX_QUERY_SECONDS",
    "MAX_RESULT_BYTES",
    "MAX_RESULT_DEPTH",
    "run_query",
]

#: Longest JMESPath expression accepted (a query, not a program).
MAX_QUERY_LEN = 4096


@functools.lru_cache(maxsize=256)
def _compile(expr: str) -> jmespath.parser.ParsedResult:
    return jmespath.compile(expr)


def _context(expr: str, pos: int) -> str:
    before = expr[:pos]
    if len(before) > 40:
        before = "…" + before[-40:]
    return before


def _query_error(expr: str, e: Exception) -> ServiceError:
    """One line saying where and what (JMESPath's own messages span three lines)."""
    if isinstance(e, jmespath.exceptions.EmptyExpressionError):
        return invalid_argument("bad JMESPath: the expression is empty")
    if isinstance(e, jmespath.exceptions.LexerError):
        pos = int(e.lexer_position or 0)
        what = str(e.message).rstrip(".")
        after = _context(expr, pos)
        where = f' after "{after}"' if after else " at the start"
        return invalid_argument(f"bad JMESPath at column {pos + 1}: {what}{where}")
    if isinstance(e, jmespath.exceptions.IncompleteExpressionError):
        return invalid_argument(
            f'bad JMESPath at column {len(expr) + 1}: expression ends too early after "'
            f'{_context(expr, len(expr))}"'
        )
    if isinstance(e, jmespath.exceptions.ArityError):
        # a subclass of ParseError without a position: say what the function wants
        return invalid_argument(f"bad JMESPath: {_clip(str(e))}")
    if isinstance(e, jmespath.exceptions.JMESPathTypeError):
        # its message embeds the offending value, which may be the whole mesh
        return invalid_argument(
            f"bad JMESPath: In function {e.function_name}(), invalid type {e.actual_type}, "
            f"expected one of: {', '.join(map(str, e.expected_types))}"
        )
    if isinstance(e, jmespath.exceptions.ParseError):
        pos = int(e.lex_position or 0)
        tok = e.token_value
        what = f"unexpected {tok!r}" if tok not in (None, "") else "unexpected end"
        after = _context(expr, pos)
        where = f' after "{after}"' if after else " at the start"
        return invalid_argument(f"bad JMESPath at column {pos + 1}: {what}{where}")
    return invalid_argument(f"bad JMESPath: {_clip(str(e))}")


def _clip(msg: str, limit: int = 200) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


# --------------------------------------------------------------------------- query bounds
#
# A query is evaluated with a budget: every value the interpreter produces
# costs 1 + its length (items of a list or object, characters of a string),
# deep comparisons and serialisations cost one unit per value visited, and a
# query that overspends, or runs past its deadline, is refused (400). This
# bounds CPU and memory whatever the expression: `[@,@]|[@,@]|…` builds a
# value of 2^k paths in k steps (shared, so cheap to build) that a naive ==,
# to_string() or the JSON encoder would walk in full.

#: Work units one query may spend (see above).
MAX_QUERY_COST = 4_000_000
#: Seconds one query may run.
MAX_QUERY_SECONDS = 3.0
#: Estimated JSON size, in bytes, of a query's result.
MAX_RESULT_BYTES = 64 * 1024 * 1024
#: Nesting depth of a query's result (the mesh document itself is 5 deep).
MAX_RESULT_DEPTH = 64


class _QueryTooCostly(Exception):
    pass


class _Budget:
    def __init__(self, units: int, seconds: float) -> None:
        self.left = units
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.ticks = 0

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise _QueryTooCostly("the query needs too much work or memory")
        self.ticks += 1
        if not self.ticks & 0xFF and time.monotonic() > self.deadline:
            raise _QueryTooCostly(f"the query took longer than {self.seconds:g} s")


def _cost(value: Any) -> int:
    return 1 + len(value) if isinstance(value, list | dict | str) else 1


def _equal(x: Any, y: Any, budget: _Budget) -> bool:
    """JMESPath equality (true is not 1), bounded by ``budget``."""
    stack = [(x, y)]
    while stack:
        a, b = stack.pop()
        budget.spend(1)
        if a is b:
            continue
        if isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif isinstance(a, dict):
            if not isinstance(b, dict) or a.keys() != b.keys():
                return False
            stack.extend((a[k], b[k]) for k in a)
        elif isinstance(b, list | dict) or isinstance(a, bool) != isinstance(b, bool) or a != b:
            return False
    return True


def _check_value(value: Any, budget: _Budget, *, limit: int = MAX_RESULT_BYTES) -> None:
    """Refuse a value that JSON cannot carry or that is too big or deep to send."""
    size = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        budget.spend(1)
        if isinstance(v, list | dict):
            if depth > MAX_RESULT_DEPTH:
                raise _QueryTooCostly(f"the result is nested deeper than {MAX_RESULT_DEPTH}")
            size += 2 + len(v)
            items = v.values() if isinstance(v, dict) else v
            stack.extend((c, depth + 1) for c in items)
            if isinstance(v, dict):
                size += sum(len(k) + 3 for k in v)
        elif isinstance(v, str):
            size += len(v) + 2
        elif isinstance(v, float) and not math.isfinite(v):
            raise _QueryTooCostly("the result holds a number JSON cannot carry (infinite or NaN)")
        else:
            size += 8
        if size > limit:
            raise _QueryTooCostly(f"the result would be larger than {limit} bytes")


class _BoundedFunctions(jmespath.functions.Functions):
    """The built-in functions, with the ones that can walk or build big values bounded."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget

    @jmespath.functions.signature({"types": ["array", "string"]}, {"types": []})
    def _func_contains(self, subject: Any, search: Any) -> bool:
        if isinstance(subject, str):
            return isinstance(search, str) and search in subject
        return any(_equal(item, search, self.budget) for item in subject)

    @jmespath.functions.signature({"types": []})
    def _func_to_string(self, arg: Any) -> str:
        if isinstance(arg, str):
            return arg
        _check_value(arg, self.budget, limit=self.budget.left)
        return json.dumps(arg, separators=(",", ":"), default=str)

    @jmespath.functions.signature({"types": ["string"]}, {"types": ["array-string"]})
    def _func_join(self, separator: str, array: list[str]) -> str:
        self.budget.spend(sum(map(len, array)) + len(separator) * len(array))
        return separator.join(array)


class _BoundedInterpreter(jmespath.visitor.TreeInterpreter):
    def __init__(self, budget: _Budget) -> None:
        super().__init__(jmespath.Options(custom_functions=_BoundedFunctions(budget)))
        self.budget = budget

    def visit(self, node: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().visit(node, *args, **kwargs)
        self.budget.spend(_cost(result))
        return result

    def visit_comparator(self, node: Any, value: Any) -> Any:
        op = node["value"]
        if op in ("eq", "ne"):
            left = self.visit(node["children"][0], value)
            right = self.visit(node["children"][1], value)
            return _equal(left, right, self.budget) == (op == "eq")
        return super().visit_comparator(node, value)


def _evaluate(expr: str, data: Any) -> Any:
    budget = _Budget(MAX_QUERY_COST, MAX_QUERY_SECONDS)
    parsed = _compile(expr).parsed
    result = _BoundedInterpreter(budget).visit(parsed, data)
    _check_value(result, budget)
    return result


def run_query(detail_json: Any, expr: str) -> Any:
    """Evaluate JMESPath ``expr`` over ``detail_json`` (a mesh's JSON document).

    ``detail_json`` is ``MeshDetail.model_dump(mode="json")`` (a ``MeshDetail``
    is dumped for you). Errors in the expression, at parse or evaluation time
    (unknown function, wrong argument type), raise ``invalid_argument`` with
    one line naming the column and the problem. So does a query that needs
    more than :data:`MAX_QUERY_COST` work units or :data:`MAX_QUERY_SECONDS`,
    or whose result is not JSON, over :data:`MAX_RESULT_BYTES` or nested
    deeper than :data:`MAX_RESULT_DEPTH`. Blocking: from the event loop, run it
    in a thread.
    """
    if isinstance(detail_json, MeshDetail):
        detail_json = model_json(detail_json)
    if len(expr) > MAX_QUERY_LEN:
        raise invalid_argument(f"bad JMESPath: longer than {MAX_QUERY_LEN} characters")
    try:
        return _evaluate(expr, detail_json)
    except jmespath.exceptions.JMESPathError as e:
        raise _query_error(expr, e) from None
    except RecursionError:
        raise invalid_argument("bad JMESPath: the expression is nested too deeply") from None
    except _QueryTooCostly as e:
        raise invalid_argument(f"query refused: {e}") from None
    except (ValueError, TypeError, ArithmeticError, LookupError) as e:
        # the interpreter's own failures on odd input, e.g. a zero slice step
        raise invalid_argument(f"bad JMESPath: {_clip(str(e))}") from None
