"""What every benchmark shares: alternating median timings, the machine's FMA peak, load.

The machine is shared, so each timing round runs every contender once, in turn, and the
median of the rounds is reported: a burst of load from another process then slows every
side alike rather than whichever ran at the time.  The 1-minute load average is printed
with every table; a run whose load is well above the benchmark's own threads measures
the neighbours, not the code.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

try:
    import graphc as gc
except ImportError:  # a source checkout without install: use the repository next door
    sys.path.insert(0, str(ROOT))
    import graphc as gc

__all__ = [
    "gc",
    "ROOT",
    "MODELS",
    "timed",
    "median_rates",
    "settle",
    "fma_peak",
    "line_trip_ns",
    "team_fma",
    "load",
    "machine",
    "optional",
]


#: every graphc model a benchmark timed, in the order they were built (see ``timed``)
MODELS: list = []


def timed(model):
    """Note a compiled graphc model that a benchmark times, so that a report can say how
    many of its steps the shared-core guard ran on fewer threads; returns the model."""
    MODELS.append(model)
    return model


def median_rates(
    trainers: dict[str, Callable[[], None]],
    units: float,
    repeats: int,
    warmup: int = 1,
    pause: float = 0.05,
) -> dict[str, float]:
    """Median rate (``units`` per second of one call) of each trainer, after ``warmup``
    untimed calls each; within each of the ``repeats`` rounds the trainers take turns.

    Before each timing, at least ``pause`` seconds of sleep and then ``settle()``: the
    thread pools of the previous contender spin a while after their work (OpenBLAS's for
    about 0.1 s), and a team of two started while one of them spins gets one core.
    """
    for train in trainers.values():
        for _ in range(warmup):
            train()
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(repeats):
        for name, train in trainers.items():
            time.sleep(pause)
            settle()
            start = time.perf_counter()
            train()
            times[name].append(time.perf_counter() - start)
    return {name: units / statistics.median(values) for name, values in times.items()}


def _other_threads_cpu_ns() -> int:
    """CPU time (ns) used so far by this process's threads other than the calling one."""
    me = threading.get_native_id()
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            pass
    return total


def settle(window: float = 0.01, limit: float = 2.0) -> float:
    """Wait until no other thread of this process runs (under 10% of a core over
    ``window`` seconds), at most ``limit`` seconds; returns the seconds waited.

    Peers' thread pools busy-wait for work after a call returns; timing the next
    contender then measures their spinning.  Where /proc has no per-thread schedstat
    (not Linux), this returns at once.
    """
    if not os.path.exists(f"/proc/self/task/{threading.get_native_id()}/schedstat"):
        return 0.0
    start = time.perf_counter()
    before = _other_threads_cpu_ns()
    while time.perf_counter() - start < limit:
        time.sleep(window)
        after = _other_threads_cpu_ns()
        if after - before < 0.1 * window * 1e9:
            break
        before = after
    return time.perf_counter() - start


PROBES_C = r"""
#include <omp.h>
#include <stdatomic.h>
#include <immintrin.h>
/* 12 independent chains of 8-wide float FMAs per thread: the FMA units' throughput. */
#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
double fma_peak(long reps, int threads)
{
    double flops = 0.0;
    double t0 = omp_get_wtime();
    #pragma omp parallel num_threads(threads) reduction(+ : flops)
    {
        const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(1e-3f);
#define INIT(i) __m256 a##i = _mm256_set1_ps((float)i);
        CHAINS(INIT)
        for (long r = 0; r < reps; r++) {
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, x, y);
            CHAINS(STEP)
        }
        __m256 s = _mm256_setzero_ps();
#define SUM(i) s = _mm256_add_ps(s, a##i);
        CHAINS(SUM)
        float sink[8];
        _mm256_storeu_ps(sink, s);
        flops += 12.0 * 16.0 * (double)reps + (sink[0] == 12345.0f);
    }
    return flops / (omp_get_wtime() - t0);
}

/* Seconds per round trip of one cache line between two threads: each waits for the
   other's store before its own (a barrier's or a shared tile's cost, in miniature). */
double line_trip(long rounds)
{
    static _Atomic long flag __attribute__((aligned(64)));
    double seconds = -1.0;  /* stays negative when OpenMP gives fewer than two threads */
    atomic_store(&flag, 0);
    #pragma omp parallel num_threads(2)
    if (omp_get_num_threads() == 2) {
        const long me = omp_get_thread_num();
        #pragma omp barrier
        const double t0 = omp_get_wtime();
        for (long r = 0; r < rounds; r++) {
            while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * r + me)
                ;
            atomic_store_explicit(&flag, 2 * r + me + 1, memory_order_release);
        }
        if (me == 0)
            seconds = omp_get_wtime() - t0;
    }
    return seconds / (double)rounds;
}
"""


@functools.cache
def _probes():
    """The compiled probes (fma_peak(reps, threads) -> flop/s, line_trip(rounds) -> s), or
    None without a C compiler with OpenMP and AVX2/FMA."""
    import cffi

    with tempfile.TemporaryDirectory() as tmp:  # the loaded library outlives its file
        src, lib = Path(tmp) / "probes.c", Path(tmp) / "probes.so"
        src.write_text(PROBES_C)
        command = ["gcc", "-O2", "-march=native", "-fopenmp", "-fPIC", "-shared", str(src)]
        if subprocess.run(command + ["-o", str(lib)], capture_output=True).returncode != 0:
            return None
        ffi = cffi.FFI()
        ffi.cdef("double fma_peak(long reps, int threads); double line_trip(long rounds);")
        # RTLD_NODELETE: a library unloaded under its OpenMP threads takes the process down
        return ffi.dlopen(str(lib), ffi.RTLD_NOW | ffi.RTLD_NODELETE)


def fma_peak(threads: int) -> float | None:
    """Measured float32 FMA throughput of ``threads`` threads in GFLOP/s, or None when no C
    compiler with AVX2/FMA is at hand.

    The larger of the best of 5 team runs and ``threads`` times the best of 5 one-thread
    runs: the cores do not share FMA units, and a single thread still gets a whole core
    while another process keeps the machine busy, where a team does not.
    """
    probes = _probes()
    if probes is None:
        return None
    team = max(probes.fma_peak(20_000_000, threads) for _ in range(5))
    single = max(probes.fma_peak(20_000_000, 1) for _ in range(5))
    return max(team, threads * single) / 1e9


def team_fma(threads: int) -> float | None:
    """The FMA throughput a team of ``threads`` gets right now (GFLOP/s, median of 5 runs
    of ~20 ms), or None without a compiler.

    On a virtual machine the host may place two vCPUs on the two hardware threads of one
    core for minutes at a time; a team then gets one core's FMA units, about half of
    ``fma_peak``, and every two-thread figure of that time is low.  Printed beside each
    workload, it tells which state a row was measured in.
    """
    probes = _probes()
    if probes is None:
        return None
    settle()  # the last contender's threads may still spin
    probes.fma_peak(2_000_000, threads)  # wake the team
    return statistics.median(probes.fma_peak(2_000_000, threads) for _ in range(5)) / 1e9


def line_trip_ns() -> float | None:
    """Nanoseconds for a cache line to go from one thread to another and back right now
    (the best of 3 runs of 20,000 round trips), or None without a compiler.

    It tells where the host has put two vCPUs.  On this project's Zen 4 VM it reads about
    50 ns when they share a CCD's L3 and about 300 ns when they sit on two CCDs, for
    minutes at a time.  The FMA rate cannot tell these apart, but every step whose
    threads read each other's results (a barrier, a product's tiles, a weight gradient
    summed over the batch) pays for the longer trip: graphc's two-thread LeNet-5 then runs
    no faster than one thread.
    """
    probes = _probes()
    if probes is None:
        return None
    settle()
    trip = min(probes.line_trip(20_000) for _ in range(3))
    return trip * 1e9 if trip > 0 else None


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def machine() -> str:
    """CPU model, core count, Python, NumPy and graphc versions, in one line."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
        f"NumPy {np.__version__}, graphc {gc.__version__}"
    )


def optional(module: str) -> str | None:
    """The version of an importable comparison framework, or None (it is then skipped)."""
    try:
        imported = __import__(module)
    except Exception:  # noqa: BLE001 - a broken install is as good as none here
        return None
    return str(getattr(imported, "__version__", "?"))
