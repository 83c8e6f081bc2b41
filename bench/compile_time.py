"""Compile times: W1 cold (empty cache) and from the cache, and MLPs of growing depth.

Each figure runs ``gc.compile`` on a freshly built graph (the graph construction is part of
it) with ``GRAPHC_CACHE_DIR`` pointing at a new empty directory, so "cold" includes the C
compiler and "cache hit" is a second compile of the same graph in the same process.  "New
process" is the first compile in another Python process (graphc already imported) that
finds the library in that cache: what rerunning a training script costs.  The
depth table splits a cold compile of an MLP with ``depth`` hidden layers (64 wide, relu,
batch 32) into its stages: graph, planning (δ pass, fusion, memory), rendering and the C
compiler.

Usage: python bench/compile_time.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import gc


def mlp_graph(sizes: tuple[int, ...], activation: str = "relu", name: str = "bench_mlp"):
    """An MLP on ``sizes[0]`` features with softmax cross-entropy on ``sizes[-1]`` classes."""
    g = gc.Graph(name)
    x = g.input("x", (sizes[0],))
    y = g.input("y", (), dtype="int32")
    h = x
    for k, units in enumerate(sizes[1:-1]):
        h = gc.dense(h, units, activation=activation, name=f"hidden{k + 1}")
    g.minimize(gc.softmax_cross_entropy(gc.dense(h, sizes[-1], name="out"), y))
    return g


def w1_times(hits: int = 5) -> dict[str, float]:
    """Seconds of a cold W1 compile and the median of ``hits`` cache hits after it."""
    with tempfile.TemporaryDirectory() as cache:
        previous = os.environ.get("GRAPHC_CACHE_DIR")
        os.environ["GRAPHC_CACHE_DIR"] = cache
        try:
            sizes = (784, 512, 256, 10)
            start = time.perf_counter()
            gc.compile(mlp_graph(sizes), batch_size=128, optimizer=gc.SGD(lr=0.01))
            cold = time.perf_counter() - start
            times = []
            for _ in range(hits):
                start = time.perf_counter()
                gc.compile(mlp_graph(sizes), batch_size=128, optimizer=gc.SGD(lr=0.01))
                times.append(time.perf_counter() - start)
            fresh = [_new_process_hit() for _ in range(hits)]
        finally:
            if previous is None:
                del os.environ["GRAPHC_CACHE_DIR"]
            else:
                os.environ["GRAPHC_CACHE_DIR"] = previous
    return {"cold": cold, "hit": statistics.median(times), "fresh": statistics.median(fresh)}


NEW_PROCESS = """
import sys, time
sys.path.insert(0, {bench!r})
from compile_time import mlp_graph
from common import gc
start = time.perf_counter()
gc.compile(mlp_graph((784, 512, 256, 10)), batch_size=128, optimizer=gc.SGD(lr=0.01))
print(time.perf_counter() - start)
"""


def _new_process_hit() -> float:
    """Seconds of W1's first compile in a new process whose cache holds its library."""
    script = NEW_PROCESS.format(bench=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the new-process compile failed:\n{out.stderr}")
    return float(out.stdout.split()[-1])


def depth_times(depths: list[int]) -> list[dict[str, float]]:
    """Stage times of a cold compile of an MLP with each number of hidden layers."""
    from graphc.build import build_c
    from graphc.codegen.c import render_model
    from graphc.compiler import plan_model

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        previous = os.environ.get("GRAPHC_CACHE_DIR")
        os.environ["GRAPHC_CACHE_DIR"] = cache
        try:
            for depth in depths:
                t0 = time.perf_counter()
                graph = mlp_graph((64,) * (depth + 1) + (10,), name=f"deep{depth}")
                t1 = time.perf_counter()
                plan = plan_model(graph, 32, "float32", gc.SGD(lr=0.01))
                t2 = time.perf_counter()
                source, header, cdef = render_model(plan)
                t3 = time.perf_counter()
                build_c(plan.name, source, header, cdef)
                t4 = time.perf_counter()
                rows.append(
                    {
                        "depth": depth,
                        "graph": t1 - t0,
                        "plan": t2 - t1,
                        "render": t3 - t2,
                        "cc": t4 - t3,
                        "total": t4 - t0,
                        "lines": source.count("\n"),
                    }
                )
        finally:
            if previous is None:
                del os.environ["GRAPHC_CACHE_DIR"]
            else:
                os.environ["GRAPHC_CACHE_DIR"] = previous
    return rows


def print_tables(w1: dict[str, float], rows: list[dict[str, float]]) -> None:
    """The W1 line and the depth table."""
    print(
        f"W1 compile: cold {w1['cold']:.2f} s (target <= 3 s), cache hit "
        f"{w1['hit'] * 1e3:.0f} ms (target <= 50 ms); in a new process "
        f"{w1['fresh'] * 1e3:.0f} ms"
    )
    print(
        f"{'hidden layers':>13} {'graph s':>8} {'plan s':>7} {'render s':>9} {'cc s':>6} "
        f"{'total s':>8} {'s/layer':>8} {'C lines':>8}"
    )
    for r in rows:
        print(
            f"{r['depth']:13d} {r['graph']:8.3f} {r['plan']:7.3f} {r['render']:9.3f} "
            f"{r['cc']:6.2f} {r['total']:8.2f} {r['total'] / r['depth']:8.3f} {r['lines']:8d}"
        )


def main() -> None:
    """Print the compile-time tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="depths 8 and 16 only")
    args = parser.parse_args()
    print_tables(w1_times(), depth_times([8, 16] if args.quick else [8, 16, 32, 64]))


if __name__ == "__main__":
    main()
