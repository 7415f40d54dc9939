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
 *   decode_layers  every layer of a decoder whose linear layers are int8 (int8_matmul.c),
 *                  in one call per step (vs ~190 ops a layer): Llama's (RMSNorm, RoPE, GQA,
 *                  SwiGLU), GPT-2's (LayerNorm, GELU) or an encoder-decoder's (self- and
 *                  cross-attention, pre- or post-norm: Marian).
 *
 * They compute what the PyTorch modules compute (models/llama.py, gpt.py, seq2seq_transformer.py) in fp32,
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

/* e^x for 16 floats within 2 ulp (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-6
 * polynomial in r, times 2^n), NaN kept: libm's scalar expf costs ~4x more per value, and a
 * SmolLM2 step takes ~90,000 exponentials (softmax, SiLU), a GPT-2 batch-8 one ~300,000 (GELU). */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.f), _mm512_min_ps(_mm512_set1_ps(88.72f), x));  /* NaN passes */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  /* ln2 in two parts */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

/* ---- attention ---- */

typedef struct {
    int64_t b, nh, nkv, hd;
    const float *q;                   /* queries: row r, head h at q + r*q_sb + h*q_sh */
    int64_t q_sb, q_sh;
    const float *kc, *vc;             /* keys, values: row r, kv head g, position j at kc + r*c_sb + g*c_sh + j*hd */
    int64_t c_sb, c_sh, n;            /* n: positions of each row */
    const int64_t *pad;               /* (B,) keys before pad[r] are not attended (the last always is), or NULL */
    const uint8_t *mask;              /* (B, n) nonzero at the keys attended, or NULL */
    const float *cos, *sin;           /* (hd,) RoPE rows for the queries, row r's at + r*rope_sb; NULL: none */
    int64_t rope_sb;
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

/* The new keys and values (row r, kv head g at k + r*k_sb + g*k_sh) into the cache at
 * position `past`, keys rotated by RoPE where cos is not NULL. */
static void cache_write(int64_t b, int64_t nkv, int64_t hd, const float *k, int64_t k_sb, int64_t k_sh,
                        const float *v, int64_t v_sb, int64_t v_sh, float *kc, float *vc, int64_t c_sb,
                        int64_t c_sh, int64_t past, const float *cos, const float *sin, int64_t rope_sb) {
    for (int64_t r = 0; r < b; r++)
        for (int64_t g = 0; g < nkv; g++) {
            float *kd = kc + r * c_sb + g * c_sh + past * hd, *vd = vc + r * c_sb + g * c_sh + past * hd;
            if (cos) rope(k + r * k_sb + g * k_sh, cos + r * rope_sb, sin + r * rope_sb, hd, kd);
            else memcpy(kd, k + r * k_sb + g * k_sh, (size_t)hd * sizeof(float));
            memcpy(vd, v + r * v_sb + g * v_sh, (size_t)hd * sizeof(float));
        }
}

/* softmax(q K^T / sqrt(hd)) V for every row and query head */
static void attend(const attn_t *t) {
    int64_t b = t->b, nh = t->nh, hd = t->hd, rep = nh / t->nkv;
    const float scale = 1.f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static) if (b * nh * t->n * hd > SERIAL)
    for (int64_t r = 0; r < b; r++)
        for (int64_t h = 0; h < nh; h++) {
            int64_t p = t->pad ? t->pad[r] : 0, lo = p <= 0 ? 0 : (p < t->n ? p : t->n - 1), n = t->n - lo;
            const float *keys = t->kc + r * t->c_sb + (h / rep) * t->c_sh + lo * hd;
            const float *vals = t->vc + r * t->c_sb + (h / rep) * t->c_sh + lo * hd;
            const uint8_t *mask = t->mask ? t->mask + r * t->n + lo : NULL;
            float qr[MAX_HD];
            const float *qh = t->q + r * t->q_sb + h * t->q_sh;
            if (t->cos) {
                rope(qh, t->cos + r * t->rope_sb, t->sin + r * t->rope_sb, hd, qr);
                qh = qr;
            }
            float stack[1024], *s = n <= 1024 ? stack : malloc((size_t)n * sizeof(float));
            float mx = -INFINITY;
            for (int64_t j = 0; j < n; j++) {
                s[j] = mask && !mask[j] ? -INFINITY : dot(qh, keys + j * hd, hd) * scale;
                mx = s[j] > mx ? s[j] : mx;
            }
            __m512 vsum = _mm512_setzero_ps(), vmx = _mm512_set1_ps(mx);
            for (int64_t j = 0; j < n; j += 16) {  /* e^-inf - mx = 0: masked keys weigh nothing */
                __mmask16 m = tail(n - j);
                __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmx)));
                _mm512_mask_storeu_ps(s + j, m, e);
                vsum = _mm512_add_ps(vsum, e);
            }
            float sum = _mm512_reduce_add_ps(vsum);
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

/* One new token per row: the arguments in one int64 array (pointers as integers): one ctypes
 * argument instead of 23 (ctypes converts each argument on every call, ~0.45 us each).
 *   b nh nkv hd | q k v | q_sb q_sh k_sb k_sh v_sb v_sh | kc vc c_sb c_sh past | cos sin rope_sb | pad out */
void attend_one(const int64_t *a) {
    const float *cos = (const float *)a[18], *sin = (const float *)a[19];
    cache_write(a[0], a[2], a[3], (const float *)a[5], a[9], a[10], (const float *)a[6], a[11], a[12],
                (float *)a[13], (float *)a[14], a[15], a[16], a[17], cos, sin, a[20]);
    attn_t t = {a[0], a[1], a[2], a[3], (const float *)a[4], a[7], a[8], (const float *)a[13], (const float *)a[14],
                a[15], a[16], a[17] + 1, (const int64_t *)a[21], NULL, cos, sin, a[20], (float *)a[22]};
    attend(&t);
}

/* ---- whole layers ---- */

typedef struct {               /* one int8 linear layer as PackedInt8 packs it: y = x W^T + bias */
    int64_t kind, k, n;        /* kind: 0 w8a32, 1 w8a8, 2 w8a8g */
    const void *w, *rowsum, *scale;
    const float *bias;         /* or NULL */
} linear_t;

enum { RMS_NORM = 0, LAYER_NORM = 1 };
enum { SWIGLU = 0, GELU_TANH = 1, GELU = 2, RELU = 3, SILU = 4 };

typedef struct {
    int64_t d, nh, nkv, hd, ff;   /* model width, heads, kv heads, head size, MLP width */
    int64_t norm, mlp, post_norm; /* RMS_NORM | LAYER_NORM; activation (SWIGLU: up = [gate; up]); norm after the residual add */
    double eps;
    const float *attn_norm_w, *attn_norm_b, *cross_norm_w, *cross_norm_b, *mlp_norm_w, *mlp_norm_b;  /* biases: LayerNorm */
    linear_t q, k, v;   /* k.w NULL: q is the fused [q (nh*hd); k (nkv*hd); v (nkv*hd)] */
    linear_t o;
    linear_t cq, co;    /* cross-attention's query and output projections; cq.w NULL: none */
    linear_t up, down;
} layer_t;

static void linear(const linear_t *l, const float *x, int64_t m, float *y) {
    if (l->kind == 2) matmul_w8a8g(x, m, l->k, l->w, l->scale, l->bias, l->n, y);
    else if (l->kind == 1) matmul_w8a8(x, m, l->k, l->w, l->rowsum, l->scale, l->bias, l->n, y);
    else matmul_w8a32(x, m, l->k, l->w, l->scale, l->bias, l->n, y);
}

/* RMSNorm: x / sqrt(mean(x^2) + eps) * w; LayerNorm: (x - mean) / sqrt(var + eps) * w + b.
 * out may be x. */
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

/* A sublayer f around the residual stream x (B, d): pre-norm x += f(norm(x)), post-norm
 * x = norm(x + f(x)). `enter` returns f's input; `leave` adds f's output y. */
static const float *enter(const layer_t *l, const float *w, const float *bias, const float *x, int64_t b, float *h) {
    if (l->post_norm) return x;
    for (int64_t r = 0; r < b; r++) norm(l->norm, l->eps, w, bias, x + r * l->d, l->d, h + r * l->d);
    return h;
}

static void leave(const layer_t *l, const float *w, const float *bias, float *x, int64_t b, const float *y) {
    for (int64_t j = 0; j < b * l->d; j++) x[j] += y[j];
    if (l->post_norm)
        for (int64_t r = 0; r < b; r++) norm(l->norm, l->eps, w, bias, x + r * l->d, l->d, x + r * l->d);
}

/* act (B, ff) from up (B, up.n): the MLP's activation */
static void activate(const layer_t *l, const float *up, int64_t b, float *act) {
    const __m512 one = _mm512_set1_ps(1.f), zero = _mm512_setzero_ps();
    int64_t ff = l->ff, un = l->up.n;
    for (int64_t r = 0; r < b; r++) {
        const float *u = up + r * un;
        float *o = act + r * ff;
        if (l->mlp == GELU) {  /* erf GELU: scalar (no vector erf here) */
            for (int64_t j = 0; j < ff; j++) o[j] = 0.5f * u[j] * (1.f + erff(u[j] * 0.70710678118654752f));
            continue;
        }
        for (int64_t j = 0; j < ff; j += 16) {
            __mmask16 m = tail(ff - j);
            __m512 g = _mm512_maskz_loadu_ps(m, u + j), y;
            if (l->mlp == SWIGLU || l->mlp == SILU) {  /* silu(g) = g / (1 + e^-g); SwiGLU: times up */
                y = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(zero, g))));
                if (l->mlp == SWIGLU) y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, u + ff + j));
            } else if (l->mlp == RELU) {
                y = _mm512_max_ps(g, zero);
            } else {  /* GPT-2's gelu_new: 0.5 g (1 + tanh(z)), z = sqrt(2/pi) (g + 0.044715 g^3),
                       * 1 + tanh(z) = 2 - 2 / (e^2z + 1) */
                __m512 z = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                         _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), g),
                                                         _mm512_mul_ps(g, g), g));
                __m512 e = exp16(_mm512_add_ps(z, z));
                __m512 t = _mm512_sub_ps(_mm512_set1_ps(2.f), _mm512_div_ps(_mm512_set1_ps(2.f), _mm512_add_ps(e, one)));
                y = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), g), t);
            }
            _mm512_mask_storeu_ps(o + j, m, y);
        }
    }
}

/* Every layer for one new token per row. The arguments in one int64 array:
 *   x (B, d) fp32, the residual stream, updated in place; B;
 *   the self-attention KV cache's keys and values (n_layer, B, n_kv, max_len, hd) and their
 *   layer, row and head strides; positions already filled (position `past` is written);
 *   RoPE's cos and sin rows (NULL: none) and their row stride; left padding (B,) or NULL;
 *   cross-attention's keys and values (n_layer, B, nh, S, hd) (NULL: none), their layer, row
 *   and head strides, S, and the source mask (B, S) bool. */
void decode_layers(const layer_t *layers, int64_t n_layer, const int64_t *a) {
    float *x = (float *)a[0];
    int64_t b = a[1];
    const layer_t *l0 = &layers[0];
    int64_t d = l0->d, hd = l0->hd, nq = l0->nh * hd, nkv = l0->nkv * hd, row = nq + 2 * nkv;
    float *h = malloc(sizeof(float) * (size_t)(b * d)), *y = malloc(sizeof(float) * (size_t)(b * d));
    float *qkv = malloc(sizeof(float) * (size_t)(b * row)), *att = malloc(sizeof(float) * (size_t)(b * nq));
    float *up = malloc(sizeof(float) * (size_t)(b * l0->up.n)), *act = malloc(sizeof(float) * (size_t)(b * l0->ff));
    const float *cos = (const float *)a[8], *sin = (const float *)a[9];
    for (int64_t i = 0; i < n_layer; i++) {
        const layer_t *l = &layers[i];
        /* self-attention */
        const float *in = enter(l, l->attn_norm_w, l->attn_norm_b, x, b, h);
        const float *q = qkv, *k = qkv + nq, *v = qkv + nq + nkv;
        int64_t q_sb = row, kv_sb = row;
        if (l->k.w) {  /* separate projections: [q | k | v] blocks of the buffer */
            linear(&l->q, in, b, qkv);
            linear(&l->k, in, b, qkv + b * nq);
            linear(&l->v, in, b, qkv + b * (nq + nkv));
            k = qkv + b * nq, v = qkv + b * (nq + nkv), q_sb = nq, kv_sb = nkv;
        } else {
            linear(&l->q, in, b, qkv);
        }
        float *kc = (float *)a[2] + i * a[4], *vc = (float *)a[3] + i * a[4];
        cache_write(b, l->nkv, hd, k, kv_sb, hd, v, kv_sb, hd, kc, vc, a[5], a[6], a[7], cos, sin, a[10]);
        attn_t self = {b, l->nh, l->nkv, hd, q, q_sb, hd, kc, vc, a[5], a[6], a[7] + 1, (const int64_t *)a[11],
                       NULL, cos, sin, a[10], att};
        attend(&self);
        linear(&l->o, att, b, y);
        leave(l, l->attn_norm_w, l->attn_norm_b, x, b, y);
        /* cross-attention over the source */
        if (l->cq.w) {
            in = enter(l, l->cross_norm_w, l->cross_norm_b, x, b, h);
            linear(&l->cq, in, b, qkv);
            attn_t cross = {b, l->nh, l->nh, hd, qkv, nq, hd, (const float *)a[12] + i * a[14],
                            (const float *)a[13] + i * a[14], a[15], a[16], a[17], NULL,
                            (const uint8_t *)a[18], NULL, NULL, 0, att};
            attend(&cross);
            linear(&l->co, att, b, y);
            leave(l, l->cross_norm_w, l->cross_norm_b, x, b, y);
        }
        /* MLP */
        in = enter(l, l->mlp_norm_w, l->mlp_norm_b, x, b, h);
        linear(&l->up, in, b, up);
        activate(l, up, b, act);
        linear(&l->down, act, b, y);
        leave(l, l->mlp_norm_w, l->mlp_norm_b, x, b, y);
    }
    free(h);
    free(y);
    free(qkv);
    free(att);
    free(up);
    free(act);
}

/* ---- beam search's cache reorder ---- */

/* dst[l, i] = src[l, index[i]] over the first `end` positions of every head, for caches
 * (n_layer, B, H, max_len, hd) of `elem`-byte values (fp32 4, bf16 2), dst with n_rows rows.
 * Each (layer, row, head) copies end x hd contiguous values (one memcpy), where torch's
 * index_select over the sliced positions goes element by element. Arguments in one array:
 *   src dst n_layer src_rows n_rows H max_len hd end index elem */
void gather_rows(const int64_t *a) {
    const char *src = (const char *)a[0];
    char *dst = (char *)a[1];
    int64_t n_layer = a[2], src_rows = a[3], n_rows = a[4], h = a[5], max_len = a[6], hd = a[7], end = a[8];
    const int64_t *index = (const int64_t *)a[9];
    int64_t elem = a[10], head = max_len * hd * elem, chunk = end * hd * elem;
#pragma omp parallel for collapse(2) schedule(static) if (n_layer * n_rows * h * chunk > (1 << 20))
    for (int64_t l = 0; l < n_layer; l++)
        for (int64_t i = 0; i < n_rows; i++) {
            const char *s = src + ((l * src_rows + index[i]) * h) * head;
            char *d = dst + ((l * n_rows + i) * h) * head;
            for (int64_t g = 0; g < h; g++) memcpy(d + g * head, s + g * head, (size_t)chunk);
        }
}

/* ---- beam search's candidates ---- */

#define MAX_TOPK 256 /* k at most this (the Python side checks) */

/* Insert (val, at) into the descending list tv/ti of n (< cap) or cap entries; among equal
 * values the earlier one stays first. Returns the new length. */
static int64_t insert(float *tv, int64_t *ti, int64_t n, int64_t cap, float val, int64_t at) {
    int64_t p = n;
    while (p > 0 && tv[p - 1] < val) p--;
    if (p >= cap) return n;
    int64_t last = n < cap ? n : cap - 1;
    memmove(tv + p + 1, tv + p, (size_t)(last - p) * sizeof *tv);
    memmove(ti + p + 1, ti + p, (size_t)(last - p) * sizeof *ti);
    tv[p] = val, ti[p] = at;
    return n < cap ? n + 1 : n;
}

#define TOPK_CHUNK 128

/* The k largest log-softmax values of each row of x (rows, v), largest first (among equal
 * values the lower index first), and their indices: log_softmax(x)[i] = x[i] - lse with
 * lse = max + log sum_j e^(x[j] - max). Pass 1 takes the maxima of chunks of 128: the k-th
 * largest of them is a floor for the k largest values (k chunks reach it), so in pass 2,
 * over a row still in cache, only values at or above it join a sorted list of k (about k
 * chunks' worth whatever the order of the row; more only where chunk maxima tie), while the
 * exponentials are summed. What
 * log_softmax + top-k do, without writing V log-probabilities a row and reading them back:
 * ~1 ms for a beam-5 Marian step's 40 rows of 58,101 against ~5 ms. Among -inf values the
 * first indices are taken; NaN is never chosen before a number (a row with fewer than k
 * numbers is filled at its first NaNs), and a row holding a NaN has NaN log-probabilities, as
 * log_softmax gives. */
void top_logprobs(const float *x, int64_t rows, int64_t v, int64_t k, float *vals, int64_t *idx) {
    int64_t n_chunks = (v + TOPK_CHUNK - 1) / TOPK_CHUNK;
#pragma omp parallel if (rows * v > (1 << 18))
    {  /* k <= min(v, MAX_TOPK), k >= 1: the Python side checks */
        float cmax[n_chunks], fv[MAX_TOPK];  /* n_chunks: 2,048 for a 262,144-token vocabulary */
        int64_t fi[MAX_TOPK];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *row = x + r * v;
            float *tv = vals + r * k;
            int64_t *ti = idx + r * k, n = 0, nf = 0;
            __m512 vmax = _mm512_set1_ps(-INFINITY);
            for (int64_t c = 0; c < n_chunks; c++) {
                __m512 cm = _mm512_set1_ps(-INFINITY);
                for (int64_t j = c * TOPK_CHUNK; j < v && j < (c + 1) * TOPK_CHUNK; j += 16)
                    /* max(new, old): where an operand is NaN _mm512_max_ps returns the second, so NaN never enters */
                    cm = _mm512_max_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail(v - j), row + j), cm);
                cmax[c] = _mm512_reduce_max_ps(cm);
                vmax = _mm512_max_ps(vmax, cm);
            }
            for (int64_t c = 0; c < n_chunks; c++)  /* the k largest chunk maxima */
                if (nf < k || cmax[c] > fv[k - 1]) nf = insert(fv, fi, nf, k, cmax[c], c);
            float floor = nf == k ? fv[k - 1] : -INFINITY, mx = _mm512_reduce_max_ps(vmax);
            __m512 vmx = _mm512_set1_ps(mx), vfloor = _mm512_set1_ps(floor), sum = _mm512_setzero_ps();
            for (int64_t j = 0; j < v; j += 16) {
                __mmask16 m = tail(v - j);
                __m512 e = _mm512_maskz_loadu_ps(m, row + j);
                sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(e, vmx))));
                for (__mmask16 b = _mm512_mask_cmp_ps_mask(m, e, vfloor, _CMP_GE_OQ);
                     b; b &= (__mmask16)(b - 1)) {
                    int64_t at = j + __builtin_ctz(b);
                    if (n < k || row[at] > tv[k - 1]) n = insert(tv, ti, n, k, row[at], at);
                }
            }
            for (int64_t j = 0; j < v && n < k; j++)  /* fewer than k values that are not NaN */
                if (row[j] != row[j]) tv[n] = -INFINITY, ti[n++] = j;
            float lse = mx + logf(_mm512_reduce_add_ps(sum));
            for (int64_t i = 0; i < k; i++) tv[i] -= lse;
        }
    }
}
