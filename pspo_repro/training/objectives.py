"""Per-token policy objectives for GRPO-style training, as small pure torch functions.

Every objective maps (logp, old_logp, advantages) to a per-token loss of shape (B, T). Its
closed-form gradient weight ``w`` satisfies ``d loss / d log r = -w * A`` elementwise, where
``log r`` is the log importance ratio the objective sees (the token's ``logp - old_logp`` at token
level; the masked mean of those at sequence level, GSPO-style). The weight is what the paper's
"gradient preservation" claims are about: it is zero where a clip binds and positive elsewhere.

Usage::

    obj = objectives.get("pspo", alpha=0.1)
    obj = objectives.get("clip", epsilon=0.2)                # parameters as GRPOConfig names them
    loss = obj.per_token_loss(logp, old_logp, advantages)   # (B, T)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

RatioLevel = Literal["token", "sequence"]


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
    # loss(log_ratio, ratio, A) and weight(ratio, A), both elementwise; see the module docstring.
    _loss: Callable[..., torch.Tensor] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    _weight: Callable[..., torch.Tensor] = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def per_token_loss(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token loss (B, T); ``mask`` only matters for sequence-level ratios."""
        lr = log_ratio(logp, old_logp, self.level, mask)
        return self.loss_from_log_ratio(lr, advantages, like=logp)

    def loss_from_log_ratio(
        self, log_r: torch.Tensor, advantages: torch.Tensor, like: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss from an already computed log ratio ((B, T) or (B, 1)); broadcast to ``like``'s shape."""
        like = log_r if like is None else like
        adv = _broadcast_advantages(advantages, like)
        return self._loss(log_r, torch.exp(log_r), adv).expand_as(like)

    def grad_weight(self, ratio: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
        """w with d loss / d log r = -w * A, elementwise (detached)."""
        adv = _broadcast_advantages(advantages, ratio)
        return self._weight(ratio.detach().expand_as(adv), adv.detach())

    def smoothed_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """PSPO's smoothed ratio pi~/pi_old = (1 - alpha) r + alpha; other objectives return r."""
        alpha = self.params.get("alpha", 0.0) if self.name == "pspo" else 0.0
        return (1.0 - alpha) * ratio + alpha


# --- the objectives -----------------------------------------------------------------------------


def _clip(epsilon: float = 0.2, epsilon_high: float | None = None, level: RatioLevel = "token") -> Objective:
    _check(epsilon >= 0, f"clip: epsilon must be >= 0, got {epsilon}")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    _check(epsilon_high >= 0, f"clip: epsilon_high must be >= 0, got {epsilon_high}")
    lo, hi = 1.0 - epsilon, 1.0 + epsilon_high

    def loss(_lr, r, a):
        return -torch.min(r * a, torch.clamp(r, lo, hi) * a)

    def weight(r, a):
        # min() takes the clipped term (constant in r) exactly where it is strictly smaller.
        binds = ((a > 0) & (r > hi)) | ((a < 0) & (r < lo))
        return torch.where(binds, torch.zeros_like(r), r)

    return Objective("clip", {"epsilon": epsilon, "epsilon_high": epsilon_high}, level, loss, weight)


def _pspo(alpha: float = 0.1, level: RatioLevel = "token") -> Objective:
    _check(0.0 <= alpha <= 1.0, f"pspo: alpha must be in [0, 1], got {alpha}")

    def loss(_lr, r, a):
        return -((1.0 - alpha) * r + alpha) * a

    def weight(r, a):
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

    def loss(_lr, r, a):
        tau = _tau(a)
        return -(4.0 / tau) * torch.sigmoid(tau * (r - 1.0)) * a

    def weight(r, a):
        s = torch.sigmoid(_tau(a) * (r - 1.0))
        return 4.0 * s * (1.0 - s) * r

    params = {"sapo_temperature_pos": tau_pos, "sapo_temperature_neg": tau_neg}
    return Objective("sigmoid", params, level, loss, weight)


def _topr(level: RatioLevel = "token") -> Objective:
    def _w(r, a):
        return torch.where(a >= 0, torch.ones_like(r), torch.clamp(r, 0.0, 1.0))

    def loss(lr, r, a):
        # -w * A * log pi_theta with w detached; log pi_old is constant, so log r has the same gradient.
        return -_w(r, a).detach() * a * lr

    return Objective("topr", {}, level, loss, _w)


def _noclip(level: RatioLevel = "token") -> Objective:
    def loss(_lr, r, a):
        return -r * a

    def weight(r, a):
        return r

    return Objective("noclip", {}, level, loss, weight)


_REGISTRY: dict[str, Callable[..., Objective]] = {
    "clip": _clip,
    "pspo": _pspo,
    "sigmoid": _sigmoid,
    "topr": _topr,
    "noclip": _noclip,
}

# Parameters each objective accepts (besides ``level``): the one mapping from objectives to their settings.
# Names are GRPOConfig's where TRL has the setting (the clip range; SAPO's temperatures, which are the
# sigmoid objective's), so run settings and the trainer's config use the same names; ``alpha`` is PSPO's.
PARAMS: dict[str, tuple[str, ...]] = {
    "clip": ("epsilon", "epsilon_high"),
    "pspo": ("alpha",),
    "sigmoid": ("sapo_temperature_pos", "sapo_temperature_neg"),
    "topr": (),
    "noclip": (),
}

# Earlier names of those parameters, still read from older profiles and run configs.
RENAMED: dict[str, str] = {
    "eps": "epsilon",
    "eps_high": "epsilon_high",
    "tau_pos": "sapo_temperature_pos",
    "tau_neg": "sapo_temperature_neg",
}


def parameter_names() -> tuple[str, ...]:
    """Every objective parameter, each once, in registry order."""
    return tuple(dict.fromkeys(p for params in PARAMS.values() for p in params))


def params_of(name: str, settings: object) -> dict[str, float]:
    """The parameters of objective ``name`` read from ``settings`` (any object with those attributes, such
    as a run's settings or the trainer's config); unset (None) ones are left to the objective's default."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(names())}")
    values = {p: getattr(settings, p) for p in PARAMS[name]}
    return {p: v for p, v in values.items() if v is not None}


def names() -> list[str]:
    """Names of the registered objectives."""
    return list(_REGISTRY)


def get(name: str, level: RatioLevel = "token", **params: float) -> Objective:
    """Build the objective ``name`` with its parameters; ``level`` is 'token' or 'sequence'."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(names())}")
    if level not in ("token", "sequence"):
        raise ValueError(f"ratio level must be 'token' or 'sequence', got {level!r}")
    unknown = sorted(set(params) - set(PARAMS[name]))
    if unknown:
        allowed = ", ".join(PARAMS[name]) or "none"
        raise ValueError(f"objective {name!r} got unknown parameter(s) {unknown}; allowed: {allowed}")
    return _REGISTRY[name](level=level, **{k: float(v) for k, v in params.items() if v is not None})
