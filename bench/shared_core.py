"""W1 on a machine where another process keeps one CPU busy: the shared-core guard.

graphc's kernels split each step statically across the OpenMP team and meet at barriers,
so a team thread that shares its core with a busy process holds every barrier for a
scheduler time slice.  The guard (runtime/gc_team.h) sees the team waiting for a CPU and
runs calls on fewer threads for a while.  This runs W1 (784-512-256-10 ReLU, SGD, batch
128, float32) with one busy-looping process pinned to the last CPU, for:

  graphc            the default build (guard on), 2 threads
  graphc unguarded  the same C built with -DGC_GUARD=0, 2 threads
  graphc 1 thread   the default build on one thread
  torch, jax        when installed, with the same thread count

Each contender's figure is the median samples/s over the rounds, the contenders taking
turns within each round, after one warm-up epoch each; each timing is short (two epochs
of W1), so the guard's try of the whole team at the start of each costs more than it
would in one long training run.  Also printed: how many of graphc's steps the guard ran
on fewer threads.

Usage: python bench/shared_core.py [--quick] [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import common
import mlp

from graphc.build import default_flags, find_compiler

BUSY = "import os, sys\nos.sched_setaffinity(0, [int(sys.argv[1])])\nwhile True:\n    pass\n"


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Time the contenders with the busy process running; print and return samples/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="less data, fewer repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (>= 3)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    w = mlp.workloads(args.quick)[0]
    flags = default_flags(find_compiler())
    guarded = len(common.MODELS)  # the index of the guarded build's model
    models = {
        "graphc": mlp.graphc_trainer(w, args.threads),
        "graphc unguarded": mlp.graphc_trainer(w, args.threads, flags + ["-DGC_GUARD=0"]),
        "graphc 1 thread": mlp.graphc_trainer(w, 1),
    }
    for name in ("torch", "jax"):
        module, make = mlp.PEERS[name]
        if common.optional(module) is not None:
            models[name] = make(w, args.threads)
    cpu = max(os.sched_getaffinity(0))
    print(f"bench/shared_core.py: {common.machine()}")
    print(f"{w.label}, {args.threads} threads, a busy loop on CPU {cpu}, median of {repeats}")
    busy = subprocess.Popen([sys.executable, "-c", BUSY, str(cpu)])
    try:
        rates = mlp.median_rates(models, w, repeats)
    finally:
        busy.kill()
        busy.wait()
    for name, rate in rates.items():
        ratio = f"  graphc/{name} = {rates['graphc'] / rate:5.2f}" if name != "graphc" else ""
        print(f"  {name:17} {rate:10,.0f} samples/s{ratio}")
    model = common.MODELS[guarded]
    print(
        f"  the guard ran {model.guarded_calls:,} of graphc's {model.step:,} steps on fewer threads"
    )
    peers = [rate for name, rate in rates.items() if not name.startswith("graphc")]
    if peers:
        print(f"  graphc against the best peer: {rates['graphc'] / max(peers):.2f}")
    return rates


if __name__ == "__main__":
    main()
