"""Safe integer expressions in ``x``, as written in a task's YAML config.

A task's function is written as a small integer expression in ``x``, for example
``"x"``, ``"2*x + 3"``, ``"(x // 3) % 7"`` or ``"x**2 - 1"``.  The text is parsed with
:mod:`ast` and checked against a whitelist; it is never passed to ``eval``, ``exec`` or
``compile``.  Evaluation walks the syntax tree itself and is bounded: every intermediate
value is capped in magnitude and powers are refused before they are computed when the
result would be too large, so a config can never hang the pipeline.

Allowed: integer literals, the name ``x``, unary ``+`` and ``-``, binary
``+ - * // % **`` and parentheses.  ``//`` and ``%`` follow Python's floor semantics.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MAX_DEPTH", "MAX_MAGNITUDE", "ExpressionError", "IntFunction", "parse_function"]

#: Largest magnitude any value (x, a literal or an intermediate result) may have.
MAX_MAGNITUDE = 10**300
#: Deepest syntax tree accepted; keeps parsing and evaluation stack use bounded.
MAX_DEPTH = 100
#: A power is refused without computing it when its exponent exceeds this ...
MAX_EXPONENT = 10_000
#: ... or when bit_length(base) * exponent exceeds this many bits.
MAX_POWER_BITS = 4096

ALLOWED = (
    "allowed: integer literals, the name x, unary + and -, binary + - * // % **, and parentheses"
)

_BINOP_SYMBOLS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.Div: "/",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
}
_ALLOWED_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Pow)

_UNARY_SYMBOLS: dict[type[ast.unaryop], str] = {
    ast.UAdd: "+",
    ast.USub: "-",
    ast.Not: "not",
    ast.Invert: "~",
}
_ALLOWED_UNARY = (ast.UAdd, ast.USub)

# Plural descriptions of constructs that are rejected outright, by node type.
_REJECTED: dict[type[ast.AST], str] = {
    ast.Call: "calls",
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Compare: "comparisons",
    ast.BoolOp: "boolean operators (and/or)",
    ast.IfExp: "conditional expressions",
    ast.Lambda: "lambda expressions",
    ast.JoinedStr: "f-strings",
    ast.FormattedValue: "f-strings",
    ast.Tuple: "tuples",
    ast.List: "lists",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.NamedExpr: "assignment expressions (:=)",
    ast.Starred: "starred expressions",
    ast.Await: "await expressions",
    ast.Yield: "yield expressions",
    ast.YieldFrom: "yield expressions",
    ast.Slice: "slices",
}


# Descriptions above (and from _literal_kind) that take "is" rather than "are".
_SINGULAR = {"attribute access", "None", "Ellipsis (...)"}


class ExpressionError(ValueError):
    """A function expression is not allowed, or fails when evaluated at some x."""


def _quote(text: str) -> str:
    return f'"{text}"'


def _segment(source: str, node: ast.AST) -> str:
    """The source text of *node*, for quoting in messages."""
    seg = ast.get_source_segment(source, node)
    if seg is None:  # pragma: no cover - nodes from ast.parse always carry positions
        seg = ast.unparse(node)
    return seg


def _verb(what: str) -> str:
    """Agreement for "<what> are/is not allowed"."""
    return "is" if what in _SINGULAR else "are"


def _literal_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean literals"
    if isinstance(value, float):
        return "float literals (use integers)"
    if isinstance(value, complex):
        return "complex literals"
    if isinstance(value, str):
        return "string literals"
    if isinstance(value, bytes):
        return "bytes literals"
    if value is None:
        return "None"
    if value is Ellipsis:
        return "Ellipsis (...)"
    return f"{type(value).__name__} literals"


def _check(node: ast.AST, source: str, depth: int) -> None:
    """Raise ExpressionError unless *node* uses only whitelisted constructs."""
    where = f"in function {_quote(source)}"
    if depth > MAX_DEPTH:
        raise ExpressionError(
            f"function {_quote(source)} is too complex: its syntax tree is more than "
            f"{MAX_DEPTH} levels deep"
        )
    if isinstance(node, ast.Name):
        if node.id != "x":
            raise ExpressionError(f"unknown name '{node.id}' {where}: only x is allowed")
        return
    if isinstance(node, ast.Constant):
        value = node.value
        if type(value) is not int:
            kind = _literal_kind(value)
            raise ExpressionError(
                f"{kind} {_verb(kind)} not allowed ({_quote(_segment(source, node))}) "
                f"{where}; {ALLOWED}"
            )
        if abs(value) > MAX_MAGNITUDE:
            raise ExpressionError(
                f"integer literal too large {where}: literals may be at most 10**300 in magnitude"
            )
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, _ALLOWED_UNARY):
            symbol = _UNARY_SYMBOLS.get(type(node.op), type(node.op).__name__)
            raise ExpressionError(
                f"operator '{symbol}' is not allowed ({_quote(_segment(source, node))}) "
                f"{where}; {ALLOWED}"
            )
        _check(node.operand, source, depth + 1)
        return
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, _ALLOWED_BINOPS):
            symbol = _BINOP_SYMBOLS.get(type(node.op), type(node.op).__name__)
            hint = "use // for integer division" if symbol == "/" else ALLOWED
            raise ExpressionError(
                f"operator '{symbol}' is not allowed ({_quote(_segment(source, node))}) "
                f"{where}: {hint}"
            )
        _check(node.left, source, depth + 1)
        _check(node.right, source, depth + 1)
        return
    what = _REJECTED.get(type(node), f"{type(node).__name__} expressions")
    raise ExpressionError(
        f"{what} {_verb(what)} not allowed ({_quote(_segment(source, node))}) {where}; {ALLOWED}"
    )


def _parse(source: object) -> tuple[str, ast.expr]:
    """Check and parse *source*; return the stripped text and the expression's tree."""
    if not isinstance(source, str):
        raise ExpressionError(
            f"a function must be a string holding an integer expression in x, "
            f"got {type(source).__name__} {source!r}; {ALLOWED}"
        )
    text = source.strip()
    if not text:
        raise ExpressionError(
            f'function "{source}" is empty: write an integer expression in x, '
            f'e.g. "2*x + 3"; {ALLOWED}'
        )
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        col = f" at column {exc.offset}" if exc.offset else ""
        raise ExpressionError(
            f"function {_quote(text)} is not a valid expression: {exc.msg}{col}; "
            f'a function is an integer expression in x, e.g. "2*x + 3"; {ALLOWED}'
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(
            f"function {_quote(text)} could not be parsed ({type(exc).__name__}: {exc}); "
            f"a function is an integer expression in x; {ALLOWED}"
        ) from None
    _check(tree.body, text, 1)
    return text, tree.body


def _as_int(x: object) -> int:
    """Accept Python ints and integer-like scalars (e.g. numpy ints); refuse bools/floats."""
    if isinstance(x, bool):
        raise TypeError(f"x must be an integer, got bool {x!r}")
    try:
        return operator.index(x)  # numpy ints become exact Python ints (no overflow)
    except TypeError:
        raise TypeError(f"x must be an integer, got {type(x).__name__} {x!r}") from None


@dataclass(frozen=True)
class IntFunction:
    """A validated integer function of x; call it or use :meth:`values`.

    ``source`` is the expression text with surrounding whitespace removed.  Building an
    ``IntFunction`` validates the text, so every instance is safe to evaluate.
    """

    source: str
    _tree: ast.expr = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text, tree = _parse(self.source)
        object.__setattr__(self, "source", text)
        object.__setattr__(self, "_tree", tree)

    def __call__(self, x: int) -> int:
        """Evaluate at one integer x; raise ExpressionError if it fails at that x."""
        xv = _as_int(x)
        if abs(xv) > MAX_MAGNITUDE:
            raise ExpressionError(
                f"function {_quote(self.source)} cannot be evaluated: x is larger than "
                "10**300 in magnitude"
            )
        return self._eval(self._tree, xv)

    def values(self, xs: Iterable[int]) -> list[int]:
        """Evaluate at every x in *xs*, in order; errors name the x that failed."""
        out = []
        for i, x in enumerate(xs):
            try:
                out.append(self(x))
            except TypeError as exc:
                raise TypeError(f"xs[{i}]: {exc}") from None
        return out

    # -- evaluation -------------------------------------------------------------------

    def _fail(self, node: ast.AST, x: int, what: str) -> ExpressionError:
        seg = _quote(_segment(self.source, node))
        return ExpressionError(f"function {_quote(self.source)} {what} at x = {x} ({seg})")

    def _bounded(self, value: int, node: ast.AST, x: int) -> int:
        if abs(value) > MAX_MAGNITUDE:
            raise self._fail(node, x, "gives a result too large (over 10**300 in magnitude)")
        return value

    def _power(self, base: int, exp: int, node: ast.AST, x: int) -> int:
        if exp < 0:
            raise self._fail(
                node, x, "raises to a negative power (the result would not be an integer)"
            )
        if base in (0, 1):
            return 1 if exp == 0 else base
        if base == -1:
            return -1 if exp % 2 else 1
        if exp > MAX_EXPONENT or abs(base).bit_length() * exp > MAX_POWER_BITS:
            # |base| >= 2 here, so the result would certainly exceed 10**300.
            raise self._fail(node, x, "gives a result too large (over 10**300 in magnitude)")
        return base**exp

    def _eval(self, node: ast.expr, x: int) -> int:
        if isinstance(node, ast.Name):
            return x
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, x)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            left = self._eval(node.left, x)
            right = self._eval(node.right, x)
            op = node.op
            if isinstance(op, ast.Add):
                result = left + right
            elif isinstance(op, ast.Sub):
                result = left - right
            elif isinstance(op, ast.Mult):
                result = left * right
            elif isinstance(op, (ast.FloorDiv, ast.Mod)):
                if right == 0:
                    kind = "divides by zero" if isinstance(op, ast.FloorDiv) else "takes % by zero"
                    raise self._fail(node, x, kind)
                result = left // right if isinstance(op, ast.FloorDiv) else left % right
            elif isinstance(op, ast.Pow):
                result = self._power(left, right, node, x)
            else:  # pragma: no cover - excluded by _check
                raise TypeError(f"unexpected operator {op!r}")
            return self._bounded(result, node, x)
        raise TypeError(f"unexpected node {node!r}")  # pragma: no cover


def parse_function(source: str) -> IntFunction:
    """Parse and validate *source*; raise ExpressionError naming what is not allowed."""
    return IntFunction(source)
