"""Per-token policy objectives for GRPO-style training, as small pure torch functions.

Every objective maps (logp, old_logp, advantages) to a per-token loss of shape (B, T). Its
closed-form gradient weight ``w`` satisfies ``d loss / d log r = -w * A`` elementwise, where
``log r`` is the log importance ratio the objective sees (the token's ``logp - old_logp`` at token
level; the masked mean of those at sequence level, GSPO-style). The weight is what the paper's
"gradient preservation" claims are about: it is zero where a clip binds and positive elsewhere.

The weight is a function of the ratio the objective *reads*: the ratio it sees for every objective but
VESPO, which reads the product of its sequence's token ratios, so all tokens of a sequence share one
weight. CISPO and VESPO are written as TRL writes them, ``-sg(w) * A * log pi_theta``: a detached weight
times the log-probability, whose gradient is that of ``-sg(w) * A * log r`` (log pi_old is a constant).

Usage::

    obj = objectives.get("pspo", alpha=0.1)
    obj = objectives.get("clip", epsilon=0.2)                # parameters as GRPOConfig names them
    obj = objectives.get("gspo", epsilon=3e-4, epsilon_high=4e-4)   # level "sequence", its own
    loss = obj.per_token_loss(logp, old_logp, advantages)   # (B, T)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

RatioLevel = Literal["token", "sequence"]
LEVELS: tuple[RatioLevel, ...] = ("token", "sequence")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _broadcast_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Advantages of shape (B,), (B, 1) or (B, T), broadcast to ``like``'s shape."""
    if advantages.shape == like.shape:
        return advantages
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 and like.dim() == 2 else advantages
    try:
        return adv.expand(torch.broadcast_shapes(adv.shape, like.shape))
    except RuntimeError:
        raise ValueError(
            f"advantages must have shape (B,) or (B, T) = {tuple(like.shape)}, got {tuple(advantages.shape)}"
        ) from None


def log_ratio(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    level: RatioLevel = "token",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log importance ratio, (B, T) at token level or (B, 1) at sequence level (masked mean)."""
    diff = logp - old_logp
    if level == "token":
        return diff
    if level == "sequence":
        m = torch.ones_like(diff) if mask is None else mask.to(diff.dtype)
        return ((diff * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"ratio level must be 'token' or 'sequence', got {level!r}")


@dataclass(frozen=True)
class Objective:
    """A policy objective: name, parameters, per-token loss and its closed-form gradient weight."""

    name: str
    params: dict[str, float] = field(default_factory=dict)
    level: RatioLevel = "token"
    # loss(log_read, read, A, path) and weight(log_read, read, A), elementwise: ``read`` = exp(log_read) is
    # the ratio the objective reads; ``path`` is what a detached weight multiplies (log pi_theta, or log r).
    _loss: Callable[..., torch.Tensor] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    _weight: Callable[..., torch.Tensor] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    # (log_r (B, T), mask, is_ratio) -> the log of a sequence ratio (B, 1) the weight reads; None: log r itself
    _reads: Callable[..., torch.Tensor] | None = field(default=None, repr=False, compare=False)
    # (lo, hi): the ratios inside which the weight is untouched (a clip's range, CISPO's cap); None: no range
    bounds: tuple[float, float] | None = None

    def per_token_loss(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token loss (B, T); ``mask`` only matters for ratios read per sequence (sequence level, VESPO)."""
        lr = log_ratio(logp, old_logp, self.level, mask)
        return self.loss_from_log_ratio(lr, advantages, like=logp, mask=mask, logp=logp)

    def loss_from_log_ratio(
        self,
        log_r: torch.Tensor,
        advantages: torch.Tensor,
        like: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        logp: torch.Tensor | None = None,
        is_ratio: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss from an already computed log ratio ((B, T) or (B, 1)); broadcast to ``like``'s shape.

        ``logp`` (log pi_theta per token) is what CISPO and VESPO multiply, as in TRL; without it they
        multiply log r, which has the same gradient and a loss shifted by a constant. ``is_ratio`` is the
        vLLM importance-sampling ratio: it multiplies the loss, as in TRL, except for VESPO, which folds it
        into its sequence weight (TRL's vespo does the same)."""
        like = log_r if like is None else like
        adv = _broadcast_advantages(advantages, like)
        log_read = self.read_log_ratio(log_r, mask, is_ratio)
        path = log_r if logp is None else logp
        loss = self._loss(log_read, torch.exp(log_read), adv, path).expand_as(like)
        if is_ratio is not None and self._reads is None:
            loss = loss * is_ratio
        return loss

    def read_log_ratio(
        self, log_r: torch.Tensor, mask: torch.Tensor | None = None, is_ratio: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The log of the ratio the weight is a function of: ``log_r`` itself, or VESPO's sequence product."""
        return log_r if self._reads is None else self._reads(log_r.detach(), mask, is_ratio)

    def sequence_log_ratio(
        self, log_r: torch.Tensor, mask: torch.Tensor | None = None, is_ratio: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The log sequence ratio (B, 1) the objective reads (the geometric mean s at sequence level, VESPO's
        product), or None for objectives that read each token's own ratio."""
        if self._reads is not None or self.level == "sequence":
            return self.read_log_ratio(log_r, mask, is_ratio)
        return None

    def grad_weight(self, ratio: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
        """w with d loss / d log r = -w * A, elementwise in the ratio the objective reads (detached)."""
        adv = _broadcast_advantages(advantages, ratio).detach()
        r = ratio.detach().expand_as(adv)
        return self._weight(torch.log(r), r, adv)

    def token_weight(
        self,
        log_r: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_ratio: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The weight of every token (or of every sequence at sequence level) from the log ratio the objective
        sees, as the loss computes it (detached)."""
        adv = _broadcast_advantages(advantages, log_r).detach()
        log_read = self.read_log_ratio(log_r.detach(), mask, is_ratio).expand_as(adv)
        return self._weight(log_read, torch.exp(log_read), adv)

    def smoothed_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """PSPO's smoothed ratio pi~/pi_old = (1 - alpha) r + alpha; other objectives return r."""
        alpha = self.params.get("alpha", 0.0) if self.name == "pspo" else 0.0
        return (1.0 - alpha) * ratio + alpha


# --- the objectives -----------------------------------------------------------------------------


def _clip_range(name: str, epsilon: float, epsilon_high: float | None) -> tuple[float, float]:
    _check(epsilon >= 0, f"{name}: epsilon must be >= 0, got {epsilon}")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    _check(epsilon_high >= 0, f"{name}: epsilon_high must be >= 0, got {epsilon_high}")
    return epsilon, epsilon_high


def _clipped(name: str, epsilon: float, epsilon_high: float | None, level: RatioLevel) -> Objective:
    epsilon, epsilon_high = _clip_range(name, epsilon, epsilon_high)
    lo, hi = 1.0 - epsilon, 1.0 + epsilon_high

    def loss(_lr, r, a, _path):
        return -torch.min(r * a, torch.clamp(r, lo, hi) * a)

    def weight(_lr, r, a):
        # min() takes the clipped term (constant in r) exactly where it is strictly smaller.
        binds = ((a > 0) & (r > hi)) | ((a < 0) & (r < lo))
        return torch.where(binds, torch.zeros_like(r), r)

    params = {"epsilon": epsilon, "epsilon_high": epsilon_high}
    return Objective(name, params, level, loss, weight, bounds=(lo, hi))


def _clip(epsilon: float = 0.2, epsilon_high: float | None = None, level: RatioLevel = "token") -> Objective:
    return _clipped("clip", epsilon, epsilon_high, level)


def _gspo(
    epsilon: float = 0.2, epsilon_high: float | None = None, level: RatioLevel = "sequence"
) -> Objective:
    # The clip on the sequence ratio s (level fixed by LEVELS); TRL's defaults, as TRL has no GSPO range of
    # its own. The GSPO paper used 3e-4 / 4e-4, where s, a geometric mean, stays near 1.
    return _clipped("gspo", epsilon, epsilon_high, level)


def _dualclip(
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    clip_ratio_c: float = 3.0,
    level: RatioLevel = "token",
) -> Objective:
    epsilon, epsilon_high = _clip_range("dualclip", epsilon, epsilon_high)
    c = clip_ratio_c
    # verl asserts the same: at c <= 1 the cap would bind on tokens the clip keeps at r = 1
    _check(c > 1.0, f"dualclip: clip_ratio_c must be > 1 (for A < 0 the loss is capped at -c A), got {c}")
    lo, hi = 1.0 - epsilon, 1.0 + epsilon_high

    def loss(_lr, r, a, _path):
        clipped = torch.maximum(-r * a, -torch.clamp(r, lo, hi) * a)  # the clip's loss
        return torch.where(a < 0, torch.minimum(clipped, -c * a), clipped)

    def weight(_lr, r, a):
        # for A < 0 the clip's loss is |A| max(r, lo), capped at c |A|: zero below lo and above c
        binds = ((a > 0) & (r > hi)) | ((a < 0) & ((r < lo) | (r > c)))
        return torch.where(binds, torch.zeros_like(r), r)

    params = {"epsilon": epsilon, "epsilon_high": epsilon_high, "clip_ratio_c": c}
    return Objective("dualclip", params, level, loss, weight, bounds=(lo, hi))


def _cispo(epsilon_high: float = 5.0, level: RatioLevel = "token") -> Objective:
    cap = epsilon_high
    # A cap below 1 shrinks even on-policy weights (r = 1): the mistake of passing a clip range, which TRL's
    # fallback to epsilon (0.2) makes when epsilon_high is unset.
    _check(
        cap >= 1.0,
        f"cispo: epsilon_high is the absolute cap on the ratio (epsilon_max; ScaleRL uses 5), not a clip range "
        f"around 1, and must be >= 1, got {cap}",
    )

    def weight(_lr, r, a):
        return torch.clamp(r, max=cap)

    def loss(lr, r, a, path):
        return -weight(lr, r, a).detach() * a * path

    return Objective("cispo", {"epsilon_high": cap}, level, loss, weight, bounds=(0.0, cap))


LOG_W_MIN = math.log(1e-8)  # VESPO's floor on the sequence weight (TRL's and the reference code's)


def _vespo(
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    level: RatioLevel = "token",
) -> Objective:
    params = {
        "vespo_k_pos": vespo_k_pos,
        "vespo_lambda_pos": vespo_lambda_pos,
        "vespo_k_neg": vespo_k_neg,
        "vespo_lambda_neg": vespo_lambda_neg,
    }
    for name, value in params.items():
        if "_k_" in name:
            _check(value >= 0, f"vespo: {name} must be >= 0, got {value}")
        else:
            _check(value > 0, f"vespo: {name} must be > 0, got {value}")

    def reads(log_r, mask, is_ratio):
        # W = prod_t r_t (token log-ratios clamped to +-20), times vLLM's token IS ratios when given, in
        # [1e-8, e^20]; the same operations as TRL's get_gamma_weights, so the weights agree bit for bit
        m = torch.ones_like(log_r) if mask is None else mask
        seq = torch.sum(torch.clamp(log_r, -20.0, 20.0) * m, dim=-1, keepdim=True)
        if is_ratio is not None:
            seq = seq + torch.sum(torch.clamp(torch.log(is_ratio), LOG_W_MIN, 20.0), dim=-1, keepdim=True)
        return torch.clamp(seq, LOG_W_MIN, 20.0)

    def weight(lr, _r, a):
        # phi(W) = e^lambda W^k e^(-lambda W), in log space; phi(1) = 1, largest at W = k / lambda
        log_w = torch.clamp(lr, LOG_W_MIN, 20.0)
        w = torch.exp(log_w)
        nonneg = a >= 0
        k = torch.where(nonneg, torch.full_like(a, vespo_k_pos), torch.full_like(a, vespo_k_neg))
        lam = torch.where(nonneg, torch.full_like(a, vespo_lambda_pos), torch.full_like(a, vespo_lambda_neg))
        lam = lam.clamp(min=1e-4)  # as TRL, for parity; lambdas are checked > 0 above
        return torch.exp(lam + k * log_w - lam * w).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)

    def loss(lr, r, a, path):
        return -weight(lr, r, a).detach() * a * path

    return Objective("vespo", params, level, loss, weight, _reads=reads)


def _pspo(alpha: float = 0.1, level: RatioLevel = "token") -> Objective:
    _check(0.0 <= alpha <= 1.0, f"pspo: alpha must be in [0, 1], got {alpha}")

    def loss(_lr, r, a, _path):
        return -((1.0 - alpha) * r + alpha) * a

    def weight(_lr, r, a):
        return (1.0 - alpha) * r

    return Objective("pspo", {"alpha": alpha}, level, loss, weight)


def _sigmoid(
    sapo_temperature_pos: float = 1.0, sapo_temperature_neg: float = 1.05, level: RatioLevel = "token"
) -> Objective:
    tau_pos, tau_neg = sapo_temperature_pos, sapo_temperature_neg
    _check(tau_pos > 0, f"sigmoid: sapo_temperature_pos must be > 0, got {tau_pos}")
    _check(tau_neg > 0, f"sigmoid: sapo_temperature_neg must be > 0, got {tau_neg}")

    def _tau(a):
        return torch.where(a > 0, torch.full_like(a, tau_pos), torch.full_like(a, tau_neg))

    def loss(_lr, r, a, _path):
        tau = _tau(a)
        return -(4.0 / tau) * torch.sigmoid(tau * (r - 1.0)) * a

    def weight(_lr, r, a):
        s = torch.sigmoid(_tau(a) * (r - 1.0))
        return 4.0 * s * (1.0 - s) * r

    params = {"sapo_temperature_pos": tau_pos, "sapo_temperature_neg": tau_neg}
    return Objective("sigmoid", params, level, loss, weight)


def _topr(level: RatioLevel = "token") -> Objective:
    def weight(_lr, r, a):
        return torch.where(a >= 0, torch.ones_like(r), torch.clamp(r, 0.0, 1.0))

    def loss(lr, r, a, _path):
        # -w * A * log r with w detached (TOPR is not in TRL; log r has log pi_theta's gradient)
        return -weight(lr, r, a).detach() * a * lr

    return Objective("topr", {}, level, loss, weight)


def _noclip(level: RatioLevel = "token") -> Objective:
    def loss(_lr, r, a, _path):
        return -r * a

    def weight(_lr, r, a):
        return r

    return Objective("noclip", {}, level, loss, weight)


_REGISTRY: dict[str, Callable[..., Objective]] = {
    "clip": _clip,
    "pspo": _pspo,
    "sigmoid": _sigmoid,
    "topr": _topr,
    "noclip": _noclip,
    "dualclip": _dualclip,
    "gspo": _gspo,
    "cispo": _cispo,
    "vespo": _vespo,
}

# Parameters each objective accepts (besides ``level``): the one mapping from objectives to their settings.
# Names are GRPOConfig's where TRL has the setting (the clip range; SAPO's temperatures, which are the
# sigmoid objective's; CISPO's cap, TRL's epsilon_high; VESPO's shape), so run settings and the trainer's
# config use the same names; ``alpha`` is PSPO's and ``clip_ratio_c`` is verl's name for the dual clip's c.
PARAMS: dict[str, tuple[str, ...]] = {
    "clip": ("epsilon", "epsilon_high"),
    "pspo": ("alpha",),
    "sigmoid": ("sapo_temperature_pos", "sapo_temperature_neg"),
    "topr": (),
    "noclip": (),
    "dualclip": ("epsilon", "epsilon_high", "clip_ratio_c"),
    "gspo": ("epsilon", "epsilon_high"),
    "cispo": ("epsilon_high",),
    "vespo": ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"),
}

# Objectives defined at one ratio level, with why; the others run at either ('token' unless asked).
FIXED_LEVELS: dict[str, tuple[RatioLevel, str]] = {
    "gspo": ("sequence", "it is the clip on the sequence ratio; the clip on token ratios is 'clip'"),
    "vespo": ("token", "it reads the product of its sequence's token ratios itself, as TRL's vespo does"),
}

# Aggregations (loss_type) an objective is defined with, where its paper fixes one: GSPO's loss is a mean
# over sequences of each sequence's loss (TRL's "grpo"); the token sums weight a sequence by its length.
AGGREGATIONS: dict[str, tuple[str, ...]] = {"gspo": ("grpo",)}

# vLLM importance-sampling modes an objective allows: VESPO folds token ratios into its sequence weight.
VLLM_IS_MODES: dict[str, tuple[str, ...]] = {"vespo": ("token_truncate", "token_mask")}

# Earlier names of those parameters, still read from older profiles and run configs.
RENAMED: dict[str, str] = {
    "eps": "epsilon",
    "eps_high": "epsilon_high",
    "tau_pos": "sapo_temperature_pos",
    "tau_neg": "sapo_temperature_neg",
}


def _known(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(names())}")


def parameter_names() -> tuple[str, ...]:
    """Every objective parameter, each once, in registry order."""
    return tuple(dict.fromkeys(p for params in PARAMS.values() for p in params))


def params_of(name: str, settings: object) -> dict[str, float]:
    """The parameters of objective ``name`` read from ``settings`` (any object with those attributes, such
    as a run's settings or the trainer's config); unset (None) ones are left to the objective's default."""
    _known(name)
    values = {p: getattr(settings, p) for p in PARAMS[name]}
    return {p: v for p, v in values.items() if v is not None}


def names() -> list[str]:
    """Names of the registered objectives."""
    return list(_REGISTRY)


def level_of(name: str, level: str | None = None) -> RatioLevel:
    """The ratio level objective ``name`` runs at: ``level`` when given, else its own ('token' for all but
    gspo). An objective defined at one level refuses the other."""
    _known(name)
    if level is not None and level not in LEVELS:
        raise ValueError(f"ratio level must be 'token' or 'sequence', got {level!r}")
    fixed, why = FIXED_LEVELS.get(name, (None, ""))
    if fixed is not None and level is not None and level != fixed:
        raise ValueError(f"objective {name!r} runs at ratio level {fixed!r} ({why}), got {level!r}")
    return level or fixed or "token"  # type: ignore[return-value]


def check_settings(name: str, loss_type: str, vllm_is_mode: str | None = None) -> None:
    """The rules an objective sets for the rest of a run: its aggregation (``loss_type``) and, with vLLM's
    importance-sampling correction on, its mode (``vllm_is_mode``; None when the correction is off)."""
    _known(name)
    allowed = AGGREGATIONS.get(name)
    if allowed is not None and loss_type not in allowed:
        raise ValueError(
            f"objective {name!r} needs loss_type {' or '.join(map(repr, allowed))} (a mean over sequences of "
            f"each sequence's loss, as its paper and TRL's recommended setup have it), got {loss_type!r}"
        )
    modes = VLLM_IS_MODES.get(name)
    if modes is not None and vllm_is_mode is not None and vllm_is_mode not in modes:
        raise ValueError(
            f"objective {name!r} folds vLLM's token importance-sampling ratios into its sequence weight and needs "
            f"vllm_importance_sampling_mode {' or '.join(map(repr, modes))}, got {vllm_is_mode!r}"
        )


def get(name: str, level: str | None = None, **params: float) -> Objective:
    """Build the objective ``name`` with its parameters; ``level`` is 'token' or 'sequence' (None: the
    objective's own, see :func:`level_of`)."""
    resolved = level_of(name, level)
    unknown = sorted(set(params) - set(PARAMS[name]))
    if unknown:
        allowed = ", ".join(PARAMS[name]) or "none"
        raise ValueError(f"objective {name!r} got unknown parameter(s) {unknown}; allowed: {allowed}")
    return _REGISTRY[name](level=resolved, **{k: float(v) for k, v in params.items() if v is not None})
