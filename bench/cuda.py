"""The CUDA backend on a GPU: training throughput and its GEMM, beside PyTorch on the same GPU.

1. Training samples/s of the 784-512-256-10 ReLU MLP (float32, SGD, softmax cross-entropy)
   at batch 128 and 1024 on random data (65536 rows), ``target="cuda"``: ``model.fit``
   copies the data set to the device once per call and runs whole epochs there; each timed
   call is ``epochs`` epochs (the copy included).  PyTorch trains the same network with the
   data already on the GPU, a ``randperm`` each epoch, the last partial batch included.
2. TFLOP/s of runtime/gc_cuda_gemm.cuh (C = A . B, float32, row-major, no epilogue) at the
   MLP's shapes and at square sizes, on random operands, timed with CUDA events, as a share
   of the card's FP32 peak and beside ``torch.matmul`` (cuBLAS, TF32 off); each product's
   relative error against a float64 product is printed too.

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

/* Milliseconds per C = A . B (M x K times K x N, row-major, A and B uploaded from the host,
 * C copied back after the timed runs), or -1 after a CUDA error. */
extern "C" double gemm_ms(int m, int n, int k, int reps, const float *ha, const float *hb,
                          float *hc)
{
    float *a = NULL, *b = NULL, *c = NULL;
    cudaEvent_t start, stop;
    float ms = -1.0f;
    const size_t sa = (size_t)m * k * 4, sb = (size_t)k * n * 4, sc = (size_t)m * n * 4;
    if (cudaMalloc((void **)&a, sa) || cudaMalloc((void **)&b, sb) || cudaMalloc((void **)&c, sc))
        return -1.0;
    cudaMemcpy(a, ha, sa, cudaMemcpyHostToDevice);
    cudaMemcpy(b, hb, sb, cudaMemcpyHostToDevice);
    cudaMemset(c, 0xff, sc); /* NaN: an element the kernel never writes shows up */
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    gc_cuda_gemm((cudaStream_t)0, 0, 0, m, n, k, a, k, b, n, 0, c, n, gc_no_epilogue());
    cudaEventRecord(start, 0);
    for (int r = 0; r < reps; ++r)
        gc_cuda_gemm((cudaStream_t)0, 0, 0, m, n, k, a, k, b, n, 0, c, n, gc_no_epilogue());
    cudaEventRecord(stop, 0);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&ms, start, stop);
    cudaMemcpy(hc, c, sc, cudaMemcpyDeviceToHost);
    const int failed = cudaGetLastError() != cudaSuccess;
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    return failed ? -1.0 : ms / reps;
}

/* The card's float32 FMA peak in GFLOP/s: SMs x FP32 lanes per SM x 2 flops x boost clock. */
extern "C" double fp32_peak_gflops(char *name, int size)
{
    cudaDeviceProp prop;
    int clock_khz = 0;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0) != cudaSuccess)
        return -1.0;
    snprintf(name, (size_t)size, "%s (sm_%d%d, %d SMs, %.2f GHz)", prop.name, prop.major,
             prop.minor, prop.multiProcessorCount, clock_khz / 1e6);
    const int lanes = (prop.major == 7 || (prop.major == 8 && prop.minor == 0)) ? 64 : 128;
    return (double)prop.multiProcessorCount * lanes * 2.0 * clock_khz / 1e6;
}
"""


def gemm_timer():
    """(gemm(a, b, reps) -> (ms, c), peak GFLOP/s, card) from the runtime's GEMM, built by nvcc."""
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
    ffi.cdef(
        "double gemm_ms(int m, int n, int k, int reps, const float *ha, const float *hb, "
        "float *hc); double fp32_peak_gflops(char *name, int size);"
    )
    library = ffi.dlopen(str(lib))

    def gemm(a: np.ndarray, b: np.ndarray, reps: int) -> tuple[float, np.ndarray]:
        (m, k), n = a.shape, b.shape[1]
        c = np.empty((m, n), dtype=np.float32)
        pointer = lambda x: ffi.cast("float *", x.ctypes.data)  # noqa: E731
        ms = library.gemm_ms(m, n, k, reps, pointer(a), pointer(b), pointer(c))
        if ms < 0:
            raise RuntimeError(f"the GEMM timer failed at {m} x {n} x {k}")
        return ms, c

    name = ffi.new("char[]", 256)
    peak = library.fp32_peak_gflops(name, 256)
    return gemm, peak, ffi.string(name).decode()


def torch_gemm_ms(a: np.ndarray, b: np.ndarray, reps: int) -> float:
    """Milliseconds per torch.matmul of the same operands on the GPU (full float32, no TF32)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    torch.matmul(ta, tb)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        torch.matmul(ta, tb)
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / reps


def relative_error(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """‖c − a·b‖ / ‖a·b‖ with the product in float64 (on the GPU through torch when present)."""
    if optional("torch") is not None:
        import torch

        want = (torch.from_numpy(a).cuda().double() @ torch.from_numpy(b).cuda().double()).cpu()
        want = want.numpy()
    else:
        want = a.astype(np.float64) @ b.astype(np.float64)
    return float(np.linalg.norm(c - want) / np.linalg.norm(want))


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
        line = f"  batch {batch:5d}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items())
        if has_torch:
            line += f" ({rates['graphc cuda'] / rates['pytorch']:.2f}x)"
        print(line)
    ours, peak, card = gemm_timer()
    print(f"GEMM C = A . B float32 (M x K . K x N) on {card}, FP32 peak {peak / 1e3:.1f} TFLOP/s")
    shapes = [(128, 512, 784), (1024, 512, 784), (1024, 256, 512)]
    shapes += [(s, s, s) for s in ((1024, 4096) if args.quick else (1024, 2048, 4096, 8192))]
    for m, n, k in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        reps = max(3, min(200, int(2e11 / (2 * m * n * k))))
        ms, c = ours(a, b, reps)
        gflops = 2 * m * n * k / ms / 1e6
        line = f"  {m:5d} x {n:5d} x {k:5d}: graphc {gflops / 1e3:6.2f} ({100 * gflops / peak:4.1f}% of peak"
        line += f", rel. error {relative_error(c, a, b):.1e})"
        if has_torch:
            line += f", torch.matmul {2 * m * n * k / torch_gemm_ms(a, b, reps) / 1e9:6.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
