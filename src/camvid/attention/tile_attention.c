/* Exact attention over the tiles of a TilePlan, reading queries, keys and values in place (fp32, CPU).

   Compiled on first use by camvid.attention.cpu_kernel (cc -O3 -march=native), called through ctypes
   by one thread per core; the threads take tiles from a shared counter.

   For one tile of Q queries and its W key rows (padded to a multiple of 16 here), head by head:
     S = (Q rows * scale) . K^T + bias      queries and key rows read where they are (row ids)
     P = exp(S - max), l = sum P             a row with no key (all -inf) gets 0 and lse 0
     out row = (P . V) / l                   written straight to the query's own row
     lse = max + log(l)                      (n, H, Q) per chunk, the layout of the fused kernel's
   No query permutation, key gather or output scatter pass: the per-head copies below live in a
   thread's own buffers (L1 sized: Q x D, D x W and Q x W floats).

   GCC/Clang vector extensions: 16 floats, one AVX-512 register (two AVX2 registers or four NEON
   registers where the target has narrower vectors; the compiler splits them). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16v __attribute__((vector_size(64)));

#define VL 16

static inline v16 ld(const float *p) { return *(const v16u *)p; }
static inline void st(float *p, v16 x) { *(v16u *)p = x; }
static inline v16 splat(float x) { return (v16){0} + x; }

/* exp(x) for x <= 0 (scores minus their row maximum): Cody-Waite reduction and the degree-6
   polynomial of Cephes' expf (relative error about 1e-7); x below -87 (and -inf) gives exactly 0. */
static inline v16 vexp(v16 x) {
    const v16 lo = splat(-87.0f);
    i16v keep = x >= lo;
    x = (v16)(((i16v)x & keep) | ((i16v)lo & ~keep)); /* max(x, -87): no NaN from -inf below */
    v16 t = x * 1.44269504088896341f + 12582912.0f;  /* round(x / ln 2) in the low mantissa bits */
    i16v n = (i16v)t - 0x4B400000;
    v16 nf = t - 12582912.0f;
    v16 r = x - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    v16 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    v16 scale = (v16)((n + 127) << 23);
    return (v16)((i16v)(p * scale) & keep);
}

static inline v16 vmax(v16 a, v16 b) {
    i16v gt = a > b;
    return (v16)(((i16v)a & gt) | ((i16v)b & ~gt));
}

#if defined(__AVX512F__)
static inline float hsum(v16 x) { return _mm512_reduce_add_ps((__m512)x); }
static inline float hmax(v16 x) { return _mm512_reduce_max_ps((__m512)x); }
#else
static inline float hsum(v16 x) {
    float s = 0.0f;
    for (int i = 0; i < VL; i++) s += x[i];
    return s;
}

static inline float hmax(v16 x) {
    float m = x[0];
    for (int i = 1; i < VL; i++) m = x[i] > m ? x[i] : m;
    return m;
}
#endif

typedef struct {
    const int64_t *qids;  /* (n, Q) query rows */
    const int64_t *kids;  /* (n, W) key rows (registers first, then the tile's keys) */
    const float *bias;    /* (n, Q, W) additive mask: 0 or -inf */
    int64_t n, Q, W;
    int64_t first_unit;   /* units of the chunks before this one: sum of n * H */
    int64_t lse_offset;   /* queries of the chunks before this one: sum of n * Q (times H: floats of lse) */
} Chunk;

/* S[i, :Wp] = Qs[i] . Kt for rows [0, Q): 4 rows x 32 keys per register block, then the rests. */
static void scores(const float *Qs, int64_t qs_row, const float *Kt, float *S, int64_t Q, int64_t D, int64_t Wp) {
    int64_t i = 0;
    for (; i + 4 <= Q; i += 4) {
        const float *q0 = Qs + i * qs_row, *q1 = q0 + qs_row, *q2 = q1 + qs_row, *q3 = q2 + qs_row;
        int64_t j = 0;
        for (; j + 2 * VL <= Wp; j += 2 * VL) {
            v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
            for (int64_t d = 0; d < D; d++) {
                v16 k0 = ld(Kt + d * Wp + j), k1 = ld(Kt + d * Wp + j + VL);
                a0 += k0 * q0[d]; b0 += k1 * q0[d];
                a1 += k0 * q1[d]; b1 += k1 * q1[d];
                a2 += k0 * q2[d]; b2 += k1 * q2[d];
                a3 += k0 * q3[d]; b3 += k1 * q3[d];
            }
            st(S + i * Wp + j, a0); st(S + i * Wp + j + VL, b0);
            st(S + (i + 1) * Wp + j, a1); st(S + (i + 1) * Wp + j + VL, b1);
            st(S + (i + 2) * Wp + j, a2); st(S + (i + 2) * Wp + j + VL, b2);
            st(S + (i + 3) * Wp + j, a3); st(S + (i + 3) * Wp + j + VL, b3);
        }
        for (; j < Wp; j += VL) {
            v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int64_t d = 0; d < D; d++) {
                v16 k0 = ld(Kt + d * Wp + j);
                a0 += k0 * q0[d]; a1 += k0 * q1[d]; a2 += k0 * q2[d]; a3 += k0 * q3[d];
            }
            st(S + i * Wp + j, a0); st(S + (i + 1) * Wp + j, a1);
            st(S + (i + 2) * Wp + j, a2); st(S + (i + 3) * Wp + j, a3);
        }
    }
    for (; i < Q; i++) {
        const float *q0 = Qs + i * qs_row;
        for (int64_t j = 0; j < Wp; j += VL) {
            v16 a0 = {0};
            for (int64_t d = 0; d < D; d++) a0 += ld(Kt + d * Wp + j) * q0[d];
            st(S + i * Wp + j, a0);
        }
    }
}

/* An output row is written once and not read again here: on x86 a streaming store skips reading its
   cache line first (the writes bypass the caches; camvid_tile_attention fences them before returning). */
static inline void st_out(float *p, v16 x) {
#if defined(__AVX512F__)
    if (((uintptr_t)p & 63) == 0) {
        _mm512_stream_ps(p, (__m512)x);
        return;
    }
#endif
    st(p, x);
}

/* out rows of [i0, i0 + rows) (rows <= 4) = P[i] . V over the W key rows, channels [c, c + VL * nv).
   Always inlined: called with constant rows and nv, the 16 accumulators stay in registers (with a
   run-time row count GCC kept three rows of them on the stack: 1.1x the kernel's time). */
static inline __attribute__((always_inline)) void weighted_sum4(const float *P, int64_t Wp, int64_t W,
                                                                const float *const *vrow, int64_t c, int nv,
                                                                int rows, float *const *orow, const float *inv) {
    v16 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int u = 0; u < 4; u++) acc[r][u] = (v16){0};
    for (int64_t j = 0; j < W; j++) {
        const float *vj = vrow[j] + c;
        v16 v0 = ld(vj), v1 = nv > 1 ? ld(vj + VL) : v0, v2 = nv > 2 ? ld(vj + 2 * VL) : v0,
            v3 = nv > 3 ? ld(vj + 3 * VL) : v0;
        for (int r = 0; r < rows; r++) {
            float p = P[r * Wp + j];
            acc[r][0] += v0 * p; acc[r][1] += v1 * p; acc[r][2] += v2 * p; acc[r][3] += v3 * p;
        }
    }
    for (int r = 0; r < rows; r++)
        for (int u = 0; u < nv; u++) st_out(orow[r] + c + u * VL, acc[r][u] * inv[r]);
}

/* Kt[c, j] = kv[koff[j] + c] for c < C, j < Wp (Wp a multiple of 16): the keys of a tile, transposed. */
static void transpose_keys(const float *restrict kv, const int64_t *restrict koff, float *restrict Kt, int64_t Wp,
                           int64_t C) {
    int64_t c0 = 0;
#if defined(__AVX512F__)
    /* 16 keys x 16 channels at a time: 16 row loads, a 16 x 16 transpose in registers, 16 stores */
    for (; c0 + 16 <= C; c0 += 16)
        for (int64_t j0 = 0; j0 < Wp; j0 += 16) {
            __m512 r[16], t[16];
            for (int k = 0; k < 16; k++) r[k] = _mm512_loadu_ps(kv + koff[j0 + k] + c0);
            for (int k = 0; k < 16; k += 2) {
                t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
                t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
            }
            for (int k = 0; k < 16; k += 4)
                for (int m = 0; m < 2; m++) {
                    r[k + m] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[k + m]),
                                                                   _mm512_castps_pd(t[k + m + 2])));
                    r[k + m + 2] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[k + m]),
                                                                       _mm512_castps_pd(t[k + m + 2])));
                }
            for (int k = 0; k < 16; k += 8)
                for (int m = 0; m < 4; m++) {
                    t[k + m] = _mm512_shuffle_f32x4(r[k + m], r[k + m + 4], 0x88);
                    t[k + m + 4] = _mm512_shuffle_f32x4(r[k + m], r[k + m + 4], 0xDD);
                }
            for (int m = 0; m < 8; m++) {
                r[m] = _mm512_shuffle_f32x4(t[m], t[m + 8], 0x88);
                r[m + 8] = _mm512_shuffle_f32x4(t[m], t[m + 8], 0xDD);
            }
            /* r[m] holds channel c0 + chan[m] of the 16 keys, in key order */
            static const int chan[16] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};
            for (int m = 0; m < 16; m++) _mm512_storeu_ps(Kt + (c0 + chan[m]) * Wp + j0, r[m]);
        }
#endif
    for (int64_t c = c0; c < C; c++)
        for (int64_t j = 0; j < Wp; j++) Kt[c * Wp + j] = kv[koff[j] + c];
}

/* One tile, head by head: the head's Q query rows (scaled) and its keys of the tile's W rows, transposed,
   are copied into the thread's buffers (L1-sized); the values are read in place. The tile's Wt keys are
   padded here to W, a multiple of 16: padding rows point at a valid row, their bias (in B) is -inf. */
static void tile(const Chunk *ch, int64_t t, int64_t H, int64_t D, const float *restrict q, int64_t q_row,
                 const float *restrict kv, int64_t kv_row, int64_t v_off, float *restrict out, int64_t out_row,
                 float *restrict lse, float scale, float *restrict Qs, float *restrict Kt, float *restrict S,
                 float *restrict B, const float **vrow, int64_t *restrict koff) {
    const int64_t Q = ch->Q, Wt = ch->W, W = (Wt + VL - 1) / VL * VL; /* the tile's keys, padded to 16 */
    const int64_t *qids = ch->qids + t * Q, *kids = ch->kids + t * Wt;
    const float *bt = ch->bias + t * Q * Wt;
    for (int64_t j = 0; j < Wt; j++) koff[j] = kids[j] * kv_row;
    for (int64_t j = Wt; j < W; j++) koff[j] = kids[0] * kv_row; /* padding: a valid row, masked below */
    for (int64_t i = 0; i < Q; i++) { /* the tile's bias rows, padded with -inf (shared by the heads) */
        memcpy(B + i * W, bt + i * Wt, sizeof(float) * Wt);
        for (int64_t j = Wt; j < W; j++) B[i * W + j] = -INFINITY;
    }
    for (int64_t h = 0; h < H; h++) {
        for (int64_t i = 0; i < Q; i++) {
            const float *src = q + qids[i] * q_row + h * D;
            for (int64_t c = 0; c < D; c++) Qs[i * D + c] = src[c] * scale;
        }
        transpose_keys(kv + h * D, koff, Kt, W, D);
        for (int64_t j = 0; j < W; j++) vrow[j] = kv + koff[j] + v_off + h * D;
        scores(Qs, D, Kt, S, Q, D, W);
        float inv[4];
        float *orow[4];
        for (int64_t i0 = 0; i0 < Q; i0 += 4) {
            int rows = Q - i0 < 4 ? (int)(Q - i0) : 4;
            for (int r = 0; r < rows; r++) {
                int64_t i = i0 + r;
                float *s = S + i * W;
                const float *b = B + i * W;
                v16 m = splat(-INFINITY);
                for (int64_t j = 0; j < W; j += VL) {
                    v16 x = ld(s + j) + ld(b + j);
                    st(s + j, x);
                    m = vmax(x, m);
                }
                float mx = hmax(m);
                float *l = lse ? lse + ch->lse_offset * H + (t * H + h) * Q + i : NULL;
                orow[r] = out + qids[i] * out_row + h * D;
                if (mx == -INFINITY) { /* no key and no register: 0, no gradient (lse 0, as the fused kernel) */
                    for (int64_t j = 0; j < W; j++) s[j] = 0.0f;
                    inv[r] = 0.0f;
                    if (l) *l = 0.0f;
                    continue;
                }
                v16 sum = {0};
                for (int64_t j = 0; j < W; j += VL) {
                    v16 e = vexp(ld(s + j) - mx);
                    st(s + j, e);
                    sum += e;
                }
                float tot = hsum(sum);
                inv[r] = 1.0f / tot;
                if (l) *l = mx + logf(tot);
            }
            int64_t c = 0;
            if (rows == 4) { /* constant row and vector counts: the 16 accumulators stay in registers */
                for (; c + 4 * VL <= D; c += 4 * VL) weighted_sum4(S + i0 * W, W, Wt, vrow, c, 4, 4, orow, inv);
                for (; c + VL <= D; c += VL) weighted_sum4(S + i0 * W, W, Wt, vrow, c, 1, 4, orow, inv);
            } else {
                for (; c + VL <= D; c += VL) weighted_sum4(S + i0 * W, W, Wt, vrow, c, 1, rows, orow, inv);
            }
            for (; c < D; c++) /* channels past the last multiple of 16 */
                for (int r = 0; r < rows; r++) {
                    float a = 0.0f;
                    for (int64_t j = 0; j < Wt; j++) a += S[(i0 + r) * W + j] * vrow[j][c];
                    orow[r][c] = a * inv[r];
                }
        }
    }
}

/* Ask for tile t's query rows and key/value rows now, so that they arrive from memory while the
   tile before it is computed (the rows are scattered: the hardware prefetchers cannot guess them). */
static void prefetch_tile(const Chunk *ch, int64_t t, const float *q, int64_t q_row, const float *kv,
                          int64_t kv_row, int64_t v_off, int64_t HD) {
    const int64_t Q = ch->Q, W = ch->W;
    for (int64_t i = 0; i < Q; i++) {
        const char *row = (const char *)(q + ch->qids[t * Q + i] * q_row);
        for (int64_t b = 0; b < HD * 4; b += 64) __builtin_prefetch(row + b, 0, 3);
    }
    for (int64_t j = 0; j < W; j++) {
        const char *row = (const char *)(kv + ch->kids[t * W + j] * kv_row);
        for (int64_t b = 0; b < HD * 4; b += 64) {
            __builtin_prefetch(row + b, 0, 3);
            __builtin_prefetch(row + v_off * 4 + b, 0, 3);
        }
    }
}

/* Work through tiles taken from *counter in steps of grain until every tile of every chunk is done.
   Returns 0, or -1 when a buffer cannot be allocated. */
int camvid_tile_attention(const Chunk *chunks, int64_t nchunks, int64_t H, int64_t D, const float *q,
                          int64_t q_row, const float *kv, int64_t kv_row, int64_t v_off, float *out,
                          int64_t out_row, float *lse, float scale, int64_t *counter, int64_t grain) {
    int64_t qmax = 0, wmax = 0, total = 0;
    for (int64_t c = 0; c < nchunks; c++) {
        qmax = chunks[c].Q > qmax ? chunks[c].Q : qmax;
        wmax = chunks[c].W > wmax ? chunks[c].W : wmax;
        total += chunks[c].n;
    }
    const int64_t wp = (wmax + VL - 1) / VL * VL, HD = H * D;
    float *Qs = malloc(sizeof(float) * (qmax * D + D * wp + 2 * qmax * wp));
    const float **vrow = malloc(sizeof(float *) * wp);
    int64_t *koff = malloc(sizeof(int64_t) * wp);
    int status = 0;
    if (!Qs || !vrow || !koff) {
        status = -1;
        goto done;
    }
    float *Kt = Qs + qmax * D, *S = Kt + D * wp, *B = S + qmax * wp;
    int64_t c = 0;
    for (;;) {
        int64_t t0 = __atomic_fetch_add(counter, grain, __ATOMIC_RELAXED);
        if (t0 >= total) break;
        int64_t t1 = t0 + grain < total ? t0 + grain : total;
        for (int64_t u = t0; u < t1; u++) {
            while (c + 1 < nchunks && u >= chunks[c + 1].first_unit) c++;
            while (u < chunks[c].first_unit) c--;
            if (u == t0) prefetch_tile(&chunks[c], u - chunks[c].first_unit, q, q_row, kv, kv_row, v_off, HD);
            if (u + 1 < t1) { /* the next tile of this thread */
                int64_t c1 = c + 1 < nchunks && u + 1 >= chunks[c + 1].first_unit ? c + 1 : c;
                prefetch_tile(&chunks[c1], u + 1 - chunks[c1].first_unit, q, q_row, kv, kv_row, v_off, HD);
            }
            tile(&chunks[c], u - chunks[c].first_unit, H, D, q, q_row, kv, kv_row, v_off, out, out_row, lse, scale,
                 Qs, Kt, S, B, vrow, koff);
        }
    }
done:
#if defined(__AVX512F__)
    _mm_sfence();
#endif
    free(Qs);
    free((void *)vrow);
    free(koff);
    return status;
}
