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
#include "gc_shuffle.h"
#include "gc_team.h"

/* One 64-byte aligned, zeroed block: the model's arena.  It comes from calloc, which
   hands a large block over as fresh zero pages without writing them, so a page costs
   resident memory only once something stores to it: a gradient that the training step
   never stores (plain SGD's fused weight steps) stays free until `gradients` runs.
   calloc's own pointer sits just below the aligned block, for gc_arena_free. */
static inline unsigned char *gc_arena_alloc(size_t bytes)
{
    const size_t rounded = (bytes + 63) / 64 * 64;
    unsigned char *raw = (unsigned char *)calloc(1, rounded + 64 + sizeof(void *));
    if (raw == NULL)
        return NULL;
    const uintptr_t start = (uintptr_t)(raw + sizeof(void *));
    unsigned char *p = raw + ((start + 63) / 64 * 64 - (uintptr_t)raw);
    memcpy(p - sizeof(void *), &raw, sizeof(void *));
    return p;
}

static inline void gc_arena_free(unsigned char *p)
{
    if (p == NULL)
        return;
    void *raw;
    memcpy(&raw, p - sizeof(void *), sizeof(void *));
    free(raw);
}

static inline int gc_default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

#endif /* GC_RUNTIME_H */
