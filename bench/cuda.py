"""The CUDA backend on a GPU: training throughput and its GEMM, beside PyTorch on the same GPU.

1. Training samples/s of the 784-512-256-10 ReLU MLP (float32, SGD, softmax cross-entropy)
   at batch 128 and 1024 on random data (65536 rows), ``target="cuda"``: ``model.fit``
   copies the data set to the device once per call and runs whole epochs there; each timed
   call is ``epochs`` epochs (the copy included).  PyTorch trains the same network with the
   data already on the GPU, a ``randperm`` each epoch, the last partial batch included.
2. TFLOP/s of runtime/gc_cuda_gemm.cuh (C = A . B, float32, row-major, no epilogue) at the
   MLP's shapes and at square sizes, timed with CUDA events, beside ``torch.matmul``
   (cuBLAS, TF32 off).

Without a GPU (or nvcc) it says why and exits 0: nothing here can be measured on a CPU.

Usage: python bench/cuda.py [--quick] [--repeats R]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import gc, median_rates, optional

from graphc.build import cuda_arch_flags, cuda_device_error, find_nvcc
from graphc.codegen.c import RUNTIME_DIR
from graphc.errors import CompilerNotFoundError

SIZES = (784, 512, 256, 10)

GEMM_CU = r"""
#define GC_REAL float
#include "gc_cuda.h"

/* Milliseconds per C = A . B (M x K times K x N, row-major), or -1 after a CUDA error. */
extern "C" double gemm_ms(int m, int n, int k, int reps)
{
    float *a = NULL, *b = NULL, *c = NULL;
    cudaEvent_t start, stop;
    float ms = -1.0f;
    if (cudaMalloc((void **)&a, (size_t)m * k * 4) || cudaMalloc((void **)&b, (size_t)k * n * 4) ||
        cudaMalloc((void **)&c, (size_t)m * n * 4))
        return -1.0;
    cudaMemset(a, 0, (size_t)m * k * 4);
    cudaMemset(b, 0, (size_t)k * n * 4);
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    gc_cuda_gemm((cudaStream_t)0, 0, 0, m, n, k, a, k, b, n, 0, c, n, gc_no_epilogue());
    cudaEventRecord(start, 0);
    for (int r = 0; r < reps; ++r)
        gc_cuda_gemm((cudaStream_t)0, 0, 0, m, n, k, a, k, b, n, 0, c, n, gc_no_epilogue());
    cudaEventRecord(stop, 0);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&ms, start, stop);
    const int failed = cudaGetLastError() != cudaSuccess;
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    return failed ? -1.0 : ms / reps;
}
"""


def gemm_timer():
    """gemm_ms(m, n, k, reps) from the runtime's GEMM, built with nvcc for this GPU."""
    import cffi

    nvcc = find_nvcc()
    tmp = Path(tempfile.mkdtemp(prefix="graphc-bench-"))
    src, lib = tmp / "gemm.cu", tmp / "gemm.so"
    src.write_text(GEMM_CU)
    command = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC"]
    command += [*cuda_arch_flags(nvcc), "-I", RUNTIME_DIR, "-o", str(lib), str(src)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed on the GEMM timer:\n{result.stderr}")
    ffi = cffi.FFI()
    ffi.cdef("double gemm_ms(int m, int n, int k, int reps);")
    return ffi.dlopen(str(lib)).gemm_ms


def torch_gemm_ms(m: int, n: int, k: int, reps: int) -> float:
    """Milliseconds per torch.matmul of the same shapes on the GPU (full float32)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.zeros((m, k), device="cuda")
    b = torch.zeros((k, n), device="cuda")
    torch.matmul(a, b)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        torch.matmul(a, b)
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / reps


def graphc_trainer(X: np.ndarray, y: np.ndarray, batch: int, epochs: int):
    """A function training the MLP compiled for CUDA for ``epochs`` epochs."""
    g = gc.Graph("bench_cuda_mlp")
    x = g.input("x", (SIZES[0],))
    labels = g.input("y", (), dtype="int32")
    h = x
    for k, units in enumerate(SIZES[1:-1]):
        h = gc.dense(h, units, activation="relu", name=f"hidden{k + 1}")
    logits = gc.dense(h, SIZES[-1], name="out")
    g.minimize(gc.softmax_cross_entropy(logits, labels))
    model = gc.compile(g, target="cuda", batch_size=batch, optimizer=gc.SGD(lr=0.01), seed=0)

    def train() -> None:
        model.fit(X, y, epochs=epochs, verbose=0)

    return train


def torch_trainer(X: np.ndarray, y: np.ndarray, batch: int, epochs: int):
    """The same network, loss and optimizer in PyTorch, data resident on the GPU."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    layers: list = []
    for a, b in zip(SIZES[:-2], SIZES[1:-1]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(SIZES[-2], SIZES[-1])).cuda()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    data = torch.from_numpy(X).cuda()
    target = torch.from_numpy(y.astype(np.int64)).cuda()

    def train() -> None:
        for _ in range(epochs):
            order = torch.randperm(len(data), device="cuda")
            for start in range(0, len(data), batch):
                rows = order[start : start + batch]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(net(data[rows]), target[rows]).backward()
                optimizer.step()
        torch.cuda.synchronize()

    return train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="less data, fewer repeats")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    reason = cuda_device_error()
    if reason is None:
        try:
            find_nvcc()
        except CompilerNotFoundError as error:
            reason = str(error)
    if reason is not None:
        print(f"skipped: no GPU to measure ({reason})")
        return 0
    has_torch = optional("torch") is not None
    repeats = 2 if args.quick else args.repeats
    rows = 8192 if args.quick else 65536
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], size=rows).astype(np.int32)
    epochs = 1 if args.quick else 3
    print(f"MLP {'-'.join(map(str, SIZES))} relu SGD float32, {rows} rows, samples/s (median)")
    for batch in (128, 1024):
        trainers = {"graphc cuda": graphc_trainer(X, y, batch, epochs)}
        if has_torch:
            trainers["pytorch"] = torch_trainer(X, y, batch, epochs)
        rates = median_rates(trainers, rows * epochs, repeats)
        print(f"  batch {batch:5d}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
    print("GEMM C = A . B float32 (M x K . K x N), TFLOP/s")
    ours = gemm_timer()
    shapes = [(128, 512, 784), (1024, 512, 784), (1024, 256, 512)]
    shapes += [(s, s, s) for s in ((1024, 4096) if args.quick else (1024, 2048, 4096, 8192))]
    for m, n, k in shapes:
        reps = max(3, min(200, int(2e11 / (2 * m * n * k))))
        ms = ours(m, n, k, reps)
        line = f"  {m:5d} x {n:5d} x {k:5d}: graphc {2 * m * n * k / ms / 1e9:6.2f}"
        if has_torch:
            line += f", torch.matmul {2 * m * n * k / torch_gemm_ms(m, n, k, reps) / 1e9:6.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
