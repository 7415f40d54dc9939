/* Decoding one token per row on CPU in few calls from Python (scratchlm).
 *
 * While a Transformer decodes one token per row, most of its ops do little arithmetic: a
 * SmolLM2-135M step through PyTorch is ~5,700 op calls (RMSNorm alone is 7, RoPE 4 a tensor,
 * SDPA's CPU flash path ~40 us of set-up for one query), each costing 2-20 us of dispatch on
 * a 2-core VM, while its int8 matmuls take ~9 ms of a ~19 ms step. llama.cpp and CTranslate2
 * run a whole layer in native code; so do these:
 *
 *   attend_one     one layer's attention for one new token per row: RoPE, the KV-cache
 *                  write and softmax(q K^T / sqrt(hd)) V, in one call (vs ~40 ops);
 *   decode_layers  every layer of a pre-norm decoder whose linear layers are int8
 *                  (int8_matmul.c): Llama's (RMSNorm, RoPE, GQA, SwiGLU) or GPT-2's
 *                  (LayerNorm, GELU), in one call per step (vs ~190 ops a layer).
 *
 * They compute what the PyTorch modules compute (models/llama.py, models/gpt.py) in fp32,
 * in another order of summation: tests/models/test_decode_kernels.py checks them against the
 * modules, layer by layer. Nothing here is used for training or for prompts (T > 1).
 *
 * Attention. Query head h reads kv head h / (n_head / n_kv) (grouped-query attention). RoPE is
 * HF Llama's "rotate half" with RotaryEmbedding's sign-folded sin table:
 *   rot(x)[i] = x[i] cos[i] + x[(i + hd/2) % hd] sin[i].
 * Left padding: a row's keys before pad[r] are padding and never attended; a query that is
 * itself padding (past < pad[r]) sees only itself, as KVCache.attention_mask says.
 * Threads: OpenMP over (row, head) pairs once there is enough work to pay for the fork; the
 * matmuls thread themselves (int8_matmul.c).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HD 256       /* head_dim at most this (the Python side checks) */
#define SERIAL (1 << 16) /* rows x heads x positions x hd under which attention runs on one thread */

/* int8_matmul.c */
void matmul_w8a8(const float *x, int64_t m, int64_t k, const int8_t *wp, const int32_t *rowsum,
                 const float *scale, const float *bias, int64_t n, float *y);
void matmul_w8a8g(const float *x, int64_t m, int64_t k, const uint8_t *wp, const uint16_t *scales,
                  const float *bias, int64_t n, float *y);
void matmul_w8a32(const float *x, int64_t m, int64_t k, const int8_t *wp, const float *scale,
                  const float *bias, int64_t n, float *y);

static inline __mmask16 tail(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

/* ---- attention ---- */

typedef struct {
    int64_t b, nh, nkv, hd;
    const float *q, *k, *v;           /* new queries: row r, head h at q + r*q_sb + h*q_sh; k, v alike */
    int64_t q_sb, q_sh, k_sb, k_sh, v_sb, v_sh;
    float *kc, *vc;                   /* the layer's cache (B, n_kv, max_len, hd) */
    int64_t c_sb, c_sh, past;         /* its row and head strides; positions already filled */
    const float *cos, *sin;           /* (hd,) RoPE rows, row r's at + r*rope_sb; NULL: no RoPE */
    int64_t rope_sb;
    const int64_t *pad;               /* (B,) left padding of each row, or NULL */
    float *out;                       /* (B, nh * hd) */
} attn_t;

static void rope(const float *x, const float *cos, const float *sin, int64_t hd, float *out) {
    int64_t h = hd / 2;
    for (int64_t i = 0; i < hd; i++) out[i] = x[i] * cos[i] + x[(i + h) % hd] * sin[i];
}

static inline float dot(const float *a, const float *b, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < n; d += 16) {
        __mmask16 m = tail(n - d);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + d), _mm512_maskz_loadu_ps(m, b + d), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static void attend(const attn_t *t) {
    int64_t b = t->b, nh = t->nh, nkv = t->nkv, hd = t->hd, past = t->past, rep = nh / nkv;
    for (int64_t r = 0; r < b; r++)
        for (int64_t g = 0; g < nkv; g++) {
            float *kd = t->kc + r * t->c_sb + g * t->c_sh + past * hd;
            float *vd = t->vc + r * t->c_sb + g * t->c_sh + past * hd;
            const float *ks = t->k + r * t->k_sb + g * t->k_sh;
            if (t->cos) rope(ks, t->cos + r * t->rope_sb, t->sin + r * t->rope_sb, hd, kd);
            else memcpy(kd, ks, (size_t)hd * sizeof(float));
            memcpy(vd, t->v + r * t->v_sb + g * t->v_sh, (size_t)hd * sizeof(float));
        }
    const float scale = 1.f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static) if (b * nh * (past + 1) * hd > SERIAL)
    for (int64_t r = 0; r < b; r++)
        for (int64_t h = 0; h < nh; h++) {
            int64_t p = t->pad ? t->pad[r] : 0, lo = p <= 0 ? 0 : (p <= past ? p : past), n = past + 1 - lo;
            const float *keys = t->kc + r * t->c_sb + (h / rep) * t->c_sh + lo * hd;
            const float *vals = t->vc + r * t->c_sb + (h / rep) * t->c_sh + lo * hd;
            float qr[MAX_HD];
            const float *qh = t->q + r * t->q_sb + h * t->q_sh;
            if (t->cos) {
                rope(qh, t->cos + r * t->rope_sb, t->sin + r * t->rope_sb, hd, qr);
                qh = qr;
            }
            float stack[1024], *s = n <= 1024 ? stack : malloc((size_t)n * sizeof(float));
            float mx = -INFINITY, sum = 0.f;
            for (int64_t j = 0; j < n; j++) {
                s[j] = dot(qh, keys + j * hd, hd) * scale;
                mx = s[j] > mx ? s[j] : mx;
            }
            for (int64_t j = 0; j < n; j++) {
                s[j] = expf(s[j] - mx);
                sum += s[j];
            }
            __m512 acc[MAX_HD / 16];
            int64_t nv = (hd + 15) / 16;
            for (int64_t d = 0; d < nv; d++) acc[d] = _mm512_setzero_ps();
            for (int64_t j = 0; j < n; j++) {
                __m512 pj = _mm512_set1_ps(s[j]);
                for (int64_t d = 0; d < nv; d++)
                    acc[d] = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(tail(hd - 16 * d), vals + j * hd + 16 * d), acc[d]);
            }
            __m512 inv = _mm512_set1_ps(1.f / sum);
            float *o = t->out + r * nh * hd + h * hd;
            for (int64_t d = 0; d < nv; d++)
                _mm512_mask_storeu_ps(o + 16 * d, tail(hd - 16 * d), _mm512_mul_ps(acc[d], inv));
            if (s != stack) free(s);
        }
}

/* The arguments in one int64 array (pointers as integers), attn_t's fields in order: one
 * ctypes argument instead of 23 (ctypes converts each argument on every call, ~0.45 us each). */
void attend_one(const int64_t *a) {
    attn_t t = {a[0], a[1], a[2], a[3], (const float *)a[4], (const float *)a[5], (const float *)a[6],
                a[7], a[8], a[9], a[10], a[11], a[12], (float *)a[13], (float *)a[14], a[15], a[16], a[17],
                (const float *)a[18], (const float *)a[19], a[20], (const int64_t *)a[21], (float *)a[22]};
    attend(&t);
}

/* ---- whole layers ---- */

typedef struct {               /* one int8 linear layer as PackedInt8 packs it: y = x W^T + bias */
    int64_t kind, k, n;        /* kind: 0 w8a32, 1 w8a8, 2 w8a8g */
    const void *w, *rowsum, *scale;
    const float *bias;         /* or NULL */
} linear_t;

enum { RMS_NORM = 0, LAYER_NORM = 1 };
enum { SWIGLU = 0, GELU_TANH = 1 };

typedef struct {
    int64_t d, nh, nkv, hd, ff;  /* model width, heads, kv heads, head size, MLP width */
    int64_t norm, mlp;           /* RMS_NORM | LAYER_NORM; SWIGLU (up = [gate; up]) | GELU_TANH */
    double eps;
    const float *norm1_w, *norm1_b, *norm2_w, *norm2_b;  /* biases: LayerNorm only */
    linear_t qkv, o, up, down;   /* qkv's output: [q (nh*hd); k (nkv*hd); v (nkv*hd)] */
} layer_t;

static void linear(const linear_t *l, const float *x, int64_t m, float *y) {
    if (l->kind == 2) matmul_w8a8g(x, m, l->k, l->w, l->scale, l->bias, l->n, y);
    else if (l->kind == 1) matmul_w8a8(x, m, l->k, l->w, l->rowsum, l->scale, l->bias, l->n, y);
    else matmul_w8a32(x, m, l->k, l->w, l->scale, l->bias, l->n, y);
}

/* RMSNorm: x / sqrt(mean(x^2) + eps) * w; LayerNorm: (x - mean) / sqrt(var + eps) * w + b */
static void norm(int64_t kind, double eps, const float *w, const float *bias, const float *x, int64_t d, float *out) {
    float mean = 0.f, ss = 0.f;
    if (kind == LAYER_NORM) {
        for (int64_t i = 0; i < d; i++) mean += x[i];
        mean /= (float)d;
    }
    for (int64_t i = 0; i < d; i++) ss += (x[i] - mean) * (x[i] - mean);
    float inv = 1.f / sqrtf(ss / (float)d + (float)eps);
    for (int64_t i = 0; i < d; i++) out[i] = (x[i] - mean) * inv * w[i] + (bias ? bias[i] : 0.f);
}

/* The arguments in one int64 array: x (B, d) fp32, the residual stream, updated in place; B;
 * the KV cache's keys and values (n_layer, B, n_kv, max_len, hd) and their layer, row and head
 * strides; positions already filled; RoPE's cos and sin rows (NULL: none) and their row stride;
 * left padding (B,) or NULL. */
void decode_layers(const layer_t *layers, int64_t n_layer, const int64_t *a) {
    float *x = (float *)a[0];
    int64_t b = a[1];
    const layer_t *l0 = &layers[0];
    int64_t d = l0->d, nq = l0->nh * l0->hd, nkv = l0->nkv * l0->hd, up_n = l0->up.n;
    float *h = malloc(sizeof(float) * (size_t)(b * d));
    float *qkv = malloc(sizeof(float) * (size_t)(b * (nq + 2 * nkv)));
    float *att = malloc(sizeof(float) * (size_t)(b * nq));
    float *up = malloc(sizeof(float) * (size_t)(b * up_n));
    float *act = malloc(sizeof(float) * (size_t)(b * l0->ff));
    for (int64_t i = 0; i < n_layer; i++) {
        const layer_t *l = &layers[i];
        for (int64_t r = 0; r < b; r++) norm(l->norm, l->eps, l->norm1_w, l->norm1_b, x + r * d, d, h + r * d);
        linear(&l->qkv, h, b, qkv);
        int64_t row = nq + 2 * nkv;
        attn_t t = {b, l->nh, l->nkv, l->hd, qkv, qkv + nq, qkv + nq + nkv, row, l->hd, row, l->hd, row, l->hd,
                    (float *)a[2] + i * a[4], (float *)a[3] + i * a[4], a[5], a[6], a[7],
                    (const float *)a[8], (const float *)a[9], a[10], (const int64_t *)a[11], att};
        attend(&t);
        linear(&l->o, att, b, h);
        for (int64_t j = 0; j < b * d; j++) x[j] += h[j];
        for (int64_t r = 0; r < b; r++) norm(l->norm, l->eps, l->norm2_w, l->norm2_b, x + r * d, d, h + r * d);
        linear(&l->up, h, b, up);
        int64_t ff = l->ff;
        for (int64_t r = 0; r < b; r++) {
            const float *u = up + r * up_n;
            float *o = act + r * ff;
            if (l->mlp == SWIGLU)  /* silu(gate) * up */
                for (int64_t j = 0; j < ff; j++) o[j] = u[j] / (1.f + expf(-u[j])) * u[ff + j];
            else  /* GPT-2's gelu_new: the tanh approximation */
                for (int64_t j = 0; j < ff; j++) {
                    float v = u[j];
                    o[j] = 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
                }
        }
        linear(&l->down, act, b, h);
        for (int64_t j = 0; j < b * d; j++) x[j] += h[j];
    }
    free(h);
    free(qkv);
    free(att);
    free(up);
    free(act);
}
