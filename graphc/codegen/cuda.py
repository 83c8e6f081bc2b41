"""CUDA backend: the C backend's kernel contexts, laid out as ``__global__`` kernels.

The kernel records, the printed sympy math and most of every context are the C backend's
(``KernelContexts``); what differs is the target (``cuda`` templates, no OpenMP pragmas,
kernel calls that pass the model's stream and check the launch) and a little layout the
CUDA templates need on top: a loop nest flattened into one grid-stride index, and the
argument names a launch wrapper forwards to its kernel.  A kernel kind with no template
under ``templates/cuda`` makes ``render_model`` raise a GraphError naming it.

Every template is written so the same ``.cu`` text also compiles as C++ against
``runtime/gc_cuda_emu.h`` (target ``cuda-emu``): launches go through ``GC_LAUNCH``, shared
memory is static, block-wide sums use ``__syncthreads`` only.
"""

from __future__ import annotations

import os
import re
from typing import Any

from graphc.codegen.c import (
    TEMPLATE_DIR,
    KernelContexts,
    Target,
    _program_context,
    api_context,
    environment,
    lr_text,
    persistent_tensors,
    render_kernels,
)
from graphc.errors import GraphError
from graphc.kernels import Kernel

#: what each kernel kind computes, for the error naming a kind CUDA does not cover yet
#: (every kind of the C backend has a CUDA template now; a new kind names itself here)
KIND_OPS: dict[str, str] = {}


def cuda_target(real: str) -> Target:
    """The CUDA rendering of the shared kernel contexts."""
    return Target(
        name="cuda",
        real=real,
        template_dir="cuda",
        extension="cu",
        parallel_for="",
        single="",
        barrier="",
        simd="",
        call='GC_KERNEL(m, "{name}", {name}(m->stream, {args}));',
    )


def _parenthesized(extent: Any) -> str:
    text = str(extent)
    return f"({text})" if " " in text else text


def flat_index(
    loops: list[tuple[str, Any]], used: str | None = None, index: str = "gc_i"
) -> tuple[list[tuple[str, str]], str]:
    """(loop variables as functions of one flat index, the index's extent) of a loop nest.

    The last loop varies fastest, as in the nested loops of the C kernels.  With ``used``
    (the C text of the body), variables the body never names are left out.
    """
    extents = [_parenthesized(extent) for _, extent in loops]
    variables = []
    for k, (var, _) in enumerate(loops):
        inner = extents[k + 1 :]
        text = index
        if inner:
            divisor = inner[0] if len(inner) == 1 else f"({' * '.join(inner)})"
            text = f"{index} / {divisor}"
        if k > 0:
            text = f"{text} % {extents[k]}"
        if used is None or re.search(rf"\b{re.escape(var)}\b", used):
            variables.append((var, text))
    total = " * ".join([f"(long){extents[0]}", *extents[1:]]) if loops else "1"
    return variables, total


def argument_names(params: str) -> str:
    """'n, x, hidden_W' from 'const int n, const float *restrict x, ...': what a launch
    wrapper forwards to its kernel."""
    names = [re.findall(r"\w+", p)[-1] for p in params.split(",") if p.strip()]
    return ", ".join(names)


def without(params: str, names: set[str]) -> str:
    """A parameter list less the parameters called ``names`` (a kernel that reads a padded
    copy of a tensor, which its launch wrapper makes, never sees the tensor itself)."""
    kept = [p.strip() for p in params.split(",") if re.findall(r"\w+", p)[-1] not in names]
    return ", ".join(kept)


def _body_text(ctx: dict[str, Any], key: str = "") -> str:
    part = ctx[key] if key else ctx
    texts = [value for _, value in part["temps"]]
    texts += [f"{target} {value}" for target, value, _ in part["stores"]]
    return "\n".join(texts)


class CudaKernelContexts(KernelContexts):
    """Kernel contexts for the CUDA templates: the C ones plus grid layout."""

    def context(self, kernel: Kernel) -> dict[str, Any]:
        """Template name and context for one kernel; a GraphError for a kind without one."""
        name = f"cuda/{kernel.template}.cu.j2"
        if not os.path.exists(os.path.join(TEMPLATE_DIR, name)):
            what = KIND_OPS.get(kernel.template, f"kernels of kind {kernel.template!r}")
            raise GraphError(
                f"target 'cuda' has no kernel yet for {what} ({kernel.name}: "
                f"{kernel.comment[:100]}); compile this graph with target='c'"
            )
        ctx = super().context(kernel)
        layout = getattr(self, f"_layout_{kernel.template}", None)
        if layout is not None:
            ctx.update(layout(ctx))
        ctx.setdefault("kernel_params", ctx["params"])
        ctx["forward"] = argument_names(ctx["kernel_params"])
        return ctx

    def model_value(self, name: str) -> str:
        """Per-step values; the loss and hit count of a batch stay on the device."""
        device = {"loss": "m->scalars", "correct": "m->scalars + 1"}
        return device.get(name) or super().model_value(name)

    def _layout_elementwise(self, ctx: dict[str, Any]) -> dict[str, Any]:
        index, total = flat_index(ctx["loops"], _body_text(ctx))
        return {"index": index, "total": total}

    def _layout_reduce(self, ctx: dict[str, Any]) -> dict[str, Any]:
        used = f"{ctx['src']} {ctx['dst']}"
        index, total = flat_index(ctx["keep"], used)
        return {"index": index, "total": total}

    def _layout_gemm(self, ctx: dict[str, Any]) -> dict[str, Any]:
        if not ctx["epilogue"]:
            return {"epilogue_args": None}
        body = _body_text(ctx, "epilogue")
        # an epilogue that does not read one of its coordinates leaves it unnamed
        args = [
            f"const long {var}" if re.search(rf"\b{var}\b", body) else "long" for var in ("r", "c")
        ]
        return {"epilogue_args": ", ".join(args)}

    def _layout_copy(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"widest": max(cols for _, _, cols in ctx["blocks"])}


def _tensor_table(plan) -> list[tuple[str, int, str, int]]:
    """(name, arena offset, label, elements) of every persistent tensor Python can read."""
    return [
        (t.name, plan.memory.persistent[t.name], t.label, t.per_sample)
        for t in persistent_tensors(plan)
    ]


def render_model(plan) -> tuple[str, str, str]:
    """(CUDA source, header, cffi cdef) of a model."""
    env = environment()
    real = "float" if plan.dtype == "float32" else "double"
    contexts = CudaKernelContexts(cuda_target(real), plan.dtype)
    kernels_text = render_kernels(env, plan.programs, contexts)
    programs = {p.name: _program_context(plan, p, contexts) for p in plan.programs}
    for p in programs.values():
        p.update(head=f"{plan.name}_model *m", arena="m->arena")

    api = api_context(plan, real, programs)
    ctx = {
        **api,
        "graph_name": plan.graph_name,
        "dtype": plan.dtype,
        "batch": plan.batch,
        "arena_bytes": plan.memory.arena_bytes,
        "persistent_bytes": plan.memory.persistent_bytes,
        "optimizer": plan.optimizer,
        "kernels": kernels_text,
        "programs": programs,
        "tensors": _tensor_table(plan),
        "slots": {
            x.name: (t.name, plan.memory.persistent[t.name])
            for x, t in zip(plan.inputs, plan.slots)
        },
        "lr_expr": lr_text(plan, contexts.printer),
        "row_bytes": " + ".join(
            f"{size} * sizeof({ctype})" for ctype, _, size in api["train_inputs"]
        ),
    }
    declarations = env.get_template("cuda/api.h.j2").render(**api)
    header = env.get_template("c/model.h.j2").render(declarations=declarations, **ctx)
    source = env.get_template("cuda/model.cu.j2").render(**ctx)
    return source, header, declarations
