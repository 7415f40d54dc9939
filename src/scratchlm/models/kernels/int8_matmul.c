/* int8 x fp32 matrix products for decoding on x86 CPUs with AVX-512 VNNI (scratchlm).
 *
 * y[m, n] = sum_k x[m, k] * W[n, k] * scale[n] + bias[n], for few rows m (decoding: one row
 * per sequence or beam). Decoding one token reads every weight once and does little
 * arithmetic with it, so the time is the time to stream the int8 weights from memory; these
 * kernels are written to do that at the memory's speed (fbgemm's W8A8 reads GPT-2's int8
 * weights at 13-16 GB/s on a 2-core Sapphire Rapids, fp32 MKL GEMV at 26-30 GB/s).
 *
 * The weight is packed once (pack_*), 16 output rows at a time, so that one 64-byte load
 * holds 16 outputs' weights and is used with one broadcast of the activations:
 *
 *   w8a8  [N/16][K/4][16][4]: vpdpbusd multiplies 4 u8 activations by 4 s8 weights and adds
 *         the 4 products into each int32 lane. Activations are quantized per row,
 *         symmetric to [-127, 127], then shifted by +128 into u8 (vpdpbusd's first operand is
 *         unsigned); 128 * rowsum(W[n]) is subtracted after.
 *   w8a32 [N/16][K][16]: 16 int8 weights of one k are widened to fp32 and multiplied by the
 *         fp32 activation x[m, k] (weight-only: activations keep full precision).
 *   w8a8g as w8a8, with one scale per 32 weights of a row and per 32 activations (llama.cpp's
 *         Q8_0 x Q8_0): what --quantize int8 runs; see its section below.
 *
 * N and K are padded with zero weights to multiples of 16 and 4. Threads: OpenMP over the
 * 16-row blocks, the runtime torch is linked with (libgomp), so torch.set_num_threads rules.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KP8(k) (((k) + 63) / 64 * 64) /* w8a8's k padding: an AMX tile's depth */
#define AMX_ROWS 16 /* w8a8 on AMX tiles from this many rows (where granted) */
#define NB 4        /* 16-row weight blocks per pass: 4 memory streams */
#define MB 6        /* activation rows per pass: NB x MB = 24 of the 32 zmm registers accumulate */
#define PREFETCH 512 /* bytes ahead in each stream */
#define SERIAL 4096  /* groups x K x rows (weight bytes x rows / 64) under which one thread runs: no fork/join */

/* ---- w8a8 (vpdpbusd) ---- */

void pack_w8a8(const int8_t *w, int64_t n, int64_t k, int8_t *out, int32_t *rowsum) {
    int64_t kp = KP8(k), nb = (n + 16 * NB - 1) / (16 * NB) * NB;
    memset(out, 0, (size_t)(nb * 16 * kp));
    for (int64_t r = 0; r < n; r++) {
        int32_t s = 0;
        for (int64_t c = 0; c < k; c++) {
            int8_t v = w[r * k + c];
            s += v;
            out[(r / 16) * 16 * kp + (c / 4) * 64 + (r % 16) * 4 + c % 4] = v;
        }
        rowsum[r] = s;
    }
}

/* x (m, k) fp32 -> q (m, kp) u8 (q - 128 is x / sx rounded) and sx (m,) */
static void quantize_rows(const float *x, int64_t m, int64_t k, int64_t kp, uint8_t *q, float *sx) {
    for (int64_t i = 0; i < m; i++) {
        const float *xi = x + i * k;
        __m512 amax = _mm512_setzero_ps();
        int64_t c = 0;
        for (; c + 16 <= k; c += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(xi + c)));
        float a = _mm512_reduce_max_ps(amax);
        for (; c < k; c++) a = xi[c] > a ? xi[c] : (-xi[c] > a ? -xi[c] : a);
        float s = a > 0 ? a / 127.f : 1.f;
        sx[i] = s;
        __m512 inv = _mm512_set1_ps(1.f / s);
        __m512i off = _mm512_set1_epi32(128);
        uint8_t *qi = q + i * kp;
        for (c = 0; c + 16 <= k; c += 16) {
            __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xi + c), inv)), off);
            _mm_storeu_si128((__m128i *)(qi + c), _mm512_cvtusepi32_epi8(v));
        }
        for (; c < k; c++) {
            int v = (int)__builtin_roundf(xi[c] / s) + 128;
            qi[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
        for (; c < kp; c++) qi[c] = 128;
    }
}

/* acc[b][i] += the products of steps j0 .. j1-1 (4 k each) of weight block b and row i of q
 * (rows kp bytes apart). vpdpbusd's first product operand is unsigned: the activations for
 * w8a8, the weights for w8a8g (`unsigned_weights`). */
static inline __attribute__((always_inline)) void dot_steps(
        __m512i acc[NB][MB], const void *q, int64_t kp, const void *wb, int64_t j0, int64_t j1,
        const int mb, const int unsigned_weights) {
    for (int64_t j = j0; j < j1; j++) {
        __m512i w[NB];
        for (int b = 0; b < NB; b++) {
            _mm_prefetch((const char *)wb + b * 16 * kp + j * 64 + PREFETCH, _MM_HINT_T0);
            w[b] = _mm512_load_si512((const char *)wb + b * 16 * kp + j * 64);
        }
        for (int i = 0; i < mb; i++) {
            __m512i a = _mm512_set1_epi32(*(const int32_t *)((const char *)q + i * kp + 4 * j));
            for (int b = 0; b < NB; b++)
                acc[b][i] = unsigned_weights ? _mm512_dpbusd_epi32(acc[b][i], w[b], a)
                                             : _mm512_dpbusd_epi32(acc[b][i], a, w[b]);
        }
    }
}

/* ---- w8a8 on AMX-INT8 tiles (Sapphire Rapids and later), for many rows ----
 *
 * At tens of rows (beam search: 8 sources x 5 beams) the products are compute-bound, and an
 * AMX tile multiply (tdpbusd: a 16 x 64 u8 tile times a 64 x 16 s8 tile into 16 x 16 int32)
 * does 16 vpdpbusd's work in one instruction. The w8a8 layout is already AMX's B-tile layout:
 * a 16-row weight block's 16 consecutive 4-k steps are 16 rows of 64 bytes, so k is padded to
 * 64 (KP8) and a block's k-chunk loads as one tile. Tiles: C 0-3 (2 x 2 of 16 rows x 16
 * outputs), A 4-5 (activations), B 6-7 (weights). Rows are padded to 16 (their products are
 * dropped). Linux grants a process the tile state on request (arch_prctl, `amx_init`). */

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_ok = 0;

/* Linux compilers that know AMX; kernels/__init__.py builds again with -DSCRATCHLM_NO_AMX
 * where the assembler does not */
#if defined(__linux__) && !defined(SCRATCHLM_NO_AMX) && (defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11)
#define HAVE_AMX 1
#endif

/* Ask the kernel for the AMX tile state; 1 if granted (then w8a8 uses tiles from AMX_ROWS).
 * Call only on a CPU with AMX-INT8. */
int amx_init(void) {
#ifdef HAVE_AMX
    amx_ok = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#endif
    return amx_ok;
}

#ifdef HAVE_AMX

typedef struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } tilecfg_t;

__attribute__((target("amx-tile,amx-int8")))
static void matmul_w8a8_amx(const float *x, int64_t m, int64_t k, int64_t kp, const int8_t *wp,
                            const int32_t *rowsum, const float *scale, const float *bias, int64_t n,
                            int64_t blocks, float *y) {
    int64_t mp = (m + 31) / 32 * 32;
    uint8_t *q = aligned_alloc(64, (size_t)(mp * kp));
    float *sx = malloc(sizeof(float) * (size_t)m);
    quantize_rows(x, m, k, kp, q, sx);
    memset(q + m * kp, 128, (size_t)((mp - m) * kp));
#pragma omp parallel
    {
        tilecfg_t cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
        __asm__ volatile("" ::: "memory");  /* the config's stores happen before ldtilecfg reads them */
        _tile_loadconfig(&cfg);  /* per thread */
        int32_t c[16 * 16] __attribute__((aligned(64)));
#pragma omp for schedule(static)
        for (int64_t jb = 0; jb < blocks; jb += 2) {  /* 2 blocks of 16 outputs */
            const int8_t *w0 = wp + jb * 16 * kp, *w1 = w0 + 16 * kp;
            for (int64_t i0 = 0; i0 < m; i0 += 32) {  /* 2 tiles of 16 rows */
                const uint8_t *a0 = q + i0 * kp, *a1 = a0 + 16 * kp;
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                for (int64_t kc = 0; kc < kp; kc += 64) {
                    _tile_loadd(4, a0 + kc, kp);
                    _tile_loadd(5, a1 + kc, kp);
                    _tile_loadd(6, w0 + kc * 16, 64);
                    _tile_loadd(7, w1 + kc * 16, 64);
                    _tile_dpbusd(0, 4, 6);
                    _tile_dpbusd(1, 4, 7);
                    _tile_dpbusd(2, 5, 6);
                    _tile_dpbusd(3, 5, 7);
                }
                for (int t = 0; t < 4; t++) {
                    switch (t) {  /* tile numbers are immediates */
                        case 0: _tile_stored(0, c, 64); break;
                        case 1: _tile_stored(1, c, 64); break;
                        case 2: _tile_stored(2, c, 64); break;
                        default: _tile_stored(3, c, 64);
                    }
                    int64_t o = (jb + (t & 1)) * 16, left = n - o, r0 = i0 + (t >> 1) * 16;
                    if (left <= 0) continue;
                    __mmask16 mask = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
                    __m512i comp = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, rowsum + o), 7);
                    __m512 ws = _mm512_maskz_loadu_ps(mask, scale + o);
                    __m512 bs = bias ? _mm512_maskz_loadu_ps(mask, bias + o) : _mm512_setzero_ps();
                    for (int64_t r = 0; r < 16 && r0 + r < m; r++) {
                        __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(c + 16 * r), comp));
                        _mm512_mask_storeu_ps(y + (r0 + r) * n + o, mask,
                                              _mm512_fmadd_ps(_mm512_mul_ps(v, _mm512_set1_ps(sx[r0 + r])), ws, bs));
                    }
                }
            }
        }
        _tile_release();
    }
    free(q);
    free(sx);
}
#else
static void matmul_w8a8_amx(const float *x, int64_t m, int64_t k, int64_t kp, const int8_t *wp,
                            const int32_t *rowsum, const float *scale, const float *bias, int64_t n,
                            int64_t blocks, float *y) { abort(); }  /* amx_ok is never set */
#endif

/* One pass of `mb` activation rows over NB adjacent 16-row weight blocks (NB streams from
 * memory at once, NB x mb independent accumulators). `mb` and NB are compile-time constants
 * at every call (always_inline + the switch below), so the accumulators live in registers. */
static inline __attribute__((always_inline)) void w8a8_tile(
        const uint8_t *q, int64_t kp, const int8_t *wb, const int32_t *rowsum, const float *scale,
        const float *bias, const float *sx, int64_t n, int64_t n0, float *y, const int mb) {
    __m512i acc[NB][MB];
    for (int b = 0; b < NB; b++)
        for (int i = 0; i < mb; i++) acc[b][i] = _mm512_setzero_si512();
    dot_steps(acc, q, kp, wb, 0, kp / 4, mb, 0);
    for (int b = 0; b < NB; b++) {
        int64_t o = n0 + 16 * b, left = n - o;
        if (left <= 0) break;
        __mmask16 mask = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
        __m512 ws = _mm512_maskz_loadu_ps(mask, scale + o);
        __m512 bs = bias ? _mm512_maskz_loadu_ps(mask, bias + o) : _mm512_setzero_ps();
        __m512i comp = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, rowsum + o), 7);  /* 128 * rowsum */
        for (int i = 0; i < mb; i++) {
            __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[b][i], comp));
            v = _mm512_fmadd_ps(v, _mm512_mul_ps(ws, _mm512_set1_ps(sx[i])), bs);
            _mm512_mask_storeu_ps(y + i * n + o, mask, v);
        }
    }
}

/* y (m, n) = dequant(q(x) @ W^T) + bias. bias may be NULL. */
void matmul_w8a8(const float *x, int64_t m, int64_t k, const int8_t *wp, const int32_t *rowsum,
                 const float *scale, const float *bias, int64_t n, float *y) {
    int64_t kp = KP8(k), groups = (n + 16 * NB - 1) / (16 * NB);
    if (amx_ok && m >= AMX_ROWS) {
        matmul_w8a8_amx(x, m, k, kp, wp, rowsum, scale, bias, n, groups * NB, y);
        return;
    }
    uint8_t *q = aligned_alloc(64, (size_t)((m * kp + 63) / 64 * 64));
    float *sx = malloc(sizeof(float) * (size_t)m);
    quantize_rows(x, m, k, kp, q, sx);
#pragma omp parallel for schedule(static) if (groups * kp * m > SERIAL)
    for (int64_t g = 0; g < groups; g++) {
        const int8_t *wb = wp + g * NB * 16 * kp;
        for (int64_t m0 = 0; m0 < m; m0 += MB) {
            const uint8_t *qm = q + m0 * kp;
            float *ym = y + m0 * n;
            switch (m - m0 < MB ? m - m0 : MB) {
#define TILE(r) case r: w8a8_tile(qm, kp, wb, rowsum, scale, bias, sx + m0, n, g * NB * 16, ym, r); break;
                TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6)
#undef TILE
            }
        }
    }
    free(q);
    free(sx);
}

/* ---- w8a8g (vpdpbusd, weights and activations in groups of G along k: llama.cpp's Q8_0) ----
 *
 * One scale per G = 32 weights of a row and per 32 activations, as llama.cpp's Q8_0 x Q8_0
 * dot product, instead of one a row: a row's few outlier channels (SmolLM2's down_proj
 * inputs peak at 720x their mean) then cost precision only to the 31 others of their group.
 * Measured on SmolLM2-135M (fp32's first 16 greedy tokens, 60 ChatterBot prompts, simulated
 * in fp32): per-row weights x fp32 activations 50/60, per-row weights x grouped activations
 * 46/60, grouped weights x grouped activations 51/60. Each group's int32 sum is scaled into
 * fp32 accumulators. The weight is the unsigned operand (w + 128), so the correction
 * 128 * sum(q) belongs to the activations: one number per row and group (`qsum`).
 * Layout: weights as w8a8 with k padded to G (padding weights 0, stored 128); scales fp16
 * [N/16][K/G][16], so one 32-byte load holds a group's scales for the 16 rows of a block. */

#define G 32
#define MBG 3       /* rows per pass: NB x MBG int32 + NB x MBG fp32 accumulators */

void pack_w8a8g(const int8_t *w, const float *scale, int64_t n, int64_t k, uint8_t *out, uint16_t *scales) {
    int64_t kp = (k + G - 1) / G * G, nb = (n + 16 * NB - 1) / (16 * NB) * NB, ng = kp / G;
    memset(out, 128, (size_t)(nb * 16 * kp));
    memset(scales, 0, sizeof(uint16_t) * (size_t)(nb * 16 * ng));
    for (int64_t r = 0; r < n; r++) {
        for (int64_t c = 0; c < k; c++)
            out[(r / 16) * 16 * kp + (c / 4) * 64 + (r % 16) * 4 + c % 4] = (uint8_t)(w[r * k + c] + 128);
        for (int64_t g = 0; g < ng; g++)
            scales[(r / 16) * 16 * ng + g * 16 + r % 16] = _cvtss_sh(scale[r * ng + g], 0);
    }
}

/* x (m, k) fp32 -> q (m, kp) s8, sg (m, kp / G) group scales, qsum (m, kp / G) = 128 * sum(q_g) */
static void quantize_groups(const float *x, int64_t m, int64_t k, int64_t kp, int8_t *q, float *sg, int32_t *qsum) {
    float tmp[G];
    for (int64_t i = 0; i < m; i++) {
        for (int64_t g = 0; g < kp / G; g++) {
            int64_t c0 = g * G, len = k - c0 < G ? k - c0 : G;
            const float *src = x + i * k + c0;
            if (len < G) {  /* the ragged last group: zero-filled */
                memset(tmp, 0, sizeof tmp);
                memcpy(tmp, src, sizeof(float) * (size_t)len);
                src = tmp;
            }
            __m512 a0 = _mm512_loadu_ps(src), a1 = _mm512_loadu_ps(src + 16);
            float a = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a0), _mm512_abs_ps(a1)));
            float s = a > 0 ? a / 127.f : 1.f;
            __m512 inv = _mm512_set1_ps(1.f / s);
            __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(a0, inv));
            __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(a1, inv));
            _mm_storeu_si128((__m128i *)(q + i * kp + c0), _mm512_cvtsepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(q + i * kp + c0 + 16), _mm512_cvtsepi32_epi8(q1));
            sg[i * (kp / G) + g] = s;
            qsum[i * (kp / G) + g] = 128 * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
    }
}

static inline __attribute__((always_inline)) void w8a8g_tile(
        const int8_t *q, const float *sg, const int32_t *qsum, int64_t kp, const uint8_t *wb,
        const uint16_t *sb, const float *bias, int64_t n, int64_t n0, float *y, const int mb) {
    const int64_t ng = kp / G;
    __m512 acc[NB][MBG];
    for (int b = 0; b < NB; b++)
        for (int i = 0; i < mb; i++) acc[b][i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m512i sum[NB][MB];
        for (int b = 0; b < NB; b++)
            for (int i = 0; i < mb; i++) sum[b][i] = _mm512_set1_epi32(-qsum[i * ng + g]);
        dot_steps(sum, q, kp, wb, g * (G / 4), (g + 1) * (G / 4), mb, 1);
        for (int b = 0; b < NB; b++) {
            __m512 ws = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sb + b * 16 * ng + g * 16)));
            for (int i = 0; i < mb; i++)
                acc[b][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[b][i]),
                                            _mm512_mul_ps(ws, _mm512_set1_ps(sg[i * ng + g])), acc[b][i]);
        }
    }
    for (int b = 0; b < NB; b++) {
        int64_t o = n0 + 16 * b, left = n - o;
        if (left <= 0) break;
        __mmask16 mask = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
        __m512 bs = bias ? _mm512_maskz_loadu_ps(mask, bias + o) : _mm512_setzero_ps();
        for (int i = 0; i < mb; i++) _mm512_mask_storeu_ps(y + i * n + o, mask, _mm512_add_ps(acc[b][i], bs));
    }
}

/* y (m, n) = x @ W^T + bias with W in groups of G (scales fp16), x quantized likewise. */
void matmul_w8a8g(const float *x, int64_t m, int64_t k, const uint8_t *wp, const uint16_t *scales,
                  const float *bias, int64_t n, float *y) {
    int64_t kp = (k + G - 1) / G * G, ng = kp / G, groups = (n + 16 * NB - 1) / (16 * NB);
    int8_t *q = aligned_alloc(64, (size_t)((m * kp + 63) / 64 * 64));
    float *sg = malloc(sizeof(float) * (size_t)(m * ng));
    int32_t *qsum = malloc(sizeof(int32_t) * (size_t)(m * ng));
    quantize_groups(x, m, k, kp, q, sg, qsum);
#pragma omp parallel for schedule(static) if (groups * kp * m > SERIAL)
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *wb = wp + g * NB * 16 * kp;
        const uint16_t *sb = scales + g * NB * 16 * ng;
        for (int64_t m0 = 0; m0 < m; m0 += MBG) {
            switch (m - m0 < MBG ? m - m0 : MBG) {
#define TILE(r) case r: w8a8g_tile(q + m0 * kp, sg + m0 * ng, qsum + m0 * ng, kp, wb, sb, bias, n, g * NB * 16, y + m0 * n, r); break;
                TILE(1) TILE(2) TILE(3)
#undef TILE
            }
        }
    }
    free(q);
    free(sg);
    free(qsum);
}

/* ---- w8a32 (weight-only: int8 widened to fp32, fp32 FMA) ---- */

void pack_w8a32(const int8_t *w, int64_t n, int64_t k, int8_t *out) {
    int64_t nb = (n + 16 * NB - 1) / (16 * NB) * NB;
    memset(out, 0, (size_t)(nb * 16 * k));
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++) out[(r / 16) * 16 * k + c * 16 + r % 16] = w[r * k + c];
}

static inline __attribute__((always_inline)) void w8a32_tile(
        const float *x, int64_t k, const int8_t *wb, const float *scale, const float *bias,
        int64_t n, int64_t n0, float *y, const int mb) {
    __m512 acc[NB][MB];
    for (int b = 0; b < NB; b++)
        for (int i = 0; i < mb; i++) acc[b][i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < k; c++) {
        __m512 w[NB];
        for (int b = 0; b < NB; b++) {
            if ((c & 3) == 0) _mm_prefetch((const char *)(wb + b * 16 * k + c * 16 + PREFETCH), _MM_HINT_T0);
            w[b] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(wb + b * 16 * k + c * 16))));
        }
        for (int i = 0; i < mb; i++) {
            __m512 a = _mm512_set1_ps(x[i * k + c]);
            for (int b = 0; b < NB; b++) acc[b][i] = _mm512_fmadd_ps(a, w[b], acc[b][i]);
        }
    }
    for (int b = 0; b < NB; b++) {
        int64_t o = n0 + 16 * b, left = n - o;
        if (left <= 0) break;
        __mmask16 mask = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
        __m512 ws = _mm512_maskz_loadu_ps(mask, scale + o);
        __m512 bs = bias ? _mm512_maskz_loadu_ps(mask, bias + o) : _mm512_setzero_ps();
        for (int i = 0; i < mb; i++) _mm512_mask_storeu_ps(y + i * n + o, mask, _mm512_fmadd_ps(acc[b][i], ws, bs));
    }
}

void matmul_w8a32(const float *x, int64_t m, int64_t k, const int8_t *wp, const float *scale,
                  const float *bias, int64_t n, float *y) {
    int64_t groups = (n + 16 * NB - 1) / (16 * NB);
#pragma omp parallel for schedule(static) if (groups * k * m > SERIAL)
    for (int64_t g = 0; g < groups; g++) {
        const int8_t *wb = wp + g * NB * 16 * k;
        for (int64_t m0 = 0; m0 < m; m0 += MB) {
            switch (m - m0 < MB ? m - m0 : MB) {
#define TILE(r) case r: w8a32_tile(x + m0 * k, k, wb, scale, bias, n, g * NB * 16, y + m0 * n, r); break;
                TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6)
#undef TILE
            }
        }
    }
}

/* Bytes of a packed (n, k) weight: 16-row blocks, NB blocks at a time, k padded to 64 for
 * w8a8 (kind 1), to G for w8a8g (kind 2), not for w8a32 (kind 0). */
int64_t packed_bytes(int kind, int64_t n, int64_t k) {  /* of the weights; w8a8g's scales: */
    int64_t kp = kind == 1 ? KP8(k) : kind == 2 ? (k + G - 1) / G * G : k;
    return (n + 16 * NB - 1) / (16 * NB) * NB * 16 * kp;
}

/* fp16 scales of a packed w8a8g weight (n, k): one per row and group of G. */
int64_t packed_scales(int64_t n, int64_t k) {
    return (n + 16 * NB - 1) / (16 * NB) * NB * 16 * ((k + G - 1) / G);
}
