"""Optimizers: update rules written once as sympy expressions per parameter element.

Each rule is an ordered list of assignments to per-element state and finally to the
parameter; a later assignment reads the new values of earlier ones (the compiler
substitutes them, so the generated loop reads every element once, before any store).
Scalars that do not depend on the element (bias corrections) are computed once per step.
Symbols: p (parameter), g (gradient, already clipped), one symbol per state, lr (this
step's learning rate from the schedule), t (the 1-based training step).

Gradient clipping by global norm (``clip_norm=c`` on any optimizer): one kernel computes
‖g‖ = sqrt(Σ over all gradients of g²) in a fixed order, and every update reads
g · min(1, c / ‖g‖) in place of g.  The exact rules are in docs/training.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy as sp

from graphc.errors import GraphError
from graphc.schedules import Schedule, as_schedule

P, G = sp.symbols("p g", real=True)
LR = sp.Symbol("lr", positive=True)
STEP = sp.Symbol("t", positive=True, integer=True)


def _check(name: str, value: float, lo: float, hi: float | None = None) -> float:
    value = float(value)
    if value < lo or (hi is not None and value >= hi):
        bound = f"in [{lo}, {hi})" if hi is not None else f">= {lo}"
        raise GraphError(f"optimizer argument {name}={value} must be {bound}")
    return value


@dataclass(frozen=True)
class Rule:
    """The per-element update: state names, scalar prelude and ordered assignments."""

    states: tuple[str, ...]
    scalars: tuple[tuple[str, sp.Expr], ...]
    assigns: tuple[tuple[str, sp.Expr], ...]  # target ('p' or a state name), expression


class Optimizer:
    """Base class: a learning rate (or schedule), optional clipping and a sympy update rule."""

    name = "optimizer"

    def __init__(self, lr: Any, clip_norm: float | None = None) -> None:
        self.schedule: Schedule = as_schedule(lr)
        if clip_norm is not None and not float(clip_norm) > 0:
            raise GraphError(f"clip_norm={clip_norm} must be a positive number (or None)")
        self.clip_norm = None if clip_norm is None else float(clip_norm)

    @property
    def lr(self) -> float:
        """The base learning rate."""
        return self.schedule.eta0

    def rule(self) -> Rule:
        """The update rule."""
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line summary for manifests and summaries."""
        fields = ", ".join(
            f"{k}={v}"
            for k, v in vars(self).items()
            if k != "schedule" and not (k == "clip_norm" and v is None)
        )
        return f"{self.name}(lr={self.schedule.describe()}{', ' if fields else ''}{fields})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay.

    PyTorch's formulation: g ← g + λp; v ← μv + g; p ← p − η v (Nesterov: p ← p − η(g + μv)),
    with v the new velocity (v starts at 0, so the first step takes v = g).
    """

    name = "SGD"

    def __init__(
        self,
        lr: Any = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr, clip_norm)
        self.momentum = _check("momentum", momentum, 0.0, 1.0)
        self.nesterov = bool(nesterov)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)
        if self.nesterov and self.momentum == 0:
            raise GraphError("SGD: nesterov=True needs a momentum > 0")

    def rule(self) -> Rule:
        g = G + sp.Float(self.weight_decay) * P if self.weight_decay else G
        if not self.momentum:
            return Rule((), (), (("p", P - LR * g),))
        v = sp.Symbol("v", real=True)
        mu = sp.Float(self.momentum)
        # in the parameter's assignment, v already holds the new velocity
        step = g + mu * v if self.nesterov else v
        return Rule(("v",), (), (("v", mu * v + g), ("p", P - LR * step)))


class Adam(Optimizer):
    """Adam with bias correction exactly as in Kingma & Ba, Algorithm 1.

    m ← β1 m + (1 − β1) g; v ← β2 v + (1 − β2) g²; m̂ = m / (1 − β1ᵗ); v̂ = v / (1 − β2ᵗ);
    p ← p − η m̂ / (√v̂ + ε), with t the 1-based step.
    """

    name = "Adam"

    def __init__(
        self,
        lr: Any = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr, clip_norm)
        self.beta1 = _check("beta1", beta1, 0.0, 1.0)
        self.beta2 = _check("beta2", beta2, 0.0, 1.0)
        self.eps = _check("eps", eps, 0.0)

    def rule(self) -> Rule:
        m, v = sp.symbols("m v", real=True)
        bc1, bc2 = sp.symbols("bc1 bc2", positive=True)
        b1, b2 = sp.Float(self.beta1), sp.Float(self.beta2)
        alpha, rsqrt_bc2 = sp.symbols("alpha rsqrt_bc2", positive=True)
        m_new = b1 * m + (1 - b1) * G
        v_new = b2 * v + (1 - b2) * G**2
        # m and v here are the new moments (assigned just before).  η m̂ / (√v̂ + ε) with the
        # per-step constants α = η / (1 − β1ᵗ) and 1 / √(1 − β2ᵗ) folded out of the loop:
        # one square root and one division per element instead of two divisions
        p_new = P - alpha * m / (sp.sqrt(v) * rsqrt_bc2 + sp.Float(self.eps))
        scalars = (
            ("bc1", 1 - b1**STEP),
            ("bc2", 1 - b2**STEP),
            ("alpha", LR / bc1),
            ("rsqrt_bc2", 1 / sp.sqrt(bc2)),
        )
        return Rule(("m", "v"), scalars, (("m", m_new), ("v", v_new), ("p", p_new)))


class AdaGrad(Optimizer):
    """AdaGrad: s ← s + g²; w ← w − η g / (√s + ε) with the new s (s = Σ g² so far)."""

    name = "AdaGrad"

    def __init__(self, lr: Any = 0.01, eps: float = 1e-10, clip_norm: float | None = None) -> None:
        super().__init__(lr, clip_norm)
        self.eps = _check("eps", eps, 0.0)

    def rule(self) -> Rule:
        s = sp.Symbol("s", real=True)
        step = LR * G / (sp.sqrt(s) + sp.Float(self.eps))
        return Rule(("s",), (), (("s", s + G**2), ("p", P - step)))


class RMSProp(Optimizer):
    """RMSProp: s ← ρ s + (1 − ρ) g²; w ← w − η g / (√s + ε) with the new s."""

    name = "RMSProp"

    def __init__(
        self,
        lr: Any = 0.01,
        rho: float = 0.99,
        eps: float = 1e-8,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr, clip_norm)
        self.rho = _check("rho", rho, 0.0, 1.0)
        self.eps = _check("eps", eps, 0.0)

    def rule(self) -> Rule:
        s = sp.Symbol("s", real=True)
        rho = sp.Float(self.rho)
        step = LR * G / (sp.sqrt(s) + sp.Float(self.eps))
        return Rule(("s",), (), (("s", rho * s + (1 - rho) * G**2), ("p", P - step)))
