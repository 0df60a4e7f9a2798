/* Fused CPU kernels of the batched engine's modular step (phaselib/engine.py, class _Modular).
 *
 * modular_rows (at the end) is one run's whole step over a range of rows, block by block, built
 * from the row kernels below and small matmuls of its own, so that nothing streams a whole
 * (rows x classes) or (rows x hidden) tensor through memory. They compute the same quantities as
 * the torch operations of the Python fallback (engine.py), up to float32 rounding order;
 * tests/test_kernels.py checks them against float64 truth and those operations.
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

/* dE[ia[i]] += g_i, dE[ib[i]] += g_i (and db1 += g_i if db1 is given) over rows i < n in row
 * order, g_i = dh[i] * (h[i] > 0); dh has row stride lddh, h ldh, dE `width`. */
static void scatter_rows(const float *dh, int64_t lddh, const float *h, int64_t ldh, const int64_t *ia,
                         const int64_t *ib, int64_t n, int64_t width, float *dE, float *db1) {
    for (int64_t i = 0; i < n; i++) {
        const float *gi = dh + i * lddh, *hi = h + i * ldh;
        float *da = dE + ia[i] * width, *db = dE + ib[i] * width;
        for (int64_t k = 0; k < width; k++) {
            const float g = hi[k] <= 0.0f ? 0.0f : gi[k];
            da[k] += g;
            db[k] += g;
            if (db1) db1[k] += g;
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
    scatter_rows(dh, width, h, ldh, ia, ib, n, width, dE, NULL);
}

/* ---------------------------------------------------------------- small matmuls
 * C (m x 8 nv, row stride ldc) = A B, or C += A B when `acc`, where B is (k x 8 nv, row stride
 * ldb) and A's element (i, kk) is A[i * ars + kk * aks] (so A may be given transposed).
 * Register tiles of 4 rows x 3 vectors: per kk, 3 loads of B, 4 broadcasts of A, 12 FMAs into 12
 * accumulators (enough independent chains to cover the FMA latency on two pipes). Each C entry is
 * a plain kk-ascending FMA chain, so the result depends only on the inputs, never on alignment,
 * thread or block boundaries (torch's BLAS rounded the same product differently by the address of
 * its output). On the engine's block shapes they ran faster than MKL's sgemm on one core in a C
 * harness during development (method and figures: the message of the commit that added them);
 * benchmarks/train_throughput.py times the whole step against the torch path. */
static inline __attribute__((always_inline)) void mm_tile(const int MR, const int NV, const float *A, int64_t ars,
                                                          int64_t aks, const float *B, int64_t ldb, float *C,
                                                          int64_t ldc, int64_t k, int acc) {
    v8f c[4][3];
#pragma GCC unroll 4
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 3
        for (int v = 0; v < NV; v++) c[r][v] = (v8f){0};
    for (int64_t kk = 0; kk < k; kk++) {
        v8f b[3];
#pragma GCC unroll 3
        for (int v = 0; v < NV; v++) {
            memcpy(&b[v], B + kk * ldb + 8 * v, sizeof b[v]);
            __asm__("" : "+x"(b[v])); /* keep B in registers: as memory operands of the FMAs, the
                                          loads (12 per kk instead of 3) made the loop load-bound */
        }
#pragma GCC unroll 4
        for (int r = 0; r < MR; r++) {
            const float s = A[r * ars + kk * aks];
            const v8f a = {s, s, s, s, s, s, s, s};
#pragma GCC unroll 3
            for (int v = 0; v < NV; v++) c[r][v] += a * b[v];
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 3
        for (int v = 0; v < NV; v++) {
            float *cp = C + r * ldc + 8 * v;
            v8f out = c[r][v];
            if (acc) {
                v8f old;
                memcpy(&old, cp, sizeof old);
                out = old + out;
            }
            memcpy(cp, &out, sizeof out);
        }
}

/* One strip of MR rows of C over the columns [0, 8 nv): tiles of 3 vectors, the rest in tiles of 2
 * (and at most one of 1). A remainder of 4 goes as 2 + 2, not 3 + 1: a 1-vector tile has only MR
 * independent FMA chains, too few to cover the FMA latency: at p = 97 (13 vectors), 4 of a 4-row
 * strip's 28 cycles per k step went to a thirteenth of its work (the logits' matmul measured 91 ->
 * 98 GFLOP/s on one core in a C harness, details in the commit message). Same bits either way. */
#define MM_STRIP(MR)                                                                                                 \
    static void mm_strip_##MR(const float *A, int64_t ars, int64_t aks, const float *B, int64_t ldb, float *C,      \
                              int64_t ldc, int64_t nv, int64_t k, int acc) {                                         \
        int64_t v = 0;                                                                                               \
        for (; v + 3 <= nv && nv - v != 4; v += 3)                                                                  \
            mm_tile(MR, 3, A, ars, aks, B + 8 * v, ldb, C + 8 * v, ldc, k, acc);                                     \
        for (; v + 2 <= nv; v += 2) mm_tile(MR, 2, A, ars, aks, B + 8 * v, ldb, C + 8 * v, ldc, k, acc);            \
        if (v < nv) mm_tile(MR, 1, A, ars, aks, B + 8 * v, ldb, C + 8 * v, ldc, k, acc);                             \
    }
MM_STRIP(4)
MM_STRIP(3)
MM_STRIP(2)
MM_STRIP(1)

static void mm_strip(int64_t mr, const float *A, int64_t ars, int64_t aks, const float *B, int64_t ldb, float *C,
                     int64_t ldc, int64_t nv, int64_t k, int acc) {
    switch (mr) {
    case 4: mm_strip_4(A, ars, aks, B, ldb, C, ldc, nv, k, acc); break;
    case 3: mm_strip_3(A, ars, aks, B, ldb, C, ldc, nv, k, acc); break;
    case 2: mm_strip_2(A, ars, aks, B, ldb, C, ldc, nv, k, acc); break;
    case 1: mm_strip_1(A, ars, aks, B, ldb, C, ldc, nv, k, acc); break;
    }
}

/* C = A B (or += with acc), strips of 4 rows outermost: for a small B that stays in L1 (the
 * logits' W2^T, dh's W2) while A's rows stream past once.
 * Not done: skipping the ReLU zeros of h (50-64% of units active over a 3000-epoch 70% run) in
 * the logits here and in dW2 (mm_acc_long_k). Per row, that needs a 1-row tile with B as the
 * FMAs' memory operands (one load per FMA), which ran at 49-60% of these tiles' speed in a C
 * harness, so at half density both products broke even or lost; and a strip of rows shares few
 * zeros (over training, the units active in any of two rows were 66-82%, of four 76-96%, whether
 * the rows share a or are random). Bits would have stayed the same: fma(0, w, c) = c for finite w. */
static void mm_rows(int64_t m, int64_t nv, int64_t k, const float *A, int64_t ars, int64_t aks, const float *B,
                    int64_t ldb, float *C, int64_t ldc, int acc) {
    for (int64_t i = 0; i < m; i += 4)
        mm_strip(m - i < 4 ? m - i : 4, A + i * ars, ars, aks, B, ldb, C + i * ldc, ldc, nv, k, acc);
}

/* C += A B over a long k (the output layer's gradient: k = a block's rows), in chunks of 64 rows
 * of B and, within a chunk, column panels of 3 vectors outermost, so the panel (64 x 24 floats)
 * stays in L1 while every strip of C passes over it (with the whole k at once it did not fit,
 * and the loop ran at 60% of this speed). Panels of 3 vectors, a remainder of 4 as 2 + 2 (see MM_STRIP). */
static void mm_acc_long_k(int64_t m, int64_t nv, int64_t k, const float *A, int64_t ars, int64_t aks,
                          const float *B, int64_t ldb, float *C, int64_t ldc) {
    for (int64_t k0 = 0; k0 < k; k0 += 64) {
        const int64_t kc = k - k0 < 64 ? k - k0 : 64;
        for (int64_t v = 0, w; v < nv; v += w) {
            w = nv - v == 4 ? 2 : nv - v < 3 ? nv - v : 3;
            for (int64_t i = 0; i < m; i += 4)
                mm_strip(m - i < 4 ? m - i : 4, A + i * ars + k0 * aks, ars, aks, B + k0 * ldb + 8 * v, ldb,
                         C + i * ldc + 8 * v, ldc, w, kc, 1);
        }
    }
}

/* ---------------------------------------------------------------- the fused modular step */

/* Rows [lo, hi) of one run's modular step, in blocks of `block` rows taken from lo on, every block
 * finished in the core's L2 before the next (whole-table matmuls each streamed a multi-megabyte
 * tensor, and two cores contended for memory):
 *   h = relu(E[ia] + E[ib])          (B x K, K = width + 1: the constant unit carries b2)
 *   z = h W2T                        (B x P8 logits; padding classes -inf)
 *   xent_rows: sums, shift, correct (if sums given) and dz = softmax - onehot of the train rows
 *              (rows < n_train), written over z's first p columns
 *   dW2 += h^T dz                    (K x P8, row stride P8: W2's gradient in columns < p of rows
 *                                     < width, b2's in row width; columns >= p are scratch)
 *   dh = dz W2;  g = dh * (h > 0);  dE[ia] += g;  dE[ib] += g;  db1 += g   (row order)
 * W2 is (p x H8), H8 = width rounded up to 8, zero beyond width; dhbuf (block x H8).
 * dW2, dE (dest_rows x width) and db1 are this call's own sums, zeroed first: the caller adds the
 * sums of a run's fixed row segments, so the result does not depend on which thread ran which
 * segment. A block never straddles n_train, so the train blocks are the same whether or not the
 * test rows are evaluated too. sums/shift/correct are indexed by row (entry lo is row lo's).
 * hbuf (block x K), zbuf (block x P8) and dhbuf are the caller's scratch. */
void modular_rows(const float *E, const float *W2T, const float *W2, int64_t p, int64_t P8, int64_t width,
                  const int64_t *ia, const int64_t *ib, const int64_t *y, int64_t lo, int64_t hi,
                  int64_t n_train, int64_t block, float floor_, float *sums, float *shift, uint8_t *correct,
                  float *hbuf, float *zbuf, float *dhbuf, float *dW2, float *dE, int64_t dest_rows, float *db1) {
    const int64_t K = width + 1, H8 = (width + 7) / 8 * 8;
    memset(dW2, 0, sizeof(float) * (size_t)(K * P8));
    memset(dE, 0, sizeof(float) * (size_t)(dest_rows * width));
    memset(db1, 0, sizeof(float) * (size_t)width);
    for (int64_t b0 = lo; b0 < hi;) {
        const int64_t end = b0 < n_train && n_train < hi ? n_train : hi; /* train and test rows in separate blocks */
        const int64_t b = end - b0 < block ? end - b0 : block;
        const int64_t nt = b0 < n_train ? b : 0;
        hidden_rows(E, K, ia + b0, ib + b0, b, hbuf);
        mm_rows(b, P8 / 8, K, hbuf, K, 1, W2T, P8, zbuf, P8, 0);
        xent_rows(zbuf, P8, b, nt, p, y + b0, floor_, sums ? sums + b0 : NULL, sums ? shift + b0 : NULL,
                  correct ? correct + b0 : NULL, zbuf, P8);
        if (nt) {
            mm_acc_long_k(K, P8 / 8, nt, hbuf, 1, K, zbuf, P8, dW2, P8);
            mm_rows(nt, H8 / 8, p, zbuf, P8, 1, W2, H8, dhbuf, H8, 0);
            scatter_rows(dhbuf, H8, hbuf, K, ia + b0, ib + b0, nt, width, dE, db1);
        }
        b0 += b;
    }
}
