"""One look for every figure, and the report's outputs: figures as PNG and PDF, tables as CSV, Markdown
and LaTeX.

Each arm keeps one colour, marker and line style in every figure: the colour and marker are its objective's
(``clip-stress`` is drawn like ``clip``), the line style tells the variant (solid for the objective itself,
dashed for ``-stress``, dotted for ``-onpolicy``, dash-dot-dotted for ``-sgd``), a parameter in the label
(``clip-eps0``, ``pspo-a0.9``) pales the colour (the smaller the value, the paler), the shuffled-advantage
control (the noise floor) is grey and dash-dotted, and each model's starting point is black.
"""

from __future__ import annotations

import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pandas as pd

from pspo_repro.analysis.results import START, base_objective, is_control
from pspo_repro.study import rundir

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
COLOURS = {
    "clip": "#0072B2",
    "pspo": "#D55E00",
    "sigmoid": "#009E73",
    "topr": "#CC79A7",
    "noclip": "#E69F00",
    "cispo": "#56B4E9",
    "gspo": "#882255",
    "vespo": "#44AA99",
    "dualclip": "#999933",
    START: "#000000",
}
CONTROL_COLOUR = "#8C8C8C"
OTHER_COLOURS = ("#56B4E9", "#882255", "#44AA99", "#999933", "#AA4499", "#332288")
MARKERS = {"clip": "o", "pspo": "s", "sigmoid": "^", "topr": "D", "noclip": "v", START: "*"}
LINESTYLES = {"stress": "--", "onpolicy": ":", "shuffled": "-.", "sgd": (0, (5, 1, 1, 1, 1, 1))}
# how far a parameter variant's colour is blended towards white, by the parameter's value
PALENESS = {0.0: 0.65, 0.1: 0.45, 0.2: 0.35, 0.4: 0.3, 0.9: 0.12}
_PARAMETER_RE = re.compile(r"(?:eps|a)(\d+(?:\.\d+)?)")
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
    parts = variant.split("-") if variant else []
    linestyle = next((LINESTYLES[p] for p in parts if p in LINESTYLES), "-")
    values = [float(m.group(1)) for p in parts if (m := _PARAMETER_RE.fullmatch(p))]
    if values:
        colour = _paler(colour, PALENESS.get(values[0], 0.4))
    return {"color": colour, "marker": MARKERS.get(base, "X"), "linestyle": linestyle}


def _paler(colour: str, amount: float) -> str:
    """``colour`` (#rrggbb) blended towards white by ``amount`` (0: unchanged, 1: white)."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in rgb)


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


def log_above(ax: Any, linear_below: float) -> None:
    """A y axis linear up to ``linear_below`` and logarithmic above, ticks in plain numbers: for values orders
    of magnitude apart (a clip's 1% of zeroed gradients beside an eps-0 clip's 40%) that include 0."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("symlog", linthresh=linear_below)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
