"""The core has no hidden sources of randomness or time (issue 13).

Imports of I/O, clock and entropy modules (``os``, ``time``, ``secrets``...)
are refused by the ``core-pure`` import contract (``lint-imports``); this test
catches what an import contract cannot: the process-global ``random`` functions
and an unseeded ``random.Random()``, both hidden entropy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import smegmesh.core

CORE = Path(smegmesh.core.__file__).parent
#: module-level functions of ``random`` that use its hidden global generator
GLOBAL_RANDOM = {
    "random",
    "randint",
    "randrange",
    "randbytes",
    "choice",
    "choices",
    "sample",
    "shuffle",
    "uniform",
    "getrandbits",
    "seed",
}


def _hidden(tree: ast.AST) -> list[str]:
    out: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not isinstance(node.value, ast.Name):
            continue
        if node.value.id != "random":
            continue
        if node.attr in GLOBAL_RANDOM | {"SystemRandom"}:
            out.append(f"{node.lineno}: random.{node.attr}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) == "random.Random"
            and not node.args
            and not node.keywords
        ):
            out.append(f"{node.lineno}: random.Random() without a seed")
        if (
            isinstance(node, ast.keyword)
            and node.arg == "default_factory"
            and ast.unparse(node.value) == "random.Random"
        ):
            out.append(f"{node.lineno}: default_factory=random.Random")
    return out


def test_core_draws_randomness_only_from_what_it_is_given() -> None:
    found = {
        p.name: hits
        for p in sorted(CORE.glob("*.py"))
        if (hits := _hidden(ast.parse(p.read_text(), str(p))))
    }
    assert found == {}


def test_the_check_sees_hidden_randomness() -> None:
    bad = (
        "import random\n"
        "x = random.choice([1])\n"
        "r = random.Random()\n"
        "@dataclass\nclass T:\n    rng: random.Random = field(default_factory=random.Random)\n"
    )
    assert len(_hidden(ast.parse(bad))) == 3
    assert _hidden(ast.parse("import random\nr = random.Random(1)\n")) == []
