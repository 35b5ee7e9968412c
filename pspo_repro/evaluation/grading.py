"""Answer extraction and correctness: strict, flexible, permissive and the paper's own grading of a completion.

Four metrics, reported side by side because the paper's "answer anywhere" accuracy can overstate
performance (names follow lm-evaluation-harness where it has them):

numeric answers (GSM8K, SVAMP, ASDiv; the prompt asks for a final ``#### N`` line)
    strict      the number right after the FIRST ``####`` (whitespace and a ``$`` allowed in between,
                as in ``####18``, ``#### $1,000``) equals the gold: lm-eval's ``strict-match``.
    flexible    the LAST number in the completion equals the gold: lm-eval's ``flexible-extract``.
    permissive  some number anywhere in the completion equals the gold ("answer anywhere").
latex answers (MATH, MATH-500; the prompt asks for ``\\boxed{}``)
    strict      the content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) is equivalent to the gold.
    flexible    the first of: last boxed content, the ``####`` answer, the last inline math segment
                (``$...$``, ``\\(...\\)``, ``\\[...\\]``), the last number written in prose (numbers
                inside LaTeX such as ``\\frac{14}{3}`` are never read on their own).
    permissive  any of those candidates (every boxed content, the ``####`` answer, every math segment
                and prose number, from the end, at most ``_MAX_CANDIDATES``) is equivalent to the gold;
                all are tried by the fast path, the ``_MAX_MV_CANDIDATES`` most final ones of at most
                ``_MAX_MV_PERMISSIVE`` characters by math-verify.

every benchmark
    paper       the authors' grading (``_extract_final_answer`` in their ``maths_rewards.py``), applied as
                they applied it, to every benchmark and to the gold answer too: the whole rest of the line
                after the first ``####`` (found by ``####\\s*([^\\n]+)``, so ``\\s*`` may cross a newline)
                read as one number (commas removed; ``3/4``; a trailing ``%`` divides by 100; anything
                Python's ``float`` reads), else the LAST number-like token anywhere in the text; correct when
                both values exist and are equal (relative and absolute tolerance 1e-6), which is exactly
                when their reward exceeds 0.5. Their code then tried the line as a sympy expression, but
                through ``sympify(..., transformations=...)``, an argument sympy's ``sympify`` does not take
                (in their pinned sympy 1.13.1 as in later ones): the TypeError was caught, so that branch never
                ran and ``#### 5 + 3`` falls back to the last number, 3. It is reproduced as it ran.
                Note that on MATH answers this reads ``\\frac{14}{3}`` as 3.

Numbers are compared numerically (relative and absolute tolerance 1e-6) after removing thousands
separators, ``$``, ``%`` and trailing units; ``3/4`` and ``\\frac{3}{4}`` are fractions. A number is a
whole token: gold 18 matches "18.0" or "$18" but not "180" or "1.8". LaTeX answers are compared by a
fast path (identical after light normalisation, or both plain numbers), then by math-verify.

Gold answers that are not numbers in a numeric benchmark (ASDiv has "3:4", "Yes", names) are compared as
normalised text: strict uses the whole ``####`` line, flexible the ``####`` line else the last line,
permissive a whole-word occurrence anywhere.

Grading never raises on any completion and bounds its work: texts are cut to ``_MAX_TEXT`` characters
(head and tail kept), regexes have bounded repetition, brace matching is iterative, number tokens of
more than ``_MAX_DIGITS`` digits are not numbers, and only short candidates reach math-verify, through
the cost screens and deadlines of :mod:`pspo_repro.evaluation.verify_guard`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
from dataclasses import dataclass
from fractions import Fraction

from pspo_repro.evaluation import verify_guard

KINDS = ("numeric", "latex")
METRICS = ("strict", "flexible", "permissive", "paper")

# Work bounds (see the module docstring).
_MAX_TEXT = 100_000  # characters of a completion that are graded (head and tail halves)
_MAX_DIGITS = 300  # a token with more digits is not a number (floats overflow near 309 digits anyway)
_MAX_NUMBER_TEXT = 300  # parse_number gives up on longer strings
_MAX_BOXED_TRIES = 50  # unclosed \boxed{ occurrences skipped before giving up
_MAX_CANDIDATE = verify_guard.MAX_EXPRESSION  # longest candidate (characters) handed to math-verify
_MAX_CANDIDATES = 64  # permissive latex: candidates compared by the fast path
_MAX_MV_CANDIDATES = 4  # permissive latex: candidates compared by math-verify
_MAX_MV_PERMISSIVE = 100  # permissive latex: longest candidate for math-verify (derivations are longer)
_MAX_LATEX_SCAN = 20_000  # permissive/flexible latex: characters (the tail) searched for math segments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grade:
    """The four verdicts for one completion, and what each one extracted."""

    strict: bool
    flexible: bool
    permissive: bool
    strict_answer: str | None  # what strict judged (None if the format was not there)
    flexible_answer: str | None
    permissive_answer: str | None  # the matching span found, or None
    paper: bool = False
    paper_answer: str | None = None  # the value the authors' extraction read, as text

    def as_dict(self) -> dict:
        """A plain dict of the eight fields."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- numbers

# One number token: thousands-grouped or plain digits, optional decimals, optional "/denominator",
# optional sign and dollar sign. Bounded repetition keeps matching linear on adversarial strings.
_CORE = r"(?:\d{1,3}(?:,\d{3}){1,12}(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_TOKEN = rf"(?:[-−]\$?|\\?\$[-−]?)?(?:{_CORE})(?:/(?:{_CORE}))?"
_NUMBER_RE = re.compile(rf"(?<![\w.]){_TOKEN}")
_LEADING_RE = re.compile(rf"\s*(?:\\?\$\s?)?({_TOKEN})")
_SCI_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d{1,6}")
_FRAC_RE = re.compile(r"\\[dt]?frac\{\s*([-−]?[\d.,]+)\s*\}\{\s*([-−]?[\d.,]+)\s*\}")
_SIMPLE_FRAC_RE = re.compile(r"([-−]?)\\[dt]?frac(\d)(\d)")
# what may follow a number in an answer: words, brackets, punctuation; no digits or operators
_UNIT_TAIL_RE = re.compile(r"[^\d+*/=^<>\\{}\[\]]{0,60}")
_WRAPPER_RE = re.compile(r"\\(?:boxed|fbox|text|textbf|mathrm|mbox)\s*\{")


def _token_value(token: str) -> float | None:
    """The value of one ``_NUMBER_RE`` token, or None when it has too many digits or a zero denominator."""
    if token.isdecimal() and len(token) <= _MAX_DIGITS:  # the common case, fast
        return float(token)
    token = token.replace("−", "-").replace("\\", "").replace("$", "").replace(",", "")
    if len(token) > _MAX_DIGITS and sum(ch.isdigit() for ch in token) > _MAX_DIGITS:
        return None
    try:
        if "/" in token:
            num, den = token.split("/", 1)
            den_value = float(den)
            if den_value == 0:
                return None
            value = float(num) / den_value
        else:
            value = float(token)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _unwrap(text: str) -> str:
    """Remove ``\\boxed{}``/``\\text{}``-style wrappers around a short answer (their braces included)."""
    for _ in range(4):
        match = _WRAPPER_RE.search(text)
        if match is None:
            return text
        end = _matching_brace(text, match.end() - 1)
        if end is None:
            return text
        text = text[: match.start()] + text[match.end() : end] + text[end + 1 :]
    return text


def parse_number(text: str) -> float | None:
    """The number a short answer string denotes, or None if it is not one number.

    Accepts thousands separators (``1,000``), ``$``/``\\$``, ``%``, a trailing period, trailing unit words
    (``9 (apples)``, ``18 dollars``), negatives, decimals, fractions (``3/4``, ``\\frac{3}{4}``) and
    scientific notation (``1e5``); returns None for non-finite values or more than 300 digits.
    """
    if not isinstance(text, str) or len(text) > _MAX_NUMBER_TEXT:
        return None
    text = _unwrap(text.strip()).strip()
    text = text.replace("{,}", ",").replace("\\!", "").replace("\\%", "%").replace("\\ ", " ").strip()
    text = _SIMPLE_FRAC_RE.sub(r"\1\2/\3", _FRAC_RE.sub(r"\1/\2", text))
    text = text.strip("$ ").rstrip(".").strip()
    if sci := _SCI_RE.fullmatch(text):
        try:
            value = float(sci.group(0))
        except (ValueError, OverflowError):
            return None
        return value if math.isfinite(value) else None
    match = _LEADING_RE.match(text)
    if match is None:
        return None
    rest = text[match.end() :]
    if rest.startswith("/") or not _UNIT_TAIL_RE.fullmatch(rest):
        return None
    if rest and not rest[0].isspace() and rest[0] not in "%(.),;:?":
        # "18x", "3.5a" and "5!" are expressions, not numbers with a unit
        return None
    return _token_value(match.group(1))


def numbers_equal(a: str, b: str, tol: float = 1e-6) -> bool:
    """Whether two answer strings denote the same number (relative and absolute tolerance ``tol``)."""
    x, y = parse_number(a), parse_number(b)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=tol, abs_tol=tol)


def _close(x: float | None, y: float | None, tol: float = 1e-6) -> bool:
    return x is not None and y is not None and math.isclose(x, y, rel_tol=tol, abs_tol=tol)


def last_number(text: str) -> str | None:
    """The last number token in ``text`` (as written, e.g. ``"$1,000"``), or None."""
    if not isinstance(text, str):
        return None
    tokens = _NUMBER_RE.findall(_bounded(text))
    return tokens[-1] if tokens else None


def _bounded(text: str) -> str:
    """The text, or its head and tail halves when it exceeds ``_MAX_TEXT`` characters."""
    if len(text) <= _MAX_TEXT:
        return text
    half = _MAX_TEXT // 2
    return text[:half] + "\n" + text[-half:]


# ---------------------------------------------------------------- format extractors


def extract_hash_answer(text: str) -> str | None:
    """The text after the FIRST ``####`` up to the end of its line, stripped (None if no ``####``).

    Only that line counts: ``"####\\n18"`` gives ``""``, as in lm-evaluation-harness's strict-match.
    """
    if not isinstance(text, str):
        return None
    text = _bounded(text)
    start = text.find("####")
    if start < 0:
        return None
    rest = text[start + 4 :].lstrip("# \t")
    end = rest.find("\n")
    line = (rest if end < 0 else rest[:end]).strip()
    return line[:_MAX_CANDIDATE]


def _hash_number(answer: str | None) -> str | None:
    """The number token at the start of a ``####`` answer, or None (the strict format)."""
    if not answer:
        return None
    match = _LEADING_RE.match(answer)
    return match.group(1) if match else None


def _matching_brace(text: str, open_index: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_index`` (escaped braces skipped), or None."""
    depth = 0
    i = open_index
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


_BOXED_RE = re.compile(r"\\(?:boxed|fbox)")


def _boxed_spans(text: str, limit: int = _MAX_BOXED_TRIES) -> list[str]:
    """Contents of the ``\\boxed{...}``/``\\fbox{...}`` groups, LAST first (at most ``limit`` tried)."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    found: list[str] = []
    for pos in reversed(starts[-limit:]):
        j = pos
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            end = _matching_brace(text, j)
            if end is not None:
                found.append(text[j + 1 : end].strip())
        elif j > pos:  # "\boxed 5": the token up to the next space or dollar sign
            match = re.match(r"[^\s$]{1,100}", text[j:])
            if match:
                found.append(match.group(0))
    return found


def extract_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces handled."""
    if not isinstance(text, str):
        return None
    spans = _boxed_spans(_bounded(text))
    return spans[0] if spans else None


_MATH_SEGMENT_RE = re.compile(
    r"\$\$([^$]{1,300}?)\$\$|\$([^$]{1,300})\$|\\\((.{1,300}?)\\\)|\\\[(.{1,300}?)\\\]", re.DOTALL
)


def _math_segments(text: str) -> list[str]:
    """Inline and display math segments of the tail of ``text``, LAST first."""
    tail = text[-_MAX_LATEX_SCAN:]
    segments = [next(g for g in m.groups() if g is not None).strip() for m in _MATH_SEGMENT_RE.finditer(tail)]
    return [s for s in reversed(segments) if s]


def gold_from_solution(solution: str, kind: str) -> str:
    """The gold answer inside a reference solution: after ``####`` (numeric), the last box (latex)."""
    check_kind(kind)
    if kind == "numeric":
        answer = extract_hash_answer(solution)
        if not answer:
            raise ValueError(f"numeric solution has no '#### <answer>' line: {str(solution)[:80]!r}")
        return answer.replace(",", "")
    answer = extract_boxed(solution)
    if not answer:
        raise ValueError(f"latex solution has no non-empty \\boxed{{...}}: {str(solution)[:80]!r}")
    return answer


def check_kind(kind: str) -> None:
    """Raise a ValueError naming ``kind`` and the allowed kinds unless it is one of ``KINDS``."""
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; allowed kinds: {', '.join(KINDS)}")


# ---------------------------------------------------------------- numeric grading


_WORD_RE = re.compile(r"[^\w:/.\-]+")


def _norm_text(text: str) -> str:
    """Lower-case words of a non-numeric answer, LaTeX wrappers and punctuation removed."""
    text = _unwrap(text[:_MAX_CANDIDATE]).replace("$", " ").lower()
    return " ".join(_WORD_RE.sub(" ", text).split()).strip(" .:")


def _score_numeric(text: str, gold: str) -> Grade:
    gold_value = parse_number(gold)
    hash_answer = extract_hash_answer(text)
    if gold_value is None:
        return _score_text_gold(text, gold, hash_answer)
    strict_token = _hash_number(hash_answer)
    strict_answer = strict_token if strict_token is not None else (hash_answer or None)
    strict = strict_token is not None and _close(_token_value(strict_token), gold_value)

    tokens = _NUMBER_RE.findall(text)
    flexible_answer = tokens[-1] if tokens else None
    permissive_answer = None
    for token in tokens:
        if "/" in token:  # a fraction token "2/2" also shows the numbers 2 and 2
            parts = [token, *token.split("/", 1)]
            permissive_answer = next((p for p in parts if _close(_token_value(p), gold_value)), None)
        elif _close(_token_value(token), gold_value):
            permissive_answer = token
        if permissive_answer is not None:
            break
    flexible = flexible_answer is not None and _close(_token_value(flexible_answer), gold_value)
    return Grade(
        strict, flexible, permissive_answer is not None, strict_answer, flexible_answer, permissive_answer
    )


def _score_text_gold(text: str, gold: str, hash_answer: str | None) -> Grade:
    """Numeric benchmark, non-numeric gold ("3:4", "Yes"): normalised text comparison."""
    target = _norm_text(gold)
    if not target:
        return Grade(False, False, False, hash_answer, None, None)
    strict = hash_answer is not None and _norm_text(hash_answer) == target
    if hash_answer is not None:
        flexible_answer: str | None = hash_answer
    else:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        flexible_answer = lines[-1].strip()[:_MAX_CANDIDATE] if lines else None
    flexible = flexible_answer is not None and (
        _norm_text(flexible_answer) == target or _norm_text(flexible_answer).endswith(" " + target)
    )
    pattern = re.compile(rf"(?<![\w]){re.escape(target)}(?![\w])")
    found = pattern.search(_norm_text_long(text))
    permissive_answer = found.group(0) if found else None
    return Grade(strict, flexible, found is not None, hash_answer, flexible_answer, permissive_answer)


def _norm_text_long(text: str) -> str:
    return " ".join(_WORD_RE.sub(" ", text.replace("$", " ").lower()).split())


# ---------------------------------------------------------------- latex grading

_LATEX_DROP_RE = re.compile(
    r"\\(?:left|right)(?![a-zA-Z])|\\[!,;: ]|\\displaystyle|\^\{?\\circ\}?|\\%|%|\$|\s+|~"
)


def _norm_latex(text: str) -> str:
    """Light, safe normalisation for the exact-match fast path (never decides inequality)."""
    text = _unwrap(text[:_MAX_CANDIDATE])
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _LATEX_DROP_RE.sub("", text).rstrip(".")


@functools.lru_cache(maxsize=16384)
def _latex_equal(pred: str, gold: str) -> bool:
    """Whether a candidate answer is equivalent to the gold: fast paths first, then math-verify."""
    pred, gold = pred.strip(), gold.strip()
    if not pred or not gold:
        return False
    npred, ngold = _norm_latex(pred), _norm_latex(gold)
    if npred and npred == ngold:
        return True
    gold_value, pred_value = parse_number(gold), parse_number(pred)
    if gold_value is not None and pred_value is not None:
        return _close(pred_value, gold_value)
    return verify_guard.equivalent(pred, gold)


def _latex_candidates(text: str, hash_answer: str | None) -> list[str]:
    """Every answer-like span of a completion, most final first, de-duplicated and bounded."""
    tail = text[-_MAX_LATEX_SCAN:]
    candidates = _boxed_spans(text)
    if hash_answer:
        candidates.append(hash_answer)
    candidates += _math_segments(tail)
    candidates += _prose_numbers(tail)
    seen: set[str] = set()
    unique = []
    for candidate in candidates:
        if candidate and candidate not in seen and len(candidate) <= _MAX_CANDIDATE:
            seen.add(candidate)
            unique.append(candidate)
        if len(unique) >= _MAX_CANDIDATES:
            break
    return unique


def _latex_flexible_answer(text: str, boxed: str | None, hash_answer: str | None) -> str | None:
    """Last boxed content, else the ``####`` answer, else the last math segment, else the last number."""
    if boxed is not None:
        return boxed
    if hash_answer:
        return hash_answer
    segments = _math_segments(text)
    if segments:
        return segments[0]
    numbers = _prose_numbers(text)
    return numbers[0] if numbers else None


def _prose_numbers(text: str) -> list[str]:
    """Numbers written as prose in the tail of ``text``, LAST first.

    Math segments are blanked and tokens touching LaTeX syntax (``{3}``, ``^2``, ``_1``) are skipped,
    so that ``\\frac{14}{3}`` never yields 3 or 14.
    """
    tail = _MATH_SEGMENT_RE.sub(" ", text[-_MAX_LATEX_SCAN:])
    numbers = []
    for match in _NUMBER_RE.finditer(tail):
        before = tail[match.start() - 1] if match.start() > 0 else " "
        after = tail[match.end()] if match.end() < len(tail) else " "
        if before not in "{^_}" and after not in "}^_{":
            numbers.append(match.group(0))
    return numbers[::-1]


def _score_latex(text: str, gold: str) -> Grade:
    boxed = _boxed_spans(text)
    strict_answer = boxed[0] if boxed else None
    strict = strict_answer is not None and _latex_equal(strict_answer, gold)

    hash_answer = extract_hash_answer(text)
    flexible_answer = _latex_flexible_answer(text, strict_answer, hash_answer)
    flexible = strict if flexible_answer == strict_answer else _latex_equal(flexible_answer or "", gold)

    permissive_answer = None
    if strict:
        permissive_answer = strict_answer
    elif flexible:
        permissive_answer = flexible_answer
    else:
        candidates = _latex_candidates(text, hash_answer)
        ngold = _norm_latex(gold)
        gold_value = parse_number(gold)
        # fast paths over every candidate, then math-verify on the few most final non-trivial ones
        for candidate in candidates:
            value = parse_number(candidate)
            if (ngold and _norm_latex(candidate) == ngold) or _close(value, gold_value):
                permissive_answer = candidate
                break
        if permissive_answer is None:
            slow = [
                c
                for c in candidates
                if len(c) <= _MAX_MV_PERMISSIVE
                and c not in (strict_answer, flexible_answer)  # already compared above
                and (gold_value is None or parse_number(c) is None)
            ]
            permissive_answer = next((c for c in slow[:_MAX_MV_CANDIDATES] if _latex_equal(c, gold)), None)
    return Grade(
        strict, flexible, permissive_answer is not None, strict_answer, flexible_answer, permissive_answer
    )


# ---------------------------------------------------------------- public scoring


def score(completion: str, gold: str, kind: str = "numeric") -> Grade:
    """Grade one completion against the gold answer under all four metrics (never raises on text)."""
    check_kind(kind)
    text = _bounded(completion) if isinstance(completion, str) else ""
    gold = gold if isinstance(gold, str) else str(gold)
    try:
        grade = _score_latex(text, gold) if kind == "latex" else _score_numeric(text, gold)
        answer = paper_value(text)
        return dataclasses.replace(
            grade, paper=paper_equal(answer, paper_value(gold)), paper_answer=_value_text(answer)
        )
    except Exception:  # a grader bug must not stop an evaluation: log it, grade incorrect
        logger.warning("grading failed for a completion of %d characters; graded incorrect", len(text))
        return Grade(False, False, False, None, None, None)


# ---------------------------------------------------------------- the paper's grading

# The authors' patterns (maths_rewards.py), unchanged: the #### line, a number-like token, the format bonus.
_PAPER_HASH_RE = re.compile(r"####\s*([^\n]+)")
_PAPER_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?%?")
_PAPER_BONUS_RE = re.compile(r"####\s*\d+[^\n]+")
_LETTER_RE = re.compile(r"[a-zA-Z]")


def _paper_number(token: str) -> float | None:
    """The authors' ``_to_number``: ``1,234``, ``12.5``, ``3/4``, ``12.5%`` (a hundredth), or None."""
    s = token.strip()
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    if "/" in s and not _LETTER_RE.search(s):
        try:
            value = float(Fraction(s.replace(",", "")))
            return value / 100.0 if percent else value
        except (ValueError, ZeroDivisionError, OverflowError):
            pass
    try:
        value = float(s.replace(",", ""))
    except (ValueError, OverflowError):
        return None
    return value / 100.0 if percent else value


def paper_value(text: str) -> float | None:
    """The authors' extraction (``_extract_final_answer``): the rest of the first ``####`` line as a number,
    else the last number-like token anywhere; None when there is none (see the module docstring)."""
    if not isinstance(text, str):
        return None
    text = _bounded(text)
    match = _PAPER_HASH_RE.search(text)
    if match:
        value = _paper_number(match.group(1))
        if value is not None:
            return value
    last = None
    for last in _PAPER_NUMBER_RE.finditer(text):  # noqa: B007 - only the last match is wanted
        pass
    return _paper_number(last.group(0)) if last is not None else None


def paper_equal(answer: float | None, gold: float | None, tol: float = 1e-6) -> bool:
    """The authors' ``numeric_equal`` (exact, or relative and absolute tolerance ``tol``); False for None."""
    if answer is None or gold is None:
        return False
    return answer == gold or math.isclose(answer, gold, rel_tol=tol, abs_tol=tol)


def paper_format_bonus(text: str) -> bool:
    """Whether the authors' +0.05 applies: ``####``, optional whitespace, a digit, then at least one more
    character on that line (so ``#### 5`` at the end, ``#### -5`` and ``#### $5`` get none)."""
    return isinstance(text, str) and _PAPER_BONUS_RE.search(_bounded(text)) is not None


def _value_text(value: float | None) -> str | None:
    """A number as record text: integers without ``.0``, other values as Python writes them."""
    if value is None:
        return None
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def paper_answer(completion: str) -> str | None:
    """The value of :func:`paper_value` as text (``"42"``, ``"0.75"``), or None."""
    return _value_text(paper_value(completion))


def latex_answer(completion: str) -> str | None:
    """A LaTeX answer read leniently: the ``####`` answer, else the last boxed content, math segment or
    prose number (the shaped reward's reading of MATH-style completions)."""
    text = _bounded(completion) if isinstance(completion, str) else ""
    boxed = _boxed_spans(text)
    return extract_hash_answer(text) or _latex_flexible_answer(text, boxed[0] if boxed else None, None)


def latex_equal(answer: str, gold: str) -> bool:
    """Whether a LaTeX answer is equivalent to the gold (fast paths, then bounded math-verify)."""
    return _latex_equal(answer, gold)


def binary_reward(completion: str, gold: str, kind: str = "numeric", metric: str = "strict") -> float:
    """1.0 if ``metric`` (strict, flexible or permissive) grades the completion correct, else 0.0."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed metrics: {', '.join(METRICS)}")
    return float(getattr(score(completion, gold, kind), metric))
