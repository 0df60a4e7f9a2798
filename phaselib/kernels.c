/* Fused CPU kernels of the batched engine's modular step (phaselib/engine.py, class _Modular).
 *
 * modular_rows (at the end) is one run's whole step over a range of rows, block by block, so that
 * nothing streams a whole (rows x classes) or (rows x hidden) tensor through memory. Within a block
 * the rows are the vector lanes: the hidden layer hT (K x ld), logits and softmax gradient zT
 * (p x ld) and dhT (width x ld) hold one row per column. So the logits need no padding to a
 * multiple of 8 classes (97 is 12 vectors and a lane of 8 when the classes are the lanes), and the
 * softmax runs down the columns, 8 rows at a time, with no horizontal maxima or sums per row.
 * They compute the same quantities as the torch operations of the Python fallback (engine.py), up
 * to float32 rounding order; tests/test_kernels.py checks them against float64 truth and those
 * operations. Plain C (GCC vector extensions), single-threaded: the engine runs them from its
 * worker threads (ctypes drops the GIL for the call). Built and loaded by phaselib/kernels.py.
 * (Rows as lanes cannot skip the hidden units a row leaves at zero, about half; a step with rows as
 * rows that skips them, benchmarks/sparse_hidden.c, measured slower: see that benchmark.)
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

static inline float hsum8(v8f v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}


/* ---------------------------------------------------------------- small matmuls
 * C (m x 8 nv, row stride ldc) = A B, where B is (k x 8 nv, row stride ldb) and A's element
 * (i, kk) is A[i * ars + kk * aks] (so A may be given transposed).
 * Register tiles of up to 6 rows x 4 vectors: per kk, NV loads of B, MR broadcasts of A, MR NV FMAs
 * into as many accumulators (24 of them, with 4 B vectors and the broadcast, use 29 of AVX-512's
 * 32 vector registers: with AVX the "v" constraint lets the compiler use all of them, and on AVX2
 * it is the 16 ymm registers; without AVX no register holds a v8f, and the hint is left out).
 * Each C entry is a plain kk-ascending FMA chain, so the result depends only on the inputs, never
 * on alignment, thread or block boundaries. */
#if defined(__AVX__)
#define IN_REGISTER(x) __asm__("" : "+v"(x))
#else /* no 32-byte vector registers (SSE only, or another architecture): no constraint fits a v8f */
#define IN_REGISTER(x) ((void)0)
#endif

static inline __attribute__((always_inline)) void mm_tile(const int MR, const int NV, const float *A, int64_t ars,
                                                          int64_t aks, const float *B, int64_t ldb, float *C,
                                                          int64_t ldc, int64_t k) {
    v8f c[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) c[r][v] = (v8f){0};
    for (int64_t kk = 0; kk < k; kk++) {
        v8f b[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            memcpy(&b[v], B + kk * ldb + 8 * v, sizeof b[v]);
            IN_REGISTER(b[v]); /* keep B in registers: as memory operands of the FMAs, the loads
                                   (one per FMA) made the loop load-bound */
        }
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            const float s = A[r * ars + kk * aks];
            const v8f a = {s, s, s, s, s, s, s, s};
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) c[r][v] += a * b[v];
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) memcpy(C + r * ldc + 8 * v, &c[r][v], sizeof c[r][v]);
}

#define MM_TILE_NV(MR)                                                                                               \
    static void mm_tile_##MR(int64_t nv, const float *A, int64_t ars, int64_t aks, const float *B, int64_t ldb,     \
                             float *C, int64_t ldc, int64_t k) {                                                     \
        switch (nv) {                                                                                                \
        case 4: mm_tile(MR, 4, A, ars, aks, B, ldb, C, ldc, k); break;                                               \
        case 3: mm_tile(MR, 3, A, ars, aks, B, ldb, C, ldc, k); break;                                               \
        case 2: mm_tile(MR, 2, A, ars, aks, B, ldb, C, ldc, k); break;                                               \
        default: mm_tile(MR, 1, A, ars, aks, B, ldb, C, ldc, k); break;                                              \
        }                                                                                                            \
    }
MM_TILE_NV(6)
MM_TILE_NV(5)
MM_TILE_NV(4)
MM_TILE_NV(3)
MM_TILE_NV(2)
MM_TILE_NV(1)

/* The next tile width: `full` unless the rest is full + 1, which goes as two tiles of about half
 * (a 1-wide tile has too few independent FMA chains to cover the FMA latency). */
static inline int64_t tile_width(int64_t rest, int64_t full) {
    return rest == full + 1 ? (full + 2) / 2 : rest < full ? rest : full;
}

/* C = A B: column panels of 4 vectors outermost, so the panel of B (k x 32 floats) stays in L1
 * while every strip of up to 6 rows of C passes over it. A remainder of 7 rows goes as 4 + 3 and
 * of 5 vectors as 3 + 2 (tile_width). */
static void mm(int64_t m, int64_t nv, int64_t k, const float *A, int64_t ars, int64_t aks, const float *B,
               int64_t ldb, float *C, int64_t ldc) {
    for (int64_t v = 0, w; v < nv; v += w) {
        w = tile_width(nv - v, 4);
        for (int64_t i = 0, mr; i < m; i += mr) {
            mr = tile_width(m - i, 6);
            const float *Ai = A + i * ars, *Bv = B + 8 * v;
            float *Cv = C + i * ldc + 8 * v;
            switch (mr) {
            case 6: mm_tile_6(w, Ai, ars, aks, Bv, ldb, Cv, ldc, k); break;
            case 5: mm_tile_5(w, Ai, ars, aks, Bv, ldb, Cv, ldc, k); break;
            case 4: mm_tile_4(w, Ai, ars, aks, Bv, ldb, Cv, ldc, k); break;
            case 3: mm_tile_3(w, Ai, ars, aks, Bv, ldb, Cv, ldc, k); break;
            case 2: mm_tile_2(w, Ai, ars, aks, Bv, ldb, Cv, ldc, k); break;
            default: mm_tile_1(w, Ai, ars, aks, Bv, ldb, Cv, ldc, k); break;
            }
        }
    }
}

/* The output layer's gradient, as lane sums: lanes[k][c] (8 floats) += sum over the block's row
 * vectors v of hT[k][v] * dzT[c][v], lane by lane (lanes is K x p x 8; modular_rows adds the
 * 8 lanes at the end of its rows). A tile of MK rows of hT by NC rows of dzT keeps MK NC
 * accumulators (5 x 4: 20, with 9 loaded vectors 29 registers) for a whole block: no broadcasts,
 * and no horizontal sums in the loop. */
static inline __attribute__((always_inline)) void lane_tile(const int MK, const int NC, const float *hT,
                                                            const float *dzT, int64_t ld, int64_t nvec, float *lanes,
                                                            int64_t p) {
    v8f c[5][4];
#pragma GCC unroll 5
    for (int r = 0; r < MK; r++)
#pragma GCC unroll 4
        for (int q = 0; q < NC; q++) memcpy(&c[r][q], lanes + (r * p + q) * 8, sizeof c[r][q]);
    for (int64_t v = 0; v < nvec; v++) {
        v8f h[5], d[4];
#pragma GCC unroll 5
        for (int r = 0; r < MK; r++) {
            memcpy(&h[r], hT + r * ld + 8 * v, sizeof h[r]);
            IN_REGISTER(h[r]);
        }
#pragma GCC unroll 4
        for (int q = 0; q < NC; q++) {
            memcpy(&d[q], dzT + q * ld + 8 * v, sizeof d[q]);
            IN_REGISTER(d[q]);
        }
#pragma GCC unroll 5
        for (int r = 0; r < MK; r++)
#pragma GCC unroll 4
            for (int q = 0; q < NC; q++) c[r][q] += h[r] * d[q];
    }
#pragma GCC unroll 5
    for (int r = 0; r < MK; r++)
#pragma GCC unroll 4
        for (int q = 0; q < NC; q++) memcpy(lanes + (r * p + q) * 8, &c[r][q], sizeof c[r][q]);
}

#define LANE_TILE_NC(MK)                                                                                             \
    static void lane_tile_##MK(int64_t nc, const float *hT, const float *dzT, int64_t ld, int64_t nvec,             \
                               float *lanes, int64_t p) {                                                            \
        switch (nc) {                                                                                                \
        case 4: lane_tile(MK, 4, hT, dzT, ld, nvec, lanes, p); break;                                                \
        case 3: lane_tile(MK, 3, hT, dzT, ld, nvec, lanes, p); break;                                                \
        case 2: lane_tile(MK, 2, hT, dzT, ld, nvec, lanes, p); break;                                                \
        default: lane_tile(MK, 1, hT, dzT, ld, nvec, lanes, p); break;                                               \
        }                                                                                                            \
    }
LANE_TILE_NC(5)
LANE_TILE_NC(4)
LANE_TILE_NC(3)
LANE_TILE_NC(2)
LANE_TILE_NC(1)

static void lanes_acc(int64_t K, int64_t p, const float *hT, const float *dzT, int64_t ld, int64_t nvec,
                      float *lanes) {
    for (int64_t k = 0, mk; k < K; k += mk) {
        mk = tile_width(K - k, 5);
        for (int64_t c = 0, nc; c < p; c += nc) {
            nc = tile_width(p - c, 4);
            const float *h = hT + k * ld, *d = dzT + c * ld;
            float *l = lanes + (k * p + c) * 8;
            switch (mk) {
            case 5: lane_tile_5(nc, h, d, ld, nvec, l, p); break;
            case 4: lane_tile_4(nc, h, d, ld, nvec, l, p); break;
            case 3: lane_tile_3(nc, h, d, ld, nvec, l, p); break;
            case 2: lane_tile_2(nc, h, d, ld, nvec, l, p); break;
            default: lane_tile_1(nc, h, d, ld, nvec, l, p); break;
            }
        }
    }
}

/* ---------------------------------------------------------------- layout changes and elementwise work */

#ifdef __clang__
#define SHUFFLE2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE2(a, b, ...) __builtin_shuffle(a, b, (v8i){__VA_ARGS__})
#endif

/* 8 x 8 transpose in registers: c[k][j] = r[j][k] (interleave pairs, then pairs of pairs, then halves). */
static inline void transpose8(const v8f r[8], v8f c[8]) {
    v8f t[8], u[8];
    for (int j = 0; j < 8; j += 2) {
        t[j] = SHUFFLE2(r[j], r[j + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[j + 1] = SHUFFLE2(r[j], r[j + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int h = 0; h < 8; h += 4) {
        u[h + 0] = SHUFFLE2(t[h + 0], t[h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[h + 1] = SHUFFLE2(t[h + 0], t[h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[h + 2] = SHUFFLE2(t[h + 1], t[h + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[h + 3] = SHUFFLE2(t[h + 1], t[h + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int k = 0; k < 4; k++) {
        c[k] = SHUFFLE2(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        c[k + 4] = SHUFFLE2(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}

/* x < 0 ? 0 : x, lane by lane: NaN stays NaN, as torch.relu keeps it. */
static inline v8f relu8(v8f x) { return (v8f)(~(v8i)(x < 0.0f) & (v8i)x); }

/* Hidden layer of the one-hot MLP, one row per column: hT[k][i] = relu(E[ia[i]][k] + E[ib[i]][k])
 * for rows i < rows and k < width (E's rows are first-layer weight columns, bias folded into the
 * a-rows); columns rows .. (rows rounded up to 8) - 1 are set to 0. Rows of hT have stride ld. */
void hidden_cols(const float *E, int64_t width, const int64_t *ia, const int64_t *ib, int64_t rows, float *hT,
                 int64_t ld) {
    const int64_t W8 = width / 8 * 8;
    for (int64_t i0 = 0; i0 < rows; i0 += 8) {
        const int64_t nr = rows - i0 < 8 ? rows - i0 : 8;
        for (int64_t k0 = 0; k0 < W8; k0 += 8) {
            v8f r[8], c[8];
            for (int64_t j = 0; j < 8; j++) {
                r[j] = (v8f){0};
                if (j < nr) {
                    v8f ea, eb;
                    memcpy(&ea, E + ia[i0 + j] * width + k0, sizeof ea);
                    memcpy(&eb, E + ib[i0 + j] * width + k0, sizeof eb);
                    r[j] = relu8(ea + eb);
                }
            }
            transpose8(r, c);
            for (int k = 0; k < 8; k++) memcpy(hT + (k0 + k) * ld + i0, &c[k], sizeof c[k]);
        }
        for (int64_t k = W8; k < width; k++)
            for (int64_t j = 0; j < 8; j++) {
                const float s = j < nr ? E[ia[i0 + j] * width + k] + E[ib[i0 + j] * width + k] : 0.0f;
                hT[k * ld + i0 + j] = s < 0.0f ? 0.0f : s;
            }
    }
}

/* Softmax cross-entropy of `rows` rows held as the columns of zT (p x ld, ld >= rows rounded up
 * to 8), labels y, 8 rows (one vector) at a time down the p classes:
 *   m = max_c z_c;  e_c = exp(max(z_c - m, floor));  s = sum_c e_c
 *   sums[i] = s;  shift[i] = z_y - m;  correct[i] = (z_y >= m)     (where given)
 *   (the caller forms nll = log(s) - (z_y - m) with one vectorised log over all rows)
 *   if train: zT becomes dz_c = e_c / s - [c == y]  (e_c times the reciprocal of s, within an ulp
 *             of the quotient); the columns past `rows` in the last vector get dz = 0.
 * A NaN logit makes its row's s, nll and dz NaN (as in the torch chain); its hit is unspecified. */
void xent_cols(float *zT, int64_t ld, int64_t rows, int64_t train, int64_t p, const int64_t *y, float floor_,
               float *sums, float *shift, uint8_t *correct) {
    const v8f fl = (v8f){0} + floor_;
    for (int64_t i0 = 0; i0 < rows; i0 += 8) {
        const int64_t nr = rows - i0 < 8 ? rows - i0 : 8;
        float *z = zT + i0;
        v8f m0, m1 = (v8f){0} - __builtin_inff(), m2 = m1, m3 = m1, zv;
        memcpy(&m0, z, sizeof m0);
        int64_t c = 1;
        for (; c + 3 <= p; c += 3) { /* three running maxima: MAXPS's latency, not its rate, bounds one */
            memcpy(&zv, z + c * ld, sizeof zv);
            m1 = pick_max(zv, m1);
            memcpy(&zv, z + (c + 1) * ld, sizeof zv);
            m2 = pick_max(zv, m2);
            memcpy(&zv, z + (c + 2) * ld, sizeof zv);
            m3 = pick_max(zv, m3);
        }
        for (; c < p; c++) {
            memcpy(&zv, z + c * ld, sizeof zv);
            m1 = pick_max(zv, m1);
        }
        const v8f m = pick_max(pick_max(m0, m1), pick_max(m2, m3));
        for (int64_t j = 0; j < nr; j++) {
            const float zy = z[y[i0 + j] * ld + j];
            if (shift) shift[i0 + j] = zy - m[j];
            if (correct) correct[i0 + j] = zy >= m[j];
        }
        v8f s0 = {0}, s1 = {0};
        for (c = 0; c + 2 <= p; c += 2) {
            v8f a, b;
            memcpy(&a, z + c * ld, sizeof a);
            memcpy(&b, z + (c + 1) * ld, sizeof b);
            a = exp_range(pick_max(fl, a - m)); /* fl > d ? fl : d: a NaN stays NaN */
            b = exp_range(pick_max(fl, b - m));
            memcpy(z + c * ld, &a, sizeof a);
            memcpy(z + (c + 1) * ld, &b, sizeof b);
            s0 += a;
            s1 += b;
        }
        if (c < p) {
            v8f a;
            memcpy(&a, z + c * ld, sizeof a);
            a = exp_range(pick_max(fl, a - m));
            memcpy(z + c * ld, &a, sizeof a);
            s0 += a;
        }
        const v8f s = s0 + s1;
        if (sums)
            for (int64_t j = 0; j < nr; j++) sums[i0 + j] = s[j];
        if (train) {
            v8f r = 1.0f / s;
            for (int64_t j = nr; j < 8; j++) r[j] = 0.0f; /* columns past the rows: no gradient */
            for (c = 0; c < p; c++) {
                v8f a;
                memcpy(&a, z + c * ld, sizeof a);
                a = a * r;
                memcpy(z + c * ld, &a, sizeof a);
            }
            for (int64_t j = 0; j < nr; j++) z[y[i0 + j] * ld + j] -= 1.0f;
        }
    }
}

/* dst[0..8) += g. */
static inline void add8(float *dst, v8f g) {
    v8f x;
    memcpy(&x, dst, sizeof x);
    x += g;
    memcpy(dst, &x, sizeof x);
}

/* First-layer gradient of the one-hot MLP from dhT (width x ld) and hT (>= width rows, stride ld):
 * dE[ia[i]] += g_i, dE[ib[i]] += g_i (and db1 += g_i if db1 is given) over rows i < n in row
 * order, g_i[k] = dhT[k][i] where hT[k][i] > 0, else 0 (ReLU's derivative, as torch's
 * threshold_backward: h <= 0 gives 0, NaN passes the gradient). Blocks of 8 x 8 are masked down
 * the columns and transposed in registers into rows. dE (rows x width) is added to, not zeroed. */
void scatter_cols(const float *dhT, const float *hT, int64_t ld, const int64_t *ia, const int64_t *ib, int64_t n,
                  int64_t width, float *dE, float *db1) {
    const int64_t W8 = width / 8 * 8;
    for (int64_t i0 = 0; i0 < n; i0 += 8) {
        const int64_t nr = n - i0 < 8 ? n - i0 : 8;
        for (int64_t k0 = 0; k0 < W8; k0 += 8) {
            v8f r[8], g[8];
            for (int k = 0; k < 8; k++) {
                v8f d, h;
                memcpy(&d, dhT + (k0 + k) * ld + i0, sizeof d);
                memcpy(&h, hT + (k0 + k) * ld + i0, sizeof h);
                r[k] = (v8f)(~(v8i)(h <= 0.0f) & (v8i)d);
            }
            transpose8(r, g);
            for (int64_t j = 0; j < nr; j++) {
                add8(dE + ia[i0 + j] * width + k0, g[j]);
                add8(dE + ib[i0 + j] * width + k0, g[j]);
                if (db1) add8(db1 + k0, g[j]);
            }
        }
        for (int64_t j = 0; j < nr; j++)
            for (int64_t k = W8; k < width; k++) {
                const float g = hT[k * ld + i0 + j] <= 0.0f ? 0.0f : dhT[k * ld + i0 + j];
                dE[ia[i0 + j] * width + k] += g;
                dE[ib[i0 + j] * width + k] += g;
                if (db1) db1[k] += g;
            }
    }
}

/* ---------------------------------------------------------------- the fused modular step */

/* Row stride of a block's column buffers: the block rounded up to 8, plus 16 floats, so that
 * successive rows are not 4 KB-periodic (at 256 rows they were 1 KB apart, a class's column then
 * mapped to 4 of L1's 64 sets, and the logits' matmul and the softmax ran from L2). */
static int64_t block_ld(int64_t block) { return (block + 7) / 8 * 8 + 16; }

/* The phases of modular_rows' block loop, timed only in a build with -DKERNEL_PHASE_TIMING
 * (benchmarks/engine_floor.py): PHASE(i, call) then adds the call's seconds to kernel_phase_s[i]
 * (hidden layer, logits, softmax, dW2, dh, scatter-add; a plain global, so one call at a time).
 * In the engine's build it is the call alone. */
#ifdef KERNEL_PHASE_TIMING
#include <time.h>
double kernel_phase_s[6];
static double phase_clock(void) { /* C11's clock (the build is -std=c11, without POSIX's) */
    struct timespec t;
    timespec_get(&t, TIME_UTC);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
#define PHASE(i, call)                                                                                               \
    do {                                                                                                             \
        const double t0_ = phase_clock();                                                                            \
        call;                                                                                                        \
        kernel_phase_s[i] += phase_clock() - t0_;                                                                    \
    } while (0)
#else
#define PHASE(i, call) call
#endif

/* Floats of scratch modular_rows needs per call (per worker) for blocks of `block` rows. */
int64_t modular_scratch(int64_t p, int64_t width, int64_t block) {
    const int64_t ld = block_ld(block), K = width + 1;
    return K * ld + p * ld + width * ld + K * p * 8;
}

/* Rows [lo, hi) of one run's modular step, in blocks of `block` rows taken from lo on, every block
 * finished in the core's L2 before the next, its rows as the vector lanes (see the top):
 *   hT = relu(E[ia] + E[ib])^T       (K x b, K = width + 1: the constant unit carries b2)
 *   zT = W2f hT                      (p x b logits; W2f = [W2 b2], read from W2T (K x P8))
 *   xent_cols: sums, shift, correct (each where given) and, for train blocks (rows < n_train),
 *              dz = softmax - onehot written over zT
 *   lanes += hT dz^T by lanes        (dW2's and db2's sums, 8 lanes each, added up at the end)
 *   dhT = W2^T dzT;  g = dh * (h > 0);  dE[ia] += g;  dE[ib] += g;  db1 += g   (row order)
 * (W2^T is W2T's first width rows: one copy of the output weights serves both products.) dW2 (K x P8, row stride P8: W2's gradient in
 * columns < p of rows < width, b2's in row width; columns >= p are set to 0), dE
 * (dest_rows x width) and db1 are this call's own sums, zeroed first: the caller adds the sums of
 * a run's fixed row segments, so the result does not depend on which thread ran which segment.
 * A block never straddles n_train, so the train blocks are the same whether or not the test rows
 * are evaluated too. sums/shift/correct are indexed by row (entry lo is row lo's). work holds
 * modular_scratch(p, width, block) floats. */
void modular_rows(const float *E, const float *W2T, int64_t p, int64_t P8, int64_t width,
                  const int64_t *ia, const int64_t *ib, const int64_t *y, int64_t lo, int64_t hi, int64_t n_train,
                  int64_t block, float floor_, float *sums, float *shift, uint8_t *correct, float *work, float *dW2,
                  float *dE, int64_t dest_rows, float *db1) {
    const int64_t K = width + 1, ld = block_ld(block);
    float *hT = work, *zT = hT + K * ld, *dhT = zT + p * ld, *lanes = dhT + width * ld;
    memset(lanes, 0, sizeof(float) * (size_t)(K * p * 8));
    memset(dE, 0, sizeof(float) * (size_t)(dest_rows * width));
    memset(db1, 0, sizeof(float) * (size_t)width);
    for (int64_t b0 = lo; b0 < hi;) {
        const int64_t end = b0 < n_train && n_train < hi ? n_train : hi; /* train and test rows in separate blocks */
        const int64_t b = end - b0 < block ? end - b0 : block;
        const int64_t nt = b0 < n_train ? b : 0, nvec = (b + 7) / 8;
        PHASE(0, hidden_cols(E, K, ia + b0, ib + b0, b, hT, ld));
        PHASE(1, mm(p, nvec, K, W2T, 1, P8, hT, ld, zT, ld));
        PHASE(2, xent_cols(zT, ld, b, nt > 0, p, y + b0, floor_, sums ? sums + b0 : NULL,
                           shift ? shift + b0 : NULL, correct ? correct + b0 : NULL));
        if (nt) {
            PHASE(3, lanes_acc(K, p, hT, zT, ld, nvec, lanes));
            PHASE(4, mm(width, nvec, p, W2T, P8, 1, zT, ld, dhT, ld)); /* W2T's rows < width, read as W2^T */
            PHASE(5, scatter_cols(dhT, hT, ld, ia + b0, ib + b0, nt, width, dE, db1));
        }
        b0 += b;
    }
    for (int64_t k = 0; k < K; k++) {
        for (int64_t c = 0; c < p; c++) {
            v8f l;
            memcpy(&l, lanes + (k * p + c) * 8, sizeof l);
            dW2[k * P8 + c] = hsum8(l);
        }
        for (int64_t c = p; c < P8; c++) dW2[k * P8 + c] = 0.0f;
    }
}
