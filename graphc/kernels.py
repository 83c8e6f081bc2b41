"""Backend-neutral kernel records: what to compute, over which loops, on which tensors.

Templates consume these records through ``graphc.codegen``; they never look at the graph.
Sizes that depend on the number of rows in the current batch are ``Dim``s (``coef * n``).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class Dim:
    """A loop extent: ``coef`` elements, times the batch rows ``n`` when ``batched``."""

    coef: int
    batched: bool = False

    def at(self, n: int) -> int:
        """The extent for a batch of ``n`` rows."""
        return self.coef * (n if self.batched else 1)

    def __mul__(self, k: int) -> "Dim":
        return Dim(self.coef * k, self.batched)


@dataclass(frozen=True)
class Tensor:
    """A buffer: its C name, graph label, element type and shape.

    ``role`` is one of input, param, grad, state, act, const; ``alias_of`` names the
    tensor whose memory a reshape view shares.
    """

    name: str
    label: str
    dtype: str  # 'real' or 'int32'
    shape: tuple[int, ...]
    batched: bool
    role: str
    alias_of: str | None = None

    @property
    def per_sample(self) -> int:
        """Elements per sample (or in total, for an unbatched tensor)."""
        size = 1
        for s in self.shape:
            size *= s
        return size

    def numel(self, batch: int) -> int:
        """Elements for a batch of ``batch`` rows."""
        return self.per_sample * (batch if self.batched else 1)

    @property
    def dim(self) -> Dim:
        """Number of elements as a Dim."""
        return Dim(self.per_sample, self.batched)


LOOP_VARS = ("i", "j", "k", "l", "p", "q")

#: On the C target a sum over the batch that a thread team shares (a filter or a
#: convolution's bias gradient) is taken per block of samples, at most this many blocks,
#: each on one thread, and then over the blocks in order.  The per-sample kernels share the
#: batch out the same way, so each thread reads the samples it wrote itself, and the result
#: does not depend on the number of threads.
SAMPLE_BLOCKS = 8


def sample_blocks(batch: int) -> tuple[int, int]:
    """(samples per block, blocks) for a compiled batch of ``batch`` rows."""
    block = -(-batch // SAMPLE_BLOCKS)
    return block, -(-batch // block)


def full_shape(shape: tuple[int, ...], batched: bool) -> list[Dim]:
    """Axes of a tensor as Dims, the batch axis (``n`` rows) first when batched."""
    return ([Dim(1, True)] if batched else []) + [Dim(s) for s in shape]


def strides_for(dims: list[Dim], masks: list[int]) -> list[int]:
    """Row-major element strides along each axis where mask is 1 (0 where broadcast)."""
    strides = [0] * len(dims)
    step = 1
    for axis in range(len(dims) - 1, -1, -1):
        if masks[axis] == 1:
            strides[axis] = step
            step *= dims[axis].coef
    return strides


@dataclass(frozen=True)
class Loop:
    """One loop of an iteration space: a variable name and its extent."""

    var: str
    extent: Dim


@dataclass(frozen=True)
class Access:
    """How a kernel reads or writes a tensor inside its loops.

    ``strides[k]`` is the step per iteration of loop k (0 where the tensor is broadcast).
    For a one-hot read, ``onehot`` is the loop index of the class axis: the value is 1
    when that loop's variable equals the integer label at the remaining index.
    """

    tensor: Tensor
    strides: tuple[int, ...]
    onehot: int | None = None


@dataclass(frozen=True)
class Assign:
    """``target[...] = expr`` where expr uses the operand symbols of its kernel."""

    target: Access
    expr: sp.Expr
    label: str


@dataclass(frozen=True)
class Kernel:
    """Common fields: a C-safe name and the equation it implements (ASCII).

    Subclasses say which tensors they read and write (for memory planning) and name
    their template (``templates/<backend>/<template>.c.j2``).
    """

    name: str
    comment: str

    def reads(self) -> list[Tensor]:
        """Tensors the kernel reads."""
        raise NotImplementedError(type(self).__name__)

    def writes(self) -> list[Tensor]:
        """Tensors the kernel writes."""
        raise NotImplementedError(type(self).__name__)

    def flops(self, rows: int) -> int:
        """Rough arithmetic of one call on ``rows`` batch rows: it sizes the thread team.

        By default one operation per element read or written; kernels that do more per
        element (products, convolutions, time loops) say so.
        """
        return sum(t.numel(rows) for t in self.reads() + self.writes())


@dataclass(frozen=True)
class ElementwiseKernel(Kernel):
    """Fused elementwise chain over ``loops``; ``operands[i]`` is symbol ``a{i}``."""

    loops: tuple[Loop, ...]
    operands: tuple[Access, ...]
    assigns: tuple[Assign, ...]
    scalars: tuple[tuple[str, sp.Expr], ...] = ()
    #: extra scalar parameters (C type, name) the caller passes, e.g. the learning rate
    args: tuple[tuple[str, str], ...] = ()
    template: str = "elementwise"

    def reads(self) -> list[Tensor]:
        return [a.tensor for a in self.operands]

    def writes(self) -> list[Tensor]:
        return [a.target.tensor for a in self.assigns]


@dataclass(frozen=True)
class Epilogue:
    """Elementwise work applied to a GEMM's finished tiles; symbol ``acc`` is C[r, c]."""

    operands: tuple[Access, ...]  # strides over (r, c)
    assigns: tuple[Assign, ...]


@dataclass(frozen=True)
class GemmKernel(Kernel):
    """C = op(A) . op(B) (+ C), with an optional fused epilogue.

    With ``scale`` (an expression of the step's learning rate ``lr``, e.g. -lr, and
    ``accumulate`` set), the kernel computes C += scale * op(A) . op(B): a plain SGD step
    fused into the weight gradient's product, so that the gradient is never stored.
    """

    trans_a: bool
    trans_b: bool
    m: Dim
    n: Dim
    k: Dim
    a: Tensor
    lda: int
    b: Tensor
    ldb: int
    c: Tensor
    ldc: int
    accumulate: bool
    epilogue: Epilogue | None
    scale: sp.Expr | None = None
    template: str = "gemm"

    def reads(self) -> list[Tensor]:
        extra = [a.tensor for a in self.epilogue.operands] if self.epilogue else []
        return [self.a, self.b] + extra + ([self.c] if self.accumulate else [])

    def writes(self) -> list[Tensor]:
        extra = [a.target.tensor for a in self.epilogue.assigns] if self.epilogue else []
        return [self.c] + extra

    def flops(self, rows: int) -> int:
        return 2 * self.m.at(rows) * self.n.at(rows) * self.k.at(rows)


@dataclass(frozen=True)
class ReduceKernel(Kernel):
    """dst[keep] = scale * Σ_sum src[keep, sum]."""

    keep: tuple[Loop, ...]
    summed: tuple[Loop, ...]
    src: Access  # strides over keep + summed loops
    dst: Access  # strides over keep loops
    scale: sp.Expr
    #: a sum over the batch of one kept axis on the C target: one partial sum per block of
    #: ``block`` samples, on one thread each, then the partials in block order
    sums: Tensor | None = None
    block: int = 0
    template: str = "reduce"

    def reads(self) -> list[Tensor]:
        return [self.src.tensor] + ([self.sums] if self.sums is not None else [])

    def writes(self) -> list[Tensor]:
        return ([self.sums] if self.sums is not None else []) + [self.dst.tensor]


@dataclass(frozen=True)
class SoftmaxKernel(Kernel):
    """Row-wise softmax of ``src`` into ``dst``; with ``lse``, each row's log-sum-exp too
    (for a cross-entropy on the same logits, which then need not sum the exponentials)."""

    rows: Dim
    cols: int
    src: Tensor
    dst: Tensor
    template: str = "softmax"
    lse: Tensor | None = None

    def reads(self) -> list[Tensor]:
        return [self.src]

    def writes(self) -> list[Tensor]:
        return [self.dst] + ([self.lse] if self.lse is not None else [])


@dataclass(frozen=True)
class LossKernel(Kernel):
    """Per-row sums of a loss term, their batch mean, and the count of correct rows.

    Symbols in ``term``: O (prediction), T (target), and for losses on logits I (logit)
    and L (the row's log-sum-exp).
    """

    rows_per_sample: int
    cols: int
    pred: Tensor
    target: Tensor
    target_onehot: bool
    logits: Tensor | None
    term: sp.Expr
    accuracy: str | None
    row_loss: Tensor
    template: str = "loss"
    #: each row's log-sum-exp, written by the softmax kernel of the same logits (else the
    #: loss kernel computes it)
    lse: Tensor | None = None

    def reads(self) -> list[Tensor]:
        shared = [self.lse] if self.lse is not None else []
        return [self.pred, self.target] + ([self.logits] if self.logits else []) + shared

    def writes(self) -> list[Tensor]:
        return [self.row_loss]


@dataclass(frozen=True)
class GradNormKernel(Kernel):
    """``scale = min(1, max_norm / ‖g‖)`` with ‖g‖² = Σ g² over ``grads`` in their order.

    One thread sums in a fixed order, so the scale does not depend on the thread count;
    the optimizer's update kernels read ``scale`` (one element) and multiply g by it.
    """

    grads: tuple[Tensor, ...]
    max_norm: float
    scale: Tensor
    template: str = "grad_norm"

    def reads(self) -> list[Tensor]:
        return list(self.grads)

    def writes(self) -> list[Tensor]:
        return [self.scale]


@dataclass(frozen=True)
class Program:
    """One entry point's work: kernels in order, the inputs they read, what to keep."""

    name: str
    doc: str
    kernels: tuple[Kernel, ...]
    inputs: tuple[Tensor, ...]
    keep: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ParamPlan:
    """A parameter with its gradient and optimizer state tensors."""

    param: Tensor
    grad: Tensor | None
    states: tuple[Tensor, ...]
    trainable: bool


@dataclass(frozen=True)
class ModelPlan:
    """Everything a backend needs to render a model (no graph objects)."""

    name: str
    graph_name: str
    dtype: str
    batch: int
    programs: tuple[Program, ...]
    inputs: tuple[Tensor, ...]
    outputs: tuple[tuple[str, Tensor], ...]
    params: tuple[ParamPlan, ...]
    slots: tuple[Tensor, ...]
    memory: object  # passes.memory.MemoryPlan
    lr: sp.Expr | None  # in schedules.ETA0 and schedules.T
    lr_per: str
    loss: str | None
    accuracy: str | None
    rows_per_sample: int
    optimizer: str


def reads(kernel: Kernel) -> list[Tensor]:
    """Tensors a kernel reads."""
    return kernel.reads()


def writes(kernel: Kernel) -> list[Tensor]:
    """Tensors a kernel writes."""
    return kernel.writes()
