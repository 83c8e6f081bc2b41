"""The compiler pipeline, stage by stage.

    1. graph (graph.py)        Graph                  -> checked Graph (outputs, loss)
    2. δ pass (autodiff.py)    Graph                  -> Backward: δ and gradient nodes
    3. CSE (passes/cse.py)     forward + backward     -> node -> representative map
    4. lowering (passes/fuse)  scheduled nodes        -> kernel records, fused (a softmax
                                                         cross-entropy reads its softmax
                                                         kernel's log-sum-exp per row)
    5. optimizer (optim.py)    update rule (sympy)    -> [gradient-norm kernel when clipping,]
                                                         one fused update kernel per parameter
                                                         (plain SGD: folded into weight
                                                         gradient products)
    6. memory (passes/memory)  kernels of all programs -> MemoryPlan: offsets in one arena
    7. codegen (codegen/c.py,  ModelPlan              -> C or CUDA source, header, cffi cdef
       codegen/cuda.py)
    8. build (build.py)        C or CUDA source       -> cached shared library (cc, nvcc)
    9. runtime (model.py)      library                -> Model

``plan_model`` runs stages 1-6, ``compile`` all of them.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import replace
from typing import Any

import sympy as sp

from graphc.autodiff import ancestors, differentiate
from graphc.codegen.names import Namer
from graphc.errors import GraphError
from graphc.graph import Graph, Node
from graphc.kernels import (
    Access,
    Assign,
    Dim,
    ElementwiseKernel,
    GemmKernel,
    GradNormKernel,
    Kernel,
    Loop,
    LossKernel,
    ModelPlan,
    ParamPlan,
    Program,
    SoftmaxKernel,
    Tensor,
)
from graphc.ops.loss import LOSS
from graphc.ops.loss import L as LSE
from graphc.optim import LR, STEP, G, Optimizer, P
from graphc.passes.cse import common_subexpressions
from graphc.passes.fuse import Lowering, TensorTable, operand_symbol
from graphc.passes.memory import plan as plan_memory

DTYPES = {"float32": 4, "float64": 8}
#: backends of stages 7-8: C with OpenMP, CUDA, and CUDA emulated on the CPU (for tests)
TARGETS = ("c", "cuda", "cuda-emu")


def _ordered(graph_nodes: list[Node], wanted: set[Node]) -> list[Node]:
    return [n for n in graph_nodes if n in wanted]


def _update_kernel(
    pp: ParamPlan, optimizer: Optimizer, table: TensorTable, clip: Tensor | None = None
) -> ElementwiseKernel:
    """One fused loop applying the optimizer's rule to every element of a parameter.

    Every expression is rewritten in terms of the values at loop entry (a later assignment
    sees the earlier ones' new values substituted), so the loop reads each element once.
    With ``clip`` (the one-element clipping scale), g is read as g * scale.
    """
    rule = optimizer.rule()
    operands = [pp.param, pp.grad, *pp.states]
    strides = [(1,)] * len(operands)
    g = operand_symbol(1)
    if clip is not None:
        g = g * operand_symbol(len(operands))
        operands.append(clip)
        strides.append((0,))
    symbols = {P: operand_symbol(0), G: g}
    for k, name in enumerate(rule.states):
        symbols[sp.Symbol(name, real=True)] = operand_symbol(2 + k)
    loop = Loop("i", Dim(pp.param.per_sample))
    current = dict(symbols)
    assigns = []
    targets = {"p": pp.param, **{name: pp.states[k] for k, name in enumerate(rule.states)}}
    for target, expr in rule.assigns:
        value = expr.xreplace(current)
        assigns.append(
            Assign(
                Access(targets[target], (1,)),
                value,
                f"{pp.param.label}.{target}" if target != "p" else pp.param.label,
            )
        )
        key = P if target == "p" else sp.Symbol(target, real=True)
        current[key] = value
    scalar_symbols = {STEP: sp.Symbol("t"), LR: sp.Symbol("lr")}
    scalars = tuple((name, expr.xreplace(scalar_symbols)) for name, expr in rule.scalars)
    clipped = f" (g = gradient * {clip.label})" if clip is not None else ""
    comment = f"{optimizer.name} update of {pp.param.label}{clipped}: " + "; ".join(
        f"{t} <- {e}" for t, e in rule.assigns
    )
    return ElementwiseKernel(
        table.namer(f"update_{pp.param.label}"),
        comment,
        (loop,),
        tuple(Access(t, s) for t, s in zip(operands, strides)),
        tuple(assigns),
        scalars,
        args=(("real", "lr"),)
        + ((("double", "t"),) if any(e.has(sp.Symbol("t")) for _, e in scalars) else ()),
    )


def _plain_sgd(optimizer: Optimizer) -> bool:
    """Whether the update is p <- p - lr g with nothing else (no state, decay or clipping)."""
    rule = optimizer.rule()
    plain = not rule.states and not rule.scalars and optimizer.clip_norm is None
    return plain and rule.assigns == (("p", P - LR * G),)


def _owners(tensors: list[Tensor]) -> set[str]:
    """The buffers behind some tensors (a reshape view counts as its owner)."""
    return {t.alias_of or t.name for t in tensors}


def _fuse_sgd_steps(
    kernels: list[Kernel], params: list[ParamPlan], table: TensorTable
) -> tuple[list[Kernel], set[str]]:
    """Fold plain SGD steps into the products that form weight gradients.

    A gradient written whole by one matrix product, and read by nothing in the training
    step, need not be stored: the product adds -lr times itself straight into the
    parameter (``gc_gemm_scaled``).  The fused kernel runs where the product did, or
    after the last kernel that still reads the parameter's old value if that is later.
    Returns the new kernel list and the parameters (by name) whose update is done.
    """
    kernels = list(kernels)
    fused: set[str] = set()
    for pp in params:
        if not pp.trainable:
            continue
        grad = pp.grad.name
        writers = [i for i, k in enumerate(kernels) if grad in _owners(k.writes())]
        readers = [i for i, k in enumerate(kernels) if grad in _owners(k.reads())]
        if len(writers) != 1 or readers:
            continue
        product = kernels[writers[0]]
        whole = isinstance(product, GemmKernel) and product.c.name == grad
        if not whole or product.accumulate or product.epilogue or product.m.batched:
            continue
        if product.n.batched or product.m.coef * product.n.coef != pp.param.per_sample:
            continue
        del kernels[writers[0]]
        after = [
            i for i, k in enumerate(kernels) if pp.param.name in _owners(k.reads() + k.writes())
        ]
        label = pp.param.label
        step = replace(
            product,
            name=table.namer(f"update_{label}"),
            comment=f"SGD step of {label} fused into its gradient's product: "
            f"{label} -= lr * ({product.comment.split(' = ', 1)[-1]})",
            c=pp.param,
            accumulate=True,
            scale=-sp.Symbol("lr"),
        )
        kernels.insert(max([writers[0]] + [i + 1 for i in after]), step)
        fused.add(pp.param.name)
    return kernels, fused


def _share_log_sum_exp(
    kernels: list[Kernel], table: TensorTable, shared: dict[str, tuple[Tensor, str, str]]
) -> list[Kernel]:
    """Let a cross-entropy on logits read each row's log-sum-exp from their softmax kernel.

    The loss needs lse = max + log Σ exp(logit − max) per row; the softmax kernel of the
    same logits has just summed those exponentials, in the same order, so it stores the
    row's lse and the loss kernel reads it instead of summing them again.  The results
    are the same to the bit.  ``shared`` keeps, per loss, the lse buffer and the two
    kernels' names, so that every program gets the same kernels.
    """
    kernels = list(kernels)
    for i, loss in enumerate(kernels):
        if not isinstance(loss, LossKernel) or loss.logits is None or not loss.term.has(LSE):
            continue
        found = [
            j
            for j, k in enumerate(kernels[:i])
            if isinstance(k, SoftmaxKernel)
            and (k.src.name, k.dst.name) == (loss.logits.name, loss.pred.name)
        ]
        if not found:
            continue
        softmax = kernels[found[-1]]
        key = loss.row_loss.name
        if key not in shared:
            lse = table.scratch(f"{loss.logits.label}_lse", (loss.rows_per_sample,), True)
            names = table.namer(f"{softmax.name}_with_lse"), table.namer(f"{loss.name}_from_lse")
            shared[key] = (lse, *names)
        lse, softmax_name, loss_name = shared[key]
        comment = f"{softmax.comment}; {lse.label} = its log-sum-exp per row, for the loss"
        kernels[found[-1]] = table.distinct(
            replace(softmax, name=softmax_name, comment=comment, lse=lse)
        )
        kernels[i] = table.distinct(replace(loss, name=loss_name, lse=lse))
    return kernels


def _grad_norm_kernel(
    params: list[ParamPlan], max_norm: float, table: TensorTable
) -> tuple[GradNormKernel, Tensor]:
    """The kernel computing the clipping scale min(1, c / ‖g‖) over every gradient."""
    scale = table.scratch("clip_scale", (1,), False)
    grads = tuple(pp.grad for pp in params if pp.trainable)
    names = ", ".join(t.label for t in grads)
    comment = f"clip_scale = min(1, {max_norm} / ||g||), ||g||^2 = sum of squares of {names}"
    return GradNormKernel(table.namer("k_clip_scale"), comment, grads, max_norm, scale), scale


def plan_model(
    graph: Graph,
    batch_size: int = 32,
    dtype: str = "float32",
    optimizer: Optimizer | None = None,
    frozen: set[str] | None = None,
    lanes: bool = False,
    fuse_steps: bool = False,
) -> ModelPlan:
    """Stages 1-6: from a Graph to a ModelPlan.

    ``lanes``: lay convolutions out for a vectorizing, multi-threaded CPU target (the C
    backend): 16 or more output channels are summed in vector lanes, which needs
    channels-last copies of the weights and of δ, and each filter gradient is summed in
    fixed blocks of samples, a thread per block, then over the blocks; the memory plan
    keeps each thread's rows of a batched tensor on bytes that thread wrote before.  CUDA
    and the embedded export keep the plain layout, one sum over the batch and any free
    bytes.
    ``fuse_steps``: with plain SGD, fold each weight's step into the product forming its
    gradient (``compile`` does for every target; see ``_fuse_sgd_steps``).
    """
    if not isinstance(graph, Graph):
        raise GraphError(f"compile expects a gc.Graph, got {type(graph).__name__}")
    if dtype not in DTYPES:
        raise GraphError(f"dtype must be 'float32' or 'float64', not {dtype!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise GraphError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not graph.outputs and graph.loss is None:
        raise GraphError(
            f"graph {graph.name!r} has neither outputs nor a loss; add g.output(name, node) "
            "or g.minimize(loss)"
        )
    if graph.loss is not None and graph.loss.op is not LOSS:
        raise GraphError(
            f"minimize({graph.loss.name!r}): the objective must be one loss op (gc.mse, "
            "gc.softmax_cross_entropy, ...); sums or other functions of losses are not "
            "supported yet"
        )
    frozen = set(frozen or ())
    unknown = frozen - {p.name for p in graph.params}
    if unknown:
        raise GraphError(f"cannot freeze unknown parameters {sorted(unknown)}")
    train = graph.loss is not None and optimizer is not None
    backward = differentiate(graph, frozen) if train else None
    all_nodes = graph.nodes + (backward.nodes if backward else [])
    rep = common_subexpressions(all_nodes)
    namer = Namer()
    table = TensorTable(namer, backward.grads if backward else {}, rep)
    # name parameters and inputs first so they keep their plain names
    for node in graph.inputs + graph.params:
        table(node)

    programs: list[Program] = []
    shared_lse: dict[str, tuple[Tensor, str, str]] = {}  # see _share_log_sum_exp
    output_nodes = list(graph.outputs.values())
    if output_nodes:
        need = ancestors(output_nodes)
        lowering = Lowering(
            _ordered(graph.nodes, need), set(output_nodes), table, lanes=lanes, batch=batch_size
        )
        inputs = tuple(table(x) for x in graph.inputs if x in need)
        programs.append(
            Program(
                "infer",
                "Inference: compute the outputs for n rows.",
                tuple(lowering.kernels()),
                inputs,
                frozenset(table(o).alias_of or table(o).name for o in output_nodes),
            )
        )
    if graph.loss is not None:
        need = ancestors([graph.loss])
        inputs = tuple(table(x) for x in graph.inputs if x in need)
        lowering = Lowering(
            _ordered(graph.nodes, need), {graph.loss}, table, lanes=lanes, batch=batch_size
        )
        programs.append(
            Program(
                "eval",
                "Evaluation: the loss (and hits) for n rows.",
                tuple(_share_log_sum_exp(lowering.kernels(), table, shared_lse)),
                inputs,
            )
        )

    params: list[ParamPlan] = []
    for p in graph.params:
        grad = backward.grads.get(p) if backward else None
        states: tuple[Tensor, ...] = ()
        if grad is not None:
            rule_states = optimizer.rule().states
            states = tuple(
                Tensor(namer(f"{p.name}.{s}"), f"{p.name}.{s}", "real", p.shape, False, "state")
                for s in rule_states
            )
        params.append(
            ParamPlan(table(p), table(grad) if grad is not None else None, states, grad is not None)
        )
    if train:
        grads = list(backward.grads.values())
        need = ancestors([graph.loss] + grads)
        schedule = _ordered(graph.nodes, need) + _ordered(backward.nodes, need)
        lowering = Lowering(
            schedule,
            set(grads) | {graph.loss},
            table,
            training=True,
            lanes=lanes,
            batch=batch_size,
        )
        kernels = _share_log_sum_exp(lowering.kernels(), table, shared_lse)
        inputs = tuple(table(x) for x in graph.inputs if x in need)
        grad_names = frozenset(table(g).name for g in grads)
        programs.append(
            Program(
                "grad",
                "Gradients: forward and δ pass for n rows, no update.",
                tuple(kernels),
                inputs,
                grad_names,
            )
        )
        clip = None
        fused: set[str] = set()
        if optimizer.clip_norm is not None:
            norm_kernel, clip = _grad_norm_kernel(params, optimizer.clip_norm, table)
            kernels.append(norm_kernel)
        elif fuse_steps and _plain_sgd(optimizer):
            kernels, fused = _fuse_sgd_steps(kernels, params, table)
        kernels += [
            _update_kernel(pp, optimizer, table, clip)
            for pp in params
            if pp.trainable and pp.param.name not in fused
        ]
        programs.append(
            Program(
                "train",
                "Training step: forward, δ pass and update for n rows.",
                tuple(kernels),
                inputs,
            )
        )

    slots = tuple(
        Tensor(namer(f"batch_{x.name}"), f"batch of {x.name}", x.dtype, x.shape, True, "slot")
        for x in graph.inputs
    )
    persistent: list[Tensor] = []
    for pp in params:
        persistent.append(pp.param)
        if pp.grad is not None:
            persistent.append(pp.grad)
        persistent.extend(pp.states)
    persistent.extend(slots)
    memory = plan_memory(
        persistent,
        {pr.name: (list(pr.kernels), set(pr.keep)) for pr in programs},
        batch_size,
        DTYPES[dtype],
        threads=lanes,
    )
    loss_kind = graph.loss.attrs["kind"] if graph.loss is not None else None
    rows = 1
    if graph.loss is not None:
        for s in graph.loss.inputs[0].shape[:-1]:
            rows *= s
    lr_expr = None
    if optimizer is not None:
        lr_expr = optimizer.schedule.expr()
    plan = ModelPlan(
        name=namer(graph.name) if graph.name not in ("model",) else "model",
        graph_name=graph.name,
        dtype=dtype,
        batch=batch_size,
        programs=tuple(programs),
        inputs=tuple(table(x) for x in graph.inputs),
        outputs=tuple((name, table(node)) for name, node in graph.outputs.items()),
        params=tuple(params),
        slots=slots,
        memory=memory,
        lr=lr_expr,
        lr_per=optimizer.schedule.per if optimizer is not None else "epoch",
        loss=loss_kind.name if loss_kind else None,
        accuracy=loss_kind.accuracy if loss_kind else None,
        rows_per_sample=rows,
        optimizer=optimizer.describe() if optimizer is not None else "none",
    )
    return plan


@functools.cache
def code_version() -> str:
    """A digest of graphc's own code (its modules, templates and runtime headers: path, size,
    modification time), part of every cached plan's key."""
    from graphc.codegen.c import RUNTIME_DIR, TEMPLATE_DIR

    package = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for root in (package, TEMPLATE_DIR, RUNTIME_DIR):
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith((".py", ".j2", ".h", ".cuh")):
                    stat = os.stat(os.path.join(folder, name))
                    digest.update(f"{folder}/{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _text(value: Any) -> str:
    """A value as key text: sympy's srepr keeps symbols' assumptions, which str drops."""
    return sp.srepr(value) if isinstance(value, sp.Basic) else repr(value)


def plan_key(
    graph: Graph, batch_size: int, dtype: str, optimizer: Optimizer | None, frozen, target: str
) -> str:
    """What a compile's plan and sources depend on, as a digest: every node (op, inputs,
    shape, type, name, attributes, where it was defined), the graph's inputs, parameters,
    outputs and loss, the options, the optimizer's update rule and schedule, and graphc's
    code.  A value whose text is not stable (an object printed with its address) only makes
    the key new each time: a cache miss, never a wrong hit."""
    index = {node: k for k, node in enumerate(graph.nodes)}
    parts = [code_version(), graph.name, target, str(batch_size), dtype, repr(sorted(frozen))]
    for node in graph.nodes:
        attrs = sorted((k, _text(v)) for k, v in node.attrs.items())
        op = (type(node.op).__module__, type(node.op).__qualname__, node.op.name)
        op_state = sorted((k, _text(v)) for k, v in getattr(node.op, "__dict__", {}).items())
        inputs = [index[x] for x in node.inputs]
        parts.append(
            repr((op, op_state, inputs, node.shape, node.batched, node.dtype, node.name, attrs))
            + str(node.where)
        )
    parts.append(repr([index[x] for x in graph.inputs]))
    parts.append(repr([index[x] for x in graph.params]))
    parts.append(repr([(name, index[x]) for name, x in graph.outputs.items()]))
    parts.append(repr(index.get(graph.loss)))
    if optimizer is not None:
        rule = optimizer.rule()
        parts += [type(optimizer).__module__ + "." + type(optimizer).__qualname__]
        parts += [optimizer.describe(), _text(optimizer.schedule.expr()), optimizer.schedule.per]
        parts += [repr(optimizer.clip_norm), repr(rule.states)]
        parts += [f"{name}={_text(expr)}" for name, expr in rule.scalars + rule.assigns]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def compile(  # noqa: A001 - the public name the DSL promises
    graph: Graph,
    target: str = "c",
    batch_size: int = 32,
    dtype: str = "float32",
    optimizer: Optimizer | None = None,
    seed: int = 0,
    frozen: Any = None,
    cflags: list[str] | None = None,
    num_threads: int | None = None,
):
    """Compile ``graph`` into a trainable native Model (stages 1-9).

    ``target``: ``"c"`` (C with OpenMP), ``"cuda"`` (CUDA kernels built with nvcc, tensors
    in device memory) or ``"cuda-emu"`` (the same CUDA source compiled as C++ for the CPU
    against an emulation header: a testing aid, see docs/cuda.md).  ``cflags`` replaces the
    compiler flags of the chosen target.
    """
    from graphc.build import build_c, build_cuda, load_plan, store_plan
    from graphc.codegen import c, cuda
    from graphc.model import Model

    if target not in TARGETS:
        raise GraphError(
            f"target {target!r} is not available; use one of {', '.join(map(repr, TARGETS))}"
        )
    if graph.loss is not None and optimizer is None:
        from graphc.optim import SGD

        optimizer = SGD(lr=0.01)
    frozen = set([frozen] if isinstance(frozen, str) else (frozen or ()))
    # a graph compiled before (same structure, options and graphc code) skips planning and
    # rendering: its plan and sources come back from the cache, and the build finds its
    # library there too
    key = plan_key(graph, batch_size, dtype, optimizer, frozen, target)
    record = load_plan(key)
    if record is None:
        plan = plan_model(
            graph, batch_size, dtype, optimizer, frozen, lanes=target == "c", fuse_steps=True
        )
        render = c.render_model if target == "c" else cuda.render_model
        record = dict(zip(("plan", "source", "header", "cdef"), (plan, *render(plan))))
        store_plan(key, record)
    plan, source, header, cdef = (record[k] for k in ("plan", "source", "header", "cdef"))
    if target == "c":
        library = build_c(plan.name, source, header, cdef, cflags=cflags)
    else:
        emulate = target == "cuda-emu"
        library = build_cuda(plan.name, source, header, cdef, emulate=emulate, flags=cflags)
    # what Model.freeze/unfreeze need to compile the same graph again
    options = {
        "batch_size": batch_size,
        "dtype": dtype,
        "frozen": frozen,
        "cflags": cflags,
        "target": target,
    }
    return Model(
        graph,
        plan,
        library,
        optimizer,
        seed=seed,
        num_threads=num_threads,
        options=options,
    )
