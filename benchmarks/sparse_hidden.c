/* An experiment for benchmarks/sparse_hidden.py: the fused modular step with the rows held as rows
 * (classes as vector lanes), skipping every hidden unit a row leaves at zero.
 *
 * About half the hidden units of the study's MLP are zero on any row (ReLU), in training as at
 * initialisation, so the three output-layer products (logits, dW2, dh) need about half their
 * multiply-adds if each row skips its inactive units, exactly (a zero unit adds exactly zero).
 * phaselib/kernels.c cannot skip them: its vector lanes are 8 rows, and 8 rows almost never share
 * an inactive unit. Here each row walks its own active units (a bit mask, lowest unit first):
 *   logits   z += h_k W2T[k]                        (per active unit: one row of W2T, 13 vectors)
 *   dh       g_k = W2T[k] . dz, for 4 units at once (dot products, then horizontal sums)
 *   dW2      W2T-shaped sums, per unit over the rows of a 32-row mini-block active at it
 * with the same softmax cross-entropy and the same outputs as modular_rows (whose helpers this
 * file includes). Not used by phaselib: it measures whether skipping pays. Its logits have the
 * bits of modular_rows' (the same ascending FMA chain minus exact zeros); the gradients differ in
 * summation order only. */
#include "../phaselib/kernels.c"

#define MINI 32 /* rows per mini-block: the dW2 pass reads their dz from L1 */
#define MAX_NV 16 /* classes up to 128 */

/* Bit j set where h[j] != 0 (a NaN counts as active, as the dense kernels pass it on). */
static inline uint32_t active8(v8f h) {
#ifdef __AVX__
    return (uint32_t)__builtin_ia32_movmskps256((v8f)(h != 0.0f));
#else
    uint32_t m = 0;
    for (int j = 0; j < 8; j++) m |= (uint32_t)(h[j] != 0.0f) << j;
    return m;
#endif
}

/* z (NV vectors) = sum over the active units k (ascending) of h[k] * W2T[k]. */
static inline __attribute__((always_inline)) void logits_row(const int NV, const float *W2T, int64_t P8,
                                                             const float *h, const uint64_t *mask, int64_t mw,
                                                             float *z) {
    v8f acc[MAX_NV];
    for (int v = 0; v < NV; v++) acc[v] = (v8f){0};
    for (int64_t w = 0; w < mw; w++)
        for (uint64_t m = mask[w]; m; m &= m - 1) {
            const int64_t k = w * 64 + __builtin_ctzll(m);
            const v8f hk = (v8f){0} + h[k];
            for (int v = 0; v < NV; v++) {
                v8f x;
                memcpy(&x, W2T + k * P8 + 8 * v, sizeof x);
                acc[v] += hk * x;
            }
        }
    for (int v = 0; v < NV; v++) memcpy(z + 8 * v, &acc[v], sizeof acc[v]);
}

/* For the active units k < width: g = W2T[k] . dz;  dEa[k] += g;  dEb[k] += g;  db1[k] += g. */
static inline __attribute__((always_inline)) void dh_row(const int NV, const float *W2T, int64_t P8, int64_t width,
                                                         const float *dz, const uint64_t *mask, int64_t mw,
                                                         float *dEa, float *dEb, float *db1) {
    v8f d[MAX_NV];
    for (int v = 0; v < NV; v++) memcpy(&d[v], dz + 8 * v, sizeof d[v]);
    int64_t ks[64 * 4], na = 0;
    for (int64_t w = 0; w < mw; w++)
        for (uint64_t m = mask[w]; m; m &= m - 1) {
            const int64_t k = w * 64 + __builtin_ctzll(m);
            ks[na] = k;
            na += k < width;
        }
    for (int64_t j = 0; j < na; j += 4) {
        const int64_t u = na - j < 4 ? na - j : 4;
        v8f a[4] = {{0}, {0}, {0}, {0}};
        for (int v = 0; v < NV; v++)
            for (int64_t q = 0; q < 4; q++) {
                v8f x;
                memcpy(&x, W2T + ks[j + (q < u ? q : 0)] * P8 + 8 * v, sizeof x);
                a[q] += x * d[v];
            }
        for (int64_t q = 0; q < u; q++) {
            const int64_t k = ks[j + q];
            const float g = hsum8(a[q]);
            dEa[k] += g;
            dEb[k] += g;
            db1[k] += g;
        }
    }
}

/* dW2k (NV vectors) += sum over the mini-block rows i in m (ascending) of h_i[k] * dz_i. */
static inline __attribute__((always_inline)) void dw2_unit(const int NV, float *dW2k, const float *hb, int64_t KP,
                                                           int64_t k, const float *dzb, int64_t P8, uint32_t m) {
    v8f acc[MAX_NV];
    for (int v = 0; v < NV; v++) memcpy(&acc[v], dW2k + 8 * v, sizeof acc[v]);
    for (; m; m &= m - 1) {
        const int i = __builtin_ctz(m);
        const v8f hk = (v8f){0} + hb[i * KP + k];
        for (int v = 0; v < NV; v++) {
            v8f x;
            memcpy(&x, dzb + i * P8 + 8 * v, sizeof x);
            acc[v] += hk * x;
        }
    }
    for (int v = 0; v < NV; v++) memcpy(dW2k + 8 * v, &acc[v], sizeof acc[v]);
}

/* One row's softmax cross-entropy over z (nv vectors; classes >= p are padding), as xent_cols. */
static void xent_row(float *z, int64_t nv, int64_t p, int64_t y, int train, float floor_, float *sum, float *shift,
                     uint8_t *correct) {
    v8f mv = (v8f){0} - __builtin_inff();
    for (int64_t v = 0; v < nv; v++) {
        v8f a;
        memcpy(&a, z + 8 * v, sizeof a);
        mv = pick_max(a, mv);
    }
    float mx = mv[0];
    for (int j = 1; j < 8; j++) mx = mv[j] > mx ? mv[j] : mx;
    const float zy = z[y];
    if (shift) *shift = zy - mx;
    if (correct) *correct = zy >= mx;
    const v8f m = (v8f){0} + mx, fl = (v8f){0} + floor_;
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    v8f s0 = {0}, s1 = {0};
    for (int64_t v = 0; v < nv; v++) {
        v8f a;
        memcpy(&a, z + 8 * v, sizeof a);
        a = (v8f)((v8i)exp_range(pick_max(fl, a - m)) & (lane < (v8i){0} + (int32_t)(p - 8 * v))); /* padding: 0 */
        memcpy(z + 8 * v, &a, sizeof a);
        if (v & 1)
            s1 += a;
        else
            s0 += a;
    }
    const float total = hsum8(s0 + s1);
    if (sum) *sum = total;
    if (train) {
        const v8f r = (v8f){0} + 1.0f / total;
        for (int64_t v = 0; v < nv; v++) {
            v8f a;
            memcpy(&a, z + 8 * v, sizeof a);
            a *= r;
            memcpy(z + 8 * v, &a, sizeof a);
        }
        z[y] -= 1.0f;
    }
}

/* The products with the class count as a compile-time constant, so each row's accumulators stay
 * in registers. */
#define BY_NV(call)                                                                                            \
    switch (nv) {                                                                                              \
    case 1: call(1); break; case 2: call(2); break; case 3: call(3); break; case 4: call(4); break;          \
    case 5: call(5); break; case 6: call(6); break; case 7: call(7); break; case 8: call(8); break;          \
    case 9: call(9); break; case 10: call(10); break; case 11: call(11); break; case 12: call(12); break;    \
    case 13: call(13); break; case 14: call(14); break; case 15: call(15); break; default: call(16); break; \
    }

static void logits_nv(int64_t nv, const float *W2T, int64_t P8, const float *h, const uint64_t *mask, int64_t mw,
                      float *z) {
#define CALL(N) logits_row(N, W2T, P8, h, mask, mw, z)
    BY_NV(CALL)
#undef CALL
}

static void dh_nv(int64_t nv, const float *W2T, int64_t P8, int64_t width, const float *dz, const uint64_t *mask,
                  int64_t mw, float *dEa, float *dEb, float *db1) {
#define CALL(N) dh_row(N, W2T, P8, width, dz, mask, mw, dEa, dEb, db1)
    BY_NV(CALL)
#undef CALL
}

static void dw2_nv(int64_t nv, float *dW2k, const float *hb, int64_t KP, int64_t k, const float *dzb, int64_t P8,
                   uint32_t m) {
#define CALL(N) dw2_unit(N, dW2k, hb, KP, k, dzb, P8, m)
    BY_NV(CALL)
#undef CALL
}

/* Floats of scratch sparse_rows needs. */
int64_t sparse_scratch(int64_t p, int64_t width) {
    const int64_t K = width + 1, KP = (K + 7) / 8 * 8, P8 = (p + 7) / 8 * 8, mw = (K + 63) / 64;
    return MINI * KP + MINI * P8 + 2 * MINI * mw + K + 16;
}

/* modular_rows' arguments and outputs (block is ignored; p <= 128 and width < 256, else it returns
 * at once: sparse_hidden.py checks first), with dW2
 * (K x P8) holding zeros in its padding columns. */
void sparse_rows(const float *E, const float *W2T, int64_t p, int64_t P8, int64_t width, const int64_t *ia,
                 const int64_t *ib, const int64_t *y, int64_t lo, int64_t hi, int64_t n_train, int64_t block,
                 float floor_, float *sums, float *shift, uint8_t *correct, float *work, float *dW2, float *dE,
                 int64_t dest_rows, float *db1) {
    (void)block;
    if (p > 8 * MAX_NV || width + 1 > 64 * 4) return; /* beyond the class and unit bounds above: nothing */
    const int64_t K = width + 1, KP = (K + 7) / 8 * 8, nv = (p + 7) / 8, mw = (K + 63) / 64, K8 = K / 8 * 8;
    float *hb = work, *zb = hb + MINI * KP;
    uint64_t *masks = (uint64_t *)(zb + MINI * P8);
    uint32_t *columns = (uint32_t *)(masks + MINI * mw);
    memset(dW2, 0, sizeof(float) * (size_t)(K * P8));
    memset(dE, 0, sizeof(float) * (size_t)(dest_rows * width));
    memset(db1, 0, sizeof(float) * (size_t)width);
    for (int64_t b0 = lo; b0 < hi;) {
        const int64_t end = b0 < n_train && n_train < hi ? n_train : hi;
        const int64_t b = end - b0 < MINI ? end - b0 : MINI;
        const int train = b0 < n_train;
        memset(columns, 0, sizeof(uint32_t) * (size_t)K);
        for (int64_t i = 0; i < b; i++) {
            const float *ea = E + ia[b0 + i] * K, *eb = E + ib[b0 + i] * K;
            float *h = hb + i * KP, *z = zb + i * P8;
            uint64_t *mk = masks + i * mw;
            memset(mk, 0, sizeof(uint64_t) * (size_t)mw);
            for (int64_t k = 0; k < K8; k += 8) {
                v8f x, c;
                memcpy(&x, ea + k, sizeof x);
                memcpy(&c, eb + k, sizeof c);
                const v8f hv = relu8(x + c);
                memcpy(h + k, &hv, sizeof hv);
                mk[k >> 6] |= (uint64_t)active8(hv) << (k & 63);
            }
            for (int64_t k = K8; k < K; k++) {
                const float s = ea[k] + eb[k];
                h[k] = s < 0.0f ? 0.0f : s;
                mk[k >> 6] |= (uint64_t)(h[k] != 0.0f) << (k & 63);
            }
            logits_nv(nv, W2T, P8, h, mk, mw, z);
            xent_row(z, nv, p, y[b0 + i], train, floor_, sums ? sums + b0 + i : NULL, shift ? shift + b0 + i : NULL,
                     correct ? correct + b0 + i : NULL);
            if (train) {
                dh_nv(nv, W2T, P8, width, z, mk, mw, dE + ia[b0 + i] * width, dE + ib[b0 + i] * width, db1);
                for (int64_t w = 0; w < mw; w++)
                    for (uint64_t m = mk[w]; m; m &= m - 1) columns[w * 64 + __builtin_ctzll(m)] |= 1u << i;
            }
        }
        if (train)
            for (int64_t k = 0; k < K; k++)
                if (columns[k]) dw2_nv(nv, dW2 + k * P8, hb, KP, k, zb, P8, columns[k]);
        b0 += b;
    }
}
