/* Test harness for runtime/gc_gemm.h, built once per GC_REAL (see tests/test_gemm.py).
 * h_gemm runs gc_gemm from inside a parallel region of nthreads threads (or from
 * plain serial code when nthreads == 0); its epilogue counts how often each C
 * element is handed over and snapshots the tile, so the test can check that every
 * element is covered exactly once and was final when the epilogue saw it.
 * h_gemm_scaled runs gc_gemm_scaled (C += alpha * op(A) op(B)) the same way, and
 * h_gemm_gather gc_gemm_gather (A's rows gathered by an index), and h_gemm_rows
 * gc_gemm_rows (each thread its band of rows), recording every thread's band. */
#ifndef GC_REAL
#define GC_REAL float
#endif
#include "gc_gemm.h"

typedef struct {
    int *counts;          /* M x N, +1 per epilogue covering the element */
    GC_REAL *snapshot;    /* M x N, C as the epilogue saw it */
    const GC_REAL *c;
    int ldc;
    int n;
} h_ctx;

int h_real_size(void);
int h_gemm_mr(void);
int h_openmp(void);
void h_gemm(int trans_a, int trans_b, int m, int n, int k, const void *a, int lda, const void *b,
            int ldb, int accumulate, void *c, int ldc, int nthreads, int *counts,
            void *snapshot);
void h_gemm_scaled(int trans_a, int trans_b, int m, int n, int k, double alpha, const void *a,
                   int lda, const void *b, int ldb, void *c, int ldc, int nthreads);
void h_gemm_gather(int trans_a, int trans_b, int m, int n, int k, double alpha, const void *a,
                   const int64_t *rows, int lda, const void *b, int ldb, int accumulate, void *c,
                   int ldc, int nthreads);
void h_gemm_rows(int trans_a, int trans_b, int m, int n, int k, const void *a, int lda,
                 const void *b, int ldb, int accumulate, void *c, int ldc, int nthreads,
                 int *bands);

static void h_epilogue(void *p, int r0, int nr, int c0, int nc)
{
    const h_ctx *ctx = (const h_ctx *)p;
    for (int i = r0; i < r0 + nr; i++) {
        for (int j = c0; j < c0 + nc; j++) {
#ifdef _OPENMP
#pragma omp atomic
#endif
            ctx->counts[i * ctx->n + j] += 1;
            ctx->snapshot[i * ctx->n + j] = ctx->c[(size_t)i * ctx->ldc + j];
        }
    }
}

int h_real_size(void)
{
    return (int)sizeof(GC_REAL);
}

int h_gemm_mr(void)
{
    return GC_GEMM_MR;
}

int h_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void h_gemm(int trans_a, int trans_b, int m, int n, int k, const void *a, int lda, const void *b,
            int ldb, int accumulate, void *c, int ldc, int nthreads, int *counts,
            void *snapshot)
{
    h_ctx ctx = {counts, (GC_REAL *)snapshot, (const GC_REAL *)c, ldc, n};
    gc_gemm_epilogue epilogue = counts ? h_epilogue : NULL;
    if (nthreads <= 0) {
        gc_gemm(trans_a, trans_b, m, n, k, (const GC_REAL *)a, lda, (const GC_REAL *)b, ldb,
                accumulate, (GC_REAL *)c, ldc, epilogue, &ctx);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        gc_gemm(trans_a, trans_b, m, n, k, (const GC_REAL *)a, lda, (const GC_REAL *)b, ldb,
                accumulate, (GC_REAL *)c, ldc, epilogue, &ctx);
    }
}

void h_gemm_scaled(int trans_a, int trans_b, int m, int n, int k, double alpha, const void *a,
                   int lda, const void *b, int ldb, void *c, int ldc, int nthreads)
{
    if (nthreads <= 0) {
        gc_gemm_scaled(trans_a, trans_b, m, n, k, (GC_REAL)alpha, (const GC_REAL *)a, lda,
                       (const GC_REAL *)b, ldb, (GC_REAL *)c, ldc, 1);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        gc_gemm_scaled(trans_a, trans_b, m, n, k, (GC_REAL)alpha, (const GC_REAL *)a, lda,
                       (const GC_REAL *)b, ldb, (GC_REAL *)c, ldc, 1);
    }
}

void h_gemm_gather(int trans_a, int trans_b, int m, int n, int k, double alpha, const void *a,
                   const int64_t *rows, int lda, const void *b, int ldb, int accumulate, void *c,
                   int ldc, int nthreads)
{
    if (nthreads <= 0) {
        gc_gemm_gather(trans_a, trans_b, m, n, k, (GC_REAL)alpha, (const GC_REAL *)a, rows, lda,
                       (const GC_REAL *)b, ldb, accumulate, (GC_REAL *)c, ldc, NULL, NULL, 1);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        gc_gemm_gather(trans_a, trans_b, m, n, k, (GC_REAL)alpha, (const GC_REAL *)a, rows, lda,
                       (const GC_REAL *)b, ldb, accumulate, (GC_REAL *)c, ldc, NULL, NULL, 1);
    }
}

void h_gemm_rows(int trans_a, int trans_b, int m, int n, int k, const void *a, int lda,
                 const void *b, int ldb, int accumulate, void *c, int ldc, int nthreads,
                 int *bands)
{
    if (nthreads <= 0) {
        gc_gemm_band(m, &bands[0], &bands[1]);
        gc_gemm_rows(trans_a, trans_b, m, n, k, (const GC_REAL *)a, lda, (const GC_REAL *)b, ldb,
                     accumulate, (GC_REAL *)c, ldc);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        int me = 0;
#ifdef _OPENMP
        me = omp_get_thread_num();
#endif
        gc_gemm_band(m, &bands[2 * me], &bands[2 * me + 1]);
        gc_gemm_rows(trans_a, trans_b, m, n, k, (const GC_REAL *)a, lda, (const GC_REAL *)b, ldb,
                     accumulate, (GC_REAL *)c, ldc);
    }
}
