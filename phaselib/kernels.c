/* Fused CPU kernels of the batched engine's modular step (phaselib/engine.py, class _Modular).
 *
 * Each function replaces a chain of elementwise torch operations that each stream a whole
 * (rows x classes) or (rows x hidden) tensor through memory; here every row is finished while it
 * is in L1. They compute the same quantities as the torch chain they replace (see the Python
 * fallback in engine.py), up to float32 rounding order; tests/test_kernels.py checks both.
 * Plain C (GCC vector extensions), single-threaded: the engine runs them from its worker threads
 * (ctypes drops the GIL for the call). Built and loaded by phaselib/kernels.py.
 */
#include <stdint.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* exp(x) for x in [floor, 0] with floor >= -87 (results stay normal floats).
 * Range reduction x = n ln2 + r, |r| <= ln2/2, with ln2 split in a short high part (n * hi is
 * exact for |n| < 2^8) and a low part; e^r by its Taylor series to degree 7 (truncation error
 * below r^8/8! = 6e-9 relative at |r| = ln2/2, under float32's 6e-8 rounding); 2^n put into the
 * exponent bits. Maximum error measured against float64 exp: see tests/test_kernels.py. */
static inline v8f exp_range(v8f x) {
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    const v8f t = x * 1.44269504088896341f + shifter;
    const v8f n = t - shifter;
    const v8i ni = (v8i)t - (v8i)((v8f){0} + shifter); /* the integer n, from t's low mantissa bits */
    v8f r = x - n * 0.693359375f; /* ln 2 high part: 355/512 */
    r = r - n * -2.12194440e-4f;  /* ln 2 - 355/512 */
    v8f q = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
    q = q * r + 1.0f / 120.0f;
    q = q * r + 1.0f / 24.0f;
    q = q * r + 1.0f / 6.0f;
    q = q * r + 0.5f;
    q = q * r + 1.0f;
    q = q * r + 1.0f;
    return q * (v8f)((ni + 127) << 23);
}

/* a > b ? a : b, lane by lane (so a NaN in a gives b, a NaN in b gives b). With AVX this is one
 * MAXPS, whose definition is exactly that; the portable form (compare, and, or) is a chain of
 * several dependent instructions, which made a row's running maximum latency-bound (measured
 * 3x slower for the max pass here). Both give the same bits. */
static inline v8f pick_max(v8f a, v8f b) {
#ifdef __AVX__
    return __builtin_ia32_maxps256(a, b);
#else
    const v8i gt = (v8i)(a > b);
    return (v8f)((gt & (v8i)a) | (~gt & (v8i)b));
#endif
}

#ifdef __clang__
#define LANES(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define LANES(v, ...) __builtin_shuffle(v, (v8i){__VA_ARGS__})
#endif

/* The largest lane: three MAXPS against lane swaps (the scalar chain of seven compares measured
 * slower). Exact, so the same value as any order of comparison when no lane is NaN. */
static inline float hmax8(v8f v) {
    v = pick_max(v, LANES(v, 4, 5, 6, 7, 0, 1, 2, 3));
    v = pick_max(v, LANES(v, 2, 3, 0, 1, 6, 7, 4, 5));
    v = pick_max(v, LANES(v, 1, 0, 3, 2, 5, 4, 7, 6));
    return v[0];
}

static inline float hsum8(v8f v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* Softmax cross-entropy of `rows` rows of logits z (row stride ldz, a multiple of 8, with every
 * column < ldz a class; padding classes carry -inf), labels y.
 *   m = max_j z_j;  e_j = exp(max(z_j - m, floor));  s = sum_j e_j      (all ldz columns)
 *   sums[i] = s;  shift[i] = z_y - m;  correct = (z_y >= m)           (if sums / correct given)
 *   (the caller forms nll = log(s) - (z_y - m) with one vectorised log over all rows)
 *   dz_j = e_j / s - [j == y] for j < p, rows < n_train               (row stride lddz >= p)
 * dz may be z's own first p columns (lddz = ldz): each row of z is read before its dz row is
 * written, and the engine so keeps one (rows x ldz) buffer per run instead of two.
 * A NaN logit makes s, nll and the row's dz NaN (as in the torch chain); that row's hit is then
 * unspecified (m may or may not be the NaN). */
void xent_rows(const float *z, int64_t ldz, int64_t rows, int64_t n_train, int64_t p, const int64_t *y,
               float floor_, float *sums, float *shift, uint8_t *correct, float *dz, int64_t lddz) {
    const int64_t nv = ldz / 8;
    float e[ldz];
    for (int64_t i = 0; i < rows; i++) {
        const float *zi = z + i * ldz;
        v8f vm, zv;
        memcpy(&vm, zi, sizeof vm);
        for (int64_t k = 1; k < nv; k++) {
            memcpy(&zv, zi + 8 * k, sizeof zv);
            vm = pick_max(zv, vm);
        }
        const float m = hmax8(vm);
        const v8f fl = (v8f){0} + floor_;
        for (int64_t k = 0; k < nv; k++) { /* d = max(z - m, floor); a NaN stays NaN */
            memcpy(&zv, zi + 8 * k, sizeof zv);
            const v8f d = pick_max(fl, zv - m); /* fl > d ? fl : d */
            memcpy(e + 8 * k, &d, sizeof d);
        }
        v8f vs0 = {0}, vs1 = {0};
        int64_t k = 0;
        for (; k + 1 < nv; k += 2) {
            v8f d0, d1;
            memcpy(&d0, e + 8 * k, sizeof d0);
            memcpy(&d1, e + 8 * k + 8, sizeof d1);
            d0 = exp_range(d0);
            d1 = exp_range(d1);
            memcpy(e + 8 * k, &d0, sizeof d0);
            memcpy(e + 8 * k + 8, &d1, sizeof d1);
            vs0 += d0;
            vs1 += d1;
        }
        if (k < nv) {
            v8f d0;
            memcpy(&d0, e + 8 * k, sizeof d0);
            d0 = exp_range(d0);
            memcpy(e + 8 * k, &d0, sizeof d0);
            vs0 += d0;
        }
        const v8f vs = vs0 + vs1;
        const float s = hsum8(vs);
        const int64_t yi = y[i];
        if (sums) {
            sums[i] = s;
            shift[i] = zi[yi] - m;
        }
        if (correct) correct[i] = zi[yi] >= m;
        if (i < n_train) {
            float *di = dz + i * lddz;
            for (int64_t j = 0; j < p; j++) di[j] = e[j] / s;
            di[yi] -= 1.0f;
        }
    }
}

/* Hidden layer of the one-hot MLP on the given rows: h[i] = relu(E[ia[i]] + E[ib[i]]) over
 * `width` columns (E's rows are first-layer weight columns, bias folded into the a-rows).
 * relu keeps NaN, as torch.relu does. */
void hidden_rows(const float *E, int64_t width, const int64_t *ia, const int64_t *ib, int64_t rows, float *h) {
    for (int64_t i = 0; i < rows; i++) {
        const float *ea = E + ia[i] * width, *eb = E + ib[i] * width;
        float *hi = h + i * width;
        for (int64_t k = 0; k < width; k++) {
            float v = ea[k] + eb[k];
            hi[k] = v < 0.0f ? 0.0f : v;
        }
    }
}

/* First-layer gradient of the one-hot MLP: dE[ia[i]] += g_i and dE[ib[i]] += g_i over rows
 * i < n in row order, where g_i = dh[i] where h[i] > 0, else 0 (ReLU's derivative, as
 * torch's threshold_backward: h <= 0 gives 0, NaN passes the gradient). dE (dest_rows x width)
 * is zeroed first. h has row stride ldh >= width. */
void scatter_hidden_grad(const float *dh, const float *h, int64_t ldh, const int64_t *ia, const int64_t *ib,
                         int64_t n, int64_t width, int64_t dest_rows, float *dE) {
    memset(dE, 0, sizeof(float) * (size_t)(dest_rows * width));
    for (int64_t i = 0; i < n; i++) {
        const float *gi = dh + i * width, *hi = h + i * ldh;
        float *da = dE + ia[i] * width, *db = dE + ib[i] * width;
        for (int64_t k = 0; k < width; k++) {
            float g = hi[k] <= 0.0f ? 0.0f : gi[k];
            da[k] += g;
            db[k] += g;
        }
    }
}
