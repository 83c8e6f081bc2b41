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
import sympy as sp

from graphc.codegen.c import (
    KernelContexts,
    Target,
    _program_context,
    c_type,
    environment,
    lr_text,
    owner,
    render_kernels,
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
    quantized: tuple[str, ...] = ()

    def report(self) -> str:
        """Arena and weight sizes, plus Cortex-M4 text/data/bss when arm-none-eabi-gcc exists."""
        lines = [
            f"export {self.name!r} in {self.directory}",
            f"  arena (RAM, peak of live tensors): {self.arena_bytes} bytes",
            f"  weights (const, flash):            {self.weight_bytes} bytes",
        ]
        if self.quantized:
            lines.append(f"  int8 layers:                       {', '.join(self.quantized)}")
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

    def evaluate(self, model: Any, inputs: Any, labels: Any = None) -> dict[str, float]:
        """Build the export with the host compiler, run it on ``inputs`` and compare with the model.

        Returns the largest difference of the outputs, the fraction of rows whose class
        agrees with ``model.predict`` and, given ``labels``, both accuracies: the accuracy
        lost by the export (by int8 quantization, say) measured.
        """
        import shutil as _shutil

        cc = _shutil.which("cc") or _shutil.which("gcc") or _shutil.which("clang")
        if cc is None:
            raise GraphError("ExportResult.evaluate needs a C compiler (cc, gcc or clang)")
        exe = os.path.join(self.directory, self.name + "_eval")
        sources = [
            os.path.join(self.directory, f)
            for f in ("main.c", f"{self.name}.c", f"{self.name}_weights.c")
        ]
        subprocess.run(
            [cc, "-std=c99", "-O2", "-o", exe, *sources, "-lm"],
            check=True,
            capture_output=True,
            text=True,
        )
        rows = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
        text = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in rows)
        out = subprocess.run([exe], input=text, capture_output=True, text=True, check=True).stdout
        got = np.array([[float(v) for v in line.split()] for line in out.strip().splitlines()])
        ref = np.asarray(model.predict(inputs)).reshape(len(got), -1)
        result = {
            "max_abs_diff": float(np.abs(got - ref).max()),
            "agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        }
        if labels is not None:
            labels = np.asarray(labels).ravel()
            result["model_accuracy"] = float((ref.argmax(1) == labels).mean())
            result["export_accuracy"] = float((got.argmax(1) == labels).mean())
            result["accuracy_loss"] = result["model_accuracy"] - result["export_accuracy"]
        return result


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


def _align64(n: int) -> int:
    return (n + 63) // 64 * 64


@dataclass(frozen=True)
class _Int8Layer:
    """A dense layer's product done in int8: its weight tensor and its input's scale."""

    label: str  # the weight parameter's graph name
    weight: str  # the weight tensor's C name
    k: int  # inputs per row
    input_scale: float


def _quantized_layers(model: Any, program: Any, calibration: Any) -> dict[str, _Int8Layer]:
    """Dense products of the inference program, each with its input's calibrated scale.

    The scale is max |input| over the calibration rows / 127: each layer's input is read
    from a copy of the graph whose outputs are those inputs.
    """
    import copy

    from graphc.compiler import compile as compile_graph
    from graphc.kernels import GemmKernel

    layers = [
        k
        for k in program.kernels
        if isinstance(k, GemmKernel)
        and not k.trans_a
        and not k.trans_b
        and k.b.role == "param"
        and k.a.dtype == "real"
    ]
    if not layers:
        raise GraphError("export(quantize='int8'): the model has no dense layer to quantize")
    graph = model.graph
    given = calibration if isinstance(calibration, (tuple, list)) else (calibration,)
    by_input = {t.label: np.asarray(v) for t, v in zip(model.plan.inputs, given)}
    inner = [k for k in layers if k.a.role != "input"]
    seen: dict[str, np.ndarray] = {}
    if inner:
        probe = copy.copy(graph)  # the same nodes, other outputs: the user's graph is untouched
        probe.outputs = {f"q8_{i}": graph.node(k.a.label) for i, k in enumerate(inner)}
        probe.loss = None
        probe_model = compile_graph(probe, batch_size=64, dtype=model.plan.dtype, seed=0)
        probe_model.set_params(model.params)
        values = probe_model.predict(*given)
        values = values if isinstance(values, dict) else {"q8_0": values}
        seen = {k.name: values[f"q8_{i}"] for i, k in enumerate(inner)}
    result = {}
    for k in layers:
        data = by_input[k.a.label] if k.a.role == "input" else seen[k.name]
        peak = float(np.abs(data).max())
        result[k.name] = _Int8Layer(
            k.b.label, k.b.name, k.k.coef, peak / 127.0 if peak > 0 else 1.0
        )
    return result


class _Int8Contexts(KernelContexts):
    """Kernel contexts where the quantized dense products use the int8 template."""

    def __init__(
        self, target: Target, dtype: str, layers: dict[str, _Int8Layer], prefix: str
    ) -> None:
        super().__init__(target, dtype)
        self.layers = layers
        self.prefix = prefix
        self.int8_params = {q.weight for q in layers.values()}

    def context(self, kernel: Any) -> dict[str, Any]:
        ctx = super().context(kernel)
        layer = self.layers.get(kernel.name)
        if layer is None:
            return ctx
        real = self.target.real
        ctx["params"] = (
            ctx["params"].replace(
                f"const {real} *restrict {layer.weight}", f"const int8_t *restrict {layer.weight}"
            )
            + ", int8_t *restrict q8_scratch"
        )
        ctx["args"] += ", q8_scratch"
        printer = self.printer
        ctx.update(
            template="export/gemm_q8.c.j2",
            input_scale=printer.doprint(sp.Float(layer.input_scale, 9)),
            inverse_scale=printer.doprint(sp.Float(1.0 / layer.input_scale, 9)),
            weight_scale=f"{self.prefix}_{layer.weight}_scale",
            round="lroundf" if real == "float" else "lround",
        )
        return ctx


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
    model: Any,
    directory: str,
    name: str | None = None,
    training: bool = False,
    batch_size: int = 1,
    quantize: str | None = None,
    calibration: Any = None,
) -> ExportResult:
    """Write a self-contained C99 project for ``model`` into ``directory``.

    ``quantize="int8"`` stores the weights of every dense layer as int8 with one scale per
    output unit, quantizes the layer's input with one scale calibrated on ``calibration``
    (rows of the model's inputs) and sums in int32; other ops stay in floating point.
    """
    graph = model.graph
    if quantize not in (None, "int8"):
        raise GraphError(f"export: quantize must be None or 'int8', not {quantize!r}")
    if quantize and training:
        raise GraphError("export: an int8 export is inference-only; drop training=True")
    if quantize and calibration is None:
        raise GraphError(
            "export(quantize='int8') needs calibration data: some rows of the model's inputs"
        )
    if not graph.outputs:
        raise GraphError("export needs a model with outputs (g.output(name, node))")
    name = sanitize(name or model.plan.name)
    optimizer = model.optimizer if training else None
    if training and (graph.loss is None or optimizer is None):
        raise GraphError(
            "export(training=True) needs a model compiled with a loss and an optimizer"
        )
    frozen = {pp.param.label for pp in model.plan.params if not pp.trainable}
    plan = plan_model(graph, batch_size, model.plan.dtype, optimizer, frozen)
    real = "float" if plan.dtype == "float32" else "double"
    target = Target(name="embedded", real=real, parallel_for="", single="", barrier="", simd="")
    env = environment()
    params = {pp.param.name: pp.param for pp in plan.params}
    values = model.params
    programs = {p.name: p for p in plan.programs}
    quantized = _quantized_layers(model, programs["infer"], calibration) if quantize else {}
    contexts = _Int8Contexts(target, plan.dtype, quantized, name)

    def weight_symbol(t: Tensor) -> str:
        return f"{name}_{t.name}"

    base = plan.memory.persistent_bytes
    wanted = ["infer"] + (["train"] if training else [])
    contexts_by_program = {}
    for pname in wanted:
        program = programs[pname]

        def place(t: Tensor, pname: str = pname) -> tuple[str, str]:
            ctype = c_type(t, real)
            if t.name in contexts.int8_params:
                return "const int8_t", f"{weight_symbol(t)}_q"
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
    if quantized:
        # one int8 copy of a layer's input rows, after everything else in the arena
        scratch = _align64(plan.memory.transient_peak["infer"])
        contexts_by_program["infer"]["locals"].append(
            (
                "int8_t",
                "q8_scratch",
                f"(int8_t *)(memory + {scratch})",
                "int8 copy of a layer's input",
            )
        )

    kernels = render_kernels(env, [programs[pname] for pname in wanted], contexts)
    if training:
        arena = STATE_BYTES + base + plan.memory.transient_peak["train"]
        arena = max(arena, STATE_BYTES + base + plan.memory.transient_peak["infer"])
    else:
        arena = plan.memory.transient_peak["infer"]
    if quantized:
        arena = _align64(arena) + plan.batch * max(q.k for q in quantized.values())
    weights = []
    for pp in plan.params:
        array = np.asarray(values[pp.param.label], dtype=np.float64)
        entry = {
            "label": pp.param.label,
            "shape": "x".join(map(str, pp.param.shape)),
            "offset": STATE_BYTES + plan.memory.persistent[pp.param.name],
        }
        if pp.param.name in contexts.int8_params:
            # (in, out) stored transposed as [out][in] int8, so each unit's weights are contiguous
            scale = np.abs(array).max(axis=0) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(array / scale), -127, 127).astype(np.int64).T.ravel()
            weights.append(
                {
                    **entry,
                    "symbol": weight_symbol(pp.param) + "_q",
                    "ctype": "int8_t",
                    "size": q.size,
                    "bytes": q.size,
                    "shape": entry["shape"] + " transposed",
                    "data": ", ".join(str(v) for v in q),
                }
            )
            weights.append(
                {
                    **entry,
                    "symbol": weight_symbol(pp.param) + "_scale",
                    "ctype": real,
                    "size": scale.size,
                    "bytes": scale.size * (4 if real == "float" else 8),
                    "label": pp.param.label + " (scale of each output unit)",
                    "data": ", ".join(_literal(v, plan.dtype) for v in scale),
                }
            )
            continue
        flat = array.ravel()
        weights.append(
            {
                **entry,
                "symbol": weight_symbol(pp.param),
                "ctype": real,
                "size": flat.size,
                "bytes": flat.size * (4 if real == "float" else 8),
                "data": ", ".join(_literal(v, plan.dtype) for v in flat),
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
        "weight_bytes": sum(w["bytes"] for w in weights),
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
    return ExportResult(
        directory,
        name,
        tuple(files),
        arena,
        ctx["weight_bytes"],
        tuple(q.label for q in quantized.values()),
    )
