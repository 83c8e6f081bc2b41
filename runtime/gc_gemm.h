/* gc_gemm.h - deterministic, cache-blocked GEMM for graphc-generated C.
 *
 * Usage: one scalar type per translation unit.
 *     #define GC_REAL float            (or double)
 *     #include "gc_gemm.h"
 *
 *     C[M x N] = op(A)[M x K] . op(B)[K x N]   (+ C when accumulate)
 *     C[M x N] += alpha * op(A) . op(B)          (gc_gemm_scaled: a fused SGD step)
 *     either, with A's rows gathered by an index  (gc_gemm_gather: a shuffled batch)
 *     C = op(A) . op(B) on this thread's band of rows only, no barrier
 *                                                (gc_gemm_rows: a recurrence's step)
 *
 * Structure (Goto/BLIS blocking):
 *   - C is cut into tiles of whole micro-tiles (at most GC_GEMM_MC x GC_GEMM_NC);
 *     the tiles are shared out by an orphaned `omp for`, so the function is called
 *     by every thread of an enclosing parallel region (or by one thread outside
 *     any region, or without OpenMP at all).  gc_gemm_rows instead gives each thread
 *     the tiles of its own band of rows (gc_gemm_band), the same band every call.
 *   - For each tile, K is walked in blocks of kc <= GC_GEMM_KC.  The kc x nc panel
 *     of op(B) is taken one micro-panel of GC_GEMM_NR columns at a time, packed on
 *     the stack (a transpose when trans_b; the micro-panels of a row-major panel of
 *     at most GC_GEMM_IN_PLACE_BYTES are read in place instead), and a
 *     GC_GEMM_MR x GC_GEMM_NR register-blocked FMA micro-kernel accumulates each
 *     micro-tile of that column strip, broadcasting op(A) values.  Row-major A is read
 *     in place (no transposing pack); A^T is packed when the tile is wide enough
 *     to repay it, else read in place too.
 *   - Edge micro-tiles run on zero-padded B panels (and repeated A rows); only the
 *     valid part is written back.
 *
 * Determinism: element C[i][j] is always ((C0 + s_0) + s_1) + ... where s_b is
 * the FMA chain over K block b in increasing k, and the K blocks depend on K
 * only.  Tiling and thread count decide who computes an element, never how, so
 * results are bit-identical for any number of threads.
 *
 * No allocation: a block of A^T is packed into a per-thread static array (MC x KC:
 * 144 KiB of thread-local storage per thread for float and double alike, less where the
 * source bounds its products' sizes, see GC_GEMM_APACK_M), and B one micro-panel at a
 * time into a stack array of at most 16 KiB.
 */
#ifndef GC_GEMM_H
#define GC_GEMM_H

#ifndef GC_REAL
#error "gc_gemm.h: define GC_REAL as float or double before including it"
#endif

#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Which scalar type, for the preprocessor: GC_GEMM_CAT(gc_gemm_kind_, GC_REAL)
   expands to gc_gemm_kind_float (1) or gc_gemm_kind_double (2). */
#define GC_GEMM_CAT_(a, b) a##b
#define GC_GEMM_CAT(a, b) GC_GEMM_CAT_(a, b)
#define gc_gemm_kind_float 1
#define gc_gemm_kind_double 2
#if GC_GEMM_CAT(gc_gemm_kind_, GC_REAL) == 2
#define GC_GEMM_DOUBLE 1
#elif GC_GEMM_CAT(gc_gemm_kind_, GC_REAL) == 1
#define GC_GEMM_DOUBLE 0
#else
#error "gc_gemm.h: GC_REAL must be float or double"
#endif

#ifdef _OPENMP
#define GC_GEMM_OMP_FOR _Pragma("omp for schedule(static) nowait")
#define GC_GEMM_BARRIER _Pragma("omp barrier")
#else
#define GC_GEMM_OMP_FOR
#define GC_GEMM_BARRIER
#endif

/* Vector width: 256-bit where AVX exists, otherwise 128-bit, which every target
   with SIMD lowers natively (SSE2, NEON) and the others lower to scalars. */
#if defined(__AVX__)
#define GC_GEMM_VBYTES 32
#else
#define GC_GEMM_VBYTES 16
#endif

#if GC_GEMM_DOUBLE
#define GC_GEMM_VLEN (GC_GEMM_VBYTES / 8)
#else
#define GC_GEMM_VLEN (GC_GEMM_VBYTES / 4)
#endif

/* Micro-tile: MR rows x NR = 2 vectors of columns (6x16 floats / 6x8 doubles with
   AVX): 12 accumulators, 2 B vectors and 1 broadcast fit 16 vector registers.  With
   AVX-512 there are 32 (for 256-bit vectors too): 8 rows, 16 accumulators. */
#if !defined(GC_GEMM_MR) && defined(__AVX512F__) && defined(__AVX512VL__)
#define GC_GEMM_MR 8
#elif !defined(GC_GEMM_MR)
#define GC_GEMM_MR 6
#endif
#define GC_GEMM_NR (2 * GC_GEMM_VLEN)

/* Cache blocking, in elements.  A kc x NR micro-panel of B (16 KiB) stays in L1
   while the micro-kernel sweeps the MC rows of A (L2); NC bounds a tile's width. */
#define GC_GEMM_KC 256
/* A row-major B panel up to this size is read in place rather than packed: packing
   costs a copy per call that small products (batch 32, layers of 64-128) cannot repay. */
#ifndef GC_GEMM_IN_PLACE_BYTES
#define GC_GEMM_IN_PLACE_BYTES 32768
#endif
#if GC_GEMM_DOUBLE
#define GC_GEMM_MC 72
#define GC_GEMM_NC 256
#else
#define GC_GEMM_MC 144
#define GC_GEMM_NC 512
#endif

typedef GC_REAL gc_gemm_vec __attribute__((vector_size(GC_GEMM_VBYTES), may_alias));
typedef GC_REAL gc_gemm_uvec
    __attribute__((vector_size(GC_GEMM_VBYTES), may_alias, aligned(sizeof(GC_REAL))));

#if GC_GEMM_VLEN == 2
#define GC_GEMM_SPLAT(s) {(s), (s)}
#elif GC_GEMM_VLEN == 4
#define GC_GEMM_SPLAT(s) {(s), (s), (s), (s)}
#else
#define GC_GEMM_SPLAT(s) {(s), (s), (s), (s), (s), (s), (s), (s)}
#endif

/* Fused multiply-add on vectors: explicit where the target has FMA, so the kernel
   does not depend on -ffp-contract; elsewhere the compiler may contract. */
#if defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>
#if GC_GEMM_DOUBLE
#define GC_GEMM_FMA(acc, a, b) ((acc) = _mm256_fmadd_pd((a), (b), (acc)))
#else
#define GC_GEMM_FMA(acc, a, b) ((acc) = _mm256_fmadd_ps((a), (b), (acc)))
#endif
#else
#define GC_GEMM_FMA(acc, a, b) ((acc) += (a) * (b))
#endif

/* Vector transposes for packing B^T; scalar loops where the builtin is missing
   (or when GC_GEMM_NO_SHUFFLE is defined, which the tests use to cover them). */
#if defined(__has_builtin) && !defined(GC_GEMM_NO_SHUFFLE)
#if __has_builtin(__builtin_shufflevector)
#define GC_GEMM_SHUFFLE 1
#endif
#endif

/* Optional per-tile epilogue: called once for every finished tile of C (all of K
   accumulated), rows [r0, r0+nr) x cols [c0, c0+nc); ctx is passed through. */
typedef void (*gc_gemm_epilogue)(void *ctx, int r0, int nr, int c0, int nc);

/* Per-thread buffer for a packed block of A^T (no malloc, no stack pressure on OpenMP
   workers).  B is packed one micro-panel at a time into the stack (KC x NR values,
   16 KiB at most) right before the micro-tiles that use it, so it needs no buffer of
   its own: the loader zeroes a library's whole thread-local block for every thread
   that touches it, and a KC x NC panel there cost 512 KiB per thread.
   A single-threaded target without thread-local storage may define GC_GEMM_TLS
   empty to get a plain static buffer (then gc_gemm is not reentrant). */
#ifndef GC_GEMM_TLS
#define GC_GEMM_TLS _Thread_local
#endif
/* The packed A^T block holds at most MC rows by KC.  A source that knows its products can
   bound it by their sizes, to shrink every thread's copy: GC_GEMM_APACK_M, the most rows
   op(A) of a transposed-A product has, and GC_GEMM_APACK_K, its deepest K.  A tile that
   would not fit is read in place instead, so any bound gives the same results. */
#if defined(GC_GEMM_APACK_M) && GC_GEMM_APACK_M < GC_GEMM_MC
#define GC_GEMM_APACK_ROWS ((GC_GEMM_APACK_M + GC_GEMM_MR - 1) / GC_GEMM_MR * GC_GEMM_MR)
#else
#define GC_GEMM_APACK_ROWS GC_GEMM_MC
#endif
#if defined(GC_GEMM_APACK_K) && GC_GEMM_APACK_K < GC_GEMM_KC
#define GC_GEMM_APACK_DEPTH GC_GEMM_APACK_K
#else
#define GC_GEMM_APACK_DEPTH GC_GEMM_KC
#endif
static GC_GEMM_TLS GC_REAL gc_gemm_apack[GC_GEMM_APACK_ROWS * GC_GEMM_APACK_DEPTH]
    __attribute__((aligned(64)));

static inline int gc_gemm_min(int a, int b)
{
    return a < b ? a : b;
}

static inline int gc_gemm_ceil_div(int a, int b)
{
    return (a + b - 1) / b;
}

#ifdef GC_GEMM_SHUFFLE
#define GC_GEMM_SHUF __builtin_shufflevector
/* d[k * NR + j] = s[j * lds + k] for j, k < VLEN: one VLEN x VLEN block of B^T. */
static inline void gc_gemm_transpose_block(const GC_REAL *s, ptrdiff_t lds, GC_REAL *d)
{
#if GC_GEMM_VLEN == 8
    gc_gemm_vec r[8];
    for (int j = 0; j < 8; j++)
        r[j] = *(const gc_gemm_uvec *)(s + j * lds);
    gc_gemm_vec t[8];
    for (int j = 0; j < 8; j += 2) {
        t[j] = GC_GEMM_SHUF(r[j], r[j + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[j + 1] = GC_GEMM_SHUF(r[j], r[j + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    gc_gemm_vec u[8];
    for (int j = 0; j < 8; j += 4) {
        u[j] = GC_GEMM_SHUF(t[j], t[j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[j + 1] = GC_GEMM_SHUF(t[j], t[j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[j + 2] = GC_GEMM_SHUF(t[j + 1], t[j + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[j + 3] = GC_GEMM_SHUF(t[j + 1], t[j + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int k = 0; k < 4; k++) {
        *(gc_gemm_vec *)(d + k * GC_GEMM_NR) =
            GC_GEMM_SHUF(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        *(gc_gemm_vec *)(d + (k + 4) * GC_GEMM_NR) =
            GC_GEMM_SHUF(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
#elif GC_GEMM_VLEN == 4
    gc_gemm_vec r[4];
    for (int j = 0; j < 4; j++)
        r[j] = *(const gc_gemm_uvec *)(s + j * lds);
    const gc_gemm_vec t0 = GC_GEMM_SHUF(r[0], r[1], 0, 4, 1, 5);
    const gc_gemm_vec t1 = GC_GEMM_SHUF(r[0], r[1], 2, 6, 3, 7);
    const gc_gemm_vec t2 = GC_GEMM_SHUF(r[2], r[3], 0, 4, 1, 5);
    const gc_gemm_vec t3 = GC_GEMM_SHUF(r[2], r[3], 2, 6, 3, 7);
    *(gc_gemm_vec *)(d + 0 * GC_GEMM_NR) = GC_GEMM_SHUF(t0, t2, 0, 1, 4, 5);
    *(gc_gemm_vec *)(d + 1 * GC_GEMM_NR) = GC_GEMM_SHUF(t0, t2, 2, 3, 6, 7);
    *(gc_gemm_vec *)(d + 2 * GC_GEMM_NR) = GC_GEMM_SHUF(t1, t3, 0, 1, 4, 5);
    *(gc_gemm_vec *)(d + 3 * GC_GEMM_NR) = GC_GEMM_SHUF(t1, t3, 2, 3, 6, 7);
#else
    const gc_gemm_vec r0 = *(const gc_gemm_uvec *)s;
    const gc_gemm_vec r1 = *(const gc_gemm_uvec *)(s + lds);
    *(gc_gemm_vec *)d = GC_GEMM_SHUF(r0, r1, 0, 2);
    *(gc_gemm_vec *)(d + GC_GEMM_NR) = GC_GEMM_SHUF(r0, r1, 1, 3);
#endif
}
#endif /* GC_GEMM_SHUFFLE */

/* Pack rows [p0, p0+kc) x cols [j0, j0+nc) of op(B) into micro-panels of NR
   columns, each stored k-major (NR values per k); columns past nc are zero. */
static inline void gc_gemm_pack_b(int trans_b, const GC_REAL *B, int ldb, int p0, int kc,
                                  int j0, int nc, GC_REAL *restrict dst)
{
    for (int jr = 0; jr < nc; jr += GC_GEMM_NR) {
        const int nr = gc_gemm_min(GC_GEMM_NR, nc - jr);
        GC_REAL *restrict d = dst + (size_t)jr * kc;
        if (!trans_b) {
            /* op(B)[k][j] = B[k][j]: NR contiguous values per k */
            const GC_REAL *s = B + (size_t)p0 * ldb + j0 + jr;
            if (nr == GC_GEMM_NR) {
                for (int k = 0; k < kc; k++) {
                    const gc_gemm_uvec *sv = (const gc_gemm_uvec *)(s + (size_t)k * ldb);
                    gc_gemm_vec *dv = (gc_gemm_vec *)(d + (size_t)k * GC_GEMM_NR);
                    dv[0] = sv[0];
                    dv[1] = sv[1];
                }
            } else {
                /* a fixed-width row with the columns past nr masked off: compilers turn
                   it into masked vector loads where the target has them */
                for (int k = 0; k < kc; k++) {
                    for (int j = 0; j < GC_GEMM_NR; j++)
                        d[k * GC_GEMM_NR + j] = j < nr ? s[(size_t)k * ldb + j] : 0;
                }
            }
            continue;
        }
        /* op(B)[k][j] = B[j][k]: a transpose of NR rows of B */
        const GC_REAL *s = B + (size_t)(j0 + jr) * ldb + p0;
        int k0 = 0;
#ifdef GC_GEMM_SHUFFLE
        if (nr == GC_GEMM_NR) {
            for (; k0 + GC_GEMM_VLEN <= kc; k0 += GC_GEMM_VLEN) {
                gc_gemm_transpose_block(s + k0, ldb, d + (size_t)k0 * GC_GEMM_NR);
                gc_gemm_transpose_block(s + (size_t)GC_GEMM_VLEN * ldb + k0, ldb,
                                        d + (size_t)k0 * GC_GEMM_NR + GC_GEMM_VLEN);
            }
        }
#endif
        for (int j = 0; j < GC_GEMM_NR; j++) {
            if (j < nr) {
                for (int k = k0; k < kc; k++)
                    d[k * GC_GEMM_NR + j] = s[(size_t)j * ldb + k];
            } else {
                for (int k = k0; k < kc; k++)
                    d[k * GC_GEMM_NR + j] = 0;
            }
        }
    }
}

/* Pack an mc x kc block of op(A) = A^T, a[k*lda + i], into micro-panels of MR
   rows stored k-major (MR values per k).  Read in place, consecutive k of A^T are
   lda apart and a power-of-two lda makes them fight over a few L1 sets; packed,
   they are contiguous.  Rows past mc are left unset: the kernel never reads them. */
static inline void gc_gemm_pack_at(const GC_REAL *a, int lda, int mc, int kc,
                                   GC_REAL *restrict dst)
{
    for (int ir = 0; ir < mc; ir += GC_GEMM_MR) {
        const int mr = gc_gemm_min(GC_GEMM_MR, mc - ir);
        GC_REAL *restrict d = dst + (size_t)ir * kc;
        const GC_REAL *s = a + ir;
        if (mr == GC_GEMM_MR) {
            for (int k = 0; k < kc; k++) {
                for (int r = 0; r < GC_GEMM_MR; r++)
                    d[k * GC_GEMM_MR + r] = s[(size_t)k * lda + r];
            }
        } else {
            for (int k = 0; k < kc; k++) {
                for (int r = 0; r < mr; r++)
                    d[k * GC_GEMM_MR + r] = s[(size_t)k * lda + r];
            }
        }
    }
}

/* Pack an mc x kc block of op(A) = A^T whose k are gathered rows of A: op(A)[i0 + i][p0 + k]
   = A[rows[p0 + k] * lda + i0 + i], into the micro-panels of gc_gemm_pack_at (each gathered
   row gives one k-slice of every micro-panel).  Rows past mc are left unset. */
static inline void gc_gemm_pack_at_gathered(const GC_REAL *A, const int64_t *rows, int lda,
                                            int i0, int p0, int mc, int kc,
                                            GC_REAL *restrict dst)
{
    for (int k = 0; k < kc; k++) {
        const GC_REAL *s = A + (size_t)rows[p0 + k] * lda + i0;
        for (int ir = 0; ir < mc; ir += GC_GEMM_MR) {
            const int mr = gc_gemm_min(GC_GEMM_MR, mc - ir);
            GC_REAL *restrict d = dst + (size_t)ir * kc + (size_t)k * GC_GEMM_MR;
            for (int r = 0; r < mr; r++)
                d[r] = s[ir + r];
        }
    }
}

#if GC_GEMM_MR == 8
#define GC_GEMM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#elif GC_GEMM_MR == 6
#define GC_GEMM_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#else
#error "gc_gemm.h: GC_GEMM_MR must be 6 or 8"
#endif

/* One MR x NR micro-tile: acc = sum_k a(:,k) b(k,:) in increasing k, where
   a(r,k) = a[r*rs + k*cs] (in place in A, or a packed micro-panel with rs = 1,
   cs = MR), or a(r,k) = ap[r][k] when ap (MR pointers to gathered rows of A) is given,
   and b(k,:) = b[k*bs .. k*bs + NR) (a packed micro-panel, bs = NR, or full
   NR columns of row-major B read in place, bs = ldb).  Then C = alpha * acc, or
   C += alpha * acc when add (alpha = 1 leaves acc exact: 1 * acc = acc).  Only the
   top-left mr x nr part is written; rows past mr re-read row mr-1 (valid memory; ap
   repeats it) and are discarded.  Always inlined, so that each call site's code is
   specialized for its ap: a NULL one keeps the strided rows' cheaper addressing. */
__attribute__((always_inline)) static inline void
gc_gemm_micro(int kc, const GC_REAL *a, ptrdiff_t rs, const GC_REAL *const *ap, ptrdiff_t cs,
              const GC_REAL *restrict b, ptrdiff_t bs, GC_REAL *restrict c, int ldc, int mr,
              int nr, int add, GC_REAL alpha)
{
#define GC_GEMM_INIT(r)                        \
    gc_gemm_vec c##r##0 = {0}, c##r##1 = {0};  \
    const GC_REAL *a##r = ap ? ap[r] : a + ((r) < mr ? (r) : mr - 1) * rs;
    GC_GEMM_ROWS(GC_GEMM_INIT)
#undef GC_GEMM_INIT
    const ptrdiff_t kend = (ptrdiff_t)kc * cs;
    for (ptrdiff_t k = 0; k < kend; k += cs) {
        const gc_gemm_vec b0 = ((const gc_gemm_uvec *)b)[0];
        const gc_gemm_vec b1 = ((const gc_gemm_uvec *)b)[1];
#define GC_GEMM_STEP(r)                                 \
    {                                                   \
        const gc_gemm_vec ar = GC_GEMM_SPLAT(a##r[k]);  \
        GC_GEMM_FMA(c##r##0, ar, b0);                   \
        GC_GEMM_FMA(c##r##1, ar, b1);                   \
    }
        GC_GEMM_ROWS(GC_GEMM_STEP)
#undef GC_GEMM_STEP
        b += bs;
    }
    const gc_gemm_vec av = GC_GEMM_SPLAT(alpha);
    if (mr == GC_GEMM_MR && nr == GC_GEMM_NR) {
#define GC_GEMM_STORE(r)                                             \
    {                                                                \
        gc_gemm_uvec *cv = (gc_gemm_uvec *)(c + (size_t)(r) * ldc);  \
        if (add) {                                                   \
            cv[0] += av * c##r##0;                                   \
            cv[1] += av * c##r##1;                                   \
        } else {                                                     \
            cv[0] = av * c##r##0;                                    \
            cv[1] = av * c##r##1;                                    \
        }                                                            \
    }
        GC_GEMM_ROWS(GC_GEMM_STORE)
#undef GC_GEMM_STORE
        return;
    }
    GC_REAL tile[GC_GEMM_MR * GC_GEMM_NR] __attribute__((aligned(64)));
#define GC_GEMM_SPILL(r)                                     \
    ((gc_gemm_vec *)(tile + (r) * GC_GEMM_NR))[0] = c##r##0; \
    ((gc_gemm_vec *)(tile + (r) * GC_GEMM_NR))[1] = c##r##1;
    GC_GEMM_ROWS(GC_GEMM_SPILL)
#undef GC_GEMM_SPILL
    /* fixed-width rows with the columns past nr masked off (masked vector stores where
       the target has them) */
    for (int i = 0; i < mr; i++) {
        GC_REAL *ci = c + (size_t)i * ldc;
        const GC_REAL *ti = tile + i * GC_GEMM_NR;
        if (add) {
            for (int j = 0; j < GC_GEMM_NR; j++) {
                if (j < nr)
                    ci[j] += alpha * ti[j];
            }
        } else {
            for (int j = 0; j < GC_GEMM_NR; j++) {
                if (j < nr)
                    ci[j] = alpha * ti[j];
            }
        }
    }
}

/* All micro-tiles of one mc x nc tile for one K block: a points at op(A)[i0][p0]
   with strides rs between rows and cs between k inside a micro-panel and ps * MR
   between micro-panels (ps = rs in place, kc packed); or, with arows (in place, cs = 1),
   op(A)'s row i0 + i is at a + arows[i] * rs.  op(B)[p0..p0+kc) x
   [j0..j0+nc) is taken one micro-panel of NR columns at a time: read where it is
   when in_place (row-major B) and the micro-panel is whole, else packed into the
   stack first; then every micro-tile of that column strip uses it while it is hot. */
static inline void gc_gemm_macro(int mc, int nc, int kc, const GC_REAL *a, ptrdiff_t rs,
                                 ptrdiff_t cs, ptrdiff_t ps, const int64_t *arows, int trans_b,
                                 const GC_REAL *B, int ldb, int p0, int j0, int in_place,
                                 GC_REAL *c, int ldc, int add, GC_REAL alpha)
{
    GC_REAL strip[GC_GEMM_KC * GC_GEMM_NR] __attribute__((aligned(64)));
    for (int jr = 0; jr < nc; jr += GC_GEMM_NR) {
        const int nr = gc_gemm_min(GC_GEMM_NR, nc - jr);
        const GC_REAL *b = strip;
        ptrdiff_t bs = GC_GEMM_NR;
        if (in_place && nr == GC_GEMM_NR) {
            b = B + (size_t)p0 * ldb + j0 + jr;
            bs = ldb;
        } else {
            gc_gemm_pack_b(trans_b, B, ldb, p0, kc, j0 + jr, nr, strip);
        }
        for (int ir = 0; ir < mc; ir += GC_GEMM_MR) {
            const int mr = gc_gemm_min(GC_GEMM_MR, mc - ir);
            GC_REAL *ct = c + (size_t)ir * ldc + jr;
            if (arows) {
                const GC_REAL *ap[GC_GEMM_MR];
                for (int r = 0; r < GC_GEMM_MR; r++)
                    ap[r] = a + arows[ir + (r < mr ? r : mr - 1)] * rs;
                gc_gemm_micro(kc, NULL, 0, ap, cs, b, bs, ct, ldc, mr, nr, add, alpha);
            } else {
                gc_gemm_micro(kc, a + ir * ps, rs, NULL, cs, b, bs, ct, ldc, mr, nr, add, alpha);
            }
        }
    }
}

/* Tile grid: at most MC x NC per tile, then split further until the tiles share
   out evenly over the team (the grid never changes a result, only who works). */
static inline void gc_gemm_grid(int mpanels, int npanels, int nthreads, int *gm, int *gn)
{
    int m = gc_gemm_ceil_div(mpanels, GC_GEMM_MC / GC_GEMM_MR);
    int n = gc_gemm_ceil_div(npanels, GC_GEMM_NC / GC_GEMM_NR);
    while ((m * n) % nthreads != 0 && m * n < 4 * nthreads) {
        /* Split N first: every tile packs its own B panel, so tall tiles pack less. */
        if (n < npanels)
            n++;
        else if (m < mpanels)
            m++;
        else
            break;
    }
    *gm = m;
    *gn = n;
}

/* One tile of C: rows [i0, i0 + mc) x columns [j0, j0 + nc), all of K, in K blocks of
   near-equal size (<= KC) that depend on K only, so a tile's values never depend on how
   C was cut into tiles.  The arguments are those of gc_gemm_tiles. */
static inline void gc_gemm_tile(int trans_a, int trans_b, int i0, int mc, int j0, int nc, int K,
                                const GC_REAL *A, const int64_t *arows, int lda,
                                const GC_REAL *B, int ldb, int accumulate, GC_REAL alpha,
                                GC_REAL *C, int ldc)
{
    const int kblocks = gc_gemm_ceil_div(K, GC_GEMM_KC);
    /* op(A)[i][k] = A[i*rs + k*cs] */
    const ptrdiff_t rs = trans_a ? 1 : lda;
    const ptrdiff_t cs = trans_a ? lda : 1;
    GC_REAL *ct = C + (size_t)i0 * ldc + j0;
    if (kblocks == 0 && !accumulate) {
        for (int i = 0; i < mc; i++) {
            for (int j = 0; j < nc; j++)
                ct[(size_t)i * ldc + j] = 0;
        }
    }
    for (int kb = 0; kb < kblocks; kb++) {
        const int p0 = (int)((long long)kb * K / kblocks);
        const int kc = (int)((long long)(kb + 1) * K / kblocks) - p0;
        /* A small row-major B panel is read where it is (it stays in cache anyway);
           only its ragged last micro-panel, if any, is packed with zero padding. */
        const int in_place =
            !trans_b && (size_t)kc * nc * sizeof(GC_REAL) <= GC_GEMM_IN_PLACE_BYTES;
        const GC_REAL *a = A + i0 * rs + p0 * cs;
        const int add = accumulate || kb > 0;
        if (arows && !trans_a) {
            /* gathered rows, read in place one row pointer each */
            gc_gemm_macro(mc, nc, kc, A + p0, lda, 1, lda, arows + i0, trans_b, B, ldb, p0,
                          j0, in_place, ct, ldc, add, alpha);
        } else if (arows) {
            /* A^T over gathered rows has no stride along k: always packed, in pieces
               that fit the packing block (one piece where the bounds cover the
               product, as a generated model's do; see gc_gemm_gather) */
            for (int i = 0; i < mc; i += GC_GEMM_APACK_ROWS) {
                const int mi = gc_gemm_min(GC_GEMM_APACK_ROWS, mc - i);
                for (int q = 0; q < kc; q += GC_GEMM_APACK_DEPTH) {
                    const int kq = gc_gemm_min(GC_GEMM_APACK_DEPTH, kc - q);
                    gc_gemm_pack_at_gathered(A, arows, lda, i0 + i, p0 + q, mi, kq,
                                             gc_gemm_apack);
                    gc_gemm_macro(mi, nc, kq, gc_gemm_apack, 1, GC_GEMM_MR, kq, NULL, trans_b,
                                  B, ldb, p0 + q, j0, in_place, ct + (size_t)i * ldc, ldc,
                                  add || q > 0, alpha);
                }
            }
        } else if (trans_a && nc >= 4 * GC_GEMM_NR && mc <= GC_GEMM_APACK_ROWS &&
                   kc <= GC_GEMM_APACK_DEPTH) {
            /* Packing A^T pays off once enough B micro-panels reuse it. */
            gc_gemm_pack_at(a, lda, mc, kc, gc_gemm_apack);
            gc_gemm_macro(mc, nc, kc, gc_gemm_apack, 1, GC_GEMM_MR, kc, NULL, trans_b, B, ldb,
                          p0, j0, in_place, ct, ldc, add, alpha);
        } else {
            gc_gemm_macro(mc, nc, kc, a, rs, cs, rs, NULL, trans_b, B, ldb, p0, j0, in_place,
                          ct, ldc, add, alpha);
        }
    }
}

/* C[M x N] (row-major, leading dim ldc) = op(A)[M x K] * op(B)[K x N]  (+ C if accumulate)
   op(A) = A (row-major M x K, lda) if !trans_a, else A^T where A is stored K x M (lda).
   op(B) = B (row-major K x N, ldb) if !trans_b, else B^T where B is stored N x K (ldb).
   Call it from every thread of a parallel region, or from one thread.  gc_gemm returns
   once all of C is done; gc_gemm_nowait once this thread's tiles are (the caller knows
   nothing before the next barrier needs the rest). */
static inline void gc_gemm_tiles(int trans_a, int trans_b, int M, int N, int K, const GC_REAL *A,
                                 const int64_t *arows, int lda, const GC_REAL *B, int ldb,
                                 int accumulate, GC_REAL alpha, GC_REAL *C, int ldc,
                                 gc_gemm_epilogue epilogue, void *ctx)
{
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_num_threads();
#endif
    const int mpanels = gc_gemm_ceil_div(M, GC_GEMM_MR);
    const int npanels = gc_gemm_ceil_div(N, GC_GEMM_NR);
    int gm = 0;
    int gn = 0;
    if (M > 0 && N > 0)
        gc_gemm_grid(mpanels, npanels, nthreads, &gm, &gn);
    const int ntiles = gm * gn;

    GC_GEMM_OMP_FOR
    for (int t = 0; t < ntiles; t++) {
        const int ti = t / gn;
        const int tj = t % gn;
        const int i0 = (int)((long long)ti * mpanels / gm) * GC_GEMM_MR;
        const int i1 = gc_gemm_min((int)((long long)(ti + 1) * mpanels / gm) * GC_GEMM_MR, M);
        const int j0 = (int)((long long)tj * npanels / gn) * GC_GEMM_NR;
        const int j1 = gc_gemm_min((int)((long long)(tj + 1) * npanels / gn) * GC_GEMM_NR, N);
        gc_gemm_tile(trans_a, trans_b, i0, i1 - i0, j0, j1 - j0, K, A, arows, lda, B, ldb,
                     accumulate, alpha, C, ldc);
        if (epilogue)
            epilogue(ctx, i0, i1 - i0, j0, j1 - j0);
    }
}

static inline void gc_gemm(int trans_a, int trans_b, int M, int N, int K, const GC_REAL *A,
                           int lda, const GC_REAL *B, int ldb, int accumulate, GC_REAL *C,
                           int ldc, gc_gemm_epilogue epilogue, void *ctx)
{
    gc_gemm_tiles(trans_a, trans_b, M, N, K, A, NULL, lda, B, ldb, accumulate, 1, C, ldc,
                  epilogue, ctx);
    GC_GEMM_BARRIER
}

static inline void gc_gemm_nowait(int trans_a, int trans_b, int M, int N, int K,
                                  const GC_REAL *A, int lda, const GC_REAL *B, int ldb,
                                  int accumulate, GC_REAL *C, int ldc, gc_gemm_epilogue epilogue,
                                  void *ctx)
{
    gc_gemm_tiles(trans_a, trans_b, M, N, K, A, NULL, lda, B, ldb, accumulate, 1, C, ldc,
                  epilogue, ctx);
}

/* C += alpha * op(A) . op(B), then a barrier when wait.  With C a parameter, its
   gradient as the product and alpha = -lr, this is a plain SGD step that never stores
   the gradient. */
static inline void gc_gemm_scaled(int trans_a, int trans_b, int M, int N, int K, GC_REAL alpha,
                                  const GC_REAL *A, int lda, const GC_REAL *B, int ldb,
                                  GC_REAL *C, int ldc, int wait)
{
    gc_gemm_tiles(trans_a, trans_b, M, N, K, A, NULL, lda, B, ldb, 1, alpha, C, ldc, NULL,
                  NULL);
    if (wait) {
        GC_GEMM_BARRIER
    }
}

/* C = alpha * op(A) . op(B) (+ C when accumulate), with the rows of the stored A gathered:
   row r of A (M x K, or K x M when trans_a) starts at A + arows[r] * lda, so a batch of
   shuffled training rows is read where it lies, with no copy.  arows NULL reads A as
   gc_gemm does.  The result is bit-identical to gc_gemm's on a copy of the gathered rows
   (the same FMA chains; only where A is read from differs).  Gathered rows of A are read
   in place; a gathered A^T is always packed.  Where a source bounds the packing block
   (GC_GEMM_APACK_M/_K) below such a product, the product is packed in pieces: rows apart
   give the same bits, but K apart adds each K block's sum in parts, so the bits may
   differ from gc_gemm's.  A generated model's bounds count every A^T product.  Then a
   barrier when wait. */
static inline void gc_gemm_gather(int trans_a, int trans_b, int M, int N, int K, GC_REAL alpha,
                                  const GC_REAL *A, const int64_t *arows, int lda,
                                  const GC_REAL *B, int ldb, int accumulate, GC_REAL *C, int ldc,
                                  gc_gemm_epilogue epilogue, void *ctx, int wait)
{
    gc_gemm_tiles(trans_a, trans_b, M, N, K, A, arows, lda, B, ldb, accumulate, alpha, C, ldc,
                  epilogue, ctx);
    if (wait) {
        GC_GEMM_BARRIER
    }
}

/* This thread's band of M rows: whole micro-panels of MR rows shared out evenly over the
   team in thread order (the last band ends at M; a band may be empty).  It depends only
   on M and the team, so a loop that calls it each step gives every thread the same rows
   every time. */
static inline void gc_gemm_band(int M, int *r0, int *nr)
{
    int nthreads = 1;
    int me = 0;
#ifdef _OPENMP
    nthreads = omp_get_num_threads();
    me = omp_get_thread_num();
#endif
    const int mpanels = gc_gemm_ceil_div(M, GC_GEMM_MR);
    const int first = gc_gemm_min((int)((long long)me * mpanels / nthreads) * GC_GEMM_MR, M);
    const int last = gc_gemm_min((int)((long long)(me + 1) * mpanels / nthreads) * GC_GEMM_MR, M);
    *r0 = first;
    *nr = last - first;
}

/* C = op(A) . op(B) (+ C) on this thread's band of rows (gc_gemm_band) only, every column,
   and no barrier: each thread reads the rows of op(A) and writes the rows of C of its own
   band.  A recurrence over a batch (row r of step t's A is row r of step t-1's C) then
   needs no barrier between steps, and no row crosses between threads; the caller waits
   once after the loop.  The values are gc_gemm's: tiles never change a result. */
static inline void gc_gemm_rows(int trans_a, int trans_b, int M, int N, int K, const GC_REAL *A,
                                int lda, const GC_REAL *B, int ldb, int accumulate, GC_REAL *C,
                                int ldc)
{
    int r0 = 0;
    int nr = 0;
    gc_gemm_band(M, &r0, &nr);
    if (nr <= 0)
        return;
    for (int j0 = 0; j0 < N; j0 += GC_GEMM_NC) {
        const int nc = gc_gemm_min(GC_GEMM_NC, N - j0);
        for (int i0 = r0; i0 < r0 + nr; i0 += GC_GEMM_MC) {
            const int mc = gc_gemm_min(GC_GEMM_MC, r0 + nr - i0);
            gc_gemm_tile(trans_a, trans_b, i0, mc, j0, nc, K, A, NULL, lda, B, ldb, accumulate,
                         1, C, ldc);
        }
    }
}

#endif /* GC_GEMM_H */
