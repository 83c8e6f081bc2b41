/* train.c: train a graphc-built model from plain C, no Python involved.
 *
 *   graphc build examples/c_api/model.py:graph -o build/blobs
 *   cc -O2 -I build/blobs examples/c_api/train.c -L build/blobs -lblobs \
 *      -Wl,-rpath,build/blobs -o build/train && ./build/train
 *
 * The data are three Gaussian blobs in 8 dimensions; the parameters start from small
 * random values written through blobs_tensor() (indices 0-3 are hidden.W, hidden.b,
 * out.W, out.b, as manifest.json lists them). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "blobs.h"

#define ROWS 600
#define FEATURES 8
#define CLASSES 3

static double uniform(uint64_t *state)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*state >> 11) / 9007199254740992.0;
}

int main(void)
{
    static float x[ROWS * FEATURES];
    static int32_t y[ROWS];
    static int64_t perm[ROWS];
    uint64_t rng = 42;
    for (int r = 0; r < ROWS; ++r) {
        y[r] = r % CLASSES;
        for (int f = 0; f < FEATURES; ++f)
            x[r * FEATURES + f] = (float)((f % CLASSES == y[r] ? 2.0 : 0.0) + uniform(&rng) - 0.5);
    }
    blobs_model *m = blobs_create();
    if (!m) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    const int sizes[4] = {FEATURES * 16, 16, 16 * CLASSES, CLASSES};
    for (int p = 0; p < 4; p += 2) { /* weights: uniform(-0.3, 0.3); biases stay zero */
        float *w = blobs_tensor(m, p);
        for (int i = 0; i < sizes[p]; ++i)
            w[i] = (float)(0.6 * uniform(&rng) - 0.3);
    }
    blobs_set_lr(m, 0.1);
    double hits = 0.0, first = 0.0, loss = 0.0;
    for (int epoch = 0; epoch < 20; ++epoch) {
        loss = blobs_train_epoch(m, x, y, ROWS, perm, (uint64_t)epoch, 1, &hits);
        if (epoch == 0)
            first = loss;
    }
    printf("loss %.4f -> %.4f, training accuracy %.3f\n", first, loss, hits / ROWS);
    blobs_destroy(m);
    return loss < first && hits / ROWS > 0.9 ? 0 : 1;
}
