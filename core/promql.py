"""An alert's own PromQL, read from its ``generatorURL``, with its top-level comparison taken off.

Kept at an incident's close (``core/collected.py``): an alert rule's expression keeps only the
series past its threshold (``node_load1 > 2``); the chart of an incident needs the values below it
too, so the comparison goes and its number becomes the chart's threshold line::

    strip_comparison("node_load1 > 2")                      # node_load1, threshold 2, ">"
    strip_comparison("rate(x[5m]) > 0.9 and on(job) up")    # rate(x[5m]) and on(job) up, 0.9
    strip_comparison("0.1 > avail / size")                  # avail / size, 0.1, "<"

PromQL's precedence decides what "top level" means: ``or`` binds loosest, then ``and``/``unless``,
then the comparisons, so ``a > 1 and b`` is ``(a > 1) and b``. The left operand of ``and`` and
``unless`` is the alert's metric (their right operand only filters it, and keeps its comparison);
both operands of ``or`` are alternatives, and each loses its comparison. Parentheses around the
whole are looked into; ``bool`` and vector matching (``on``, ``ignoring``, ``group_left``) are
understood. Where both sides of a comparison are series (``avail < size * 0.1``) the left one is
charted and there is no threshold line. An expression this cannot read (unbalanced brackets) is
used as it is: Prometheus is the judge of PromQL.

Only the *text* comes from the alert: the host named in ``generatorURL`` is alert text and is never
contacted; the query goes to the configured ``monitoring.prometheus_url``.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

MAX_EXPRESSION = 4000  # longer than any rule worth charting; a bigger "expression" is not read

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
  | (?P<cmp>==|!=|>=|<=|>|<)
  | (?P<word>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:[a-z]+\d*)*)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)
_PAIRS = {")": "(", "]": "[", "}": "{"}
_MIRROR = {">": "<", "<": ">", ">=": "<=", "<=": ">=", "==": "==", "!=": "!="}
_SET_OPERATORS = ("and", "or", "unless")


@dataclass(frozen=True)
class Stripped:
    """What to chart: ``query``; the comparison's number (``threshold``, None when it was not a
    number or there was none) and its operator oriented as ``query OP threshold``."""

    query: str
    threshold: float | None = None
    comparison: str | None = None


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int
    depth: int  # brackets open before it


class Unreadable(ValueError):
    """Brackets that do not pair up: not read here, sent as it is."""


def expression_of(generator_url: str) -> str | None:
    """The PromQL of a Prometheus ``generatorURL`` (``/graph?g0.expr=...``), else None.

    Only the query string is read; the URL's host is alert text and is never contacted."""
    if not generator_url:
        return None
    try:
        query = urlsplit(generator_url).query
    except ValueError:
        return None
    params = parse_qs(query, keep_blank_values=False)
    for name in ("g0.expr", "expr"):
        values = params.get(name)
        if values and values[0].strip() and len(values[0]) <= MAX_EXPRESSION:
            return values[0].strip()
    return None


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    stack: list[str] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "other"
        if kind in ("space", "comment"):
            continue
        value = match.group()
        if kind == "close":
            if not stack or stack[-1] != _PAIRS[value]:
                raise Unreadable(f"unbalanced {value!r} at {match.start()}")
            stack.pop()
            out.append(_Token(kind, value, match.start(), match.end(), len(stack)))
            continue
        out.append(_Token(kind, value, match.start(), match.end(), len(stack)))
        if kind == "open":
            stack.append(value)
    if stack:
        raise Unreadable(f"unclosed {stack[-1]!r}")
    return out


def _is_set_operator(token: _Token, names: tuple[str, ...]) -> bool:
    return token.depth == 0 and token.kind == "word" and token.text.lower() in names


def _last(tokens: list[_Token], match: Callable[[_Token], bool]) -> int | None:
    for i in range(len(tokens) - 1, 0, -1):  # an operator is never the first token
        if match(tokens[i]):
            return i
    return None


def _operand_start(tokens: list[_Token], i: int) -> int:
    """Index of the first token of the right operand after the operator at ``i`` (past ``bool``,
    ``on(...)``/``ignoring(...)`` and ``group_left``/``group_right`` with or without labels)."""
    j = i + 1
    while j < len(tokens) and tokens[j].kind == "word" and tokens[j].text.lower() in (
            "bool", "on", "ignoring", "group_left", "group_right"):
        j += 1
        if tokens[j - 1].text.lower() != "bool" and j < len(tokens) and tokens[j].kind == "open" and tokens[j].text == "(":
            depth = tokens[j].depth
            j += 1
            while j < len(tokens) and not (tokens[j].kind == "close" and tokens[j].depth == depth):
                j += 1
            j += 1
    return j


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Mod: operator.mod, ast.Pow: operator.pow}


def number(text: str) -> float | None:
    """A PromQL number literal or arithmetic of literals (``2``, ``-0.5``, ``0x1F``, ``1024 * 1024``,
    ``Inf``), else None. Evaluated from its syntax tree: nothing is executed."""
    text = text.strip()
    if not text or len(text) > 200:
        return None
    python = re.sub(r"0[xX][0-9a-fA-F]+", lambda m: str(int(m.group(), 16)), text)
    python = re.sub(r"(?i)\binf\b", "1e999", python)
    python = re.sub(r"(?i)\bnan\b", "(1e999-1e999)", python)
    if not re.fullmatch(r"[0-9.eE+\-*/%^()\s]+", python):
        return None
    python = python.replace("^", "**")
    try:
        tree = ast.parse(python, mode="eval")
    except SyntaxError:
        return None

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            return _BINARY[type(node.op)](left, right)
        raise ValueError(f"not a number: {ast.dump(node)[:60]}")
    try:
        result = value(tree)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None if math.isnan(result) else result


def _text(source: str, tokens: list[_Token], start: int, end: int) -> str:
    """The source text of ``tokens[start:end]`` (comments between them included)."""
    if start >= end:
        return ""
    return source[tokens[start].start:tokens[end - 1].end]


def strip_comparison(expression: str) -> Stripped:
    """``expression`` without its top-level comparison, and that comparison's number (module doc)."""
    try:
        return _strip(expression)
    except Unreadable:
        return Stripped(expression.strip())


def _strip(source: str) -> Stripped:
    tokens = _tokens(source)
    if not tokens:
        return Stripped(source.strip())
    whole = Stripped(_text(source, tokens, 0, len(tokens)))
    i = _last(tokens, lambda t: _is_set_operator(t, ("or",)))
    if i is not None:
        j = _operand_start(tokens, i)
        left, right = _strip(_text(source, tokens, 0, i)), _strip(_text(source, tokens, j, len(tokens)))
        same = left.threshold == right.threshold and left.comparison == right.comparison
        return Stripped(f"{left.query} {_text(source, tokens, i, j)} {right.query}",
                        left.threshold if same else None, left.comparison if same else None)
    i = _last(tokens, lambda t: _is_set_operator(t, ("and", "unless")))
    if i is not None:
        left = _strip(_text(source, tokens, 0, i))
        return Stripped(f"{left.query} {_text(source, tokens, i, len(tokens))}", left.threshold, left.comparison)
    i = _last(tokens, lambda t: t.depth == 0 and t.kind == "cmp")
    if i is not None:
        j = _operand_start(tokens, i)
        left, right, op = _text(source, tokens, 0, i), _text(source, tokens, j, len(tokens)), tokens[i].text
        if number(right) is not None:
            metric, threshold, comparison = left, number(right), op
        elif number(left) is not None:
            metric, threshold, comparison = right, number(left), _MIRROR[op]
        else:
            metric, threshold, comparison = left, None, op
        inner = _strip(metric)  # `(x > bool 2) == 1`: the comparison that matters is the inner one
        if inner.comparison is not None and inner.threshold is not None:
            return inner
        return Stripped(inner.query, threshold if threshold is not None and math.isfinite(threshold) else None,
                        comparison)
    if tokens[0].text == "(" and tokens[-1].text == ")" and all(t.depth > 0 for t in tokens[1:-1]):
        inner = _strip(_text(source, tokens, 1, len(tokens) - 1))
        if inner.comparison is not None:
            return inner
    return whole
