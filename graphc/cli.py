"""The ``graphc`` command: a thin wrapper over the public API.

MODEL arguments are ``path/to/file.py:NAME`` where NAME is a ``gc.Graph`` or a function
(taking no arguments) that returns one.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

from graphc.draw import graph_dot

EXAMPLE_MODEL = "examples/c_api/model.py:graph"


class CliError(Exception):
    """A user error reported as one line, without a traceback."""


def load_graph(spec: str):
    """The Graph named by 'file.py:NAME' (NAME a Graph or a function returning one)."""
    import graphc as gc

    if ":" not in spec:
        raise CliError(f"MODEL must look like path/to/file.py:NAME, got {spec!r}")
    path, name = spec.rsplit(":", 1)
    if not os.path.isfile(path):
        raise CliError(f"no such file: {path}")
    module_name = "graphc_user_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
    loader = importlib.util.spec_from_file_location(module_name, path)
    if loader is None or loader.loader is None:
        raise CliError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(loader)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        loader.loader.exec_module(module)
    except Exception as exc:  # the user's file failed: say so in one line
        raise CliError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.pop(0)
    if not hasattr(module, name):
        names = sorted(k for k, v in vars(module).items() if isinstance(v, gc.Graph) or callable(v))
        raise CliError(f"{path} has no {name!r}; candidates: {', '.join(names) or 'none'}")
    value = getattr(module, name)
    if callable(value) and not isinstance(value, gc.Graph):
        try:
            value = value()
        except TypeError as exc:
            raise CliError(f"{spec}: calling {name}() failed: {exc}") from exc
    if not isinstance(value, gc.Graph):
        raise CliError(
            f"{spec} is a {type(value).__name__}, not a gc.Graph (or a function returning one)"
        )
    return value


OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adagrad": "AdaGrad", "rmsprop": "RMSProp"}


def _compile(args: argparse.Namespace, graph):
    import graphc as gc

    optimizer = None
    if graph.loss is not None:
        optimizer = getattr(gc, OPTIMIZERS[args.optimizer])(lr=args.lr)
    return gc.compile(
        graph,
        target=args.target,
        batch_size=args.batch_size,
        dtype=args.dtype,
        optimizer=optimizer,
        seed=args.seed,
    )


def cmd_build(args: argparse.Namespace) -> int:
    """graphc build: shared library + header + sources + manifest in a directory."""
    graph = load_graph(args.model)
    model = _compile(args, graph)
    os.makedirs(args.output, exist_ok=True)
    prefix = model.plan.name
    copies = {
        model.library_path: f"lib{prefix}.so",
        model.source_path: os.path.basename(model.source_path),
        model._library.header_path: f"{prefix}.h",
    }
    from graphc.codegen.c import RUNTIME_DIR

    for name in sorted(os.listdir(RUNTIME_DIR)):
        copies[os.path.join(RUNTIME_DIR, name)] = name
    for src, dst in copies.items():
        shutil.copyfile(src, os.path.join(args.output, dst))
    manifest = model.manifest()
    with open(os.path.join(args.output, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    print(f"built {prefix}: {os.path.join(args.output, f'lib{prefix}.so')}")
    print(
        f"  arena {manifest['arena_bytes']} bytes, {len(manifest['params'])} parameters, "
        f"API in {prefix}.h, manifest.json lists tensor indices"
    )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """graphc explain: the δ recurrences as text or LaTeX."""
    from graphc.explain import explain, explain_latex

    graph = load_graph(args.model)
    print(explain_latex(graph) if args.latex else explain(graph), end="")
    return 0


def _kernel_blocks(source: str) -> dict[str, str]:
    """Split generated C into kernel texts by their 'static void NAME(' definitions (in
    CUDA, the launch wrappers' 'static cudaError_t NAME(')."""
    blocks: dict[str, str] = {}
    chunks = source.split("\n/* ")
    for chunk in chunks:
        for line in chunk.splitlines():
            head = next(
                (h for h in ("static void ", "static cudaError_t ") if line.startswith(h)), None
            )
            if head and "(" in line:
                name = line[len(head) : line.index("(")]
                if name.endswith("_epilogue"):
                    continue
                blocks[name] = "/* " + chunk.rstrip() + "\n"
                break
    return blocks


def _highlight(text: str) -> str:
    if not sys.stdout.isatty():
        return text
    try:
        from pygments import highlight
        from pygments.formatters import TerminalFormatter
        from pygments.lexers import CLexer
    except ImportError:
        return text
    return highlight(text, CLexer(), TerminalFormatter())


def cmd_show(args: argparse.Namespace) -> int:
    """graphc show: the generated source, all of it or one kernel."""
    graph = load_graph(args.model)
    model = _compile(args, graph)
    source = model.source
    if args.kernel:
        blocks = _kernel_blocks(source)
        if args.kernel not in blocks:
            raise CliError(f"no kernel {args.kernel!r}; kernels: {', '.join(sorted(blocks))}")
        source = blocks[args.kernel]
    sys.stdout.write(_highlight(source))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    """graphc graph: DOT (or SVG/PNG through Graphviz) of the forward and backward graph."""
    graph = load_graph(args.model)
    dot = graph_dot(graph)
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in (".dot", ".svg", ".png"):
        raise CliError(f"output must end in .dot, .svg or .png, got {args.output!r}")
    if ext == ".dot":
        with open(args.output, "w") as f:
            f.write(dot)
    elif shutil.which("dot") is None:
        fallback = os.path.splitext(args.output)[0] + ".dot"
        with open(fallback, "w") as f:
            f.write(dot)
        print(f"Graphviz 'dot' not found (apt-get install graphviz); wrote DOT text to {fallback}")
        return 0
    else:
        subprocess.run(["dot", f"-T{ext[1:]}", "-o", args.output], input=dot, text=True, check=True)
    print(f"wrote {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """graphc export: a standalone C99 project for embedded targets."""
    graph = load_graph(args.model)
    model = _compile(args, graph)
    if args.checkpoint:
        model.load(args.checkpoint)
    result = model.export(args.output, training=args.training)
    print(result.report())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """graphc bench: training steps/s on random data."""
    graph = load_graph(args.model)
    model = _compile(args, graph)
    rng = np.random.default_rng(0)
    rows = model.batch_size * args.steps
    data = []
    for t in model.plan.inputs:
        if t.dtype == "int32":
            classes = model._classes.get(t.label, 2)
            data.append(rng.integers(0, classes, size=(rows,) + t.shape).astype(np.int32))
        else:
            data.append(rng.standard_normal((rows,) + t.shape))
    if graph.loss is None:
        start = time.perf_counter()
        model.predict(*data)
        elapsed = time.perf_counter() - start
        print(f"{graph.name}: inference {rows / elapsed:,.0f} rows/s")
        return 0
    model.fit(*data, epochs=1)
    start = time.perf_counter()
    model.fit(*data, epochs=args.epochs)
    elapsed = time.perf_counter() - start
    steps = args.steps * args.epochs
    print(
        f"{graph.name}: {steps / elapsed:,.1f} steps/s, {steps * model.batch_size / elapsed:,.0f} "
        f"samples/s (batch {model.batch_size}, {model.plan.dtype})"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of the graphc command."""
    p = argparse.ArgumentParser(
        prog="graphc",
        description="Compile neural-network graphs to C, inspect what the compiler derived, export.",
        epilog=f"example: graphc explain {EXAMPLE_MODEL}",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_text: str, example: str, compile_opts: bool = True):
        q = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example: {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        q.add_argument(
            "model",
            metavar="MODEL",
            help="path/to/file.py:NAME (a gc.Graph or a function returning one)",
        )
        if compile_opts:
            q.add_argument(
                "--target",
                default="c",
                choices=["c", "cuda", "cuda-emu"],
                help="backend (default c; cuda-emu runs the CUDA kernels on the CPU, for tests)",
            )
            q.add_argument(
                "--batch-size", type=int, default=32, help="rows per training step (default 32)"
            )
            q.add_argument("--dtype", default="float32", choices=["float32", "float64"])
            q.add_argument(
                "--optimizer",
                default="sgd",
                choices=sorted(OPTIMIZERS),
                help="optimizer of the training step (default sgd)",
            )
            q.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
            q.add_argument("--seed", type=int, default=0, help="seed of the initial parameters")
        q.set_defaults(func=fn)
        return q

    q = add(
        "build",
        cmd_build,
        "ahead-of-time compile to a shared library, header, sources and manifest",
        f"graphc build {EXAMPLE_MODEL} -o build/digits",
    )
    q.add_argument("-o", "--output", required=True, help="output directory")
    q = add(
        "explain",
        cmd_explain,
        "print the δ recurrences and parameter gradients",
        f"graphc explain {EXAMPLE_MODEL} --latex",
        compile_opts=False,
    )
    q.add_argument("--latex", action="store_true", help="LaTeX instead of text")
    q = add(
        "show",
        cmd_show,
        "print the generated source (one kernel with --kernel)",
        f"graphc show {EXAMPLE_MODEL} --kernel k_hidden",
    )
    q.add_argument("--kernel", help="only this kernel (its function name)")
    q = add(
        "graph",
        cmd_graph,
        "draw the forward and backward graph (δ nodes in orange)",
        f"graphc graph {EXAMPLE_MODEL} -o digits.svg",
        compile_opts=False,
    )
    q.add_argument("-o", "--output", required=True, help="FILE.dot, FILE.svg or FILE.png")
    q = add(
        "export",
        cmd_export,
        "write a standalone C99 project for embedded targets",
        f"graphc export {EXAMPLE_MODEL} -o digits_export --checkpoint digits.gcck",
    )
    q.add_argument("-o", "--output", required=True, help="output directory")
    q.add_argument("--checkpoint", help="load trained parameters from this checkpoint first")
    q.add_argument("--training", action="store_true", help="also export the training step")
    q = add(
        "bench",
        cmd_bench,
        "training steps/s on random data",
        f"graphc bench {EXAMPLE_MODEL} --steps 100",
    )
    q.add_argument("--steps", type=int, default=50, help="steps per epoch (default 50)")
    q.add_argument("--epochs", type=int, default=3, help="timed epochs (default 3)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"graphc: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # graphc's own errors are sentences: show them without a traceback
        from graphc.errors import GraphcError

        if isinstance(exc, GraphcError):
            print(f"graphc: {exc}", file=sys.stderr)
            return 1
        raise


def _main_entry() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    _main_entry()
