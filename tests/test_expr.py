"""Tests for iclprobe.expr: whitelisted, bounded integer expressions in x."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from iclprobe.expr import ExpressionError, IntFunction, parse_function

XS = range(-20, 21)


@pytest.mark.parametrize(
    ("source", "reference"),
    [
        ("x", lambda x: x),
        ("x + 5", lambda x: x + 5),
        ("2*x + 3", lambda x: 2 * x + 3),
        ("(x // 3) % 7", lambda x: (x // 3) % 7),
        ("x**2 - 1", lambda x: x**2 - 1),
        ("-x + 100", lambda x: -x + 100),
        ("+x - -3", lambda x: x + 3),
        ("x % 5", lambda x: x % 5),
        ("x // -4", lambda x: x // -4),
        ("2**3**2", lambda x: 512),
        ("-2**2", lambda x: -4),
        ("(x*x) ** 2", lambda x: x**4),
        ("0x10 * x + 1_000", lambda x: 16 * x + 1000),
        ("  3*x  ", lambda x: 3 * x),
        ("7", lambda x: 7),
    ],
)
def test_valid_expressions_match_python(source, reference):
    f = parse_function(source)
    assert isinstance(f, IntFunction)
    assert f.source == source.strip()
    for x in XS:
        got = f(x)
        assert type(got) is int
        assert got == reference(x), (source, x)


def test_powers_of_small_bases_with_large_exponents():
    assert parse_function("(-1)**x").values([0, 1, 2, 10**6 + 1]) == [1, -1, 1, -1]
    assert parse_function("1**x").values([0, 10**9]) == [1, 1]
    assert parse_function("0**x").values([0, 5, 10**9]) == [1, 0, 0]
    assert parse_function("x**0")(0) == 1


def test_values_on_list_and_range():
    f = parse_function("x**2 - 1")
    assert f.values([0, 1, 2, 3, -4]) == [-1, 0, 3, 8, 15]
    assert f.values(range(3)) == [-1, 0, 3]
    assert f.values([]) == []


def test_numpy_integers_are_exact():
    f = parse_function("x*x*x")
    x = np.int64(3_000_000)
    got = f(x)
    assert type(got) is int
    assert got == 27 * 10**18  # would overflow int64
    assert f.values(np.arange(3)) == [0, 1, 8]


def test_non_integer_x_is_rejected():
    f = parse_function("x + 1")
    with pytest.raises(TypeError, match="x must be an integer, got float"):
        f(1.5)
    with pytest.raises(TypeError, match="x must be an integer, got bool"):
        f(True)
    with pytest.raises(TypeError, match=r"xs\[1\]: x must be an integer"):
        f.values([1, "2"])


def test_equality_hash_and_pickle():
    a, b = parse_function("2*x + 3"), parse_function(" 2*x + 3\n")
    assert a == b and hash(a) == hash(b)
    assert a != parse_function("2*x+3")
    c = pickle.loads(pickle.dumps(a))
    assert c == a and c(4) == 11
    assert "2*x + 3" in repr(a)


def test_direct_construction_is_validated():
    assert IntFunction("x + 1")(1) == 2
    with pytest.raises(ExpressionError, match="calls are not allowed"):
        IntFunction("abs(x)")


# --- rejected at parse time -------------------------------------------------------------

ALLOWED_TEXT = "allowed: integer literals, the name x"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("abs(x)", 'calls are not allowed ("abs(x)")'),
        ("x + abs(x)", 'calls are not allowed ("abs(x)")'),
        ("__import__('os')", "calls are not allowed"),
        ("x.real", 'attribute access is not allowed ("x.real")'),
        ("x.__class__", 'attribute access is not allowed ("x.__class__")'),
        ("x > 3", 'comparisons are not allowed ("x > 3")'),
        ("x == 1", "comparisons are not allowed"),
        ("lambda: 1", 'lambda expressions are not allowed ("lambda: 1")'),
        ("(lambda y: y)(x)", "calls are not allowed"),
        ("[1, 2][x]", 'subscripts are not allowed ("[1, 2][x]")'),
        ('f"{x}"', 'f-strings are not allowed ("f"{x}"")'),
        ("1.5 * x", 'float literals (use integers) are not allowed ("1.5")'),
        ("x + 1e3", 'float literals (use integers) are not allowed ("1e3")'),
        ("True + x", 'boolean literals are not allowed ("True")'),
        ("x + 'a'", "string literals are not allowed (\"'a'\")"),
        ("2j", 'complex literals are not allowed ("2j")'),
        ("x + None", 'None is not allowed ("None")'),
        ("x if x else 1", "conditional expressions are not allowed"),
        ("x and 1", "boolean operators (and/or) are not allowed"),
        ("(x, 1)", 'tuples are not allowed ("(x, 1)")'),
        ("[x]", "lists are not allowed"),
        ("(y := 3)", "assignment expressions (:=) are not allowed"),
        ("[x for x in ()]", "comprehensions are not allowed"),
        ("x << 2", "operator '<<' is not allowed (\"x << 2\")"),
        ("x & 3", "operator '&' is not allowed"),
        ("~x", "operator '~' is not allowed (\"~x\")"),
        ("not x", "operator 'not' is not allowed"),
        ("await x", "await expressions are not allowed"),
    ],
)
def test_rejected_constructs_name_the_piece(source, expected):
    with pytest.raises(ExpressionError) as info:
        parse_function(source)
    message = str(info.value)
    assert expected in message
    assert f'function "{source}"' in message
    assert ALLOWED_TEXT in message


def test_unknown_name():
    with pytest.raises(ExpressionError) as info:
        parse_function("2*y")
    assert str(info.value) == "unknown name 'y' in function \"2*y\": only x is allowed"
    with pytest.raises(ExpressionError, match="unknown name 'X'"):
        parse_function("X + 1")
    with pytest.raises(ExpressionError, match="unknown name '__builtins__'"):
        parse_function("__builtins__")


def test_true_division_suggests_floor_division():
    with pytest.raises(ExpressionError) as info:
        parse_function("x / 2")
    message = str(info.value)
    assert "operator '/' is not allowed" in message
    assert 'function "x / 2"' in message
    assert "use // for integer division" in message


@pytest.mark.parametrize("source", ["2*", "x +* 3", "(x + 1", "x = 3", "import os", "x; x"])
def test_syntax_errors(source):
    with pytest.raises(ExpressionError) as info:
        parse_function(source)
    message = str(info.value)
    assert f'function "{source}" is not a valid expression' in message
    assert "integer expression in x" in message


def test_syntax_error_includes_python_message():
    with pytest.raises(ExpressionError, match="invalid syntax"):
        parse_function("x +* 3")
    with pytest.raises(ExpressionError, match="was never closed"):
        parse_function("(x + 1")


@pytest.mark.parametrize("source", ["", "   ", "\n"])
def test_empty_expression(source):
    with pytest.raises(ExpressionError, match="is empty: write an integer expression in x"):
        parse_function(source)


@pytest.mark.parametrize("source", [None, 3, 2.5, b"x", ["x"]])
def test_non_string_input(source):
    with pytest.raises(ExpressionError) as info:
        parse_function(source)
    message = str(info.value)
    assert "must be a string holding an integer expression in x" in message
    assert type(source).__name__ in message


def test_deep_nesting_is_refused_not_crashing():
    with pytest.raises(ExpressionError, match="too complex"):
        parse_function("-" * 500 + "x")
    with pytest.raises(ExpressionError, match="too complex"):
        parse_function("+".join(["x"] * 200))
    with pytest.raises(ExpressionError, match="could not be parsed|not a valid expression"):
        parse_function("-" * 200_000 + "x")
    with pytest.raises(ExpressionError, match="not a valid expression"):
        parse_function("(" * 300 + "x" + ")" * 300)


def test_huge_literal_is_refused():
    with pytest.raises(ExpressionError, match="integer literal too large"):
        parse_function("1" + "0" * 400)
    with pytest.raises(ExpressionError, match="not a valid expression"):
        parse_function("1" * 5000)  # beyond Python's int-string conversion limit


# --- bounded evaluation -----------------------------------------------------------------


def test_tower_of_powers_fails_fast():
    f = parse_function("2**x**x")
    assert f(2) == 16
    # Must raise quickly rather than try to compute 2**(10**10).
    with pytest.raises(ExpressionError) as info:
        f(10)
    message = str(info.value)
    assert 'function "2**x**x"' in message
    assert "too large" in message
    assert "x = 10" in message


@pytest.mark.parametrize("source", ["x**x", "10**x", "x**x**x", "(x*x)**(x*x)", "3**(x**9)"])
def test_large_powers_fail_fast(source):
    f = parse_function(source)
    for x in (301, 10_000, 10**9):
        with pytest.raises(ExpressionError, match=f"too large.*at x = {x}"):
            f(x)


def test_intermediate_results_are_capped():
    f = parse_function("x*x*x*x")
    assert f(10**75) == 10**300
    with pytest.raises(ExpressionError) as info:
        f(10**80)
    message = str(info.value)
    assert "gives a result too large" in message
    assert "10**300" in message
    assert f"x = {10**80}" in message
    with pytest.raises(ExpressionError, match="x is larger than 10\\*\\*300"):
        parse_function("x // x")(10**301)


def test_result_just_under_cap_is_fine():
    assert parse_function("10**x")(300) == 10**300
    assert parse_function("2**x")(996) == 2**996
    with pytest.raises(ExpressionError, match="too large"):
        parse_function("2**x")(1000)


def test_negative_exponent():
    f = parse_function("2**(x - 5)")
    assert f(5) == 1
    with pytest.raises(ExpressionError) as info:
        f(3)
    message = str(info.value)
    assert "negative power" in message
    assert "would not be an integer" in message
    assert "x = 3" in message
    with pytest.raises(ExpressionError, match="negative power"):
        parse_function("1**x")(-1)


def test_division_by_zero_names_x():
    f = parse_function("100 // (x - 3)")
    assert f(4) == 100
    with pytest.raises(ExpressionError) as info:
        f(3)
    assert str(info.value).startswith('function "100 // (x - 3)" divides by zero at x = 3')


def test_modulo_by_zero_names_x():
    f = parse_function("x % (x - 7)")
    with pytest.raises(ExpressionError) as info:
        f(7)
    message = str(info.value)
    assert 'function "x % (x - 7)"' in message
    assert "by zero at x = 7" in message


def test_values_error_names_failing_x():
    f = parse_function("100 // (x - 3)")
    assert f.values([0, 1, 2]) == [-34, -50, -100]
    with pytest.raises(ExpressionError, match="divides by zero at x = 3"):
        f.values(range(10))
    with pytest.raises(ExpressionError, match="too large.*at x = 1000"):
        parse_function("2**x").values([1, 2, 1000, 3])
