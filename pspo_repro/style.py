"""One look for every figure, and the report's outputs: figures as PNG and PDF, tables as CSV, Markdown
and LaTeX.

Each arm keeps one colour, marker and line style in every figure: the colour and marker are its objective's
(``clip-stress`` is drawn like ``clip``), the line style tells the variant (solid for the objective itself,
dashed for ``-stress``, dotted for ``-onpolicy``), the shuffled-advantage control (the noise floor) is grey
and dash-dotted, and each model's starting point is black.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pandas as pd

from pspo_repro import rundir
from pspo_repro.results import START, base_objective, is_control

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
COLOURS = {
    "clip": "#0072B2",
    "pspo": "#D55E00",
    "sigmoid": "#009E73",
    "topr": "#CC79A7",
    "noclip": "#E69F00",
    START: "#000000",
}
CONTROL_COLOUR = "#8C8C8C"
OTHER_COLOURS = ("#56B4E9", "#882255", "#44AA99", "#999933", "#AA4499", "#332288")
MARKERS = {"clip": "o", "pspo": "s", "sigmoid": "^", "topr": "D", "noclip": "v", START: "*"}
LINESTYLES = {"": "-", "stress": "--", "onpolicy": ":", "shuffled": "-."}
FIGURE_WIDTH = 6.5  # inches: a paper's text width


def arm_style(label: str) -> dict[str, Any]:
    """Matplotlib keyword arguments (color, marker, linestyle) of an arm, the same in every figure."""
    base = base_objective(label)
    variant = label[len(base) + 1 :] if label != base else ""
    if is_control(label):
        colour = CONTROL_COLOUR
    elif base in COLOURS:
        colour = COLOURS[base]
    else:  # an arm no one has named yet: a colour fixed by its name
        colour = OTHER_COLOURS[zlib.crc32(base.encode()) % len(OTHER_COLOURS)]
    linestyle = LINESTYLES.get(variant.split("-")[-1], "-") if variant else "-"
    return {"color": colour, "marker": MARKERS.get(base, "X"), "linestyle": linestyle}


def palette(labels: list[str]) -> dict[str, str]:
    """Colours by arm, for seaborn's ``palette=``."""
    return {x: arm_style(x)["color"] for x in labels}


def use() -> None:
    """The figures' common look (seaborn's paper context, white grid, no top and right spines)."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    mpl.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 200,
            "savefig.bbox": "tight",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "pdf.fonttype": 42,  # TrueType: text stays text in the PDF
        }
    )


class Outputs:
    """Where a notebook writes: figures to ``figures_dir`` as PNG and PDF, tables to ``tables_dir`` as
    CSV, Markdown and LaTeX. Every file is written whole (temporary file, then rename)."""

    def __init__(self, tables_dir: str | os.PathLike, figures_dir: str | os.PathLike) -> None:
        self.tables_dir = Path(tables_dir)
        self.figures_dir = Path(figures_dir)

    def figure(self, fig: Any, name: str) -> list[Path]:
        """Save ``fig`` as ``<name>.png`` and ``<name>.pdf``."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for ext in ("png", "pdf"):
            path = self.figures_dir / f"{name}.{ext}"
            fd, tmp = tempfile.mkstemp(dir=self.figures_dir, prefix=f".{name}.", suffix=f".{ext}")
            os.close(fd)
            try:
                fig.savefig(tmp, format=ext)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            paths.append(path)
        return paths

    def table(self, frame: pd.DataFrame, name: str, caption: str = "") -> list[Path]:
        """Save ``frame`` as ``<name>.csv`` (full precision), ``<name>.md`` and ``<name>.tex``."""
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        texts = {
            "csv": frame.to_csv(index=False),
            "md": markdown(frame),
            "tex": frame.to_latex(
                index=False, escape=True, na_rep="", float_format="%.4g", caption=caption or None
            ),
        }
        paths = []
        for ext, text in texts.items():
            path = self.tables_dir / f"{name}.{ext}"
            rundir.atomic_write_text(path, text)
            paths.append(path)
        return paths


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``frame`` (floats to 4 significant digits, missing values empty)."""

    def cell(value: Any) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"
