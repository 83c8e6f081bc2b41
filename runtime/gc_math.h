/* gc_math.h: an exponential the compiler can vectorize.
 *
 * libm's exp is a call per element, which keeps a loop scalar.  gc_exp (double) and
 * gc_expf (float) are inline and branch-free: x = k ln2 + r with |r| <= ln2/2 (k rounded
 * by the 1.5 * 2^mantissa trick, ln2 split in two so k * ln2_hi is exact), e^r by its
 * Taylor polynomial (degree 13 in double, 7 in float: truncation error far below half an
 * ulp), and 2^k written into the exponent bits.  Arguments are clamped to the normal
 * range first, so results never overflow to inf or underflow to 0: e^-1000 gives about
 * 1e-308, which every use (sigmoid, tanh, softmax) cannot tell from 0.
 * Needs round-to-nearest and no -ffast-math reassociation (graphc compiles without it). */
#ifndef GC_MATH_H
#define GC_MATH_H

#include <stdint.h>
#include <string.h>

static inline double gc_exp(double x)
{
    const double shift = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to an integer */
    x = x < -708.0 ? -708.0 : x > 709.0 ? 709.0 : x;
    const double t = x * 1.4426950408889634 + shift;
    const double k = t - shift;
    const double r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - INT64_C(0x4338000000000000) + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float gc_expf(float x)
{
    const float shift = 12582912.0f; /* 1.5 * 2^23 */
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    const float t = x * 1.44269504088896341f + shift;
    const float k = t - shift;
    const float r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B400000 + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

#endif /* GC_MATH_H */
