/* Peak float32 multiply-add throughput of one core, for benchmarks/fma_peak.py.
 *
 * CHAINS independent vector chains a = a * x + y (one fused multiply-add each with
 * -ffp-contract=fast), enough to cover FMA latency x FMA pipes on current x86 and ARM cores (4 x 2
 * = 8 on Zen 3). The chains start from the caller's distinct values: with equal constant starts
 * the compiler proves them equal and keeps one chain, which then reads 12x too fast (a first
 * version of this loop did). x is just below 1 and y small, so every value stays a normal float.
 * The vectors are the widest the build targets (AVX-512: 16 lanes, else 8). */
#include <stdint.h>

#ifdef __AVX512F__
#define LANES 16
#else
#define LANES 8
#endif
#define CHAINS 12
typedef float vf __attribute__((vector_size(4 * LANES)));

/* Runs `iters` steps of every chain, chain c starting from start[c % nstart]; writes the chains'
 * sums to out[0..LANES) (out holds at least 16 floats; so nothing is dead code) and returns the
 * FLOPs done (2 per lane per multiply-add). */
double fma_chains(int64_t iters, const float *start, int64_t nstart, float x, float y, float *out) {
    vf a[CHAINS];
    for (int c = 0; c < CHAINS; c++)
        for (int l = 0; l < LANES; l++) a[c][l] = start[c % nstart] + 0.001f * (float)l;
    const vf vx = (vf){0} + x, vy = (vf){0} + y;
    for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++) a[c] = a[c] * vx + vy;
    }
    vf s = a[0];
    for (int c = 1; c < CHAINS; c++) s += a[c];
    for (int l = 0; l < LANES; l++) out[l] = s[l];
    return 2.0 * LANES * CHAINS * (double)iters;
}
