/* gc_cuda_gemm.cuh: graphc's own tiled GEMM for CUDA, with an epilogue fused in-kernel.
 *
 *     C[M x N] = alpha * op(A)[M x K] . op(B)[K x N]   (+ C when accumulate)
 *     op(A)[i][k] = trans_a ? A[k * lda + i] : A[i * lda + k]   (the same for B)
 *
 * the contract of runtime/gc_gemm.h's gc_gemm (alpha = 1: gc_cuda_gemm) and gc_gemm_scaled
 * (accumulate, alpha = -lr, a fused SGD step: gc_cuda_gemm_scaled), with the epilogue a
 * functor instead of a callback: after C[r][c] is stored, the thread that computed it
 * calls epilogue(r, c).
 *
 * Structure: each block computes a BM x BN tile of C with 256 threads; K is walked in
 * steps of BK, the BM x BK slice of op(A) and the BK x BN slice of op(B) are staged in
 * shared memory (transposes are taken while loading, so the inner loop never branches on
 * them), and each thread accumulates a TM x TN register block (rows ty + i * BM/TM,
 * columns tx + j * BN/TN: neighbouring threads read neighbouring shared-memory words and
 * store neighbouring elements of C).  The tile shape is chosen from M and N so that a
 * small product still spreads over many blocks.
 *
 * Determinism: C[i][j] is the FMA chain over k = 0, 1, ..., K-1 added to C (when
 * accumulating); no atomics, no split K, so every run gives the same bits.
 */
#ifndef GC_CUDA_GEMM_CUH
#define GC_CUDA_GEMM_CUH

#define GC_GEMM_THREADS 256

/* The epilogue of a product that has none. */
struct gc_no_epilogue {
    __device__ void operator()(long r, long c) const
    {
        (void)r;
        (void)c;
    }
};

template <int BM, int BN, int BK, int TM, int TN, class Epilogue>
static __global__ void __launch_bounds__(GC_GEMM_THREADS)
    gc_gemm_kernel(int trans_a, int trans_b, int M, int N, int K, const GC_REAL *A, int lda,
                   const GC_REAL *B, int ldb, int accumulate, GC_REAL alpha, GC_REAL *C, int ldc,
                   Epilogue epilogue)
{
    /* one column of padding keeps the transposing stores free of bank conflicts */
    __shared__ GC_REAL As[BK][BM + 1];
    __shared__ GC_REAL Bs[BK][BN + 1];
    const int tid = (int)threadIdx.x;
    const int tx = tid % (BN / TN);
    const int ty = tid / (BN / TN);
    const long row0 = (long)blockIdx.y * BM;
    const long col0 = (long)blockIdx.x * BN;
    GC_REAL acc[TM][TN];
    for (int i = 0; i < TM; ++i)
        for (int j = 0; j < TN; ++j)
            acc[i][j] = 0;
    for (int k0 = 0; k0 < K; k0 += BK) {
        for (int e = tid; e < BM * BK; e += GC_GEMM_THREADS) {
            /* walk the slice along A's contiguous axis, so loads coalesce */
            const int i = trans_a ? e % BM : e / BK;
            const int k = trans_a ? e / BM : e % BK;
            const long gi = row0 + i;
            const int gk = k0 + k;
            GC_REAL v = 0;
            if (gi < M && gk < K)
                v = trans_a ? A[(long)gk * lda + gi] : A[gi * lda + gk];
            As[k][i] = v;
        }
        for (int e = tid; e < BK * BN; e += GC_GEMM_THREADS) {
            const int j = trans_b ? e / BK : e % BN;
            const int k = trans_b ? e % BK : e / BN;
            const long gj = col0 + j;
            const int gk = k0 + k;
            GC_REAL v = 0;
            if (gj < N && gk < K)
                v = trans_b ? B[gj * ldb + gk] : B[(long)gk * ldb + gj];
            Bs[k][j] = v;
        }
        __syncthreads();
        for (int k = 0; k < BK; ++k) {
            GC_REAL a[TM];
            GC_REAL b[TN];
            for (int i = 0; i < TM; ++i)
                a[i] = As[k][ty + i * (BM / TM)];
            for (int j = 0; j < TN; ++j)
                b[j] = Bs[k][tx + j * (BN / TN)];
            for (int i = 0; i < TM; ++i)
                for (int j = 0; j < TN; ++j)
                    acc[i][j] = fma(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    for (int i = 0; i < TM; ++i) {
        const long r = row0 + ty + i * (BM / TM);
        for (int j = 0; j < TN; ++j) {
            const long c = col0 + tx + j * (BN / TN);
            if (r < M && c < N) {
                GC_REAL *const out = C + r * ldc + c;
                *out = accumulate ? *out + alpha * acc[i][j] : alpha * acc[i][j];
                epilogue(r, c);
            }
        }
    }
}

template <int BM, int BN, int BK, int TM, int TN, class Epilogue>
static cudaError_t gc_gemm_launch(cudaStream_t stream, int trans_a, int trans_b, int M, int N,
                                  int K, const GC_REAL *A, int lda, const GC_REAL *B, int ldb,
                                  int accumulate, GC_REAL alpha, GC_REAL *C, int ldc,
                                  const Epilogue &epilogue)
{
    static_assert((BM / TM) * (BN / TN) == GC_GEMM_THREADS, "one thread per register block");
    void (*kernel)(int, int, int, int, int, const GC_REAL *, int, const GC_REAL *, int, int,
                   GC_REAL, GC_REAL *, int, Epilogue) = gc_gemm_kernel<BM, BN, BK, TM, TN, Epilogue>;
    const dim3 grid((unsigned)((N + BN - 1) / BN), (unsigned)((M + BM - 1) / BM));
    GC_LAUNCH(kernel, grid, GC_GEMM_THREADS, 0, stream, trans_a, trans_b, M, N, K, A, lda, B, ldb,
              accumulate, alpha, C, ldc, epilogue);
    return cudaGetLastError();
}

/* Tile shapes, largest first: 128 x 128 (8 x 8 per thread), 64 x 64 (4 x 4), 32 x 32 (2 x 2).
 * GC_GEMM_TILE fixes one (0, 1, 2) for tests; otherwise the largest whose grid still has
 * GC_GEMM_MIN_BLOCKS blocks (or the smallest). */
#ifndef GC_GEMM_MIN_BLOCKS
#define GC_GEMM_MIN_BLOCKS 96
#endif

static inline int gc_gemm_tile(int M, int N)
{
#ifdef GC_GEMM_TILE
    (void)M;
    (void)N;
    return GC_GEMM_TILE;
#else
    const long big = (long)((M + 127) / 128) * ((N + 127) / 128);
    const long mid = (long)((M + 63) / 64) * ((N + 63) / 64);
    return big >= GC_GEMM_MIN_BLOCKS ? 0 : mid >= GC_GEMM_MIN_BLOCKS ? 1 : 2;
#endif
}

template <class Epilogue>
static cudaError_t gc_cuda_gemm_alpha(cudaStream_t stream, int trans_a, int trans_b, int M, int N,
                                      int K, GC_REAL alpha, const GC_REAL *A, int lda,
                                      const GC_REAL *B, int ldb, int accumulate, GC_REAL *C,
                                      int ldc, const Epilogue &epilogue)
{
    if (M <= 0 || N <= 0)
        return cudaSuccess;
    switch (gc_gemm_tile(M, N)) {
    case 0:
        return gc_gemm_launch<128, 128, 8, 8, 8>(stream, trans_a, trans_b, M, N, K, A, lda, B,
                                                 ldb, accumulate, alpha, C, ldc, epilogue);
    case 1:
        return gc_gemm_launch<64, 64, 16, 4, 4>(stream, trans_a, trans_b, M, N, K, A, lda, B, ldb,
                                                accumulate, alpha, C, ldc, epilogue);
    default:
        return gc_gemm_launch<32, 32, 32, 2, 2>(stream, trans_a, trans_b, M, N, K, A, lda, B, ldb,
                                                accumulate, alpha, C, ldc, epilogue);
    }
}

/* C = op(A) . op(B) (+ C when accumulate), then the epilogue. */
template <class Epilogue>
static cudaError_t gc_cuda_gemm(cudaStream_t stream, int trans_a, int trans_b, int M, int N, int K,
                                const GC_REAL *A, int lda, const GC_REAL *B, int ldb,
                                int accumulate, GC_REAL *C, int ldc, const Epilogue &epilogue)
{
    return gc_cuda_gemm_alpha(stream, trans_a, trans_b, M, N, K, (GC_REAL)1, A, lda, B, ldb,
                              accumulate, C, ldc, epilogue);
}

/* C += alpha * op(A) . op(B): with C a parameter, its gradient as the product and
   alpha = -lr, a plain SGD step that never stores the gradient. */
static inline cudaError_t gc_cuda_gemm_scaled(cudaStream_t stream, int trans_a, int trans_b,
                                              int M, int N, int K, GC_REAL alpha,
                                              const GC_REAL *A, int lda, const GC_REAL *B,
                                              int ldb, GC_REAL *C, int ldc)
{
    return gc_cuda_gemm_alpha(stream, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, 1, C, ldc,
                              gc_no_epilogue());
}

#endif /* GC_CUDA_GEMM_CUH */
