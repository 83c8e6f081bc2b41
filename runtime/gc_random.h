/* gc_random.h: counter-based random numbers (no state, no threads involved), shared by
 * the full runtime and the embedded export. C99, <stdint.h> only. */
#ifndef GC_RANDOM_H
#define GC_RANDOM_H

#include <stdint.h>

/* CUDA builds define it as __host__ __device__: the kernels draw the same masks. */
#ifndef GC_HOST_DEVICE
#define GC_HOST_DEVICE
#endif

/* SplitMix64: a counter-based generator; value k of stream `seed` needs no state. */
static inline GC_HOST_DEVICE uint64_t gc_splitmix64(uint64_t seed, uint64_t k)
{
    uint64_t z = seed + (k + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The random stream of one dropout layer at one training step: draw k of it is
 * gc_splitmix64(stream, k).  It depends on (seed, layer, step) only, never on threads. */
static inline GC_HOST_DEVICE uint64_t gc_stream(uint64_t seed, uint64_t layer, uint64_t step)
{
    return gc_splitmix64(gc_splitmix64(seed, layer), step);
}

#endif /* GC_RANDOM_H */
