"""The README's results block: the numbers a reader sees first, written from a study's result files and never
typed by hand.

``pspo-repro report`` replaces the text between ``<!-- results:<profile> -->`` and ``<!-- /results:<profile> -->``
in README.md with :func:`block` of ``results/<profile>/`` (when the README has those markers), and a test fails
when the committed README's block differs from what the committed results give.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from pspo_repro.study import rundir


def markers(profile: str) -> tuple[str, str]:
    """The comment lines that open and close a profile's block."""
    return f"<!-- results:{profile} -->", f"<!-- /results:{profile} -->"


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines())) if path.is_file() else []


def _audit_verdicts(audit: Path) -> list[str]:
    """The claim | verdict table at the top of audit.md."""
    if not audit.is_file():
        return []
    lines = audit.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| claim | verdict |")), None)
    if start is None:
        return []
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def _builds(results: Path) -> list[str]:
    """builds.md's rows on the test set (``synthetic``): each arm's start and gain per build."""
    path = results / "builds.md"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return lines[:2] + [line for line in lines[2:] if "| synthetic |" in line]


def _pp(value: str | None) -> str:
    return "" if value in (None, "") else f"{100 * float(value):+.1f}"


def _winners(results: Path) -> list[str]:
    rows = _rows(results / "phase-winners.csv")
    out = []
    for r in rows:
        lr = float(r["learning_rate"])
        where = f"reuse {r['reuse']}, lr {lr:g}"
        diff = f"{100 * float(r['difference']):+.1f} pp [{100 * float(r['ci_low']):+.1f}, {100 * float(r['ci_high']):+.1f}]"
        if r["winner"]:
            out.append(
                f"- {where}: **{r['winner']}** over {r['runner_up']}, {diff}, p (Holm) {float(r['p_holm']):.3f}"
            )
        elif r.get("tied_with_best"):
            out.append(f"- {where}: no winner (tied at the same accuracy: {r['tied_with_best']})")
        else:
            out.append(
                f"- {where}: no winner (best {r['best']} over {r['runner_up']}, {diff}; a difference under "
                f"{100 * float(r['mdd']):.0f} pp could be missed)"
            )
    return out


def block(results: Path) -> str:
    """The block's Markdown from ``results/<profile>/``: the headline, the builds, the phase diagram's winners,
    the audit's verdicts and the compute, each under the file it comes from."""
    results = Path(results)
    parts: list[str] = [
        f"*Written by `pspo-repro report` from `{results.as_posix()}/`; do not edit by hand.*",
        "",
    ]
    headline = results / "headline.md"
    if headline.is_file():
        parts += ["**Headline** (`headline.md`):", "", headline.read_text().rstrip("\n"), ""]
    builds = _builds(results)
    if builds:
        parts += [
            "**Each build's start and each arm's gain on the test set** (`builds.md`):",
            "",
            *builds,
            "",
        ]
    winners = _winners(results)
    if winners:
        parts += [
            "**Who wins where in the phase diagram** (`phase-winners.csv`, `phase.md`):",
            "",
            *winners,
            "",
        ]
    verdicts = _audit_verdicts(results / "audit.md")
    if verdicts:
        parts += ["**The claims audit** (`audit.md`):", "", *verdicts, ""]
    timing = results / "timing.md"
    if timing.is_file():
        parts += [
            "**Compute** (`timing.md`, core-minutes summed over tasks):",
            "",
            timing.read_text().rstrip("\n"),
            "",
        ]
    return "\n".join(parts).rstrip("\n") + "\n"


def current(readme: Path, profile: str) -> str | None:
    """The block between the profile's markers in the README (None without markers)."""
    begin, end = markers(profile)
    m = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), Path(readme).read_text(), flags=re.S)
    return m.group(1) if m else None


def update(readme: Path, profile: str, results: Path) -> bool:
    """Replace the profile's block in the README with :func:`block` of ``results``; False without markers."""
    if current(readme, profile) is None:
        return False
    begin, end = markers(profile)
    text = Path(readme).read_text()
    new = block(results)
    text = re.sub(
        re.escape(begin) + r"\n.*?" + re.escape(end), lambda _: f"{begin}\n{new}{end}", text, flags=re.S
    )
    rundir.atomic_write_text(Path(readme), text)
    return True
