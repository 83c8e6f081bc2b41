/* gc_shuffle.h: the order in which an epoch visits the rows, shared by the C runtime and
 * the CUDA runtime's host code, so both backends train on the same batches. */
#ifndef GC_SHUFFLE_H
#define GC_SHUFFLE_H

#include <stdint.h>

#include "gc_random.h"

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

#endif /* GC_SHUFFLE_H */
