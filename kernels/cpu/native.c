/* The CPU backend's native kernels: the small ops of a decode step that torch runs as
 * several ops each (or through a copy), fused into one pass each.
 *
 * Built by kernels/cpu/native.py with the system C compiler into a cached shared
 * library and called through ctypes with raw pointers; every tensor is float32 (int64
 * for indices) and its layout is passed in elements. OpenMP here is the process's own
 * runtime (the library names libgomp.so.1, which resolves to the one torch loaded), so
 * these loops share torch's thread team instead of starting a second one.
 *
 * Compiled with -ffp-contract=off: a product and a sum stay two roundings, as in torch,
 * which keeps the rotary embedding equal to torch's to the bit.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* hidden[t] += delta[t] (when delta is given), then
 * out[t] = weight * (hidden[t] * (1 / sqrt(mean(hidden[t]^2) + eps))), transformers'
 * RMSNorm in float32. Rows of `width` values; strides in elements. */
void lf_add_rms_norm(float *hidden, int64_t hidden_stride, const float *delta,
                     int64_t delta_stride, const float *weight, float *out,
                     int64_t out_stride, int64_t rows, int64_t width, float eps,
                     int num_threads) {
#pragma omp parallel for num_threads(num_threads) if (rows >= 8 && num_threads > 1)
    for (int64_t t = 0; t < rows; ++t) {
        float *h = hidden + t * hidden_stride;
        float *o = out + t * out_stride;
        if (delta != NULL) {
            const float *d = delta + t * delta_stride;
#pragma omp simd
            for (int64_t i = 0; i < width; ++i) h[i] += d[i];
        }
        float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
        for (int64_t i = 0; i < width; ++i) squares += h[i] * h[i];
        const float inverse = 1.0f / sqrtf(squares / (float)width + eps);
#pragma omp simd
        for (int64_t i = 0; i < width; ++i) o[i] = weight[i] * (h[i] * inverse);
    }
}

/* Rotate-half rotary embedding in place on x [tokens, heads, dim] (token stride given,
 * heads contiguous): x = x * cos + roll(x, dim / 2) * signed_sin, the rows of cos and
 * signed_sin [tokens, dim] (row stride given) being each token's; dim is even, at most
 * 512. */
void lf_rotary(float *x, int64_t token_stride, int64_t tokens, int64_t heads, int64_t dim,
               const float *cos_table, const float *sin_table, int64_t table_stride,
               int num_threads) {
    const int64_t half = dim / 2;
#pragma omp parallel for num_threads(num_threads) if (tokens >= 64 && num_threads > 1)
    for (int64_t t = 0; t < tokens; ++t) {
        const float *c = cos_table + t * table_stride;
        const float *s = sin_table + t * table_stride;
        for (int64_t h = 0; h < heads; ++h) {
            float *row = x + t * token_stride + h * dim;
            float low[256];
            memcpy(low, row, (size_t)half * sizeof(float));
            /* roll by half: the first half reads the second, the second the first (the
             * first half's old values, kept in `low`) */
#pragma omp simd
            for (int64_t i = 0; i < half; ++i) {
                const float a = row[i] * c[i];
                const float b = row[i + half] * s[i];
                row[i] = a + b;
            }
#pragma omp simd
            for (int64_t i = half; i < dim; ++i) {
                const float a = row[i] * c[i];
                const float b = low[i - half] * s[i];
                row[i] = a + b;
            }
        }
    }
}

/* Stores keys and values [tokens, kv_heads * dim] (token strides given, each token's
 * heads contiguous) at flat cache slots `slots` of caches laid out [slots, kv_heads *
 * dim]. */
void lf_store_kv(const float *k, int64_t k_stride, const float *v, int64_t v_stride,
                 float *k_cache, float *v_cache, const int64_t *slots, int64_t tokens,
                 int64_t width) {
    for (int64_t t = 0; t < tokens; ++t) {
        memcpy(k_cache + slots[t] * width, k + t * k_stride, (size_t)width * sizeof(float));
        memcpy(v_cache + slots[t] * width, v + t * v_stride, (size_t)width * sizeof(float));
    }
}

/* Token t's row (every KV head) of a cache [blocks, block_size, kv_heads * dim] through
 * its sequence's block table. */
static inline const float *token_row(const float *cache, const int64_t *table, int64_t t,
                                     int64_t block_size, int64_t token_stride) {
    return cache + (table[t / block_size] * block_size + t % block_size) * token_stride;
}

/* One query per sequence against its paged keys and values, read where they lie.
 *
 * q [seqs, heads, dim] (token stride given; heads contiguous), caches [blocks,
 * block_size, kv_heads, dim] contiguous, tables [seqs, table_stride] block ids, lengths
 * [seqs] keys per sequence; a window > 0 keeps the last `window` keys only. Query head h
 * reads KV head h / (heads / kv_heads). out [seqs, heads, dim] contiguous. Softmax in
 * float32 with the maximum subtracted.
 *
 * A work item is one sequence with all its KV heads when there are sequences enough for
 * every thread (a token's keys, every head's, are one contiguous run), else one
 * (sequence, KV head) pair. */
void lf_decode_attention(const float *q, int64_t q_stride, const float *k_cache,
                         const float *v_cache, const int64_t *tables, int64_t table_stride,
                         const int64_t *lengths, int64_t seqs, int64_t heads,
                         int64_t kv_heads, int64_t dim, int64_t block_size, int64_t window,
                         float scale, float *out, int num_threads) {
    const int64_t group = heads / kv_heads;
    const int64_t token_stride = kv_heads * dim;
    const int64_t heads_per_item = seqs >= 2 * (int64_t)num_threads ? kv_heads : 1;
    const int64_t items_per_seq = kv_heads / heads_per_item;
    const int64_t items = seqs * items_per_seq;
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1) \
    if (items >= 2 && num_threads > 1)
    for (int64_t item = 0; item < items; ++item) {
        const int64_t s = item / items_per_seq;
        const int64_t g0 = (item % items_per_seq) * heads_per_item;
        const int64_t rows = heads_per_item * group; /* query heads of this item */
        const int64_t length = lengths[s];
        const int64_t first = (window > 0 && length > window) ? length - window : 0;
        const int64_t keys = length - first;
        const int64_t *table = tables + s * table_stride;
        const float *queries = q + s * q_stride + g0 * group * dim;
        float *result = out + (s * heads + g0 * group) * dim;
        memset(result, 0, (size_t)(rows * dim) * sizeof(float));
        float *scores = keys > 0 ? malloc((size_t)(rows * keys) * sizeof(float)) : NULL;
        if (scores == NULL) continue;
        for (int64_t t = first; t < length; ++t) {
            const float *token = token_row(k_cache, table, t, block_size, token_stride) + g0 * dim;
            for (int64_t r = 0; r < rows; ++r) {
                const float *key = token + (r / group) * dim;
                const float *query = queries + r * dim;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int64_t i = 0; i < dim; ++i) dot += query[i] * key[i];
                scores[r * keys + (t - first)] = dot * scale;
            }
        }
        for (int64_t r = 0; r < rows; ++r) {
            float *row = scores + r * keys;
            float top = row[0];
            for (int64_t j = 1; j < keys; ++j) top = row[j] > top ? row[j] : top;
            float total = 0.0f;
            for (int64_t j = 0; j < keys; ++j) {
                row[j] = expf(row[j] - top);
                total += row[j];
            }
            const float inverse = 1.0f / total;
            for (int64_t j = 0; j < keys; ++j) row[j] *= inverse;
        }
        for (int64_t t = first; t < length; ++t) {
            const float *token = token_row(v_cache, table, t, block_size, token_stride) + g0 * dim;
            for (int64_t r = 0; r < rows; ++r) {
                const float *value = token + (r / group) * dim;
                const float p = scores[r * keys + (t - first)];
                float *acc = result + r * dim;
#pragma omp simd
                for (int64_t i = 0; i < dim; ++i) acc[i] += p * value[i];
            }
        }
        free(scores);
    }
}

/* out[r] = the index of the largest value of row r of x [rows, width] (row stride
 * given): the first one on ties, the first NaN if the row has one (torch.argmax's
 * answers). The maximum is found in one vectorized pass, then its first position in
 * chunks (a chunk is scanned one value at a time only once it holds the maximum). */
void lf_argmax(const float *x, int64_t stride, int64_t rows, int64_t width, int64_t *out,
               int num_threads) {
    enum { CHUNK = 64 };
#pragma omp parallel for num_threads(num_threads) if (rows >= 4 && num_threads > 1)
    for (int64_t r = 0; r < rows; ++r) {
        const float *row = x + r * stride;
        float top = -INFINITY;
        int has_nan = 0;
#pragma omp simd reduction(max : top) reduction(| : has_nan)
        for (int64_t i = 0; i < width; ++i) {
            const float value = row[i];
            top = value > top ? value : top;
            has_nan |= value != value;
        }
        int64_t best = 0;
        for (int64_t start = 0; start < width; start += CHUNK) {
            const int64_t stop = start + CHUNK < width ? start + CHUNK : width;
            int hit = 0;
#pragma omp simd reduction(| : hit)
            for (int64_t i = start; i < stop; ++i)
                hit |= has_nan ? row[i] != row[i] : row[i] == top;
            if (hit) {
                best = start;
                while (has_nan ? row[best] == row[best] : row[best] != top) ++best;
                break;
            }
        }
        out[r] = best;
    }
}
