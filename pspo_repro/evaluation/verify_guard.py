"""math-verify with bounded work: equivalence of two short LaTeX answers that never hangs or raises.

math-verify parses LaTeX without evaluating it (except ``\\binom``), but its comparison can run for ever
on inputs like ``2^{2^{2^{100}}}``. Three guards:

1. cost screens: candidates whose expressions would be astronomically costly (huge powers, factorials,
   binomials; sums, integrals, limits) never reach sympy (:func:`costly_text`, :func:`costly_expr`);
2. on the main thread, math-verify's own timeouts (``parsing_timeout``, ``timeout_seconds``), which
   use ``signal.alarm`` and raise in any other thread, are set to ``TIMEOUT_S``;
3. on other threads they are switched off and :func:`deadline` stops math-verify after ``TIMEOUT_S``
   with a per-thread trace function instead, so grading from worker threads is bounded too.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

MAX_EXPRESSION = 300  # longest answer (characters) handed to math-verify
TIMEOUT_S = 2  # seconds per math-verify parse and per verify (signal.alarm needs whole seconds)


_COSTLY_CMD_RE = re.compile(r"\\(?:binom|dbinom|tbinom|choose|Gamma|gamma|operatorname|zeros|ones|eye)|!")
_BIG_INT_RE = re.compile(r"\d{5,}")  # binomial(99999, 50000) alone takes about a second
_LONG_INT_RE = re.compile(r"\d{16,}")


def costly_text(text: str) -> bool:
    """Screen before parsing: too long, too deep, very long integers, or factorial-like of big numbers."""
    if len(text) > MAX_EXPRESSION or _LONG_INT_RE.search(text):
        return True
    depth = 0
    for ch in text:
        depth += ch == "{"
        depth -= ch == "}"
        if depth > 12:
            return True
    return bool(_COSTLY_CMD_RE.search(text) and _BIG_INT_RE.search(text))


def costly_expr(expr: Any) -> bool:
    """Screen after parsing: would evaluating or simplifying this expression blow up?

    Sums, products, integrals, limits and derivatives are never final answers, and sympy may try to
    evaluate them term by term, so they are screened out too.
    """
    import sympy

    calculus = (sympy.Sum, sympy.Product, sympy.Integral, sympy.Limit, sympy.Derivative)

    try:
        nodes = 0
        for node in sympy.preorder_traversal(expr):
            nodes += 1
            if nodes > 2_000:
                return True
            if isinstance(node, sympy.Pow):
                base, exp = node.args
                size = _magnitude(exp)
                if size is None:
                    return True
                if base.free_symbols:
                    if size > 200:
                        return True
                    continue
                base_size = _magnitude(base)
                if base_size is None or size * math.log10(max(2.0, base_size)) > 20_000:
                    return True
            elif isinstance(node, calculus):
                return True
            elif isinstance(node, (sympy.factorial, sympy.factorial2, sympy.gamma, sympy.binomial)):
                for arg in node.args:
                    size = _magnitude(arg)
                    if size is None or size > 5_000:
                        return True
    except Exception:  # anything unexpected while inspecting: do not risk it
        return True
    return False


def _magnitude(expr: Any) -> float | None:
    """abs(numeric value) of a symbol-free expression (cheaply, via mpmath), 0 when it has symbols."""
    if getattr(expr, "free_symbols", None):
        return 0.0
    try:
        value = complex(expr.evalf(15))
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    size = abs(value)
    return size if math.isfinite(size) else None


@functools.lru_cache(maxsize=1)
def _math_verify() -> Any:
    """math-verify is imported on first use: sympy makes it slow to import and numeric grading needs none of it."""
    import math_verify

    return math_verify


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class DeadlineExceeded(BaseException):
    """Raised inside math-verify by the worker-thread deadline.

    A BaseException, so that math-verify's own ``except Exception`` cannot swallow it and carry on
    (Python switches a trace function off once it raises, so a swallowed one would leave the rest untimed).
    """


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Off the main thread, stop the enclosed Python code after ``seconds`` (``DeadlineExceeded``).

    ``signal.alarm`` is unavailable there, so a per-thread trace function checks the clock at every
    Python function call (long single C calls, e.g. one huge integer product, are not interrupted;
    the cost screens keep those out). Nothing is installed on the main thread, where math-verify's
    signal timeouts apply, nor when a tracer (debugger, coverage) is already active.
    """
    if _on_main_thread() or sys.gettrace() is not None:
        yield
        return
    end = time.monotonic() + seconds

    def tracer(frame: Any, event: str, arg: Any) -> None:
        if time.monotonic() > end:
            raise DeadlineExceeded
        return None  # no line-level tracing: call events are enough and much cheaper

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(None)


def _mv_timeout() -> int | None:
    """math-verify's own (signal-based) timeout: only usable on the main thread."""
    return TIMEOUT_S if _on_main_thread() else None


@functools.lru_cache(maxsize=8192)
def mv_parse(latex: str) -> tuple:
    """math-verify's parse of one answer, boxed so that only the whole expression is read."""
    mv = _math_verify()
    config = [mv.LatexExtractionConfig(boxed_match_priority=0), mv.ExprExtractionConfig()]
    try:
        with deadline(TIMEOUT_S):
            parsed = mv.parse(f"\\boxed{{{latex}}}", extraction_config=config, parsing_timeout=_mv_timeout())
            if any(not isinstance(p, str) and costly_expr(p) for p in parsed):
                return tuple(p for p in parsed if isinstance(p, str))
            return tuple(parsed)
    except (Exception, DeadlineExceeded):  # math-verify returns [] on its own errors; this guards the rest
        return ()


def equivalent(pred: str, gold: str) -> bool:
    """math-verify's equivalence of two short LaTeX answers, after the cost screens (never raises)."""
    if costly_text(pred) or costly_text(gold):
        return False
    gold_parsed, pred_parsed = mv_parse(gold), mv_parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    try:
        with deadline(TIMEOUT_S):
            if "%" not in pred + gold and _clearly_different(gold_parsed, pred_parsed):
                return False
            return bool(
                _math_verify().verify(list(gold_parsed), list(pred_parsed), timeout_seconds=_mv_timeout())
            )
    except (Exception, DeadlineExceeded):
        return False


def _numeric_values(parsed: tuple) -> list[complex] | None:
    """Values of the parsed expressions when every one is a plain number (sets, tuples, equations, symbols:
    None)."""
    import sympy

    exprs = [p for p in parsed if not isinstance(p, str)]
    if not exprs or not all(isinstance(e, sympy.Expr) and e.is_number for e in exprs):
        return None
    try:
        values = [complex(e.evalf(20)) for e in exprs]
    except (TypeError, ValueError, OverflowError, ArithmeticError):  # oo, zoo, nan, ...
        return None
    return values if all(math.isfinite(abs(v)) for v in values) else None


def _clearly_different(gold_parsed: tuple, pred_parsed: tuple) -> bool:
    """Both sides are plain numbers whose values differ by far more than math-verify's 6-decimal rounding.

    Proving two expressions different is what makes math-verify slow on wrong answers (sympy tries to
    simplify their difference); evaluating both numerically decides those cases in about a millisecond.
    Percentages are left to math-verify, which may read 50 as 50% = 0.5.
    """
    gold_values, pred_values = _numeric_values(gold_parsed), _numeric_values(pred_parsed)
    if gold_values is None or pred_values is None:
        return False
    return not any(abs(g - p) <= 1e-4 * max(1.0, abs(g)) for g in gold_values for p in pred_values)
