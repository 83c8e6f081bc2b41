/* gc_runtime.h: the small hand-written runtime every generated model includes.
 * Define GC_REAL (float or double) before including it. */
#ifndef GC_RUNTIME_H
#define GC_RUNTIME_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gc_gemm.h"
#include "gc_math.h"
#include "gc_random.h"

/* One 64-byte aligned, zeroed block: the model's arena. */
static inline unsigned char *gc_arena_alloc(size_t bytes)
{
    void *p = NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0)
        return NULL;
    memset(p, 0, rounded ? rounded : 64);
    return (unsigned char *)p;
}

static inline void gc_arena_free(unsigned char *p) { free(p); }

static inline int gc_default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* perm = 0..count-1, shuffled by Fisher-Yates from `seed` when `shuffle` is set. */
static inline void gc_permutation(int64_t *perm, int64_t count, uint64_t seed, int shuffle)
{
    for (int64_t i = 0; i < count; ++i)
        perm[i] = i;
    if (!shuffle)
        return;
    for (int64_t i = count - 1; i > 0; --i) {
        const int64_t j = (int64_t)(gc_splitmix64(seed, (uint64_t)i) % (uint64_t)(i + 1));
        const int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

#endif /* GC_RUNTIME_H */
