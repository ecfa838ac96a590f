"""Math Expression (ComfyUI's comfy_extras/nodes_math.py, `ComfyMathExpression`).

ComfyUI evaluates the expression with the `simpleeval` library; diffmesh walks Python's parsed
expression tree itself and allows the same things: number, string and boolean constants, the
input names (`a`, `b`, ... and `values`, the list of all of them), arithmetic, comparison, boolean
and bit operators, `x if c else y`, subscripts, and calls of ComfyUI's function table only. No
attribute access, no other names or calls, so nothing outside the table is reachable. `**` refuses
exponents above simpleeval's 4,000,000 and `pow()` above ComfyUI's 4,000.
"""

from __future__ import annotations

import ast
import math
import operator
import string
from typing import Any

from diffmesh.nodes.base import NodeContext
from diffmesh.nodes.dynamic_inputs import autogrow, nest
from diffmesh.nodes.extras_base import outs, text, v3, v3_node

MAX_POWER = 4_000_000          # simpleeval's cap on `**`
MAX_EXPONENT = 4000            # ComfyUI's cap on pow()
MAX_SHIFT = 10_000             # simpleeval's cap on << and >>


class ExpressionError(ValueError):
    """An expression uses something Math Expression does not allow."""


def _sum(*args):
    """sum(values) and sum(a, b, c) both work, as in ComfyUI."""
    if len(args) == 1 and hasattr(args[0], "__iter__"):
        return sum(args[0])
    return sum(args)


def _pow(base, exponent):
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"Exponent {exponent} exceeds maximum allowed ({MAX_EXPONENT})")
    return pow(base, exponent)


def _power(base, exponent):
    if abs(exponent) > MAX_POWER:
        raise ExpressionError(f"Sorry! I don't want to evaluate {base} ** {exponent}")
    return base ** exponent


def _shift(op):
    def shifted(a, b):
        if abs(b) > MAX_SHIFT:
            raise ExpressionError(f"Sorry! I don't want to shift by {b} places")
        return op(a, b)
    return shifted


FUNCTIONS = {"sum": _sum, "min": min, "max": max, "abs": abs, "round": round, "pow": _pow, "sqrt": math.sqrt,
             "ceil": math.ceil, "floor": math.floor, "log": math.log, "log2": math.log2, "log10": math.log10,
             "sin": math.sin, "cos": math.cos, "tan": math.tan, "int": int, "float": float}

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _power, ast.BitXor: operator.xor,
          ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.LShift: _shift(operator.lshift),
          ast.RShift: _shift(operator.rshift)}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_, ast.Invert: operator.invert}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
           ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}


class _Evaluator:
    def __init__(self, names: dict[str, Any]):
        self.names = names

    def __call__(self, node: ast.AST) -> Any:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise ExpressionError(f"{type(node).__name__} is not allowed in a math expression")
        return method(node)

    def _Expression(self, node: ast.Expression) -> Any:  # noqa: N802 - ast class names
        return self(node.body)

    def _Constant(self, node: ast.Constant) -> Any:  # noqa: N802
        if not isinstance(node.value, (int, float, str, bool)) and node.value is not None:
            raise ExpressionError(f"the constant {node.value!r} is not allowed in a math expression")
        return node.value

    def _Name(self, node: ast.Name) -> Any:  # noqa: N802
        if node.id in self.names:
            return self.names[node.id]
        if node.id in FUNCTIONS:
            return FUNCTIONS[node.id]
        raise ExpressionError(f"'{node.id}' is not defined: connect an input named {node.id} or use one of "
                              f"{sorted(self.names)}")

    def _BinOp(self, node: ast.BinOp) -> Any:  # noqa: N802
        op = BINARY.get(type(node.op))
        if op is None:
            raise ExpressionError(f"the operator {type(node.op).__name__} is not allowed")
        return op(self(node.left), self(node.right))

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:  # noqa: N802
        return UNARY[type(node.op)](self(node.operand))

    def _BoolOp(self, node: ast.BoolOp) -> Any:  # noqa: N802
        value = None
        for operand in node.values:
            value = self(operand)
            if isinstance(node.op, ast.And) and not value:
                return value
            if isinstance(node.op, ast.Or) and value:
                return value
        return value

    def _Compare(self, node: ast.Compare) -> Any:  # noqa: N802
        left = self(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self(right_node)
            if not COMPARE[type(op)](left, right):
                return False
            left = right
        return True

    def _IfExp(self, node: ast.IfExp) -> Any:  # noqa: N802
        return self(node.body) if self(node.test) else self(node.orelse)

    def _Subscript(self, node: ast.Subscript) -> Any:  # noqa: N802
        return self(node.value)[self(node.slice)]

    def _Call(self, node: ast.Call) -> Any:  # noqa: N802
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ExpressionError(f"the function '{name}' is not allowed; use one of {sorted(FUNCTIONS)}")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise ExpressionError("* and ** arguments are not allowed in a math expression")
        args = [self(a) for a in node.args]
        return FUNCTIONS[node.func.id](*args, **{k.arg: self(k.value) for k in node.keywords})


def evaluate(expression: str, names: dict[str, Any]) -> Any:
    """The value of `expression` with `names` bound; ExpressionError for anything not allowed."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"Math Expression '{expression}' is not a valid expression: {exc.msg}") from exc
    return _Evaluator(names)(tree)


def math_expression(ctx: NodeContext, expression: str, **inputs):
    if not expression.strip():
        raise ValueError("Expression cannot be empty.")
    grown = nest(inputs, "values")["values"]
    values = {name: grown[name] for name in sorted(grown)}          # a, b, c ... as ComfyUI orders them
    result = evaluate(expression, {**values, "values": list(values.values())})
    if not isinstance(result, (int, float)):         # booleans pass: bool is an int, as in ComfyUI
        raise ValueError(f"Math Expression '{expression}' must evaluate to a numeric result, "
                         f"got {type(result).__name__}: {result!r}")
    try:
        as_float = float(result)
    except OverflowError:
        raise ValueError(f"Math Expression '{expression}' produced a result too large to represent as a float: "
                         f"{result}") from None
    if not math.isfinite(as_float):
        raise ValueError(f"Math Expression '{expression}' produced a non-finite result: {result}")
    return (as_float, int(result), bool(result))


NODES = (
    v3_node("ComfyMathExpression", "Math Expression", "utilities",
            (text("expression", multiline=True, default="a + b"),
             autogrow("values", v3("value", "FLOAT,INT,BOOLEAN"), names=list(string.ascii_lowercase), min=1)),
            outs(("FLOAT", "FLOAT"), ("INT", "INT"), ("BOOLEAN", "BOOL")), math_expression,
            "comfy_extras.nodes_math",
            search_aliases=("expression", "formula", "calculate", "calculator", "eval", "math")),
)
