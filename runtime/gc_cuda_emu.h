/* gc_cuda_emu.h: just enough of CUDA to run graphc's generated kernels on the CPU.
 *
 * A testing aid (target="cuda-emu"): the same .cu translation unit, compiled as C++ by the
 * host compiler with GC_CUDA_EMU defined, so the kernels and their launches can be checked
 * against the C backend on a machine without a GPU.  Not fast, and not meant to be.
 *
 *   - A launch runs the blocks of the grid one after another; the threads of a block run
 *     as one OpenMP team of blockDim threads, so __syncthreads() is a real barrier.
 *   - __shared__ variables are function statics: one copy, used by one block at a time.
 *   - threadIdx is per OpenMP thread; blockIdx, blockDim and gridDim hold for the launch.
 *   - Device memory is host memory; copies are memcpy; streams are a tag, and every
 *     call completes before it returns.
 *   - Errors a real device would report for bad launches (too many threads, an empty
 *     grid; here also a team OpenMP could not form) come back from cudaGetLastError.
 */
#ifndef GC_CUDA_EMU_H
#define GC_CUDA_EMU_H

#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Blocks of the generated kernels are smaller than on a GPU (a team of 256 threads on a
 * few cores spends its time in barriers); every kernel takes its block size from here. */
#ifndef GC_THREADS
#define GC_THREADS 32
#endif
/* Few blocks, so grid-stride loops go round more than once even on small tensors. */
#ifndef GC_MAX_BLOCKS
#define GC_MAX_BLOCKS 4
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

static thread_local dim3 threadIdx;
static dim3 blockIdx;
static dim3 blockDim;
static dim3 gridDim;

/* Every thread of the block's team waits here for the others. */
static inline void __syncthreads(void)
{
#pragma omp barrier
}

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchOutOfResources = 701,
};

enum cudaMemcpyKind {
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
};

typedef struct gc_emu_stream *cudaStream_t;

static cudaError_t gc_emu_error = cudaSuccess;

static inline const char *cudaGetErrorString(cudaError_t error)
{
    switch (error) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    default:
        return "too many resources requested for launch (OpenMP could not form a team of "
               "blockDim threads: check OMP_THREAD_LIMIT)";
    }
}

static inline cudaError_t cudaGetLastError(void)
{
    const cudaError_t error = gc_emu_error;
    gc_emu_error = cudaSuccess;
    return error;
}

static inline cudaError_t cudaGetDeviceCount(int *count)
{
    *count = 1;
    return cudaSuccess;
}

static inline cudaError_t cudaMalloc(void **p, size_t bytes)
{
    const size_t size = (bytes + 255) / 256 * 256 + 256;
    *p = aligned_alloc(256, size);
    if (*p == NULL)
        return cudaErrorMemoryAllocation;
    /* device memory starts with whatever was there: all-ones bits (NaN in floating point)
     * make a kernel that reads memory nothing wrote fail here as it would on a GPU */
    memset(*p, 0xff, size);
    return cudaSuccess;
}

static inline cudaError_t cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}

static inline cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = (size_t)1 << 34;
    *total_bytes = (size_t)1 << 34;
    return cudaSuccess;
}

static inline cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes,
                                          cudaMemcpyKind kind, cudaStream_t stream)
{
    (void)kind;
    (void)stream;
    if (bytes)
        memmove(dst, src, bytes);
    return cudaSuccess;
}

static inline cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream)
{
    (void)stream;
    memset(dst, value, bytes);
    return cudaSuccess;
}

static inline cudaError_t cudaStreamCreate(cudaStream_t *stream)
{
    *stream = NULL;
    return cudaSuccess;
}

static inline cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    (void)stream;
    return cudaSuccess;
}

static inline cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    (void)stream;
    return cudaSuccess;
}

/* The address of a __device__ variable (here an ordinary static: its own address). */
template <class T>
static inline cudaError_t cudaGetSymbolAddress(void **p, const T &symbol)
{
    *p = (void *)&symbol;
    return cudaSuccess;
}

/* Run body() as every thread of every block of a grid (see the top of this file). */
template <class Body>
static void gc_emu_launch(dim3 grid, dim3 block, Body body)
{
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || grid.x * grid.y * grid.z == 0) {
        gc_emu_error = cudaErrorInvalidConfiguration;
        return;
    }
    gridDim = grid;
    blockDim = block;
    omp_set_dynamic(0);
    for (unsigned bz = 0; bz < grid.z; ++bz) {
        for (unsigned by = 0; by < grid.y; ++by) {
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                blockIdx = dim3(bx, by, bz);
                int team = 0;
#pragma omp parallel num_threads(threads)
                {
                    const unsigned t = (unsigned)omp_get_thread_num();
#pragma omp single
                    team = omp_get_num_threads();
                    if (team == (int)threads) {
                        threadIdx = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
                        body();
                    }
                }
                if (team != (int)threads) {
                    gc_emu_error = cudaErrorLaunchOutOfResources;
                    return;
                }
            }
        }
    }
}

#define GC_LAUNCH(kernel, grid, block, shmem, stream, ...) \
    ((void)(shmem), (void)(stream), gc_emu_launch((grid), (block), [&]() { kernel(__VA_ARGS__); }))

#endif /* GC_CUDA_EMU_H */
