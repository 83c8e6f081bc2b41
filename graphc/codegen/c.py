"""C backend: template contexts for kernels and the model's entry points.

Python decides here (names, sizes, index expressions, printed math, pragmas); the Jinja2
templates under ``templates/c`` only lay those strings out.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
import sympy as sp

from graphc.codegen.printer import CPrinter, cse_block, exp_form
from graphc.kernels import (
    Access,
    Dim,
    ElementwiseKernel,
    GemmKernel,
    GradNormKernel,
    Kernel,
    LossKernel,
    ReduceKernel,
    SoftmaxKernel,
    Tensor,
    reads,
    writes,
)
from graphc.ops.loss import L
from graphc.passes.fuse import ACC, operand_symbol
from graphc.symbolic import I, N, O, T


def _data_dir(name: str) -> str:
    """An installed wheel has graphc/NAME; a source checkout has NAME beside graphc/."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    inside = os.path.join(package, name)
    return inside if os.path.isdir(inside) else os.path.join(os.path.dirname(package), name)


TEMPLATE_DIR = _data_dir("templates")
RUNTIME_DIR = _data_dir("runtime")
#: columns a bias-gradient reduction sums per pass over the rows (doubles in vector lanes)
REDUCE_BLOCK = 16


class _TemplateBytecode(jinja2.FileSystemBytecodeCache):
    """Compiled templates kept beside the built models, so that a new process loads them
    rather than compiling them again; where that directory cannot be written, each process
    compiles its own."""

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass  # the template stays compiled in this process only


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment all backends share (one per process: it keeps the compiled
    templates, and compiling them costs more than rendering a whole model).  Their compiled
    form is also kept on disk, under the model cache's ``templates`` folder."""
    from graphc.build import cache_dir

    bytecode = None
    try:
        folder = os.path.join(cache_dir(), "templates")
        os.makedirs(folder, exist_ok=True)
        bytecode = _TemplateBytecode(folder)
    except OSError:
        pass  # no writable cache: each process compiles the templates it uses
    return jinja2.Environment(
        bytecode_cache=bytecode,
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


@dataclass(frozen=True)
class Target:
    """What differs between the C and CUDA renderings of the same kernels."""

    name: str = "c"
    real: str = "float"
    template_dir: str = "c"
    #: kernel templates are ``<template_dir>/<kind>.<extension>.j2``
    extension: str = "c"
    parallel_for: str = "#pragma omp for schedule(static)"
    single: str = "#pragma omp single"
    #: where a kernel whose threads worked on their own rows waits for the whole team
    barrier: str = "#pragma omp barrier"
    #: how a program calls a kernel's function (CUDA adds the stream and an error check)
    call: str = "{name}({args});"
    simd: str = "#pragma omp simd"
    #: e^x (and tanh, through it) as the runtime's inline gc_exp, so elementwise loops and
    #: epilogues vectorize; a target whose runtime lacks gc_math.h keeps libm's exp
    inline_exp: bool = False


def _column_blocks(var: str, width: int) -> dict[str, Any]:
    """How a column-sum reduction over ``width`` columns walks them: blocks of
    REDUCE_BLOCK shared out over the team, the last one partial when ``width`` is ragged,
    or one block on one thread when ``width`` fits in one."""
    if width <= REDUCE_BLOCK:
        return {"var": var, "blocks": False, "block": width, "first": "0", "end": str(width),
                "lane": var}  # fmt: skip
    first = f"{var}0"
    ragged = width % REDUCE_BLOCK != 0
    return {
        "var": var,
        "blocks": True,
        "extent": width,
        "block": REDUCE_BLOCK,
        "ragged": ragged,
        "first": first,
        "end": f"{first} + {'width' if ragged else REDUCE_BLOCK}",
        "lane": f"{var} - {first}",
    }


def sample_block_context(target: Target, sums: Tensor, block: int, rows: str) -> dict[str, Any]:
    """How a sum over the batch runs in sample blocks (kernels.SAMPLE_BLOCKS): ``sums`` holds
    one row per block of ``block`` samples, ``rows`` is the C expression of the step's rows;
    for the macros block_open and block_sum of common/macros.j2."""
    return {
        "for": target.parallel_for,
        "count": rows if block == 1 else f"({rows} + {block - 1}) / {block}",
        "block": block,
        "size": sums.shape[-1],
        "sums": owner(sums),
    }


def dim_text(d: Dim) -> str:
    """A loop extent in C: '128', 'n' or 'n * 3'."""
    if not d.batched:
        return str(d.coef)
    return "n" if d.coef == 1 else f"n * {d.coef}"


def index_text(variables: tuple[str, ...], strides: tuple[int, ...]) -> str:
    """'i * 128 + j' from loop variables and strides (0 strides are left out)."""
    terms = []
    for var, stride in zip(variables, strides):
        if stride == 0:
            continue
        terms.append(var if stride == 1 else f"{var} * {stride}")
    return " + ".join(terms) if terms else "0"


def c_type(tensor: Tensor, real: str) -> str:
    """Element type of a tensor."""
    return "int32_t" if tensor.dtype == "int32" else real


def owner(tensor: Tensor) -> str:
    """The C variable holding a tensor's memory (reshape views share their owner's)."""
    return tensor.alias_of or tensor.name


def signature(kernel: Kernel, real: str, uses_n: bool) -> tuple[str, str]:
    """(parameter list, argument list) of a kernel function."""
    written = {owner(t) for t in writes(kernel)}
    order: list[Tensor] = []
    seen: set[str] = set()
    for t in reads(kernel) + writes(kernel):
        if owner(t) not in seen:
            seen.add(owner(t))
            order.append(t)
    params = ["const int n"] if uses_n else []
    args = ["n"] if uses_n else []
    for t in order:
        const = "" if owner(t) in written else "const "
        params.append(f"{const}{c_type(t, real)} *restrict {owner(t)}")
        args.append(owner(t))
    return ", ".join(params), ", ".join(args)


class KernelContexts:
    """Builds the template context of every kernel kind."""

    def __init__(
        self,
        target: Target,
        dtype: str,
        nowait: frozenset[str] = frozenset(),
        gathered: frozenset[str] = frozenset(),
    ) -> None:
        self.target = target
        self.printer = CPrinter(dtype, inline_exp=target.inline_exp)
        #: kernels whose loop may end without a barrier (see ``barrier_free``)
        self.nowait = nowait
        #: inputs whose matrix products read their rows through an index (see ``gathered_inputs``)
        self.gathered = gathered
        #: each kernel's context, built once: the programs of a model share their kernels
        self._built: dict[Kernel, dict[str, Any]] = {}

    def context(self, kernel: Kernel) -> dict[str, Any]:
        """Template name and context for one kernel.

        Core kinds are built here; a kernel kind defined next to its op brings its own
        ``c_context(contexts)`` method, and a ``<target>_context`` one where another
        backend lays the kernel out differently (``cuda_context``).  Built once per kernel
        (printing its math is most of a cached compile's time); each call gets a copy.
        """
        if kernel not in self._built:
            self._built[kernel] = self._build(kernel)
        return dict(self._built[kernel])

    def _build(self, kernel: Kernel) -> dict[str, Any]:
        own = getattr(kernel, f"{self.target.name}_context", None) or getattr(
            kernel, "c_context", None
        )
        ctx = own(self) if own is not None else getattr(self, f"_{kernel.template}")(kernel)
        ctx["name"] = kernel.name
        ctx["comment"] = kernel.comment.replace("*/", "* /")
        # a kernel may render through a variant of its template (``<template>_<variant>``)
        template = kernel.template + (f"_{ctx['variant']}" if ctx.get("variant") else "")
        ctx["template"] = f"{self.target.template_dir}/{template}.{self.target.extension}.j2"
        ctx["parallel_for"] = self.target.parallel_for
        ctx["nowait"] = kernel.name in self.nowait and bool(self.target.parallel_for)
        if ctx["nowait"]:
            ctx["parallel_for"] += " nowait"
        ctx["single"] = self.target.single
        ctx["barrier"] = self.target.barrier
        ctx["real"] = self.target.real
        return ctx

    def model_value(self, name: str) -> str:
        """C expression of a per-step model value a kernel takes as an argument."""
        values = {
            "lr": f"({self.target.real})m->lr_now",
            "t": "(double)m->step",
            "step": "(uint64_t)m->step",
            "seed": "m->seed",
            "loss": "&m->loss",
            "correct": "&m->correct",
        }
        return values[name]

    def _value(self, access: Access, variables: tuple[str, ...]) -> str:
        idx = index_text(variables, access.strides)
        if access.onehot is not None:
            one, zero = self.printer.doprint(sp.Float(1.0)), self.printer.doprint(sp.Float(0.0))
            return f"({variables[access.onehot]} == {owner(access.tensor)}[{idx}] ? {one} : {zero})"
        return f"{owner(access.tensor)}[{idx}]"

    def _body(self, operands, assigns, variables, extra=None) -> dict[str, Any]:
        subs = {
            operand_symbol(i): sp.Symbol(self._value(a, variables)) for i, a in enumerate(operands)
        }
        # an in-place update (optimizer state) reads what it writes: load those elements
        # into locals before the first store, so every expression sees the values at entry
        written = {owner(a.target.tensor) for a in assigns}
        taken = {owner(a.tensor) for a in operands} | written
        loads = []
        for i, a in enumerate(operands):
            if owner(a.tensor) in written and a.onehot is None:
                local = f"{owner(a.tensor)}_old"
                while local in taken:
                    local += "_"
                taken.add(local)
                loads.append((local, self._value(a, variables)))
                subs[operand_symbol(i)] = sp.Symbol(local, real=True)
        subs.update(extra or {})
        exprs = [a.expr.xreplace(subs) for a in assigns]
        if self.target.inline_exp:
            exprs = [exp_form(e) for e in exprs]
        temps, results = cse_block(exprs, self.printer)
        temps = loads + temps
        stores = [
            (f"{owner(a.target.tensor)}[{index_text(variables, a.target.strides)}]", text, a.label)
            for a, text in zip(assigns, results)
        ]
        uses_n = any(e.has(N) for e in exprs)
        return {"temps": temps, "stores": stores, "uses_n": uses_n}

    def _elementwise(self, k: ElementwiseKernel) -> dict[str, Any]:
        variables = tuple(loop.var for loop in k.loops)
        body = self._body(k.operands, k.assigns, variables)
        scalars = [(name, self.printer.doprint(expr)) for name, expr in k.scalars]
        uses_n = body["uses_n"] or any(loop.extent.batched for loop in k.loops)
        params, args = signature(k, self.target.real, uses_n)
        types = {"real": self.target.real}
        extra_params = "".join(
            f", const {types.get(ctype, ctype)} {name}" for ctype, name in k.args
        )
        return {
            "params": params + extra_params,
            "args": args + "".join(f", {self.model_value(name)}" for _, name in k.args),
            "loops": [(loop.var, dim_text(loop.extent)) for loop in k.loops],
            "scalars": scalars,
            **body,
        }

    def _gemm(self, k: GemmKernel) -> dict[str, Any]:
        uses_n = k.m.batched or k.n.batched or k.k.batched
        ctx: dict[str, Any] = {
            "trans_a": int(k.trans_a),
            "trans_b": int(k.trans_b),
            "m": dim_text(k.m),
            "n": dim_text(k.n),
            "k": dim_text(k.k),
            "a": owner(k.a),
            "lda": k.lda,
            "b": owner(k.b),
            "ldb": k.ldb,
            "c": owner(k.c),
            "ldc": k.ldc,
            "accumulate": int(k.accumulate),
            "epilogue": None,
            "scale": None,
            "rows": rows_name(owner(k.a)) if owner(k.a) in self.gathered else None,
        }
        if k.epilogue:
            acc = sp.Symbol(f"{owner(k.c)}[r * {k.ldc} + c]")
            body = self._body(k.epilogue.operands, k.epilogue.assigns, ("r", "c"), {ACC: acc})
            fields = []
            written = {owner(a.target.tensor) for a in k.epilogue.assigns} | {owner(k.c)}
            seen = set()
            for t in (
                [a.tensor for a in k.epilogue.operands]
                + [k.c]
                + [a.target.tensor for a in k.epilogue.assigns]
            ):
                if owner(t) in seen:
                    continue
                seen.add(owner(t))
                const = "" if owner(t) in written else "const "
                fields.append((f"{const}{c_type(t, self.target.real)} *", owner(t)))
            # the epilogue runs outside the kernel function: scalars it reads travel in the tile
            scalars = [("int", "n")] if body["uses_n"] else []
            members = [name for _, name in fields] + [name for _, name in scalars]
            ctx["epilogue"] = {
                "fields": fields,
                "scalars": scalars,
                "init": ", ".join(members),
                **body,
            }
            uses_n = uses_n or body["uses_n"]
        params, args = signature(k, self.target.real, uses_n)
        if ctx["rows"]:
            params += f", const int64_t *restrict {ctx['rows']}"
            args += f", {ctx['rows']}"
        if k.scale is not None:
            # the fused SGD step takes this step's learning rate like an update kernel
            ctx["scale"] = self.printer.doprint(k.scale)
            params += f", const {self.target.real} lr"
            args += f", {self.model_value('lr')}"
        ctx.update(params=params, args=args)
        return ctx

    def _reduce(self, k: ReduceKernel) -> dict[str, Any]:
        keep_vars = tuple(loop.var for loop in k.keep)
        all_vars = keep_vars + tuple(loop.var for loop in k.summed)
        scale = self.printer.doprint(k.scale) if k.scale != 1 else None
        uses_n = any(loop.extent.batched for loop in k.keep + k.summed) or k.scale.has(N)
        params, args = signature(k, self.target.real, uses_n)
        # One kept index, contiguous in src and dst (a bias gradient: Σ over the batch of
        # each column): sum a block of columns per pass over the rows, in vector lanes,
        # rather than one column at a time down a strided chain.  Each column still adds
        # its terms in the same order, so the result is the same to the bit.
        column = len(k.keep) == 1 and k.src.strides[0] == 1 and k.dst.strides[0] == 1
        column = column and not k.keep[0].extent.batched
        width = k.keep[0].extent.coef if column else 0
        blocks = None
        if k.sums is not None:
            blocks = sample_block_context(self.target, k.sums, k.block, "n")
        return {
            "variant": "blocks" if blocks else None,
            "blocks": blocks,
            # the block loop's locals (the template's own names: see names.TEMPLATE_LOCALS)
            "v": {
                "blk": "blk",
                "start": "start",
                "stop": "stop",
                "part": "part",
                "batch": "n",
                "w": "sum",
            },  # fmt: skip
            "params": params,
            "args": args,
            "columns": _column_blocks(k.keep[0].var, width) if column else None,
            "pad": "    " * max(len(k.keep), 1),
            "keep": [(loop.var, dim_text(loop.extent)) for loop in k.keep],
            "summed": [(loop.var, dim_text(loop.extent)) for loop in k.summed],
            "src": f"{owner(k.src.tensor)}[{index_text(all_vars, k.src.strides)}]",
            "dst": f"{owner(k.dst.tensor)}[{index_text(keep_vars, k.dst.strides)}]",
            "scale": scale,
        }

    def _grad_norm(self, k: GradNormKernel) -> dict[str, Any]:
        params, args = signature(k, self.target.real, False)
        return {
            "params": params,
            "args": args,
            "grads": [(owner(t), t.per_sample) for t in k.grads],
            "max_norm": repr(float(k.max_norm)),
            "scale": owner(k.scale),
        }

    def _softmax(self, k: SoftmaxKernel) -> dict[str, Any]:
        params, args = signature(k, self.target.real, k.rows.batched)
        p = self.printer
        return {
            "params": params,
            "args": args,
            "rows": dim_text(k.rows),
            "cols": k.cols,
            "src": owner(k.src),
            "dst": owner(k.dst),
            "lse": owner(k.lse) if k.lse is not None else None,
            "log": p.log_name,
            "exp": p.exp_name,
            "zero": p.doprint(sp.Float(0.0)),
            "one": p.doprint(sp.Float(1.0)),
        }

    def _loss(self, k: LossKernel) -> dict[str, Any]:
        p = self.printer
        rows = "n" if k.rows_per_sample == 1 else f"n * {k.rows_per_sample}"
        pred = sp.Symbol(f"{owner(k.pred)}[r * {k.cols} + c]")
        if k.target_onehot:
            one, zero = p.doprint(sp.Float(1.0)), p.doprint(sp.Float(0.0))
            target = sp.Symbol(f"(c == {owner(k.target)}[r] ? {one} : {zero})")
        else:
            target = sp.Symbol(f"{owner(k.target)}[r * {k.cols} + c]")
        subs = {O: pred, T: target, L: sp.Symbol("lse")}
        if k.logits is not None:
            subs[I] = sp.Symbol(f"{owner(k.logits)}[r * {k.cols} + c]")
        temps, (term,) = cse_block([k.term.xreplace(subs)], p)
        params, args = signature(k, self.target.real, True)
        truth = None
        if k.accuracy == "argmax":
            truth = f"{owner(k.target)}[r]" if k.target_onehot else None
        return {
            "params": params + ", double *loss, double *correct",
            "args": args + f", {self.model_value('loss')}, {self.model_value('correct')}",
            "rows": rows,
            "cols": k.cols,
            "temps": temps,
            "term": term,
            "needs_lse": k.term.has(L),
            "lse": owner(k.lse) if k.lse is not None else None,
            "logits": owner(k.logits) if k.logits else None,
            "pred": owner(k.pred),
            "target": owner(k.target),
            "row_loss": owner(k.row_loss),
            "accuracy": k.accuracy,
            "label": truth,
            "exp": p.exp_name,
            "log": p.log_name,
            "half": p.doprint(sp.Float(0.5)),
        }


def render_kernel(env: jinja2.Environment, ctx: dict[str, Any]) -> str:
    """Render one kernel's C text."""
    return env.get_template(ctx["template"]).render(**ctx)


def render_kernels(env: jinja2.Environment, programs, contexts: KernelContexts) -> list[str]:
    """Each kernel of ``programs`` rendered once (programs share kernels by name)."""
    texts = []
    seen = set()
    for program in programs:
        for kernel in program.kernels:
            if kernel.name not in seen:
                seen.add(kernel.name)
                texts.append(render_kernel(env, contexts.context(kernel)))
    return texts


def template_variables(env: jinja2.Environment, name: str) -> set[str]:
    """The undeclared variables a template reads (for the context-key test)."""
    source = env.loader.get_source(env, name)[0]
    return jinja2.meta.find_undeclared_variables(env.parse(source))


def _program_context(plan, program, contexts: KernelContexts, place=None) -> dict[str, Any]:
    """Locals (pointers into memory) and kernel calls of one program function.

    ``place(tensor)`` gives (pointer type, initializer) of a local; by default every
    tensor lives in the model's arena at its planned offset.
    """
    real = contexts.target.real
    input_names = {t.name for t in program.inputs}

    def arena_place(t: Tensor) -> tuple[str, str]:
        ctype = c_type(t, real)
        offset = plan.memory.offset(program.name, owner(t))
        return ctype, f"({ctype} *)(arena + {offset})"

    place = place or arena_place
    # only an epoch's training steps read shuffled rows in place; the other programs get
    # their batch in order (a row index of NULL)
    gathered = contexts.gathered if program.name == "train" else frozenset()
    in_order = {rows_name(name) for name in contexts.gathered - gathered}
    used: dict[str, Tensor] = {}
    calls = []
    for kernel in program.kernels:
        ctx = contexts.context(kernel)
        for t in reads(kernel) + writes(kernel):
            if owner(t) not in input_names:
                used.setdefault(owner(t), t)
        args = ctx["args"]
        if isinstance(kernel, GemmKernel) and ctx.get("rows") in in_order:
            args = args.removesuffix(ctx["rows"]) + "NULL"  # the product's last argument
        calls.append(contexts.target.call.format(name=kernel.name, args=args))
    local_vars = []
    for name, t in used.items():
        dims = ", ".join((["batch"] if t.batched else []) + [str(s) for s in t.shape])
        ctype, init = place(t)
        local_vars.append((ctype, name, init, f"{t.label} ({dims})"))
    params = ", ".join(
        f"const {c_type(t, real)} *restrict {t.name}"
        + (f", const int64_t *restrict {rows_name(t.name)}" if t.name in gathered else "")
        for t in program.inputs
    )
    return {
        "name": program.name,
        "doc": program.doc,
        "locals": local_vars,
        "calls": calls,
        "params": params,
        "inputs": [t.name for t in program.inputs],
        "work": work_text(program),
    }


def barrier_free(plan) -> frozenset[str]:
    """Elementwise kernels whose loop can end without waiting for the rest of the team.

    Each kernel's ``omp for`` ends in a barrier, so the next kernel sees all of its
    results.  That wait is only needed where a later kernel touches memory the loop
    writes, or writes memory it reads, before some other kernel's barrier has synced the
    team.  Walking each program in order, a barrier is kept at the end of kernel j - 1
    when kernel j conflicts with any kernel since the last barrier (memory compared as
    byte ranges of the arena, so buffers the planner reuses count); the program's end is
    the parallel region's barrier.  A kernel called by several programs waits if any of
    them needs it to.  Candidates are the one-loop elementwise kernels (optimizer updates,
    activation chains) and the matrix products (``gc_gemm_nowait``); the other templates
    keep their barriers.
    """
    itemsize = 8 if plan.dtype == "float64" else 4
    extent: dict[str, int] = {}
    for program in plan.programs:
        for kernel in program.kernels:
            for t in reads(kernel) + writes(kernel):
                size = t.numel(plan.batch) * (itemsize if t.dtype == "real" else 4)
                extent[owner(t)] = max(extent.get(owner(t), 0), size)

    def ranges(program, tensors) -> list[tuple[str, int, int]]:
        inputs = {i.name for i in program.inputs}
        out = []
        for t in tensors:
            name = owner(t)
            if name in inputs:
                out.append((name, 0, extent[name]))  # the caller's array, not the arena
            else:
                start = plan.memory.offset(program.name, name)
                out.append(("arena", start, start + extent[name]))
        return out

    def overlap(a, b) -> bool:
        return any(x[0] == y[0] and x[1] < y[2] and y[1] < x[2] for x in a for y in b)

    candidates = {
        k.name for p in plan.programs for k in p.kernels if k.template in ("elementwise", "gemm")
    }
    waits: set[str] = set()
    for program in plan.programs:
        pending: list[tuple[list, list]] = []  # (reads, writes) since the last barrier
        previous = None
        for kernel in program.kernels:
            r, w = ranges(program, reads(kernel)), ranges(program, writes(kernel))
            if any(overlap(w, pw) or overlap(w, pr) or overlap(r, pw) for pr, pw in pending):
                waits.add(previous.name)
                pending = []
            if kernel.name in candidates:
                pending.append((r, w))
            else:
                pending = []
            previous = kernel
    return frozenset(candidates - waits)


def work_text(program) -> str:
    """C expression of a program's rough flop count for ``n`` rows: it sizes the team."""
    fixed = sum(k.flops(0) for k in program.kernels)
    per_row = sum(k.flops(1) for k in program.kernels) - fixed
    return f"{fixed}.0 + {per_row}.0 * n"


def lr_text(plan, printer: CPrinter, counter: str | None = None) -> str | None:
    """The C expression of this step's learning rate (the schedule of t), or None."""
    from graphc.schedules import ETA0
    from graphc.schedules import T as COUNTER

    if plan.lr is None:
        return None
    if counter is None:
        counter = "(double)m->step" if plan.lr_per == "step" else "(double)(m->epoch + 1)"
    return printer.doprint(
        plan.lr.xreplace({ETA0: sp.Symbol("m->lr"), COUNTER: sp.Symbol(counter)})
    )


def rows_name(name: str) -> str:
    """The C name of the row index of a gathered input."""
    return f"{name}_rows"


def gathered_inputs(plan) -> frozenset[str]:
    """Training inputs that ``train_epoch`` hands to the step as rows of the caller's data.

    An epoch takes its batches in a shuffled order.  An input whose every reader (in every
    program) is the A operand of a matrix product needs no copy of its batch: the
    products read its rows through the permutation (``gc_gemm_gather``), so its batch
    slot is never touched.  Any other input (read by a loss, a convolution, an
    embedding...) is copied into its slot first.
    """
    train = next((p for p in plan.programs if p.name == "train"), None)
    if train is None:
        return frozenset()
    taken = {owner(t) for p in plan.programs for k in p.kernels for t in reads(k) + writes(k)}
    gathered = set()
    for x in train.inputs:
        if x.dtype != "real" or rows_name(x.name) in taken:
            continue
        readers = [k for p in plan.programs for k in p.kernels if x.name in map(owner, reads(k))]
        if readers and all(_reads_samples_as_a(k, x) for k in readers):
            gathered.add(x.name)
    return frozenset(gathered)


def _reads_samples_as_a(k: Kernel, x: Tensor) -> bool:
    """Whether a kernel reads input ``x`` only as its product's A, one sample per row of
    the stored A (so that a row index of samples can stand for the batch)."""
    if not isinstance(k, GemmKernel) or owner(k.a) != x.name:
        return False
    if x.name in map(owner, reads(k)[1:]):  # B, an epilogue operand or C: read in place
        return False
    rows = k.k if k.trans_a else k.m
    return rows == Dim(1, True) and k.lda == x.per_sample


def step_context(plan, inputs: list[tuple[str, str, int]], gathered: frozenset[str]) -> dict:
    """How the C entry points hand a batch to ``train_batch`` (one training step): its
    parameters and the arguments of each caller.  ``inputs`` are the training inputs as
    (C type, name, values per row); a gathered one travels with its row index (NULL from
    ``train_step``, the permutation's slice from ``train_epoch``), any other is copied by
    ``train_epoch`` into its batch slot first (``copied``: type, slot, offset, and the C
    statement copying row ``row`` of the input to row ``r`` of the slot).
    """
    # keyed by the input's C name, which the entry points use (a label may need renaming)
    slots = {x.name: t.name for x, t in zip(plan.inputs, plan.slots)}
    params, args, step_args, epoch_args, copied, doc = [], [], [], [], [], []
    for ctype, name, size in inputs:
        params.append(f"const {ctype} *{name}")
        args.append(name)
        step_args.append(name)
        if name in gathered:
            rows = rows_name(name)
            params.append(f"const int64_t *{rows}")
            args.append(rows)
            step_args.append("NULL")
            epoch_args += [name, "perm + start"]
            doc.append(f"; {rows} lists the rows of {name} it reads (NULL: the first n, in order)")
        else:
            slot = slots[name]
            epoch_args.append(slot)
            if size == 1:  # a label: one value per row
                copy = f"{slot}[r] = {name}[row];"
            else:
                copy = (
                    f"memcpy({slot} + (size_t)r * {size}, {name} + (size_t)row * {size}, "
                    f"{size} * sizeof *{name});"
                )
            copied.append((ctype, slot, plan.memory.persistent[slot], copy))
    return {
        "doc": "".join(doc),
        "params": ", ".join(params),
        "args": ", ".join(args),
        "step_args": ", ".join(step_args),
        "epoch_args": ", ".join(epoch_args),
        "copied": copied,
    }


def apack_bounds(plan) -> tuple[int, int]:
    """(rows, depth) of the largest op(A) = Aᵀ any matrix product of the model packs
    (gathered ones included: see gc_gemm_gather).

    They bound gc_gemm.h's per-thread packing block (``GC_GEMM_APACK_M``/``_K``): every
    thread of every process that runs the model holds one, zeroed by the loader.
    """
    products = [
        k for p in plan.programs for k in p.kernels if isinstance(k, GemmKernel) and k.trans_a
    ]
    rows = max((k.m.at(plan.batch) for k in products), default=1)
    depth = max((k.k.at(plan.batch) for k in products), default=1)
    return max(rows, 1), max(depth, 1)


def persistent_tensors(plan) -> list[Tensor]:
    """Parameters, then gradients, then optimizer state: the order of NAME_tensor's index."""
    tensors: list[Tensor] = [pp.param for pp in plan.params]
    tensors += [pp.grad for pp in plan.params if pp.grad is not None]
    tensors += [s for pp in plan.params for s in pp.states]
    return tensors


def api_context(plan, real: str, programs: dict) -> dict[str, Any]:
    """What the API declarations of every backend need: entry points and their inputs."""

    def inputs_of(name: str) -> list[tuple[str, str, int]]:
        program = next((p for p in plan.programs if p.name == name), None)
        if program is None:
            return []
        return [(c_type(t, real), t.name, t.per_sample) for t in program.inputs]

    return {
        "prefix": plan.name,
        "real": real,
        "train_inputs": inputs_of("train"),
        "eval_inputs": inputs_of("eval"),
        "infer_inputs": inputs_of("infer"),
        "outputs": [
            (name, owner(t), t.per_sample, plan.memory.offset("infer", owner(t)))
            for name, t in plan.outputs
        ],
        "has_train": "train" in programs,
        "has_eval": "eval" in programs,
        "has_infer": "infer" in programs,
    }


def render_model(plan) -> tuple[str, str, str]:
    """(C source, header, cffi cdef) of a model."""
    env = environment()
    real = "float" if plan.dtype == "float32" else "double"
    target = Target(real=real, inline_exp=True)
    gathered = gathered_inputs(plan)
    contexts = KernelContexts(target, plan.dtype, barrier_free(plan), gathered)
    kernels_text = render_kernels(env, plan.programs, contexts)
    programs = {p.name: _program_context(plan, p, contexts) for p in plan.programs}
    for p in programs.values():
        p.update(head=f"{plan.name}_model *m", arena="m->arena")
        p["doc"] += " Every thread of the team runs this function; each kernel shares out its loop."
    lr_expr = lr_text(plan, contexts.printer)
    persistent = persistent_tensors(plan) + list(plan.slots)

    api = api_context(plan, real, programs)
    ctx = {
        **api,
        "apack": apack_bounds(plan),
        "step": step_context(plan, api["train_inputs"], gathered),
        "graph_name": plan.graph_name,
        "dtype": plan.dtype,
        "batch": plan.batch,
        "arena_bytes": plan.memory.arena_bytes,
        "persistent_bytes": plan.memory.persistent_bytes,
        "optimizer": plan.optimizer,
        "kernels": kernels_text,
        "programs": programs,
        "tensors": [(t.name, plan.memory.persistent[t.name], t.label) for t in persistent],
        "lr_expr": lr_expr,
        "rows_per_sample": plan.rows_per_sample,
    }
    declarations = env.get_template("c/api.h.j2").render(**api)
    header = env.get_template("c/model.h.j2").render(declarations=declarations, **ctx)
    source = env.get_template("c/model.c.j2").render(**ctx)
    return source, header, declarations
