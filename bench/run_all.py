"""Every benchmark of the issue in one command: W1-W4 against each installed peer, compile
times and memory.

    W1  MLP 784-512-256-10 ReLU, softmax CE, SGD, batch 128, random data (bench/mlp.py)
    W2  MLP 64-128-64-10 tanh, Adam, batch 32, the 8x8 digits (bench/mlp.py)
    W3  LeNet-5 on 28x28x1 digits, SGD momentum 0.9, batch 64 (bench/cnn.py)
    W4  char RNN and LSTM: one-hot 65 -> 128, T=32, batch 32, softmax at every step, Adam
        (bench/rnn.py)

Peers, each timed when it imports: PyTorch eager, torch.compile, JAX (jit of the whole
step; lax.scan for W4), PyTensor and NumPy with hand-written backprop (W1).  Everything runs
float32 on ``--threads`` threads (default 2) in this one process; within each timing round
graphc and the peers take turns, and the median of the rounds is printed, with the load
average before and after (on a shared machine, a load well above the benchmark's own
threads means the figures measure the neighbours) and, after each workload, the FMA rate a
team of threads gets at that moment (near the peak when each thread has a core of its
own; about half of it when a virtual machine's host has put two vCPUs on one core) and
the time a cache line takes from one thread to the other and back (about 50 ns on this
project's VM when the host has put the two vCPUs on one CCD, about 300 ns across two,
where every multi-threaded figure, graphc's most, is lower).  The throughput part ends
with one line per workload: graphc's rate over the best peer's, and whether that meets
the issue's target.

Usage (repository root): python bench/run_all.py [--quick] [--threads N] [--repeats R]
                         [--skip compile,memory,...]
"""

from __future__ import annotations

import argparse
import time
import warnings

import cnn
import common
import compile_time
import memory
import mlp
import rnn

WORKLOADS = ("W1", "W2", "W3", "W4")
#: the issue's targets: graphc's rate over the best peer's (W3's only peer is PyTorch eager,
#: channels-last; W2's best is JAX's whole-step jit)
TARGETS = {"W1": 1.3, "W2": 2.0, "W3": 2.0, "W4 RNN": 1.5, "W4 LSTM": 1.5}


def row(label: str, rates: dict[str, float], flops: float, peak: float | None, unit: str):
    """Print graphc's rate, its GFLOP/s and % of peak, then each peer's rate and the ratio.

    Returns (best peer, graphc / best peer), or None when no peer is installed.
    """
    g = rates["graphc"]
    gflops = g * flops / 1e9
    share = f"{100 * gflops / peak:5.1f}%" if peak else "    -"
    print(f"{label:34} {'graphc':14} {g:12,.0f} {unit:9} {gflops:7.1f} GFLOP/s {share} of peak")
    for name, rate in rates.items():
        if name != "graphc":
            print(f"{'':34} {name:14} {rate:12,.0f} {unit:9} graphc/{name} = {g / rate:5.2f}")
    peers = {name: rate for name, rate in rates.items() if name != "graphc"}
    if not peers:
        return None
    best = max(peers, key=peers.__getitem__)
    return best, g / peers[best]


def summary(results: dict[str, tuple[str, float] | None]) -> None:
    """One line per workload: the best peer, the ratio and the issue's target."""
    print("graphc against the best peer of each workload (this run):")
    for key, result in results.items():
        if result is None:
            print(f"  {key:8} no peer installed")
            continue
        best, ratio = result
        verdict = "met" if ratio >= TARGETS[key] else "NOT met"
        # three decimals: a ratio of 1.297 must not read as 1.30 beside "NOT met"
        print(f"  {key:8} {ratio:6.3f} x {best:14} target >= {TARGETS[key]}: {verdict}")


def cores(threads: int, peak: float | None) -> None:
    """Print the FMA rate of a team of ``threads`` now, against the peak, and the time a
    cache line takes between two threads and back (where the host put the vCPUs)."""
    rate = common.team_fma(threads)
    trip = common.line_trip_ns() if threads > 1 else None
    if rate and peak:
        where = f"; cache line round trip {trip:.0f} ns" if trip else ""
        print(
            f"{'':34} (team FMA rate now {rate:.0f} GFLOP/s, {100 * rate / peak:.0f}% of peak"
            f"{where})"
        )


def guard_note(first: int) -> None:
    """Print how many steps the shared-core guard ran on fewer threads in the graphc models
    timed since ``common.MODELS[first]``, when it shrank any."""
    models = common.MODELS[first:]
    shrunk = sum(m.guarded_calls for m in models)
    if shrunk:
        steps = sum(m.step for m in models)
        print(
            f"{'':34} (the shared-core guard ran {shrunk:,} of graphc's {steps:,} steps"
            " on fewer threads)"
        )


def mlp_rates(w: mlp.Workload, threads: int, repeats: int) -> dict[str, float]:
    """Samples/s of graphc and every installed peer on one MLP workload."""
    trainers = {"graphc": mlp.graphc_trainer(w, threads)}
    for name, (module, make) in mlp.PEERS.items():
        if common.optional(module) is None:
            continue
        try:
            trainers[name] = make(w, threads)
        except ValueError:  # the NumPy peer implements SGD only
            continue
    return mlp.median_rates(trainers, w, repeats)


def rnn_rates(kind: str, sequences: int, threads: int, repeats: int) -> dict[str, float]:
    """Tokens/s of graphc and every installed peer on the RNN or the LSTM."""
    X, y = rnn.data(sequences)
    trainers = {"graphc": rnn.graphc_trainer(kind, X, y, threads)}
    for name, (module, make) in rnn.PEERS.items():
        if common.optional(module) is not None:
            trainers[name] = make(kind, X, y, threads)
    return rnn.tokens_per_second(trainers, sequences * rnn.STEPS, repeats)


def rnn_flops_per_token(kind: str) -> int:
    """Dense work per token: h·W and h·V forward, their δ and weight gradients (x3)."""
    gates = {"rnn": 1, "lstm": 4}[kind]
    return 6 * rnn.HIDDEN * gates * rnn.HIDDEN + 6 * rnn.HIDDEN * rnn.VOCAB


def main() -> None:
    """Run the selected benchmarks and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="less data, fewer repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (>= 3)")
    parser.add_argument("--skip", default="", help="comma-separated: W1,W2,W3,W4,compile,memory")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    repeats = max(3, args.repeats or (3 if args.quick else 5))
    warnings.filterwarnings("ignore")
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    print(f"bench/run_all.py {'--quick ' if args.quick else ''}at {started}")
    print(common.machine())
    peers = {m: common.optional(m) for m in ("torch", "jax", "pytensor")}
    print("peers: " + ", ".join(f"{m} {v or '(not installed)'}" for m, v in peers.items()))
    peak = common.fma_peak(args.threads)
    if peak:
        print(f"measured float32 FMA peak on {args.threads} threads: {peak:.0f} GFLOP/s")
    print(f"{args.threads} threads, median of {repeats} rounds; load average {common.load():.2f}")
    cores(args.threads, peak)
    print()
    workloads = mlp.workloads(args.quick)
    results: dict[str, tuple[str, float] | None] = {}
    for key, w in zip(("W1", "W2"), workloads):
        if key not in skip:
            first = len(common.MODELS)
            rates = mlp_rates(w, args.threads, repeats)
            results[key] = row(w.label, rates, w.needed_flops_per_sample, peak, "sa/s")
            guard_note(first)
            cores(args.threads, peak)
    if "W3" not in skip:
        first = len(common.MODELS)
        rates = cnn.measure(args.quick, args.threads, repeats)
        results["W3"] = row("W3 LeNet-5 SGD momentum b64", rates, cnn.TRAIN_FLOPS, peak, "sa/s")
        guard_note(first)
        cores(args.threads, peak)
    if "W4" not in skip:
        sequences = 256 if args.quick else 1024
        for kind in ("rnn", "lstm"):
            first = len(common.MODELS)
            rates = rnn_rates(kind, sequences, args.threads, repeats)
            label = f"W4 {kind.upper()} 65->128 T32 Adam b32"
            results[f"W4 {kind.upper()}"] = row(
                label, rates, rnn_flops_per_token(kind), peak, "tokens/s"
            )
            guard_note(first)
            cores(args.threads, peak)
    print(f"load average after the throughput runs: {common.load():.2f}")
    if results:
        print()
        summary(results)
    if "compile" not in skip:
        print()
        depths = [8, 16] if args.quick else [8, 16, 32, 64]
        compile_time.print_tables(compile_time.w1_times(), compile_time.depth_times(depths))
    if "memory" not in skip:
        print()
        memory.print_table(memory.measure())


if __name__ == "__main__":
    main()
