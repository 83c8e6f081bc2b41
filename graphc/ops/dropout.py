"""Dropout: units of a batched node zeroed at random while training, per sample and per unit.

The mask comes from the runtime's counter-based generator: element k (row-major over the
batch) of dropout layer L at training step s is kept when

    splitmix64(stream(seed, L, s), k) < keep * 2^64,      keep = 1 - rate

so masks are reproducible from (model seed, layer, step), identical for any thread count,
and never stored: the backward pass draws the same mask again.  L is the CRC-32 of the
layer's name, so recompiling (freezing, loading a checkpoint) keeps the masks.

Modes (Srivastava et al. 2014 describe "classic"):

    inverted (default)  training: x * mask / keep    inference: x
    classic             training: x * mask           inference: x * keep

Dropout is on in the gradient and training programs (``fit``, ``train_step``,
``gradients``) and off in evaluation and inference (``evaluate``, ``predict``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sympy as sp

from graphc.errors import GraphError
from graphc.graph import Node
from graphc.kernels import Access, Assign, Dim, ElementwiseKernel, Kernel, Loop, Tensor
from graphc.ops.base import Op, as_node, make_node

if TYPE_CHECKING:
    from graphc.autodiff import Adjoints

MODES = ("inverted", "classic")


def stream_id(name: str) -> int:
    """The layer number of a dropout's random stream: CRC-32 of its (forward) node name."""
    return zlib.crc32(name.encode())


@dataclass(frozen=True)
class DropoutKernel(Kernel):
    """dst = src * mask * scale with mask_k = [draw k of the layer's stream < threshold]."""

    size: Dim  # elements of the batch
    src: Tensor
    dst: Tensor
    stream: int
    threshold: int  # keep * 2^64
    scale: float  # 1 / keep (inverted) or 1 (classic)
    template: str = "dropout"

    def reads(self) -> list[Tensor]:
        return [self.src]

    def writes(self) -> list[Tensor]:
        return [self.dst]

    def c_context(self, contexts: Any) -> dict[str, Any]:
        """Template context (called by codegen.c.KernelContexts)."""
        from graphc.codegen.c import dim_text, owner, signature

        params, args = signature(self, contexts.target.real, self.size.batched)
        printer = contexts.printer
        return {
            "params": params + ", const uint64_t seed, const uint64_t step",
            "args": args + f", {contexts.model_value('seed')}, {contexts.model_value('step')}",
            "size": dim_text(self.size),
            "src": owner(self.src),
            "dst": owner(self.dst),
            "stream": f"{self.stream}u",
            "threshold": f"{self.threshold}ULL",
            "scale": printer.doprint(sp.Float(self.scale)) if self.scale != 1 else None,
            "zero": printer.doprint(sp.Float(0.0)),
        }


class Dropout(Op):
    """x * mask * scale in training programs; x (inverted) or x * keep (classic) otherwise."""

    name = "dropout"

    def adjoint(self, node: Node, delta: Node, ad: "Adjoints") -> dict[int, Node]:
        (x,) = node.inputs
        if not ad.needs(x):
            return {}
        # linear in x: δx = δ * mask * scale, the same mask drawn again from the same stream
        attrs = dict(node.attrs, stream=node.attrs.get("stream", node.name))
        return {0: ad.apply(DROPOUT, [delta], wrt=x, attrs=attrs)}

    def lower(self, node: Node, low: Any) -> Kernel:
        from graphc.passes.fuse import operand_symbol

        keep = node.attrs["keep"]
        inverted = node.attrs["mode"] == "inverted"
        src = low.table(low.source(node, 0))
        dst = low.table(node)
        size = Dim(node.size, node.batched)
        x = low.resolved(node, 0).name
        stream = node.attrs.get("stream", node.name)
        if low.training:
            mask = f"mask of {stream!r} at this step"
            text = f"{x} * {mask} / {keep}" if inverted else f"{x} * {mask}"
            return DropoutKernel(
                low.table.namer(f"k_{node.name}"),
                f"{node.name} = {text}; keep element k if splitmix64(stream, k) < {keep} * 2^64",
                size,
                src,
                dst,
                stream_id(stream),
                int(keep * 2.0**64),
                1.0 / keep if inverted else 1.0,
            )
        # evaluation and inference: the expectation of the training value
        factor = sp.Integer(1) if inverted else sp.Float(keep)
        text = x if inverted else f"{keep} * {x}"
        return ElementwiseKernel(
            low.table.namer(f"k_{node.name}"),
            f"{node.name} = {text} (dropout {node.attrs['mode']}, off outside training)",
            (Loop("i", size),),
            (Access(src, (1,)),),
            (Assign(Access(dst, (1,)), factor * operand_symbol(0), node.name),),
        )

    def formula(self, node: Node, args: list[str]) -> str:
        scale = f" / {node.attrs['keep']}" if node.attrs["mode"] == "inverted" else ""
        stream = node.attrs.get("stream", node.name)
        return f"{args[0]} ⊙ mask[{stream}]{scale}"


DROPOUT = Dropout()


def dropout(x: Node, rate: float, mode: str = "inverted", name: str | None = None) -> Node:
    """Zero each unit of each sample with probability ``rate`` while training.

    ``mode="inverted"`` scales kept units by 1/(1 − rate) in training and is the identity
    in inference; ``mode="classic"`` keeps units unscaled in training and multiplies by
    (1 − rate) in inference.  A rate of 0 returns ``x`` itself.
    """
    x = as_node(x, "dropout")
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise GraphError(f"dropout: rate must lie in [0, 1), got {rate} (for {x.describe()})")
    if mode not in MODES:
        raise GraphError(f"dropout: mode must be 'inverted' or 'classic', got {mode!r}")
    if not x.batched:
        raise GraphError(f"dropout: {x.describe()} has no batch axis; drop units of activations")
    if x.dtype != "real":
        raise GraphError(f"dropout: {x.describe()} holds integers")
    if rate == 0.0:
        return x
    attrs = {"rate": rate, "keep": 1.0 - rate, "mode": mode}
    return make_node(x.graph, DROPOUT, [x], x.shape, True, name, "dropout", attrs=attrs)
