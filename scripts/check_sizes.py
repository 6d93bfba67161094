"""Size limits from docs/ARCHITECTURE.md: no source file over 500 lines, no function over 80.

Usage: ``python scripts/check_sizes.py [--max-file 500] [--max-func 80] [PATH ...]``
(default path: ``src``). Prints each excess and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def excesses(path: Path, max_file: int, max_func: int) -> list[str]:
    """The size limits ``path`` exceeds, one line each."""
    text = path.read_text()
    out: list[str] = []
    n = text.count("\n") + (0 if text.endswith("\n") else 1)
    if n > max_file:
        out.append(f"{path}: {n} lines (limit {max_file})")
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > max_func:
                out.append(f"{path}:{node.lineno}: {node.name}() {length} lines (limit {max_func})")
    return out


def main(argv: list[str] | None = None) -> int:
    """Check every ``.py`` file under the given paths."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("paths", nargs="*", default=["src"])
    ap.add_argument("--max-file", type=int, default=500)
    ap.add_argument("--max-func", type=int, default=80)
    a = ap.parse_args(argv)
    found: list[str] = []
    for p in a.paths:
        for f in sorted(Path(p).rglob("*.py")) if Path(p).is_dir() else [Path(p)]:
            found += excesses(f, a.max_file, a.max_func)
    print("\n".join(found) if found else "sizes: every file and function within limits")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
