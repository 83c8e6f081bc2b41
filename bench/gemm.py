"""Benchmark runtime/gc_gemm.h against numpy's matmul (float32).

Builds a small timing library around the header (gcc -O3 -march=native -fopenmp),
runs gc_gemm repeatedly inside one `omp parallel` region of 2 threads (the way
generated training steps call it), and prints GFLOP/s beside np.matmul on the same
shapes.  Each figure is the best of several short runs, each started once the other
side's threads have stopped spinning (bench/common.settle); other processes on the two
cores skew both columns, so the load average is printed before and after.
Usage: python bench/gemm.py [--threads N] [--seconds S] [--repeat R]
"""

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import cffi
import numpy as np
from common import settle

ROOT = Path(__file__).resolve().parent.parent

TIMER_C = r"""
#define GC_REAL float
#include "gc_gemm.h"

double bench_gemm(int ta, int tb, int m, int n, int k, const float *a, int lda,
                  const float *b, int ldb, float *c, int ldc, int reps, int nthreads);

double bench_gemm(int ta, int tb, int m, int n, int k, const float *a, int lda,
                  const float *b, int ldb, float *c, int ldc, int reps, int nthreads)
{
    double t0 = omp_get_wtime();
#pragma omp parallel num_threads(nthreads)
    for (int r = 0; r < reps; r++)
        gc_gemm(ta, tb, m, n, k, a, lda, b, ldb, 0, c, ldc, NULL, NULL);
    return omp_get_wtime() - t0;
}
"""

CDEF = """
double bench_gemm(int ta, int tb, int m, int n, int k, const float *a, int lda,
                  const float *b, int ldb, float *c, int ldc, int reps, int nthreads);
"""

# (label, trans_a, trans_b, M, N, K)
SHAPES = [
    ("fwd x.W 784->512", 0, 0, 128, 512, 784),
    ("fwd x.W 512->256", 0, 0, 128, 256, 512),
    ("fwd x.W 256->128", 0, 0, 128, 128, 256),
    ("fwd x.W 128->64", 0, 0, 128, 64, 128),
    ("fwd x.W 64->10", 0, 0, 128, 10, 64),
    ("bwd d.W^T 512->784", 0, 1, 128, 784, 512),
    ("bwd d.W^T 256->512", 0, 1, 128, 512, 256),
    ("bwd d.W^T 10->64", 0, 1, 128, 64, 10),
    ("grad x^T.d 784x512", 1, 0, 784, 512, 128),
    ("grad x^T.d 512x256", 1, 0, 512, 256, 128),
    ("grad x^T.d 64x10", 1, 0, 64, 10, 128),
    ("square 256^3", 0, 0, 256, 256, 256),
    ("square 1024^3", 0, 0, 1024, 1024, 1024),
]


def build(tmp: Path):
    """Compile the timing library and load it with cffi (ABI mode)."""
    src = tmp / "bench_gemm.c"
    src.write_text(TIMER_C)
    lib_path = tmp / "bench_gemm.so"
    cmd = ["gcc", "-std=gnu11", "-O3", "-march=native", "-fopenmp", "-Wall", "-Wextra"]
    cmd += ["-Werror", "-fPIC", "-shared", f"-I{ROOT / 'runtime'}", str(src), "-o", str(lib_path)]
    subprocess.run(cmd, check=True)
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    return ffi, ffi.dlopen(str(lib_path))


def calibrate(run_once, seconds: float) -> int:
    """Repetitions of run_once(reps) -> seconds that take about `seconds` together."""
    reps = 1
    while True:
        t = run_once(reps)
        if t > seconds / 4:
            return max(1, int(reps * seconds / t))
        reps *= 4


def best_times(runners, seconds: float, repeat: int) -> list[float]:
    """Best seconds per call for each runner; the runners alternate run by run, so
    bursts of load from other processes hit them alike."""
    reps = [calibrate(run, seconds) for run in runners]
    best = [float("inf")] * len(runners)
    for _ in range(repeat):
        for index, run in enumerate(runners):
            settle()  # OpenBLAS's threads spin ~0.1 s after a product and take a core
            best[index] = min(best[index], run(reps[index]) / reps[index])
    return best


def gc_runner(ffi, lib, ta, tb, a, b, c, m, n, k, threads):
    """run(reps) -> seconds for `reps` gc_gemm calls inside one parallel region."""
    fa = ffi.cast("const float *", ffi.from_buffer(a))
    fb = ffi.cast("const float *", ffi.from_buffer(b))
    fc = ffi.cast("float *", ffi.from_buffer(c))
    lda, ldb, ldc = a.shape[1], b.shape[1], c.shape[1]

    def run(reps: int) -> float:
        return lib.bench_gemm(ta, tb, m, n, k, fa, lda, fb, ldb, fc, ldc, reps, threads)

    return run


def numpy_runner(op_a, op_b, out):
    """run(reps) -> seconds for `reps` np.matmul calls (with out=, so no allocation)."""

    def run(reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            np.matmul(op_a, op_b, out=out)
        return time.perf_counter() - t0

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.05, help="length of one timed run")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs; the best counts")
    args = parser.parse_args()
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}  "
          f"gc threads={args.threads}  numpy {np.__version__}  "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ffi, lib = build(Path(tmp))
        header = (
            f"{'shape':22} {'op':5} {'M':>5} {'N':>5} {'K':>5} {'gc GF/s':>8} {'np GF/s':>8} ratio"
        )
        print(header)
        total_gc = total_np = 0.0
        for label, ta, tb, m, n, k in SHAPES:
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
            c = np.zeros((m, n), dtype=np.float32)
            op_a, op_b = (a.T if ta else a), (b.T if tb else b)
            runners = [
                gc_runner(ffi, lib, ta, tb, a, b, c, m, n, k, args.threads),
                numpy_runner(op_a, op_b, np.empty_like(c)),
            ]
            t_gc, t_np = best_times(runners, args.seconds, args.repeat)
            assert np.allclose(c, op_a @ op_b, rtol=1e-4, atol=1e-3 * np.sqrt(k)), label
            flops = 2.0 * m * n * k
            if label.startswith(("fwd", "bwd", "grad")):
                total_gc += t_gc
                total_np += t_np
            op = ("T" if ta else "N") + ("T" if tb else "N")
            print(f"{label:22} {op:5} {m:5} {n:5} {k:5} {flops / t_gc / 1e9:8.1f} "
                  f"{flops / t_np / 1e9:8.1f} {t_np / t_gc:5.2f}")  # fmt: skip
        print(f"MLP shapes total time: gc {total_gc * 1e6:.0f} us, numpy {total_np * 1e6:.0f} us "
              f"(ratio {total_np / total_gc:.2f}); load average {os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
