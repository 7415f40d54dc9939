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
 *
 * N and K are padded with zero weights to multiples of 16 and 4. Threads: OpenMP over the
 * 16-row blocks, the runtime torch is linked with (libgomp), so torch.set_num_threads rules.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NB 4        /* 16-row weight blocks per pass: 4 memory streams */
#define MB 6        /* activation rows per pass: NB x MB = 24 of the 32 zmm registers accumulate */
#define PREFETCH 512 /* bytes ahead in each stream */
#define SERIAL 4096  /* groups x K x rows (weight bytes x rows / 64) under which one thread runs: no fork/join */

/* ---- w8a8 (vpdpbusd) ---- */

void pack_w8a8(const int8_t *w, int64_t n, int64_t k, int8_t *out, int32_t *rowsum) {
    int64_t kp = (k + 3) / 4 * 4, nb = (n + 16 * NB - 1) / (16 * NB) * NB;
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

/* One pass of `mb` activation rows over NB adjacent 16-row weight blocks (NB streams from
 * memory at once, NB x mb independent accumulators). `mb` and NB are compile-time constants
 * at every call (always_inline + the switch below), so the accumulators live in registers. */
static inline __attribute__((always_inline)) void w8a8_tile(
        const uint8_t *q, int64_t kp, const int8_t *wb, const int32_t *rowsum, const float *scale,
        const float *bias, const float *sx, int64_t n, int64_t n0, float *y, const int mb) {
    __m512i acc[NB][MB];
    for (int b = 0; b < NB; b++)
        for (int i = 0; i < mb; i++) acc[b][i] = _mm512_setzero_si512();
    for (int64_t j = 0; j < kp / 4; j++) {
        __m512i w[NB];
        for (int b = 0; b < NB; b++) {
            _mm_prefetch((const char *)(wb + b * 16 * kp + j * 64 + PREFETCH), _MM_HINT_T0);
            w[b] = _mm512_load_si512(wb + b * 16 * kp + j * 64);
        }
        for (int i = 0; i < mb; i++) {
            __m512i a = _mm512_set1_epi32(*(const int32_t *)(q + i * kp + 4 * j));
            for (int b = 0; b < NB; b++) acc[b][i] = _mm512_dpbusd_epi32(acc[b][i], a, w[b]);
        }
    }
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
    int64_t kp = (k + 3) / 4 * 4, groups = (n + 16 * NB - 1) / (16 * NB);
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

/* Bytes of a packed (n, k) weight: 16-row blocks, NB blocks at a time, k padded for w8a8. */
int64_t packed_bytes(int w8a8, int64_t n, int64_t k) {
    return (n + 16 * NB - 1) / (16 * NB) * NB * 16 * (w8a8 ? (k + 3) / 4 * 4 : k);
}
