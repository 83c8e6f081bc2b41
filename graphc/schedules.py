"""Learning-rate schedules: η as a sympy expression of the counter t (1-based).

What t counts is chosen per schedule with ``per``:

* ``per="epoch"`` (default): t = epochs finished + 1, so every step of the first epoch of
  ``fit`` uses t = 1, the second epoch t = 2, ...  ``train_step`` outside ``fit`` does not
  finish epochs, so it keeps the t of the current epoch.
* ``per="step"``: t = the number of the training step being taken (1 for the first step
  ever, counting across epochs and across ``fit``/``train_step`` calls).

The generated training step evaluates η_t itself (``m->lr_now``) before its kernels run;
every optimizer reads it as ``lr``.  Counters live in the model and in checkpoints, so a
resumed run continues the schedule where it stopped.  ``model.lr = x`` changes η0.
"""

from __future__ import annotations

from typing import Any

import sympy as sp

from graphc.errors import GraphError

T = sp.Symbol("t", positive=True, integer=True)
ETA0 = sp.Symbol("eta0", positive=True)


class Schedule:
    """Base class: η_t = expr(t); ``eta0`` is the base rate, settable on the model."""

    def __init__(self, eta0: float, per: str = "epoch") -> None:
        if not float(eta0) > 0:
            raise GraphError(f"learning rate must be positive, got {eta0}")
        if per not in ("epoch", "step"):
            raise GraphError(f"schedule counter per={per!r} must be 'epoch' or 'step'")
        self.eta0 = float(eta0)
        self.per = per

    def expr(self) -> sp.Expr:
        """η_t in terms of ETA0 and T."""
        return ETA0

    def describe(self) -> str:
        """Short text for summaries."""
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def __call__(self, t: int) -> float:
        """η at counter value t (for tests and plots)."""
        return float(self.expr().subs({ETA0: self.eta0, T: t}))


class Constant(Schedule):
    """η_t = η0."""

    def describe(self) -> str:
        return str(self.eta0)


class InverseTime(Schedule):
    """η_t = η0 / t."""

    def expr(self) -> sp.Expr:
        return ETA0 / T


class LinearDecay(Schedule):
    """η_t = (1 − t/T) η0 + (t/T) η∞ for t ≤ T, then η∞ (the course's strategy #2).

    With t counted from 1, the first epoch (or step) already moves 1/T of the way to η∞,
    which is reached at t = T and kept afterwards.
    """

    def __init__(self, eta0: float, eta_inf: float, T: int, per: str = "epoch") -> None:
        super().__init__(eta0, per)
        self.eta_inf = float(eta_inf)
        self.T = int(T)
        if self.T <= 0:
            raise GraphError("LinearDecay: T must be a positive number of epochs or steps")
        if self.eta_inf < 0:
            raise GraphError(f"LinearDecay: eta_inf must be >= 0, got {eta_inf}")

    def expr(self) -> sp.Expr:
        alpha = T / sp.Integer(self.T)
        return sp.Piecewise(
            ((1 - alpha) * ETA0 + alpha * sp.Float(self.eta_inf), T <= self.T),
            (sp.Float(self.eta_inf), True),
        )


class StepDecay(Schedule):
    """η_t = η0 · γ^⌊(t − 1) / every⌋."""

    def __init__(
        self, eta0: float, gamma: float = 0.1, every: int = 10, per: str = "epoch"
    ) -> None:
        super().__init__(eta0, per)
        self.gamma = float(gamma)
        self.every = int(every)
        if not self.gamma > 0 or self.every <= 0:
            raise GraphError(
                f"StepDecay: gamma must be > 0 and every a positive count, got {gamma}, {every}"
            )

    def expr(self) -> sp.Expr:
        return ETA0 * sp.Float(self.gamma) ** sp.floor((T - 1) / sp.Integer(self.every))


class Cosine(Schedule):
    """η_t = η_min + (η0 − η_min)(1 + cos(π (t − 1)/T))/2 for t ≤ T, then η_min."""

    def __init__(self, eta0: float, T: int, eta_min: float = 0.0, per: str = "epoch") -> None:
        super().__init__(eta0, per)
        self.T = int(T)
        self.eta_min = float(eta_min)
        if self.T <= 0 or self.eta_min < 0:
            raise GraphError(f"Cosine: T must be positive and eta_min >= 0, got {T}, {eta_min}")

    def expr(self) -> sp.Expr:
        lo = sp.Float(self.eta_min)
        cos = lo + (ETA0 - lo) * (1 + sp.cos(sp.pi * (T - 1) / sp.Integer(self.T))) / 2
        return sp.Piecewise((cos, T <= self.T), (lo, True))


def as_schedule(lr: Any) -> Schedule:
    """A Schedule from a number or a Schedule."""
    if isinstance(lr, Schedule):
        return lr
    if isinstance(lr, (int, float)):
        return Constant(float(lr))
    raise GraphError(f"lr must be a number or a gc.schedules schedule, got {lr!r}")
