"""The graph DSL: named nodes with per-sample shapes, checked at construction.

A ``Graph`` holds inputs, parameters, the nodes built from them, named outputs and an
optional loss to minimize.  Shapes are per sample: a *batched* node carries an implicit
leading batch axis, an unbatched one (a parameter, a loss) does not.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.errors import GraphError, ShapeError

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

INITS = ("zeros", "constant", "uniform", "normal", "glorot", "xavier", "he")


def user_line() -> str:
    """Return 'file:line' of the first stack frame outside the graphc package."""
    frame = sys._getframe(1)  # inspect.stack() reads source files: far too slow here
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PACKAGE_DIR):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


@dataclass(frozen=True)
class Init:
    """How a parameter is initialized: a named scheme and its arguments."""

    kind: str = "glorot"
    value: float = 0.0
    scale: float = 0.05

    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Draw initial values in float64 (the caller casts to the model's dtype)."""
        fan_in, fan_out = _fans(shape)
        if self.kind == "zeros":
            return np.zeros(shape)
        if self.kind == "constant":
            return np.full(shape, self.value)
        if self.kind == "uniform":
            return rng.uniform(-self.scale, self.scale, size=shape)
        if self.kind == "normal":
            return rng.normal(0.0, self.scale, size=shape)
        if self.kind in ("glorot", "xavier"):
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            return rng.uniform(-limit, limit, size=shape)
        if self.kind == "he":
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
        raise GraphError(f"unknown init {self.kind!r}; use one of {', '.join(INITS)}")


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    # convolution kernels (out, in, *k): receptive field times channels
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive


def make_init(init: Any) -> Init:
    """Accept an Init, a scheme name, a number (constant) or a (name, arg) tuple."""
    if isinstance(init, Init):
        return init
    if isinstance(init, (int, float)):
        return Init("constant", value=float(init))
    if isinstance(init, str):
        if init not in INITS:
            raise GraphError(f"unknown init {init!r}; use one of {', '.join(INITS)}")
        return Init(init)
    if isinstance(init, tuple) and len(init) == 2 and isinstance(init[0], str):
        kind, arg = init
        if kind == "constant":
            return Init("constant", value=float(arg))
        return Init(kind, scale=float(arg))
    raise GraphError(f"cannot understand init {init!r}; give a name such as 'glorot' or a number")


class Node:
    """One value in the graph: an op applied to input nodes, with a per-sample shape."""

    __slots__ = ("graph", "op", "inputs", "shape", "batched", "dtype", "name", "attrs", "where")

    def __init__(
        self,
        graph: "Graph",
        op: Any,
        inputs: Sequence["Node"],
        shape: tuple[int, ...],
        batched: bool,
        dtype: str,
        name: str,
        attrs: dict | None = None,
        where: str = "<unknown>",
    ) -> None:
        object.__setattr__(self, "graph", graph)
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "batched", bool(batched))
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "attrs", dict(attrs or {}))
        object.__setattr__(self, "where", where)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("graph nodes are immutable; build a new node instead")

    def __repr__(self) -> str:
        b = "batch, " if self.batched else ""
        return f"<{self.op.name} {self.name!r} ({b}{', '.join(map(str, self.shape))})>"

    @property
    def size(self) -> int:
        """Elements per sample (or in total, for an unbatched node)."""
        return int(np.prod(self.shape)) if self.shape else 1

    def describe(self) -> str:
        """Name, shape and source line, for error messages."""
        return f"{self.name!r} of shape {shape_str(self)} (defined at {self.where})"

    # arithmetic builds elementwise nodes; the ops module holds their meaning
    def __add__(self, other: Any) -> "Node":
        from graphc.ops import elementwise

        return elementwise.add(self, other)

    def __radd__(self, other: Any) -> "Node":
        from graphc.ops import elementwise

        return elementwise.add(other, self)

    def __sub__(self, other: Any) -> "Node":
        from graphc.ops import elementwise

        return elementwise.sub(self, other)

    def __rsub__(self, other: Any) -> "Node":
        from graphc.ops import elementwise

        return elementwise.sub(other, self)

    def __mul__(self, other: Any) -> "Node":
        from graphc.ops import elementwise

        return elementwise.mul(self, other)

    def __rmul__(self, other: Any) -> "Node":
        from graphc.ops import elementwise

        return elementwise.mul(other, self)

    def __truediv__(self, other: Any) -> "Node":
        from graphc.ops import elementwise

        return elementwise.div(self, other)

    def __rtruediv__(self, other: Any) -> "Node":
        from graphc.ops import elementwise

        return elementwise.div(other, self)

    def __neg__(self) -> "Node":
        from graphc.ops import elementwise

        return elementwise.neg(self)

    def __matmul__(self, other: "Node") -> "Node":
        from graphc.ops import linalg

        return linalg.matmul(self, other)


def shape_str(node: Node) -> str:
    """'(batch, 64)' for a batched node, '(64, 10)' for a parameter."""
    dims = (["batch"] if node.batched else []) + [str(s) for s in node.shape]
    return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")


class Graph:
    """A static computation graph: inputs, parameters, nodes, outputs and a loss."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise GraphError(
                f"graph name {name!r} must be an identifier (letters, digits, underscores)"
            )
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Node] = []
        self.params: list[Node] = []
        self.outputs: dict[str, Node] = {}
        self.loss: Node | None = None
        self._names: set[str] = set()
        self._counters: dict[str, int] = {}

    def __repr__(self) -> str:
        return (
            f"<Graph {self.name!r}: {len(self.inputs)} inputs, {len(self.params)} params, "
            f"{len(self.nodes)} nodes>"
        )

    def _repr_svg_(self) -> str | None:
        """SVG of the graph (δ nodes in orange) for notebooks; None without Graphviz."""
        import shutil
        import subprocess

        from graphc.draw import graph_dot

        if shutil.which("dot") is None:
            return None
        result = subprocess.run(
            ["dot", "-Tsvg"], input=graph_dot(self), capture_output=True, text=True
        )
        return result.stdout if result.returncode == 0 else None

    # --- naming -------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """A fresh name derived from ``base`` ('matmul' -> 'matmul_1', ...)."""
        if base not in self._names:
            return base
        count = self._counters.get(base, 0)
        while True:
            count += 1
            candidate = f"{base}_{count}"
            if candidate not in self._names:
                self._counters[base] = count
                return candidate

    def claim_name(self, name: str | None, default: str) -> str:
        """Reserve a user-given name (must be new) or an auto name."""
        if name is None:
            name = self.unique_name(default)
        else:
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise GraphError(
                    f"node name {name!r} must start with a letter or underscore and hold only "
                    "letters, digits, '_' and '.'"
                )
            if name in self._names:
                raise GraphError(f"the name {name!r} is already used in graph {self.name!r}")
        self._names.add(name)
        return name

    def add(self, node: Node) -> Node:
        """Append a constructed node (ops call this)."""
        self.nodes.append(node)
        return node

    # --- leaves -------------------------------------------------------------------------
    def input(self, name: str, shape: Sequence[int] | int, dtype: str = "float32") -> Node:
        """Declare a batched input with a per-sample ``shape`` ('float32' follows the model)."""
        from graphc.ops.base import INPUT

        shape = _shape_tuple(shape, f"input {name!r}")
        if dtype not in ("float32", "float64", "float", "int32"):
            raise GraphError(f"input {name!r}: dtype must be 'float32' or 'int32', not {dtype!r}")
        node = Node(
            self,
            INPUT,
            (),
            shape,
            True,
            "int32" if dtype == "int32" else "real",
            self.claim_name(name, name),
            where=user_line(),
        )
        self.inputs.append(node)
        return self.add(node)

    def param(
        self,
        name: str,
        shape: Sequence[int] | int,
        init: Any = "glorot",
        trainable: bool = True,
    ) -> Node:
        """Declare a parameter (unbatched) with an initializer."""
        from graphc.ops.base import PARAM

        shape = _shape_tuple(shape, f"param {name!r}")
        node = Node(
            self,
            PARAM,
            (),
            shape,
            False,
            "real",
            self.claim_name(name, name),
            attrs={"init": make_init(init), "trainable": bool(trainable)},
            where=user_line(),
        )
        self.params.append(node)
        return self.add(node)

    # --- roots --------------------------------------------------------------------------
    def output(self, name: str, node: Node) -> Node:
        """Name a node as a model output (returned by predict)."""
        self._check_own(node, f"output {name!r}")
        if not node.batched:
            raise GraphError(f"output {name!r}: {node.describe()} has no batch axis")
        from graphc.ops.base import INPUT
        from graphc.ops.shape import RESHAPE

        source = node
        while source.op is RESHAPE:
            source = source.inputs[0]
        if source.op is INPUT:
            # predict copies outputs out of the arena, where inputs never live
            raise GraphError(
                f"output {name!r}: {node.describe()} is (a view of) the input {source.name!r}; "
                "output a computed node instead, such as gc.identity(x)"
            )
        if name in self.outputs:
            raise GraphError(f"output {name!r} is declared twice")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise GraphError(f"output name {name!r} must be an identifier")
        self.outputs[name] = node
        return node

    def minimize(self, loss: Node) -> Node:
        """Set the scalar loss that training minimizes."""
        self._check_own(loss, "minimize")
        if loss.batched or loss.shape != ():
            raise GraphError(
                f"minimize needs a scalar loss (such as gc.mse(...)), got {loss.describe()}"
            )
        self.loss = loss
        return loss

    def _check_own(self, node: Any, what: str) -> None:
        if not isinstance(node, Node):
            raise GraphError(f"{what}: expected a graph node, got {type(node).__name__}")
        if node.graph is not self:
            raise GraphError(f"{what}: node {node.name!r} belongs to graph {node.graph.name!r}")

    def node(self, name: str) -> Node:
        """Look a node up by name."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"graph {self.name!r} has no node named {name!r}")


def _shape_tuple(shape: Sequence[int] | int, what: str) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ShapeError(
            f"{what}: shape must be a tuple of positive integers, got {shape!r}"
        ) from exc
    if any(d <= 0 for d in dims):
        raise ShapeError(f"{what}: shape must hold positive sizes, got {dims}")
    return dims
