"""A multi grader's `calculate_output`: arithmetic over its graders' scores, parsed with
`ast` and evaluated by walking the tree (never `eval`). Allowed: numbers, the graders'
names, + - * / // % **, unary + -, comparisons, and the functions min, max, abs, floor,
ceil, exp, sqrt, log and clip(x, low, high)."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Collection, Mapping
from typing import Any

MAX_LENGTH = 2000
MAX_POWER = 64

BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
COMPARE: dict[type[ast.cmpop], Callable[[float, float], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
    "clip": lambda x, low, high: min(max(x, low), high),
}


class FormulaError(ValueError):
    """A formula that does not parse, names what it may not, or cannot be computed."""


def parse(formula: object, names: Collection[str]) -> ast.Expression:
    """The checked tree of `formula`; FormulaError saying what is wrong."""
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError("must be a non-empty formula, e.g. '0.5 * a + 0.5 * b'")
    if len(formula) > MAX_LENGTH:
        raise FormulaError(f"at most {MAX_LENGTH} characters")
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError as error:
        raise FormulaError(f"does not parse: {error.msg} at column {error.offset}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in names and node.id not in FUNCTIONS:
            known = ", ".join(sorted(names)) or "none"
            raise FormulaError(f"names {node.id!r}, which is not one of its graders ({known})")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise FormulaError(f"may call only {', '.join(FUNCTIONS)}")
            if node.keywords:
                raise FormulaError("functions take positional arguments only")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise FormulaError(f"{node.value!r} is not a number")
        elif not isinstance(
            node,
            ast.Expression
            | ast.BinOp
            | ast.UnaryOp
            | ast.Compare
            | ast.Name
            | ast.Load
            | ast.operator
            | ast.unaryop
            | ast.cmpop,
        ) or (isinstance(node, ast.BinOp) and type(node.op) not in BINARY):
            raise FormulaError(f"may not use {type(node).__name__}; only arithmetic on scores")
        if isinstance(node, ast.UnaryOp) and type(node.op) not in UNARY:
            raise FormulaError(f"may not use {type(node.op).__name__}")
    return tree


def evaluate(tree: ast.Expression, scores: Mapping[str, float]) -> float:
    """The formula's value for these scores; FormulaError on a domain error (log of 0,
    division by zero, a power too large)."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return scores[node.id]
        if isinstance(node, ast.UnaryOp):
            return UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_POWER:
                raise FormulaError(f"exponents are limited to {MAX_POWER}")
            return BINARY[type(node.op)](left, right)
        if isinstance(node, ast.Compare):
            left = walk(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = walk(comparator)
                if not COMPARE[type(op)](left, right):
                    return 0.0
                left = right
            return 1.0
        if isinstance(node, ast.Call):
            return FUNCTIONS[node.func.id](*(walk(arg) for arg in node.args))  # type: ignore[union-attr]
        raise FormulaError(f"may not use {type(node).__name__}")

    try:
        value = float(walk(tree))
    except (ArithmeticError, ValueError, TypeError) as error:
        raise FormulaError(f"cannot be computed for these scores: {error}") from None
    if not math.isfinite(value):
        raise FormulaError("is not finite for these scores")
    return value
