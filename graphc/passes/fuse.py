"""Lowering with fusion: scheduled graph nodes -> kernel records.

Assumes: ``schedule`` lists nodes in a valid execution order and ``rep`` maps every node
to its common-subexpression representative.  Guarantees: every node in ``keep`` and every
value read by a later kernel is materialized in a tensor; elementwise chains are fused
into one loop, and into the epilogue of the matrix product that feeds them (bias +
activation in the forward pass, f'(·) ⊙ (δ · Wᵀ) in the backward pass), or into the
output pass of an op with ``absorbs_elementwise`` (convolution, pooling: see
``Lowering.output_pass``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import sympy as sp

from graphc.autodiff import CONST
from graphc.graph import Node
from graphc.kernels import (
    LOOP_VARS,
    Access,
    Assign,
    Dim,
    ElementwiseKernel,
    Epilogue,
    GemmKernel,
    Kernel,
    Loop,
    Tensor,
    full_shape,
    strides_for,
)
from graphc.ops.base import INPUT, PARAM
from graphc.ops.elementwise import ELEMENTWISE
from graphc.ops.linalg import MatMul, matrix_dims
from graphc.ops.loss import ONE_HOT
from graphc.ops.shape import RESHAPE
from graphc.symbolic import X

ACC = sp.Symbol("acc", real=True)


def operand_symbol(i: int) -> sp.Symbol:
    """The symbol a kernel expression uses for its i-th operand."""
    return sp.Symbol(f"a{i}", real=True)


class TensorTable:
    """Node -> Tensor, shared by all programs of one model so they agree on names."""

    def __init__(self, namer, grads: dict[Node, Node], rep: dict[Node, Node]) -> None:
        self.namer = namer
        self.rep = rep
        self.grad_of = {g: p for p, g in grads.items()}
        self._tensors: dict[Node, Tensor] = {}
        self._kernels: dict[str, Kernel] = {}

    def base(self, node: Node) -> Node:
        """Follow CSE and reshape views to the node that owns the memory."""
        node = self.rep.get(node, node)
        while node.op is RESHAPE:
            node = self.rep.get(node.inputs[0], node.inputs[0])
        return node

    def __call__(self, node: Node) -> Tensor:
        node = self.rep.get(node, node)
        if node in self._tensors:
            return self._tensors[node]
        if node.op is RESHAPE:
            owner = self(self.base(node))
            tensor = Tensor(
                owner.name,
                node.name,
                owner.dtype,
                node.shape,
                node.batched,
                owner.role,
                alias_of=owner.name,
            )
        else:
            tensor = Tensor(
                self.namer(node.name),
                node.name,
                node.dtype,
                node.shape,
                node.batched,
                self._role(node),
            )
        self._tensors[node] = tensor
        return tensor

    def _role(self, node: Node) -> str:
        if node.op is INPUT:
            return "input"
        if node.op is PARAM:
            return "param"
        if node.op is CONST:
            return "const"
        if node in self.grad_of:
            return "grad"
        return "act"

    def scratch(self, name: str, shape: tuple[int, ...], batched: bool) -> Tensor:
        """A named work buffer that belongs to no node."""
        return Tensor(self.namer(name), name, "real", shape, batched, "act")

    def distinct(self, kernel: Kernel) -> Kernel:
        """``kernel``, renamed when another program already has a different kernel of its name.

        The same group can lower differently per program (training keeps more members),
        and codegen emits one function per kernel name.
        """
        candidate, k = kernel, 1
        while True:
            known = self._kernels.setdefault(candidate.name, candidate)
            if known == candidate:
                return candidate
            k += 1
            candidate = replace(kernel, name=self.namer(f"{kernel.name}.{k}"))


@dataclass
class _Group:
    index: int
    root: Node  # the matmul, or the first elementwise node
    members: list[Node] = field(default_factory=list)

    @property
    def is_gemm(self) -> bool:
        return isinstance(self.root.op, MatMul)


def _full_shape(node: Node) -> list[Dim]:
    return full_shape(node.shape, node.batched)


def _masks(out: Node, operand: Node, onehot: bool) -> list[int]:
    """Per output axis: 1 where the operand varies, 0 where it is broadcast, 2 = class axis.

    Per-sample axes align from the right; a batched operand's batch axis aligns with the
    output's batch axis, however few per-sample axes the operand has.
    """
    source = operand.inputs[0] if onehot else operand
    per_sample = [1 if s > 1 else 0 for s in source.shape] + ([2] if onehot else [])
    pad = [0] * (len(out.shape) - len(per_sample))
    if not out.batched:
        return pad + per_sample
    return [1 if source.batched else 0] + pad + per_sample


_strides_for = strides_for


class Lowering:
    """Builds the kernels of one program (training step or inference).

    ``training`` says which kind of program it is: True for the gradient and training
    programs, False for evaluation and inference.  Ops whose meaning differs between the
    two (dropout) read it in their ``lower``; ``lanes`` is for ops whose layout depends
    on the target (convolutions).
    """

    def __init__(
        self,
        schedule: list[Node],
        keep: set[Node],
        table: TensorTable,
        training: bool = False,
        lanes: bool = False,
        batch: int = 1,
    ) -> None:
        self.table = table
        self.training = training
        #: whether convolutions may take the lane layouts and the filter gradients sample
        #: blocks (see compiler.plan_model)
        self.lanes = lanes
        #: the most rows a step takes (the compiled batch size)
        self.batch = batch
        #: group root -> (group, materialized members), for ops that fuse a chain after them
        self._fused: dict[Node, tuple[_Group, list[Node]]] = {}
        self.rep = table.rep
        self.nodes: list[Node] = []
        self._companions: dict[Node, list[Node]] = {}
        seen: set[Node] = set()
        for node in schedule:
            r = self.rep.get(node, node)
            if r in seen or r.op in (INPUT, PARAM, CONST, RESHAPE, ONE_HOT):
                continue
            seen.add(r)
            if r.op.written_by_input:
                self._companions.setdefault(self.source(r, 0), []).append(r)
                continue
            self.nodes.append(r)
        self.keep = {table.base(k) if k.op is RESHAPE else self.rep.get(k, k) for k in keep}
        self.consumers: dict[Node, set[Node]] = {}
        for node in self.nodes:
            for x in self._read(node):
                self.consumers.setdefault(x, set()).add(node)
        # a producer is materialized when only its companions are read
        for producer, outputs in self._companions.items():
            self.consumers.setdefault(producer, set()).update(outputs)

    def _read(self, node: Node) -> list[Node]:
        """The memory-owning nodes a node reads (through CSE and reshape views)."""
        out = []
        for x in node.inputs:
            x = self.rep.get(x, x)
            if x.op is ONE_HOT:
                x = self.table.base(x.inputs[0])
            out.append(self.table.base(x))
        return out

    # --- grouping ---------------------------------------------------------------------------
    def groups(self) -> list[_Group]:
        """Greedy fusion of elementwise nodes into the latest group that can take them."""
        groups: list[_Group] = []
        group_of: dict[Node, _Group] = {}
        for node in self.nodes:
            target = None
            if node.op is ELEMENTWISE:
                target = self._join_target(node, group_of)
            if target is None:
                target = _Group(len(groups), node)
                groups.append(target)
            target.members.append(node)
            group_of[node] = target
            # further outputs of its kernel exist once that kernel ran
            for companion in self._companions.get(node, ()):
                group_of[companion] = target
        return groups

    def _join_target(self, node: Node, group_of: dict[Node, _Group]) -> _Group | None:
        candidates = []
        for x in node.inputs:
            x = self.rep.get(x, x)
            g = group_of.get(x)
            if g is None or not (
                g.root.op is ELEMENTWISE or g.is_gemm or g.root.op.absorbs_elementwise
            ):
                continue
            if g.root.shape != node.shape or g.root.batched != node.batched:
                continue
            if self._can_join(node, g, group_of):
                candidates.append(g)
        return max(candidates, key=lambda g: g.index) if candidates else None

    def _can_join(self, node: Node, g: _Group, group_of: dict[Node, _Group]) -> bool:
        for x in node.inputs:
            x = self.rep.get(x, x)
            if x in g.members:
                continue
            owner = group_of.get(self.table.base(x) if x.op is not ONE_HOT else x)
            if owner is not None and owner.index >= g.index:
                return False
            if g.is_gemm and self._pattern_2d(node, x) is None:
                return False
        return True

    def _pattern_2d(self, out: Node, operand: Node) -> tuple[int, int] | None:
        """(row stride, col stride) of an operand over a GEMM's C matrix, or None."""
        onehot = operand.op is ONE_HOT
        masks = _masks(out, operand, onehot)
        rows, cols = masks[:-1], masks[-1]
        dims = _full_shape(out)
        meaningful = [m for m, d in zip(rows, dims[:-1]) if d.batched or d.coef > 1]
        if meaningful and len(set(meaningful)) > 1:
            return None
        row_varies = bool(meaningful) and meaningful[0] == 1
        if onehot:
            return (1 if row_varies else 0, 0)
        col_stride = 1 if cols == 1 else 0
        row_stride = (operand.shape[-1] if cols == 1 else 1) if row_varies else 0
        return (row_stride, col_stride)

    # --- kernels ----------------------------------------------------------------------------
    def source(self, node: Node, i: int) -> Node:
        """The memory-owning node behind input ``i`` of ``node`` (through CSE and views)."""
        x = node.inputs[i]
        return self.table.base(self.rep.get(x, x))

    def companions(self, node: Node) -> list[Node]:
        """The scheduled nodes whose values the kernel of ``node`` also writes (in order)."""
        return list(self._companions.get(node, ()))

    def resolved(self, node: Node, i: int) -> Node:
        """Input ``i`` of ``node`` after common-subexpression elimination."""
        x = node.inputs[i]
        return self.rep.get(x, x)

    def formula(self, node: Node) -> str:
        """'name = formula' with inputs named after their CSE representatives."""
        names = [self.rep.get(x, x).name for x in node.inputs]
        return f"{node.name} = {node.op.formula(node, names)}"

    def fused(self, node: Node) -> list[Node]:
        """The elementwise nodes fused after ``node`` into its kernel (in execution order)."""
        group, _ = self._fused[node]
        return group.members[1:]

    def output_pass(self, node: Node) -> Epilogue:
        """What the kernel of ``node`` stores at each element of ``node``, given its value ``acc``.

        For an op with ``absorbs_elementwise``: ``node`` itself when it is read elsewhere,
        and each fused elementwise node that is.  Operand and target strides run over
        ``node``'s axes, the batch first (``full_shape(node.shape, node.batched)``).
        """
        group, materialized = self._fused[node]
        dims = _full_shape(node)
        accesses: list[Access] = []
        symbols: dict[tuple[Node, bool], sp.Symbol] = {}

        def operand_of(member: Node, x: Node) -> sp.Symbol:
            onehot = x.op is ONE_HOT
            if (x, onehot) not in symbols:
                masks = _masks(node, x, onehot)
                symbols[(x, onehot)] = operand_symbol(len(accesses))
                if onehot:
                    strides = _strides_for(dims, [m if m != 2 else 0 for m in masks])
                    tensor = self.table(x.inputs[0])
                    accesses.append(Access(tensor, tuple(strides), onehot=len(dims) - 1))
                else:
                    accesses.append(Access(self.table(x), tuple(_strides_for(dims, masks))))
            return symbols[(x, onehot)]

        values = self._expressions(group, operand_of)
        strides = tuple(_strides_for(dims, [1] * len(dims)))
        assigns = tuple(
            Assign(Access(self.table(m), strides), values[m], m.name) for m in materialized
        )
        return Epilogue(tuple(accesses), assigns)

    def kernels(self) -> list[Kernel]:
        """The program's kernels in execution order."""
        groups = self.groups()
        member_group = {m: g for g in groups for m in g.members}
        result: list[Kernel] = []
        for g in groups:
            materialized = [
                m
                for m in g.members
                if m in self.keep
                or any(member_group.get(c) is not g for c in self.consumers.get(m, ()))
            ]
            if not materialized:
                continue
            op = g.root.op
            if g.is_gemm:
                result.append(self._gemm(g, materialized))
            elif op is ELEMENTWISE:
                result.append(self._elementwise(g, materialized))
            else:
                self._fused[g.root] = (g, materialized)
                result.append(op.lower(g.root, self))
        return [self.table.distinct(k) for k in result]

    def _expressions(self, g: _Group, operand_of) -> dict[Node, sp.Expr]:
        """Each member's value as an expression of operand symbols (and ``acc``)."""
        values: dict[Node, sp.Expr] = {}
        for m in g.members:
            if m is g.root and m.op is not ELEMENTWISE:
                values[m] = ACC
                continue
            mapping = {}
            for i, x in enumerate(m.inputs):
                x = self.rep.get(x, x)
                mapping[X[i]] = values[x] if x in values else operand_of(m, x)
            values[m] = m.attrs["expr"].xreplace(mapping)
        return values

    def _elementwise(self, g: _Group, materialized: list[Node]) -> ElementwiseKernel:
        out = g.root
        dims = _full_shape(out)
        operands: list[tuple[Node, bool]] = []
        for m in g.members:
            for x in m.inputs:
                x = self.rep.get(x, x)
                if x in g.members:
                    continue
                key = (x, x.op is ONE_HOT)
                if key not in operands:
                    operands.append(key)
        out_masks = [1 if (d.batched or d.coef > 1) else 0 for d in dims]
        all_masks = [_masks(out, x, oh) for x, oh in operands]
        # drop size-1 axes, then merge neighbours that every tensor treats alike
        axes = [a for a in range(len(dims)) if out_masks[a]] or [len(dims) - 1]
        loops_axes: list[list[int]] = []
        for a in axes:
            sig = tuple(m[a] for m in all_masks)
            if (
                loops_axes
                and tuple(m[loops_axes[-1][-1]] for m in all_masks) == sig
                and 2 not in sig
            ):
                loops_axes[-1].append(a)
            else:
                loops_axes.append([a])
        loops = []
        for k, group_axes in enumerate(loops_axes):
            extent = Dim(1, False)
            for a in group_axes:
                extent = Dim(extent.coef * dims[a].coef, extent.batched or dims[a].batched)
            loops.append(Loop(LOOP_VARS[k], extent))

        def collapse(strides: list[int]) -> tuple[int, ...]:
            return tuple(strides[ax[-1]] for ax in loops_axes)

        accesses = []
        symbols: dict[tuple[Node, bool], sp.Symbol] = {}
        for idx, ((x, oh), masks) in enumerate(zip(operands, all_masks)):
            symbols[(x, oh)] = operand_symbol(idx)
            if oh:
                label_masks = [m if m != 2 else 0 for m in masks]
                strides = collapse(_strides_for(dims, label_masks))
                class_loop = next(k for k, ax in enumerate(loops_axes) if masks[ax[-1]] == 2)
                accesses.append(Access(self.table(x.inputs[0]), strides, onehot=class_loop))
            else:
                accesses.append(Access(self.table(x), collapse(_strides_for(dims, masks))))
        values = self._expressions(g, lambda m, x: symbols[(x, x.op is ONE_HOT)])
        out_strides = collapse(_strides_for(dims, out_masks))
        assigns = tuple(
            Assign(Access(self.table(m), out_strides), values[m], m.name) for m in materialized
        )
        comment = "; ".join(self.formula(m) for m in g.members)
        return ElementwiseKernel(
            self.table.namer(f"k_{materialized[-1].name}"),
            comment,
            tuple(loops),
            tuple(accesses),
            assigns,
        )

    def _gemm(self, g: _Group, materialized: list[Node]) -> GemmKernel:
        root = g.root
        op: MatMul = root.op
        # matrix sizes come from the operands as seen (a flatten view), memory from their owners
        a_view, b_view = (self.rep.get(x, x) for x in root.inputs)
        a, b = self.table.base(a_view), self.table.base(b_view)
        a_rows, a_cols = matrix_dims(a_view)
        b_rows, b_cols = matrix_dims(b_view)
        a_rdim = Dim(a_rows, a.batched)
        if op.trans_a:
            m, k = Dim(a_cols), a_rdim
        else:
            m, k = a_rdim, Dim(a_cols)
        if op.trans_b:
            if b.batched:
                raise NotImplementedError(f"{root.name}: transposed batched right operand")
            n = Dim(b_rows)
        else:
            n = Dim(b_cols)
        c_node = root if root in materialized else materialized[-1]
        epilogue = None
        if len(g.members) > 1:
            operands: list[Node] = []
            accesses: list[Access] = []
            symbols: dict[Node, sp.Symbol] = {}

            def operand_of(member: Node, x: Node) -> sp.Symbol:
                if x not in symbols:
                    row, col = self._pattern_2d(member, x)
                    tensor = self.table(x.inputs[0] if x.op is ONE_HOT else x)
                    symbols[x] = operand_symbol(len(operands))
                    operands.append(x)
                    accesses.append(
                        Access(tensor, (row, col), onehot=1 if x.op is ONE_HOT else None)
                    )
                return symbols[x]

            values = self._expressions(g, operand_of)
            assigns = tuple(
                Assign(Access(self.table(mm), (n.coef, 1)), values[mm], mm.name)
                for mm in materialized
                if mm is not root
            )
            epilogue = Epilogue(tuple(accesses), assigns)
        comment = self.formula(root)
        if epilogue:
            comment += "; then " + "; ".join(self.formula(mm) for mm in g.members[1:])
        return GemmKernel(
            self.table.namer(f"k_{c_node.name}"),
            comment,
            op.trans_a,
            op.trans_b,
            m,
            n,
            k,
            self.table(a),
            a_cols,
            self.table(b),
            b_cols,
            self.table(c_node),
            n.coef,
            False,
            epilogue,
        )
