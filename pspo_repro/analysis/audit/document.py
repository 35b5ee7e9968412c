"""The claims audit: each claim about gradients and trust regions, tested on a study's runs, with a verdict.

``results/<study>/audit.md`` (and its PNG figures) is written from the study's run folders (probes,
validation, training logs, evaluation summaries) and from ``identities.json``, the exact identities
measured on real training batches of the study's own runs (:mod:`pspo_repro.analysis.identities`, computed once and
kept beside the audit). Every number in it comes from those files; every verdict is decided by the rule
written in the section's code and printed beside it. A section whose runs are absent says which are
missing. Regenerating from the same files gives the same ``audit.md``.

Verdicts: ``supported``, ``not supported``, ``inconclusive at this scale``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pspo_repro.analysis import identities, tables
from pspo_repro.study import rundir
from pspo_repro.training.train import read_run_settings

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive at this scale"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)

IDENTITIES_FILE = "identities.json"
# The runs whose real training batches the identities are measured on (one seed each), when present.
IDENTITY_LABELS = ("pspo", "clip", "pspo-stress", "clip-stress")

BINDS = 0.01  # a clip "acts" where it zeroes at least 1% of token gradients
SATURATED = 0.01  # a sigmoid weight below 1% of its value at ratio 1 (which is 1)
COLLAPSE = 0.10  # a run collapses when its validation accuracy ends 10 points below its step-0 value
Z = 3.0  # differences count when they exceed 3 standard errors


# --- run folders --------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished run of a study, as its folder records it."""

    name: str  # relative to the study folder: <model>/<label>/seed<k>
    config: dict[str, Any]
    done: dict[str, Any]
    probes: list[dict[str, Any]]
    train_log: list[dict[str, Any]]
    summary: dict[str, Any] | None
    folder: Path

    @property
    def label(self) -> str:
        return self.config.get("label") or self.config["objective"]

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def objective(self) -> str:
        return self.config["objective"]

    @property
    def control(self) -> bool:
        return bool(self.config.get("shuffle_advantages"))

    @property
    def cycle(self) -> int:
        """Optimizer steps per generation."""
        c = self.config
        spg = c.get("steps_per_generation") or c["grad_accum"]
        return max(1, spg * c["num_iterations"] // c["grad_accum"])

    @property
    def arm(self) -> tuple:
        """What the objectives of one comparison share: optimizer, learning rate, reuse, length."""
        c = self.config
        return (c.get("optimizer", "adamw"), c["learning_rate"], self.cycle, c["max_steps"], c["batch_size"])

    def accuracy(self, benchmark: str, metric: str = "strict") -> float | None:
        if self.summary is None or benchmark not in self.summary["benchmarks"]:
            return None
        return self.summary["benchmarks"][benchmark]["metrics"][metric]["accuracy"]


def arm_name(arm: tuple) -> str:
    optimizer, lr, cycle, steps, batch = arm
    return f"{optimizer} lr {lr:g}, {cycle} updates per generation, {steps} steps"


def load_runs(study_dir: Path) -> list[Run]:
    """Every finished run (DONE) of a study folder, in name order."""
    runs = []
    for done in sorted(Path(study_dir).glob("*/*/seed*/DONE")):
        folder = done.parent
        summary = folder / rundir.EVAL / rundir.SUMMARY
        runs.append(
            Run(
                name=str(folder.relative_to(study_dir)),
                config=read_run_settings(folder).to_dict(),  # earlier parameter names read too
                done=rundir.read_json(done),
                probes=rundir.read_jsonl(folder / rundir.PROBES),
                train_log=rundir.read_jsonl(folder / rundir.TRAIN_LOG),
                summary=rundir.read_json(summary) if summary.is_file() else None,
                folder=folder,
            )
        )
    return runs


def starts(study_dir: Path) -> dict[str, dict[str, Any]]:
    """Each model's starting evaluation summary, by model."""
    out = {}
    for path in sorted(Path(study_dir).glob(f"*/{tables.START}/eval/summary.json")):
        summary = rundir.read_json(path)
        out[summary["settings"]["model"]] = summary
    return out


# --- small statistics and formatting ------------------------------------------------------------


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def sd(xs: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def se_diff(a: list[float], b: list[float]) -> float:
    """Standard error of the difference of two means (nan with fewer than two seeds on a side)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return math.sqrt(sd(a) ** 2 / len(a) + sd(b) ** 2 / len(b))


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def num(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def pct_sd(xs: list[float], digits: int = 1) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return pct(xs[0], digits)
    return f"{pct(mean(xs), digits)} ± {pct(sd(xs), digits)}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def by(runs: list[Run], key: Callable[[Run], Any]) -> dict[Any, list[Run]]:
    out: dict[Any, list[Run]] = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


def staleness_means(runs: list[Run], field_name: str) -> dict[int, float]:
    """Mean of a probe field over the steps of each staleness, pooled over runs."""
    values: dict[int, list[float]] = {}
    for r in runs:
        for p in r.probes:
            if "staleness" in p and p.get(field_name) is not None:
                values.setdefault(p["staleness"], []).append(p[field_name])
    return {k: mean(v) for k, v in sorted(values.items())}


# --- sections -----------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    claim: str
    test: str
    rule: str
    labels: list[str] = field(default_factory=list)  # the run labels it reads (for the command)
    body: str = ""
    verdict: str | None = None
    missing: str | None = None
    figures: list[str] = field(default_factory=list)


@dataclass
class Context:
    study_dir: Path
    out_dir: Path
    profile: str
    benchmark: str
    runs: list[Run]
    starts: dict[str, dict[str, Any]]
    identities: dict[str, Any] | None
    plot: bool = True

    def figure(self, name: str, draw: Callable[[Any], None]) -> str | None:
        """Draw a PNG with ``draw(axes)`` into the output folder; returns its file name."""
        if not self.plot:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
        draw(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = self.out_dir / f"audit-{name}.png"
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, metadata={"Software": None})
        plt.close(fig)
        tmp.replace(path)
        return path.name

    def start_accuracy(self, model: str, metric: str = "strict") -> float | None:
        s = self.starts.get(model)
        if s is None or self.benchmark not in s["benchmarks"]:
            return None
        return s["benchmarks"][self.benchmark]["metrics"][metric]["accuracy"]

    def control_runs(self, model: str) -> list[Run]:
        return [r for r in self.runs if r.model == model and r.control]


def _accs(runs: list[Run], benchmark: str, metric: str = "strict") -> list[float]:
    return [a for a in (r.accuracy(benchmark, metric) for r in runs) if a is not None]


def gradient_preservation(ctx: Context) -> Section:
    s = Section(
        "Gradient preservation",
        "PSPO never zeroes a token's gradient, while ratio clipping does.",
        "The probes' zero-gradient fraction (tokens with a nonzero advantage whose gradient weight is exactly 0) "
        "at every optimizer step, by objective and by staleness (updates since the rollouts were generated).",
        f"{SUPPORTED} if no PSPO run (alpha < 1) ever zeroes a token's gradient and some clip run does; "
        f"{NOT_SUPPORTED} if a PSPO run does; {INCONCLUSIVE} if no clip run ever binds.",
    )
    pspo = [r for r in ctx.runs if r.objective == "pspo" and r.config["alpha"] < 1 and r.probes]
    clip = [r for r in ctx.runs if r.objective == "clip" and r.probes]
    if not pspo or not clip:
        s.missing = (
            "needs finished pspo and clip runs with probes"
            + ("" if pspo else " (no pspo run)")
            + ("" if clip else " (no clip run)")
        )
        return s
    groups = by([r for r in ctx.runs if r.probes], lambda r: (r.model, r.label))
    rows = []
    for (model, label), rs in sorted(groups.items()):
        per = staleness_means(rs, "zero_weight_frac")
        if not per:  # no step with a nonzero advantage
            continue
        worst = max(
            p["zero_weight_frac"] for r in rs for p in r.probes if p.get("zero_weight_frac") is not None
        )
        stale = max(per)
        rows.append(
            [
                model,
                label,
                str(len(rs)),
                pct(mean(list(per.values())), 2),
                pct(per.get(0), 2),
                pct(per.get(stale), 2) + f" (at {stale})",
                pct(worst, 2),
            ]
        )
    s.labels = sorted({label for _, label in groups})
    pspo_max = max(p["zero_weight_frac"] or 0.0 for r in pspo for p in r.probes)
    clip_max = max(p["zero_weight_frac"] or 0.0 for r in clip for p in r.probes)
    s.verdict = NOT_SUPPORTED if pspo_max > 0 else SUPPORTED if clip_max > 0 else INCONCLUSIVE
    s.body = (
        table(
            [
                "model",
                "run",
                "seeds",
                "zero-gradient % (mean over staleness)",
                "at staleness 0",
                "at the stalest step",
                "largest on one step",
            ],
            rows,
        )
        + f"\n\nLargest zero-gradient fraction on any step: PSPO {pct(pspo_max, 3)}%, clip {pct(clip_max, 3)}%."
    )

    def draw(ax: Any) -> None:
        for (model, label), rs in sorted(groups.items()):
            if rs[0].objective not in ("clip", "pspo"):
                continue
            per = staleness_means(rs, "zero_weight_frac")
            ax.plot(list(per), [100 * v for v in per.values()], marker="o", label=f"{model} {label}")
        ax.set_xlabel("staleness (updates since generation)")
        ax.set_ylabel("zero-gradient tokens %")
        ax.set_title("Tokens whose gradient the objective zeroes")

    s.figures = [f for f in [ctx.figure("zero-gradient", draw)] if f]
    return s


def _identity_rows(ident: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, m in sorted(ident.items()):
        rows.append(
            [
                name,
                str(m["alpha"]),
                str(m["batches"]),
                str(m["states"]),
                num(m["grad_rel_diff_max"], ".2e"),
                num(m["tv_error_max"], ".2e"),
                num(m["kl_excess_max"], ".2e"),
            ]
        )
    return rows


def rescaled_surrogate(ctx: Context) -> Section:
    s = Section(
        "PSPO is a rescaled unclipped surrogate",
        "PSPO's parameter gradient equals (1 - alpha) times the unclipped importance-weighted gradient.",
        "The first optimizer steps of the study's pspo and clip runs are trained again from their starting "
        "model with their settings (TRL's GRPOTrainer); on every micro-batch TRL hands to the loss, both "
        "gradients are computed with autograd through the package's objectives; the "
        "largest relative difference ||g_pspo - (1 - alpha) g_noclip|| / ||(1 - alpha) g_noclip|| is reported.",
        f"{SUPPORTED} if the largest relative difference is at most {identities.GRAD_RTOL:g} (float32 "
        f"precision); {NOT_SUPPORTED} otherwise.",
        labels=list(IDENTITY_LABELS),
    )
    if not ctx.identities:
        s.missing = (
            f"no identity measurements ({IDENTITIES_FILE}): needs a finished run labelled "
            + " or ".join(IDENTITY_LABELS)
        )
        return s
    worst = max(m["grad_rel_diff_max"] for m in ctx.identities.values())
    s.verdict = SUPPORTED if worst <= identities.GRAD_RTOL else NOT_SUPPORTED
    s.labels = sorted({name.split("/")[1] for name in ctx.identities})
    s.body = (
        table(
            [
                "measured on (run)",
                "alpha",
                "micro-batches",
                "states",
                "gradient rel. difference",
                "TV error",
                "KL excess",
            ],
            _identity_rows(ctx.identities),
        )
        + f"\n\nLargest relative difference: {num(worst, '.2e')}."
    )
    return s


def soft_trust_region(ctx: Context) -> Section:
    s = Section(
        "Soft trust region",
        "With pi~ = (1 - alpha) pi_theta + alpha pi_old, TV(pi~, pi_old) = (1 - alpha) TV(pi_theta, pi_old) and "
        "KL(pi~ || pi_old) <= (1 - alpha) KL(pi_theta || pi_old). The bound is about pi~, not the policy the "
        "update produces: pi_theta itself is not held back.",
        "Exact computation on the full next-token distributions of the model at states sampled from those "
        "training batches (pi_old: the policy that generated the batch; pi_theta: the policy after "
        "the updates made since), and how far pi_theta moves from pi_old under PSPO and under clip, by "
        "staleness (exact TV and KL at those states; the probes' mean |r - 1| on every run).",
        f"{SUPPORTED} if the TV equality holds within {identities.DIST_ATOL:g} and the KL bound is never "
        f"exceeded by more than {identities.DIST_ATOL:g}; {NOT_SUPPORTED} otherwise.",
    )
    if not ctx.identities:
        s.missing = f"no identity measurements ({IDENTITIES_FILE})"
        return s
    tv = max(m["tv_error_max"] for m in ctx.identities.values())
    kl = max(m["kl_excess_max"] for m in ctx.identities.values())
    s.verdict = SUPPORTED if tv <= identities.DIST_ATOL and kl <= identities.DIST_ATOL else NOT_SUPPORTED
    s.labels = sorted({name.split("/")[1] for name in ctx.identities})
    rows = []
    for name, m in sorted(ctx.identities.items()):
        for k, st in sorted(m["by_staleness"].items(), key=lambda kv: int(kv[0])):  # JSON keys are text
            rows.append(
                [
                    name,
                    k,
                    num(st["tv_theta"], ".4f"),
                    num(st["tv_theta_max"], ".3f"),
                    num(st["tv_smooth"], ".4f"),
                    num(st["kl_theta"], ".4f"),
                    num(st["kl_smooth"], ".4f"),
                ]
            )
    movement = []
    moving = [r for r in ctx.runs if r.objective in ("pspo", "clip", "noclip") and not r.control and r.probes]
    for (model, label), rs in sorted(by(moving, lambda r: (r.model, r.label)).items()):
        per = staleness_means(rs, "mean_abs_r_minus_1")
        if per:
            stale = max(per)
            movement.append(
                [
                    model,
                    label,
                    str(len(rs)),
                    num(per.get(1), ".4f"),
                    num(per[stale], ".4f") + f" (at {stale})",
                ]
            )
    s.body = (
        f"Largest TV error {num(tv, '.2e')}; largest KL excess {num(kl, '.2e')} (the bound "
        "holds when it is at most the tolerance; negative values are its slack).\n\n"
        + table(
            [
                "measured on",
                "staleness",
                "TV(pi_theta, pi_old) mean",
                "max",
                "TV(pi~, pi_old) mean",
                "KL(pi_theta || pi_old) mean",
                "KL(pi~ || pi_old) mean",
            ],
            rows,
        )
        + "\n\nHow far pi_theta moves from pi_old on the sampled tokens, every run (probes, mean |r - 1|):\n\n"
        + table(["model", "run", "seeds", "staleness 1", "stalest"], movement)
    )

    def draw(ax: Any) -> None:
        for name, m in sorted(ctx.identities.items()):
            ks = sorted(int(k) for k in m["by_staleness"])
            ax.plot(
                ks, [m["by_staleness"][str(k)]["tv_theta"] for k in ks], marker="o", label=f"{name} pi_theta"
            )
            ax.plot(ks, [m["by_staleness"][str(k)]["tv_smooth"] for k in ks], ls="--", label=f"{name} pi~")
        ax.set_xlabel("staleness (updates since generation)")
        ax.set_ylabel("mean TV distance from pi_old")
        ax.set_title("pi_theta and the smoothed pi~ against pi_old")

    s.figures = [f for f in [ctx.figure("trust-region", draw)] if f]
    return s


def _param_distance(a: Path, b: Path) -> float | None:
    """||theta_a - theta_b|| over the checkpoints' shared tensors (None when either is unreadable)."""
    from safetensors.torch import load_file

    fa, fb = sorted(a.glob("*.safetensors")), sorted(b.glob("*.safetensors"))
    if not fa or not fb:
        return None
    ta, tb = {}, {}
    for f in fa:
        ta.update(load_file(f))
    for f in fb:
        tb.update(load_file(f))
    total = 0.0
    for k in sorted(set(ta) & set(tb)):
        total += float((ta[k].double() - tb[k].double()).pow(2).sum())
    return math.sqrt(total)


def _start_folder(run: Run) -> Path | None:
    """The weights the run started from, when they are on this machine (never builds or downloads)."""
    from pspo_repro.models import tiny

    build = run.folder / "model_build.json"
    if run.model in tiny.names():
        if not build.is_file():
            return None
        path = tiny.cache_root() / "tiny" / rundir.read_json(build)["build"]
        return path if path.is_dir() else None
    path = Path(run.model).expanduser()
    return path if path.is_dir() else None


def _rewards(run: Run) -> list[tuple[int, float]]:
    """(step, training reward) of the logged steps that have one."""
    return [(x["step"], x["reward"]) for x in run.train_log if x.get("reward") is not None]


def alpha_matters(ctx: Context, optimizer: str) -> Section:
    scale = (
        "a constant loss scale cannot cancel" if optimizer == "sgd" else "Adam cancels a constant loss scale"
    )
    s = Section(
        f"Does alpha matter under {'SGD' if optimizer == 'sgd' else 'Adam'}?",
        f"PSPO's alpha changes training: PSPO at alpha in {{0, 0.1, 0.4, 0.9}} trains differently from the "
        f"unclipped surrogate (noclip) with the same reuse and seeds ({optimizer}; {scale}).",
        "Per seed, the distance between each PSPO run's selected checkpoint and noclip's (same seed, same "
        "checkpoint step), relative to how far noclip moved from the starting model; the largest difference "
        "of their training rewards (logged once per generation); and test accuracy (strict), mean ± sd over seeds.",
        f"{SUPPORTED} if some alpha's test accuracy differs from noclip's by more than {Z:g} standard errors; "
        f"{NOT_SUPPORTED} if every alpha's checkpoints lie within 1% (relative distance) of noclip's; "
        f"{INCONCLUSIVE} otherwise.",
    )
    runs = [
        r
        for r in ctx.runs
        if r.objective in ("pspo", "noclip")
        and not r.control
        and r.config.get("optimizer", "adamw") == optimizer
    ]
    groups = {k: g for k, g in by(runs, lambda r: (r.model, r.arm)).items()}
    usable = {
        k: g
        for k, g in groups.items()
        if any(r.objective == "noclip" for r in g)
        and len({r.config["alpha"] for r in g if r.objective == "pspo"}) >= 2
    }
    if not usable:
        s.missing = (
            f"needs, on one model and arm with optimizer {optimizer}, a noclip run and pspo runs at two or more "
            f"alphas (the audit profile's {'noclip-sgd, pspo-sgd, pspo-a0.4-sgd' if optimizer == 'sgd' else 'noclip, pspo, pspo-a0.4'} ...)"
        )
        return s
    rows = []
    any_differs, all_close = False, True
    curves: dict[str, list[tuple[int, float]]] = {}
    for (model, arm), g in sorted(usable.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        noclip = {r.config["seed"]: r for r in g if r.objective == "noclip"}
        base = _accs(list(noclip.values()), ctx.benchmark)
        for alpha in sorted({r.config["alpha"] for r in g if r.objective == "pspo"}):
            rs = [r for r in g if r.objective == "pspo" and r.config["alpha"] == alpha]
            dists, reward_diffs = [], []
            for r in rs:
                ref = noclip.get(r.config["seed"])
                if ref is None:
                    continue
                rr = [x.get("reward") for x in r.train_log]
                nr = [x.get("reward") for x in ref.train_log]
                diffs = [abs(a - b) for a, b in zip(rr, nr, strict=False) if a is not None and b is not None]
                if diffs:
                    reward_diffs.append(max(diffs))
                same_step = r.done["validation_best"]["step"] == ref.done["validation_best"]["step"]
                d = _param_distance(r.folder / "checkpoint", ref.folder / "checkpoint") if same_step else None
                start = _start_folder(ref)
                moved = _param_distance(ref.folder / "checkpoint", start) if start is not None else None
                if d is not None and moved:
                    dists.append(d / moved)
            accs = _accs(rs, ctx.benchmark)
            diff = mean(accs) - mean(base) if accs and base else float("nan")
            se = se_diff(accs, base)
            differs = math.isfinite(se) and abs(diff) > Z * se
            close = bool(dists) and max(dists) < 0.01
            any_differs |= differs
            all_close &= close
            rows.append(
                [
                    model,
                    arm_name(arm),
                    f"{alpha:g}",
                    str(len(rs)),
                    num(max(dists) if dists else None, ".2e"),
                    num(max(reward_diffs) if reward_diffs else None, ".2e"),
                    pct_sd(accs),
                    pct_sd(base),
                    f"{pct(diff)} ({num(se * 100, '.1f')})",
                    "yes" if differs else "no",
                ]
            )
            seed0 = min(rs, key=lambda r: r.config["seed"])
            curves[f"{model} alpha {alpha:g}"] = _rewards(seed0)
        ref0 = min(noclip.values(), key=lambda r: r.config["seed"])
        curves[f"{model} noclip"] = _rewards(ref0)
        s.labels += sorted({r.label for r in g})
    s.labels = sorted(set(s.labels))
    s.verdict = SUPPORTED if any_differs else NOT_SUPPORTED if all_close else INCONCLUSIVE
    s.body = table(
        [
            "model",
            "arm",
            "alpha",
            "seeds",
            "checkpoint distance to noclip (relative, largest)",
            "largest training-reward difference (per generation)",
            "test strict %",
            "noclip test strict %",
            "difference (se), points",
            f"beyond {Z:g} se",
        ],
        rows,
    )

    def draw(ax: Any) -> None:
        for name, points in sorted(curves.items()):
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.plot(xs, ys, label=name, lw=1.2, marker=".", ls="--" if "noclip" in name else "-")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training reward (seed 0)")
        ax.set_title(f"PSPO alphas and noclip under {optimizer}")

    s.figures = [f for f in [ctx.figure(f"alpha-{optimizer}", draw)] if f]
    return s


def clip_baseline(ctx: Context) -> Section:
    s = Section(
        "The clip baseline",
        "The released script's clip ran with eps = 0 (a control-flow bug); the intended eps gives a stronger "
        "baseline, so part of the published clip-vs-PSPO gap comes from the bug.",
        "Clip at eps 0 against the intended eps at the same learning rate and reuse (test accuracy, strict, "
        "mean ± sd over seeds), and the share of PSPO's gap over clip at eps 0 that the intended eps closes: "
        "(clip_eps - clip_0) / (pspo - clip_0).",
        f"Per arm: the intended clip beats eps 0 by more than {Z:g} standard errors ({SUPPORTED}), loses by more "
        f"({NOT_SUPPORTED}), or neither ({INCONCLUSIVE}). Overall: the arms' common verdict, else {INCONCLUSIVE} "
        "(the table says where it holds).",
    )
    clips = [r for r in ctx.runs if r.objective == "clip" and not r.control]
    groups = by(clips, lambda r: (r.model, r.arm))
    usable = {
        k: g
        for k, g in groups.items()
        if any(r.config["epsilon"] == 0 for r in g) and any(r.config["epsilon"] > 0 for r in g)
    }
    if not usable:
        s.missing = "needs clip runs at eps 0 and at eps > 0 on the same model and arm (the audit profile's clip-eps0 beside clip)"
        return s
    rows, verdicts = [], []
    for (model, arm), g in sorted(usable.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        zero = _accs([r for r in g if r.config["epsilon"] == 0], ctx.benchmark)
        pspo_runs = [
            r
            for r in ctx.runs
            if r.objective == "pspo"
            and not r.control
            and r.model == model
            and r.arm == arm
            and r.config["alpha"] == g[0].config["alpha"]
        ]
        pspo = _accs(pspo_runs, ctx.benchmark)
        s.labels += [r.label for r in pspo_runs]
        for eps in sorted({r.config["epsilon"] for r in g if r.config["epsilon"] > 0}):
            accs = _accs([r for r in g if r.config["epsilon"] == eps], ctx.benchmark)
            if not accs or not zero:
                continue
            diff, se = mean(accs) - mean(zero), se_diff(accs, zero)
            v = (
                SUPPORTED
                if math.isfinite(se) and diff > Z * se
                else NOT_SUPPORTED
                if math.isfinite(se) and diff < -Z * se
                else INCONCLUSIVE
            )
            verdicts.append(v)
            gap = mean(pspo) - mean(zero) if pspo else float("nan")
            share = diff / gap if pspo and gap != 0 else float("nan")
            rows.append(
                [
                    model,
                    arm_name(arm),
                    f"{eps:g}",
                    pct_sd(zero),
                    pct_sd(accs),
                    f"{pct(diff)} ({num(se * 100, '.1f')})",
                    pct_sd(pspo),
                    pct(gap),
                    pct(share, 0) + ("%" if math.isfinite(share) else ""),
                    v,
                ]
            )
        s.labels += sorted({r.label for r in g})
    s.labels = sorted(set(s.labels))
    s.verdict = verdicts[0] if verdicts and len(set(verdicts)) == 1 else INCONCLUSIVE
    s.body = table(
        [
            "model",
            "arm",
            "intended eps",
            "clip eps 0 %",
            "clip at eps %",
            "difference (se), points",
            "pspo %",
            "pspo - clip eps 0, points",
            "share of that gap closed",
            "verdict",
        ],
        rows,
    )
    return s


def noise_floor(ctx: Context) -> Section:
    s = Section(
        "Noise floor",
        "The accuracy differences between objectives exceed the noise floor (the shuffled-advantage "
        "control's spread over seeds); a collapse the control reproduces is not an objective's doing.",
        "Every pair of objectives (same model and arm): the difference of mean test accuracy (strict) against "
        "the standard error the control's seed-to-seed spread implies for a difference of two means, "
        "sd_control * sqrt(2 / seeds). Collapses (test accuracy 10 points or more below the starting model) "
        "are listed with whether the control collapses too.",
        f"{SUPPORTED} if some pair differs by more than {Z:g} such standard errors; {INCONCLUSIVE} otherwise "
        "(no difference is distinguishable from noise with these seeds).",
    )
    rows, any_beyond, collapses = [], False, []
    for model in sorted({r.model for r in ctx.runs}):
        control = _accs(ctx.control_runs(model), ctx.benchmark)
        if len(control) < 2:
            continue
        start = ctx.start_accuracy(model)
        s.labels += sorted({r.label for r in ctx.control_runs(model)})
        arms = by([r for r in ctx.runs if r.model == model and not r.control], lambda r: r.arm)
        for arm, g in sorted(arms.items(), key=lambda kv: str(kv[0])):
            per = {label: _accs(rs, ctx.benchmark) for label, rs in sorted(by(g, lambda r: r.label).items())}
            per = {k: v for k, v in per.items() if v}
            labels = sorted(per)
            for i, a in enumerate(labels):
                if start is not None and mean(per[a]) <= start - COLLAPSE:
                    collapses.append(
                        [
                            model,
                            a,
                            pct_sd(per[a]),
                            pct(start),
                            pct_sd(control),
                            "yes" if mean(control) <= start - COLLAPSE else "no",
                        ]
                    )
                for b in labels[i + 1 :]:
                    n = min(len(per[a]), len(per[b]))
                    se = sd(control) * math.sqrt(2 / n)
                    diff = mean(per[a]) - mean(per[b])
                    beyond = abs(diff) > Z * se
                    any_beyond |= beyond
                    rows.append(
                        [model, arm_name(arm), f"{a} - {b}", pct(diff), pct(se), "yes" if beyond else "no"]
                    )
                    s.labels += [a, b]
    if not rows:
        s.missing = "needs a shuffled-advantage control (an arm with shuffle_advantages, e.g. clip-shuffled) with two or more seeds, and objective runs on the same model"
        return s
    s.labels = sorted(set(s.labels))
    s.verdict = SUPPORTED if any_beyond else INCONCLUSIVE
    s.body = table(["model", "arm", "difference", "points", "noise se, points", f"beyond {Z:g} se"], rows)
    s.body += "\n\nCollapses:\n\n" + (
        table(["model", "run", "test strict %", "start %", "control %", "control collapses too"], collapses)
        if collapses
        else "none."
    )
    return s


def trust_region_acts(ctx: Context) -> Section:
    s = Section(
        "How often the trust region acts",
        "Under rollout reuse the clip's trust region acts: it zeroes the gradient of a material share of "
        f"tokens (at least {pct(BINDS, 0)}% on the stalest updates).",
        "The clip-binding fraction (zero-gradient tokens of clip runs) by staleness at each eps, in each arm "
        "(regular and stress), so each run's regime is visible.",
        f"Per (arm, eps > 0): binds if the stalest steps' mean is at least {pct(BINDS, 0)}%. {SUPPORTED} if "
        f"every such arm binds, {NOT_SUPPORTED} if none does, {INCONCLUSIVE} if some do (the table says which).",
    )
    clips = [r for r in ctx.runs if r.objective == "clip" and not r.control and r.probes]
    if not clips:
        s.missing = "needs finished clip runs with probes"
        return s
    groups = by(clips, lambda r: (r.model, r.arm, r.config["epsilon"]))
    rows, binds = [], []
    for (model, arm, eps), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
        per = staleness_means(rs, "zero_weight_frac")
        out = staleness_means(rs, "ratio_outside")
        if not per:
            continue
        stale = max(per)
        acts = per[stale] >= BINDS
        if eps > 0:
            binds.append(acts)
        rows.append(
            [model, arm_name(arm), f"{eps:g}", str(len(rs))]
            + [" / ".join(pct(per.get(k), 2) for k in sorted(per))]
            + [pct(out.get(stale), 2), "binds" if acts else "rarely"]
        )
    s.labels = sorted({r.label for r in clips})
    s.verdict = (
        (SUPPORTED if all(binds) else NOT_SUPPORTED if not any(binds) else INCONCLUSIVE)
        if binds
        else INCONCLUSIVE
    )
    s.body = table(
        [
            "model",
            "arm",
            "eps",
            "seeds",
            "zero-gradient % by staleness 0 / 1 / ...",
            "ratios outside % (stalest)",
            "regime",
        ],
        rows,
    )

    def draw(ax: Any) -> None:
        for (_model, arm, eps), rs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])
        ):
            per = staleness_means(rs, "zero_weight_frac")
            ax.plot(
                list(per),
                [100 * v for v in per.values()],
                marker="o",
                label=f"eps {eps:g}, {arm[2]} upd/gen, lr {arm[1]:g}",
            )
        ax.set_xlabel("staleness (updates since generation)")
        ax.set_ylabel("clip-binding tokens %")
        ax.set_title("Where the clip binds")

    s.figures = [f for f in [ctx.figure("clip-binding", draw)] if f]
    return s


def sigmoid_saturation(ctx: Context) -> Section:
    s = Section(
        "Sigmoid saturation",
        "The sigmoid soft clip (SAPO) saturates like a hard clip: far from ratio 1 its gradient weight "
        "vanishes for a material share of tokens.",
        f"The fraction of sampled tokens (probe samples, nonzero advantage) whose sigmoid weight is below "
        f"{pct(SATURATED, 0)}% of its value at ratio 1 (where it is 1).",
        f"{SUPPORTED} if at least {pct(BINDS, 0)}% of sampled tokens are saturated; {INCONCLUSIVE} otherwise (the "
        "ratios at this scale may not reach the saturated region: the largest |r - 1| sampled is shown).",
    )
    sig = [r for r in ctx.runs if r.objective == "sigmoid" and not r.control]
    samples = {(r.model, r.label): [] for r in sig}
    for r in sig:
        for p in r.probes:
            samples[(r.model, r.label)] += [t for t in p.get("samples", []) if t[1] != 0]
    samples = {k: v for k, v in samples.items() if v}
    if not samples:
        s.missing = "needs finished sigmoid runs with probe samples"
        return s
    rows, total, low = [], 0, 0
    for (model, label), triples in sorted(samples.items()):
        sat = sum(1 for _, _, w in triples if w < SATURATED)
        total += len(triples)
        low += sat
        rows.append(
            [
                model,
                label,
                str(len(triples)),
                pct(sat / len(triples), 3),
                num(max(abs(r - 1) for r, _, _ in triples), ".3f"),
            ]
        )
    s.labels = sorted({label for _, label in samples})
    s.verdict = SUPPORTED if low / total >= BINDS else INCONCLUSIVE
    s.body = table(["model", "run", "sampled tokens", "saturated %", "largest |r - 1|"], rows)
    s.body += f"\n\nSaturated overall: {pct(low / total, 3)}% of {total} sampled tokens."
    return s


def permissive_inflation(ctx: Context) -> Section:
    s = Section(
        "Permissive metric inflation",
        "Permissive grading (the gold answer anywhere in the completion) inflates accuracy over strict "
        "grading (a `####` answer required), and the paper's own metric (the authors' extraction: the line "
        "after `####`, else the last number) sits between them.",
        "Permissive minus strict, flexible minus strict and paper minus strict, in points, per model and run "
        "(mean over seeds), on every benchmark evaluated; the starting models included. (paper: n/a for "
        "evaluations recorded before the metric existed.)",
        f"{SUPPORTED} if permissive exceeds strict by more than 1 point on average over all runs and "
        f"benchmarks; {NOT_SUPPORTED} if by less than 0.25; {INCONCLUSIVE} in between.",
    )
    rows, diffs = [], []
    sources = [(m, tables.START, [s_]) for m, s_ in sorted(ctx.starts.items())]
    sources += [
        (m, label, [r.summary for r in rs if r.summary])
        for (m, label), rs in sorted(by(ctx.runs, lambda r: (r.model, r.label)).items())
    ]
    for model, label, summaries in sources:
        if not summaries:
            continue
        for bench in sorted(summaries[0]["benchmarks"]):
            metrics = [x["benchmarks"][bench]["metrics"] for x in summaries if bench in x["benchmarks"]]
            perm = [m["permissive"]["accuracy"] - m["strict"]["accuracy"] for m in metrics]
            flex = [m["flexible"]["accuracy"] - m["strict"]["accuracy"] for m in metrics]
            paper = [m["paper"]["accuracy"] - m["strict"]["accuracy"] for m in metrics if "paper" in m]
            diffs += perm
            rows.append(
                [
                    model,
                    label,
                    bench,
                    str(len(metrics)),
                    pct(mean(perm)),
                    pct(mean(flex)),
                    pct(mean(paper)) if len(paper) == len(metrics) else "n/a",
                    pct(mean([m["strict"]["accuracy"] for m in metrics])),
                ]
            )
    if not diffs:
        s.missing = "needs evaluated runs (eval/summary.json)"
        return s
    overall = mean(diffs)
    s.labels = sorted({r.label for r in ctx.runs})
    s.verdict = SUPPORTED if overall > 0.01 else NOT_SUPPORTED if overall < 0.0025 else INCONCLUSIVE
    s.body = (
        f"Permissive minus strict, mean over every run and benchmark: {pct(overall, 2)} points.\n\n"
        + table(
            [
                "model",
                "run",
                "benchmark",
                "seeds",
                "permissive - strict, points",
                "flexible - strict, points",
                "paper - strict, points",
                "strict %",
            ],
            rows,
        )
    )
    return s


PROBE_SIGNATURE = ("entropy", "mean_abs_r_minus_1", "kl_old_theta", "grad_norm", "zero_weight_frac_neg")


def topr_collapse(ctx: Context) -> Section:
    s = Section(
        "TOPR under group-relative advantages",
        "TOPR (positive-advantage tokens kept at full weight, negatives truncated) collapses when its "
        "advantages are group-relative, as GRPO's are.",
        f"A run collapses when its final validation accuracy (strict) is {pct(COLLAPSE, 0)} points or more "
        "below its step-0 value. For each TOPR run: validation at step 0 and at the end, and the probe "
        "signature (entropy, mean |r - 1|, KL(pi_old || pi_theta), gradient norm, zeroed negative-advantage "
        "tokens) over the first and the last quarter of its steps.",
        f"{SUPPORTED} if some TOPR run collapses and its model's control does not; {NOT_SUPPORTED} if no TOPR run "
        f"collapses (in the regimes run); {INCONCLUSIVE} if the control collapses too.",
    )
    topr = [r for r in ctx.runs if r.objective == "topr" and not r.control]
    if not topr:
        s.missing = "needs finished topr runs"
        return s

    def collapsed(r: Run) -> bool:
        return r.done["validation_last"]["strict"] <= r.done["validation_first"]["strict"] - COLLAPSE

    rows, collapses, unexplained = [], 0, 0
    for r in sorted(topr, key=lambda r: r.name):
        q = max(1, len(r.probes) // 4)

        def avg(ps: list[dict], key: str) -> float | None:
            vs = [p[key] for p in ps if p.get(key) is not None]
            return mean(vs) if vs else None

        sig = " ; ".join(
            f"{k} {num(avg(r.probes[:q], k))} → {num(avg(r.probes[-q:], k))}" for k in PROBE_SIGNATURE
        )
        c = collapsed(r)
        control_collapses = any(collapsed(x) for x in ctx.control_runs(r.model))
        collapses += c
        unexplained += c and not control_collapses
        rows.append(
            [
                r.name,
                pct(r.done["validation_first"]["strict"]),
                pct(r.done["validation_last"]["strict"]),
                "yes" if c else "no",
                "yes" if control_collapses else "no",
                sig,
            ]
        )
    verdict = NOT_SUPPORTED if not collapses else SUPPORTED if unexplained else INCONCLUSIVE
    s.labels = sorted({r.label for r in topr} | {x.label for r in topr for x in ctx.control_runs(r.model)})
    s.verdict = verdict
    s.body = table(
        [
            "run",
            "validation step 0 %",
            "end %",
            "collapses",
            "a control run collapses",
            "probe signature (first → last quarter)",
        ],
        rows,
    )
    return s


SECTIONS: list[Callable[[Context], Section]] = [
    gradient_preservation,
    rescaled_surrogate,
    soft_trust_region,
    lambda ctx: alpha_matters(ctx, "adamw"),
    lambda ctx: alpha_matters(ctx, "sgd"),
    clip_baseline,
    noise_floor,
    trust_region_acts,
    sigmoid_saturation,
    permissive_inflation,
    topr_collapse,
]


# --- identities on the study's runs -------------------------------------------------------------


def measure_identities(study_dir: Path, work_dir: Path, steps: int | None = None) -> dict[str, Any]:
    """The identities on real training batches of the runs labelled :data:`IDENTITY_LABELS` (lowest seed of
    each model): ``steps`` optimizer steps (default: two reuse cycles, at least 8, at most the run's length)
    of each run's settings, retrained from its starting model with the recording trainer."""
    from pspo_repro.training.train import TrainSettings

    chosen: dict[tuple[str, str], Run] = {}
    for r in load_runs(study_dir):
        if r.label in IDENTITY_LABELS:
            key = (r.model, r.label)
            if key not in chosen or r.config["seed"] < chosen[key].config["seed"]:
                chosen[key] = r
    out = {}
    for _key, r in sorted(chosen.items()):
        settings = TrainSettings.from_dict(r.config)
        n = steps or min(max(8, 2 * r.cycle if r.cycle < 8 else r.cycle), r.config["max_steps"])
        records = identities.measure(settings, work_dir / r.name.replace("/", "--"), steps=n)
        out[r.name] = {"alpha": settings.alpha, "steps": n, **identities.summarise(records)}
    return out


# --- the document -------------------------------------------------------------------------------


def render(sections: list[Section], profile: str, study_dir: str, n_runs: int, benchmark: str) -> str:
    lines = [
        f"# Claims audit: `{profile}`",
        "",
        f"Generated by `pspo-repro audit --profile {profile}` from {n_runs} finished runs in `{study_dir}`; "
        f"accuracies are on `{benchmark}` (strict unless said). Every number below is computed from the run "
        "folders and `identities.json`; every verdict by the rule printed with it.",
        "",
        "| claim | verdict |",
        "|---|---|",
    ]
    for s in sections:
        lines.append(f"| {s.title} | {s.verdict if s.verdict else 'not tested: runs missing'} |")
    for s in sections:
        lines += ["", f"## {s.title}", "", f"**Claim.** {s.claim}", "", f"**Test.** {s.test}", ""]
        if s.missing:
            lines += [f"**Not tested: runs missing.** This section {s.missing}.", ""]
        else:
            lines += [s.body, ""]
            lines += [f"![{s.title}]({f})" for f in s.figures]
            if s.figures:
                lines.append("")
            lines += [f"**Verdict: {s.verdict}.** Rule: {s.rule}", ""]
        objs = ",".join(s.labels)
        only = f" --objectives {objs}" if objs else ""
        lines += [
            "Reproduce: `pspo-repro study --profile "
            + profile
            + only
            + f" && pspo-repro audit --profile {profile}`",
        ]
    return "\n".join(lines) + "\n"


def write_audit(
    study_dir: Path,
    out_dir: Path,
    profile: str,
    benchmark: str,
    ident: dict[str, Any] | None,
    plot: bool = True,
) -> Path:
    """Write ``audit.md`` (and its figures) into ``out_dir`` from the finished runs in ``study_dir``."""
    study_dir, out_dir = Path(study_dir), Path(out_dir)
    runs = load_runs(study_dir)
    if not runs:
        raise FileNotFoundError(f"no finished runs (*/*/seed*/DONE) in {study_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(study_dir, out_dir, profile, benchmark, runs, starts(study_dir), ident, plot)
    sections = [make(ctx) for make in SECTIONS]
    for s in sections:
        if s.verdict is not None and s.verdict not in VERDICTS:
            raise AssertionError(f"section {s.title!r} has verdict {s.verdict!r}; allowed: {VERDICTS}")
    text = render(sections, profile, study_dir.name, len(runs), benchmark)
    path = out_dir / "audit.md"
    rundir.atomic_write_text(path, text)
    return path


def run_audit(
    profile_name: str,
    runs_root: Path,
    results_root: Path,
    measure: bool = True,
    identity_steps: int | None = None,
    plot: bool = True,
) -> Path:
    """The audit of a profile's study: identities measured once (kept in ``identities.json``), then
    ``audit.md``. ``measure=False`` uses the kept measurements only (none: those sections say so)."""
    from pspo_repro.evaluation import evaluate
    from pspo_repro.study import runner

    profile = runner.load_profile(profile_name)
    name = profile.get("name", Path(profile_name).stem)
    study_dir, out_dir = Path(runs_root) / name, Path(results_root) / name
    benchmarks = evaluate.parse_benchmarks(",".join(profile.get("eval", {}).get("benchmarks", ["synthetic"])))
    ident_path = out_dir / IDENTITIES_FILE
    ident = rundir.read_json(ident_path) if ident_path.is_file() else None
    if ident is None and measure:
        ident = measure_identities(study_dir, out_dir / ".identities-work", identity_steps)
        if ident:
            rundir.atomic_write_json(ident_path, ident)
        import shutil

        shutil.rmtree(out_dir / ".identities-work", ignore_errors=True)
    return write_audit(study_dir, out_dir, profile_name, benchmarks[0], ident or None, plot)
