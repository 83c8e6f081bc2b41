/* Test harness for runtime/gc_cuda_gemm.cuh (see tests/test_cuda.py), built with the CPU
 * emulation once per GC_REAL and tile shape (GC_GEMM_TILE).  h_gemm runs gc_cuda_gemm with
 * an epilogue that counts how often each element of C is handed over and snapshots it, so
 * the test can check every element is covered once and was final when its epilogue ran.
 * h_gemm_scaled runs gc_cuda_gemm_scaled (C += alpha * op(A) op(B)). */
#include "gc_cuda.h"

struct h_epilogue {
    int *counts;        /* M x N, +1 per epilogue call on the element */
    GC_REAL *snapshot;  /* M x N, C as the epilogue saw it */
    const GC_REAL *c;
    int ldc;
    int n;
    __device__ void operator()(long r, long col) const
    {
        counts[r * n + col] += 1;
        snapshot[r * n + col] = c[r * ldc + col];
    }
};

extern "C" int h_real_size(void) { return (int)sizeof(GC_REAL); }

extern "C" int h_gemm(int trans_a, int trans_b, int m, int n, int k, const void *a, int lda,
                      const void *b, int ldb, int accumulate, void *c, int ldc, int *counts,
                      void *snapshot)
{
    const h_epilogue epilogue = {counts, (GC_REAL *)snapshot, (const GC_REAL *)c, ldc, n};
    return (int)gc_cuda_gemm((cudaStream_t)0, trans_a, trans_b, m, n, k, (const GC_REAL *)a, lda,
                             (const GC_REAL *)b, ldb, accumulate, (GC_REAL *)c, ldc, epilogue);
}

extern "C" int h_gemm_scaled(int trans_a, int trans_b, int m, int n, int k, double alpha,
                             const void *a, int lda, const void *b, int ldb, void *c, int ldc)
{
    return (int)gc_cuda_gemm_scaled((cudaStream_t)0, trans_a, trans_b, m, n, k, (GC_REAL)alpha,
                                    (const GC_REAL *)a, lda, (const GC_REAL *)b, ldb,
                                    (GC_REAL *)c, ldc);
}
