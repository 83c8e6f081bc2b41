"""Embedded export: the same kernels rendered as a standalone C99 project.

The export profile has no OpenMP, no malloc and no global mutable state: the caller passes
an arena of ``NAME_ARENA_BYTES`` bytes (planned by liveness, so it holds the peak of
simultaneously live tensors, not their sum).  Trained parameters become ``const`` arrays
(flash on a microcontroller).  With ``training=True`` the training step is exported too:
parameters, gradients and optimizer state then live in the arena, initialized from the
const weights by ``NAME_train_init``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphc.codegen.c import (
    KernelContexts,
    Target,
    _program_context,
    c_type,
    environment,
    lr_text,
    owner,
    render_kernel,
)
from graphc.codegen.names import sanitize
from graphc.compiler import plan_model
from graphc.errors import GraphError
from graphc.kernels import Tensor

#: the training export keeps its counters and last loss in a small header at the arena's start
STATE_BYTES = 64


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and its memory figures."""

    directory: str
    name: str
    files: tuple[str, ...]
    arena_bytes: int
    weight_bytes: int

    def report(self) -> str:
        """Arena and weight sizes, plus Cortex-M4 text/data/bss when arm-none-eabi-gcc exists."""
        lines = [
            f"export {self.name!r} in {self.directory}",
            f"  arena (RAM, peak of live tensors): {self.arena_bytes} bytes",
            f"  weights (const, flash):            {self.weight_bytes} bytes",
        ]
        sizes = cortex_m4_sizes(self.directory, self.name)
        if sizes is None:
            lines.append(
                "  Cortex-M4 sizes: arm-none-eabi-gcc not found (apt-get install gcc-arm-none-eabi)"
            )
        else:
            lines.append(
                "  Cortex-M4 (-mcpu=cortex-m4 -mthumb -Os): "
                f"text {sizes['text']}  data {sizes['data']}  bss {sizes['bss']} bytes"
            )
        return "\n".join(lines)


def cortex_m4_sizes(directory: str, name: str) -> dict[str, int] | None:
    """text/data/bss of the export's object files built for Cortex-M4, or None without a toolchain."""
    cc = shutil.which("arm-none-eabi-gcc")
    size = shutil.which("arm-none-eabi-size")
    if cc is None or size is None:
        return None
    objects = []
    for src in (f"{name}.c", f"{name}_weights.c"):
        obj = os.path.join(directory, src.replace(".c", ".m4.o"))
        subprocess.run(
            [
                cc,
                "-std=c99",
                "-mcpu=cortex-m4",
                "-mthumb",
                "-mfloat-abi=hard",
                "-mfpu=fpv4-sp-d16",
                "-Os",
                "-c",
                os.path.join(directory, src),
                "-o",
                obj,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        objects.append(obj)
    out = subprocess.run([size, "-t", *objects], check=True, capture_output=True, text=True)
    total = out.stdout.strip().splitlines()[-1].split()
    for obj in objects:
        os.unlink(obj)
    return {"text": int(total[0]), "data": int(total[1]), "bss": int(total[2])}


def _runtime_text(name: str) -> str:
    """A runtime header's text, pasted into the export so it needs no graphc files."""
    from graphc.codegen.c import RUNTIME_DIR

    with open(os.path.join(RUNTIME_DIR, name)) as f:
        return f.read()


def _literal(value: float, dtype: str) -> str:
    if dtype == "float32":
        text = f"{np.float32(value):.9g}"
        suffix = "f"
    else:
        text = f"{value:.17g}"
        suffix = ""
    if "e" not in text and "." not in text and "n" not in text:
        text += ".0"
    return text + suffix


def export(
    model: Any, directory: str, name: str | None = None, training: bool = False, batch_size: int = 1
) -> ExportResult:
    """Write a self-contained C99 project for ``model`` into ``directory``."""
    graph = model.graph
    if not graph.outputs:
        raise GraphError("export needs a model with outputs (g.output(name, node))")
    name = sanitize(name or model.plan.name)
    optimizer = model.optimizer if training else None
    if training and (graph.loss is None or optimizer is None):
        raise GraphError(
            "export(training=True) needs a model compiled with a loss and an optimizer"
        )
    frozen = {pp.param.label for pp in model.plan.params if not pp.trainable}
    plan, _ = plan_model(graph, batch_size, model.plan.dtype, optimizer, frozen)
    real = "float" if plan.dtype == "float32" else "double"
    target = Target(name="embedded", real=real, parallel_for="", single="", simd="")
    contexts = KernelContexts(target, plan.dtype)
    env = environment()
    params = {pp.param.name: pp.param for pp in plan.params}
    values = model.params

    def weight_symbol(t: Tensor) -> str:
        return f"{name}_{t.name}"

    base = plan.memory.persistent_bytes
    programs = {p.name: p for p in plan.programs}
    wanted = ["infer"] + (["train"] if training else [])
    contexts_by_program = {}
    for pname in wanted:
        program = programs[pname]

        def place(t: Tensor, pname: str = pname) -> tuple[str, str]:
            ctype = c_type(t, real)
            if t.name in params and not training:
                return f"const {ctype}", weight_symbol(t)
            if t.name in plan.memory.persistent:
                offset = STATE_BYTES + plan.memory.persistent[t.name]
            else:
                offset = plan.memory.transient[pname][owner(t)] - (0 if training else base)
                offset += STATE_BYTES if training else 0
            return ctype, f"({ctype} *)(arena + {offset})"

        ctx = _program_context(plan, program, contexts, place)
        if pname == "train":
            ctx.update(head=f"struct {name}_state *m", arena="(unsigned char *)m")
        else:
            ctx.update(head="unsigned char *memory", arena="memory")
        contexts_by_program[pname] = ctx

    kernels, seen = [], set()
    for pname in wanted:
        for kernel in programs[pname].kernels:
            if kernel.name not in seen:
                seen.add(kernel.name)
                kernels.append(render_kernel(env, contexts.context(kernel)))
    if training:
        arena = STATE_BYTES + base + plan.memory.transient_peak["train"]
        arena = max(arena, STATE_BYTES + base + plan.memory.transient_peak["infer"])
    else:
        arena = plan.memory.transient_peak["infer"]
    weights = []
    for pp in plan.params:
        array = np.asarray(values[pp.param.label], dtype=np.float64).ravel()
        weights.append(
            {
                "symbol": weight_symbol(pp.param),
                "label": pp.param.label,
                "size": array.size,
                "shape": "x".join(map(str, pp.param.shape)),
                "data": ", ".join(_literal(v, plan.dtype) for v in array),
                "offset": STATE_BYTES + plan.memory.persistent[pp.param.name],
            }
        )
    infer_inputs = [(c_type(t, real), t.name, t.per_sample) for t in programs["infer"].inputs]
    outputs = [
        (
            out,
            owner(t),
            t.per_sample,
            plan.memory.transient["infer"][owner(t)]
            - (0 if training else base)
            + (STATE_BYTES if training else 0),
        )
        for out, t in plan.outputs
    ]
    train_inputs = (
        [(c_type(t, real), t.name, t.per_sample) for t in programs["train"].inputs]
        if training
        else []
    )
    lr = None
    if training:
        lr = lr_text(plan, contexts.printer, counter="(double)m->step")
    ctx = {
        "name": name,
        "guard": name.upper(),
        "real": real,
        "dtype": plan.dtype,
        "graph_name": plan.graph_name,
        "batch": plan.batch,
        "arena_bytes": arena,
        "kernels": kernels,
        "programs": contexts_by_program,
        "weights": weights,
        "weight_bytes": sum(w["size"] for w in weights) * (4 if real == "float" else 8),
        "infer_inputs": infer_inputs,
        "outputs": outputs,
        "training": training,
        "train_inputs": train_inputs,
        "lr_expr": lr,
        "base_lr": model.lr if training else 0.0,
        "uses_gemm": any("gc_gemm(" in k for k in kernels),
        "random": _runtime_text("gc_random.h") if any("gc_stream(" in k for k in kernels) else "",
        "optimizer": plan.optimizer,
    }
    os.makedirs(directory, exist_ok=True)
    files = {
        f"{name}.h": "export/header.h.j2",
        f"{name}.c": "export/model.c.j2",
        f"{name}_weights.c": "export/weights.c.j2",
        "main.c": "export/main.c.j2",
        "Makefile": "export/Makefile.j2",
        "CMakeLists.txt": "export/CMakeLists.txt.j2",
    }
    for filename, template in files.items():
        text = env.get_template(template).render(**ctx)
        with open(os.path.join(directory, filename), "w") as f:
            f.write(text)
    return ExportResult(directory, name, tuple(files), arena, ctx["weight_bytes"])
