/* gc_cuda.h: the small hand-written runtime every generated CUDA model includes.
 *
 * Compiled by nvcc for the GPU, or (GC_CUDA_EMU defined) as C++ by the host compiler
 * against gc_cuda_emu.h, which runs the same kernels on the CPU.  Kernels are launched
 * through GC_LAUNCH, never with <<<>>> directly, so both stay possible.
 * Define GC_REAL (float or double) before including it. */
#ifndef GC_CUDA_H
#define GC_CUDA_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef GC_CUDA_EMU
#include "gc_cuda_emu.h"
#else
#include <cuda_runtime.h>
#define GC_LAUNCH(kernel, grid, block, shmem, stream, ...) \
    kernel<<<(grid), (block), (shmem), (stream)>>>(__VA_ARGS__)
#endif

/* The generated code is C99 in spirit; in C++ `restrict` is spelled __restrict__. */
#define restrict __restrict__
#define GC_HOST_DEVICE __host__ __device__

#include "gc_random.h"
#include "gc_shuffle.h"

/* Threads per block of the generated kernels (a power of two: block sums halve it). */
#ifndef GC_THREADS
#define GC_THREADS 256
#endif
/* Blocks of a grid-stride kernel at most: more work than threads loops inside. */
#ifndef GC_MAX_BLOCKS
#define GC_MAX_BLOCKS 4096
#endif

/* Every index in [0, count), shared out across all the threads of the grid. */
#define GC_FOR_EACH(index, count)                                                \
    for (long index = (long)blockIdx.x * blockDim.x + threadIdx.x; index < (count); \
         index += (long)blockDim.x * gridDim.x)

/* Blocks for a grid-stride loop over `count` elements (at least one). */
static inline unsigned gc_blocks(long count)
{
    const long blocks = (count + GC_THREADS - 1) / GC_THREADS;
    return (unsigned)(blocks < 1 ? 1 : blocks > GC_MAX_BLOCKS ? GC_MAX_BLOCKS : blocks);
}

/* Blocks for a loop giving each block one item of `count` (at least one). */
static inline unsigned gc_block_count(long count)
{
    return (unsigned)(count < 1 ? 1 : count > GC_MAX_BLOCKS ? GC_MAX_BLOCKS : count);
}

/* The sum of every thread's `value` over one block, in a fixed tree order (so the result
 * does not depend on timing); `scratch` is a __shared__ array of blockDim.x doubles.
 * Every thread of the block must call it; every thread gets the sum. */
static inline __device__ double gc_block_sum(double value, double *scratch)
{
    const unsigned t = threadIdx.x;
    scratch[t] = value;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half)
            scratch[t] += scratch[t + half];
        __syncthreads();
    }
    const double sum = scratch[0];
    __syncthreads();
    return sum;
}

/* dst[r][·] = src[rows[r]][·] for r < n: a batch gathered from a resident data set. */
template <class T>
static __global__ void gc_gather_rows_kernel(T *dst, const T *src, const int64_t *rows, long n,
                                             long size)
{
    GC_FOR_EACH(i, n * size)
    {
        dst[i] = src[rows[i / size] * size + i % size];
    }
}

template <class T>
static inline cudaError_t gc_gather_rows(cudaStream_t stream, T *dst, const T *src, const int64_t *rows,
                                  long n, long size)
{
    GC_LAUNCH(gc_gather_rows_kernel<T>, gc_blocks(n * size), GC_THREADS, 0, stream, dst, src, rows,
              n, size);
    return cudaGetLastError();
}

/* Each of `planes` planes (h x w) copied into a zeroed plane (hp x wp) at row `top`,
 * column `left`: the zero-padded copies the window kernels read. */
static __global__ void gc_pad_planes_kernel(GC_REAL *dst, const GC_REAL *src, long planes, long h,
                                            long w, long hp, long wp, long top, long left)
{
    GC_FOR_EACH(i, planes * hp * wp)
    {
        const long x = i % wp - left;
        const long y = i / wp % hp - top;
        const long plane = i / (wp * hp);
        const int inside = y >= 0 && y < h && x >= 0 && x < w;
        dst[i] = inside ? src[(plane * h + y) * w + x] : (GC_REAL)0;
    }
}

static inline cudaError_t gc_pad_planes(cudaStream_t stream, GC_REAL *dst, const GC_REAL *src,
                                 long planes, long h, long w, long hp, long wp, long top, long left)
{
    GC_LAUNCH(gc_pad_planes_kernel, gc_blocks(planes * hp * wp), GC_THREADS, 0, stream, dst, src,
              planes, h, w, hp, wp, top, left);
    return cudaGetLastError();
}

/* totals[0] += loss[0] * n; totals[1] += loss[1]: an epoch's sums, kept on the device. */
static __global__ void gc_accumulate_kernel(double *totals, const double *loss, int n)
{
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        totals[0] += loss[0] * n;
        totals[1] += loss[1];
    }
}

static inline cudaError_t gc_accumulate(cudaStream_t stream, double *totals, const double *loss, int n)
{
    GC_LAUNCH(gc_accumulate_kernel, 1, 1, 0, stream, totals, loss, n);
    return cudaGetLastError();
}

/* Record the first failure of a model as "what: CUDA's message"; returns 1. */
static inline int gc_fail(char *error, size_t size, const char *what, cudaError_t status)
{
    if (!error[0])
        snprintf(error, size, "%s: %s", what, cudaGetErrorString(status));
    return 1;
}

/* In a function of a model `m` returning int: run a CUDA call; on failure record it in
 * m->error and return 1. */
#define GC_CHECK(m, what, call)                                              \
    do {                                                                     \
        const cudaError_t gc_status = (call);                                \
        if (gc_status != cudaSuccess)                                        \
            return gc_fail((m)->error, sizeof (m)->error, (what), gc_status); \
    } while (0)

/* The same for a kernel's launch wrapper; with m->sync set (GRAPHC_CUDA_SYNC) it also waits
 * for the kernel, so a fault while it runs is reported under its name. */
#define GC_KERNEL(m, what, launch)                                           \
    do {                                                                     \
        cudaError_t gc_status = (launch);                                    \
        if (gc_status == cudaSuccess && (m)->sync)                           \
            gc_status = cudaStreamSynchronize((m)->stream);                  \
        if (gc_status != cudaSuccess)                                        \
            return gc_fail((m)->error, sizeof (m)->error, (what), gc_status); \
    } while (0)

#include "gc_cuda_gemm.cuh"

#endif /* GC_CUDA_H */
