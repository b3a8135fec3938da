#!/usr/bin/env python3
"""Length and a simple complexity count of every function in Python files (ast only, no imports).

    python3 scripts/function_complexity.py isl/train/trainer.py isl/data/convert.py
    python3 scripts/function_complexity.py --only=train,convert isl/train/trainer.py isl/data/convert.py

For each function (methods as Class.name): lines from `def` to its last line, "body" lines without the
docstring, and complexity = 1 + each if / for / while / except / conditional expression + (operands - 1) of
each `and` / `or` + each comprehension `for` and its `if`s. Nested functions count in their parent and are not
listed. A last line per file gives the longest function and the largest complexity.
"""

from __future__ import annotations

import ast
import sys

_BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.IfExp, ast.ExceptHandler)


def complexity(function: ast.AST) -> int:
    """1 + branches, loops, handlers, boolean operands beyond the first, comprehension clauses."""
    count = 1
    for node in ast.walk(function):
        if isinstance(node, _BRANCHES):
            count += 1
        elif isinstance(node, ast.BoolOp):
            count += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            count += 1 + len(node.ifs)
    return count


def _body_start(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The first line after the docstring (or the first statement when there is none)."""
    first = function.body[0]
    has_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    if has_docstring and len(function.body) > 1:
        return function.body[1].lineno
    return first.lineno


def functions(path: str) -> list[tuple[str, int, int, int]]:
    """(name, lines, body lines, complexity) of the module-level functions and methods of `path`."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    rows: list[tuple[str, int, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = child.end_lineno - child.lineno + 1
                body = child.end_lineno - _body_start(child) + 1
                rows.append((prefix + child.name, lines, body, complexity(child)))
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return rows


def main(arguments: list[str]) -> int:
    only = None
    paths = []
    for argument in arguments:
        if argument.startswith("--only="):
            only = set(argument[len("--only="):].split(","))
        else:
            paths.append(argument)
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in paths:
        rows = functions(path)
        for name, lines, body, count in rows:
            if only is None or name in only:
                print(f"{path}:{name}\tlines {lines} (body {body})\tcomplexity {count}")
        if rows:
            print(f"{path}: {len(rows)} functions, longest {max(row[1] for row in rows)} lines, "
                  f"largest complexity {max(row[3] for row in rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
