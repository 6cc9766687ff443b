// The row-wise parts of causal attention; the products Q K^T, P V and their gradients run as cuBLAS GEMMs.
// Scores are f32 rows of length kv_len, `rows` = (batch * heads) * q_len of them, row r holding query
// i = r % q_len, which sits at position i + kv_len - q_len and sees the first n = i + kv_len - q_len + 1
// keys. Masked entries get probability 0 (and gradient 0), so the GEMMs may run over whole rows.
// One block per row; blocks step over rows when there are more rows than blocks.

// Max and sum of exp(s - max) over the visible prefix s[0..n) (every thread gets both).
__device__ void visible_softmax_stats(const float* sr, i64 n, float* max_out, float* inv_sum_out) {
    float m = NEG_INF;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, sr[j]);
    m = block_max(m);
    float sum = 0.0f;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) sum += expf(sr[j] - m);
    sum = block_sum(sum);
    *max_out = m;
    *inv_sum_out = 1.0f / sum;
}

// p = softmax over the visible keys of each score row, 0 for masked keys. `p` may alias `s` when T is f32
// (each element is read and then written by the same thread, after the row's reductions).
template <typename T>
__device__ void causal_softmax(const float* s, T* p, i64 rows, i64 q_len, i64 kv_len) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        i64 n = row % q_len + kv_len - q_len + 1;
        const float* sr = s + row * kv_len;
        T* pr = p + row * kv_len;
        float m, inv_sum;
        visible_softmax_stats(sr, n, &m, &inv_sum);
        for (i64 j = threadIdx.x; j < kv_len; j += blockDim.x) {
            store(pr, j, j < n ? expf(sr[j] - m) * inv_sum : 0.0f);
        }
    }
}

// Score gradient dS = P * (dP - rowsum(P * dP)) with P recomputed in f32 from the scores `s`; 0 for masked
// keys. `ds` may alias `dp` when T is f32 (same read-then-write rule as above).
template <typename T>
__device__ void causal_softmax_backward(const float* s, const float* dp, T* ds, i64 rows, i64 q_len,
                                        i64 kv_len) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        i64 n = row % q_len + kv_len - q_len + 1;
        const float* sr = s + row * kv_len;
        const float* dpr = dp + row * kv_len;
        T* dsr = ds + row * kv_len;
        float m, inv_sum;
        visible_softmax_stats(sr, n, &m, &inv_sum);
        float dot = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) dot += expf(sr[j] - m) * inv_sum * dpr[j];
        dot = block_sum(dot);
        for (i64 j = threadIdx.x; j < kv_len; j += blockDim.x) {
            store(dsr, j, j < n ? expf(sr[j] - m) * inv_sum * (dpr[j] - dot) : 0.0f);
        }
    }
}

#define ATTENTION(T) \
    extern "C" __global__ void causal_softmax_##T(const float* s, T* p, i64 rows, i64 q_len, i64 kv_len) { \
        causal_softmax<T>(s, p, rows, q_len, kv_len); \
    } \
    extern "C" __global__ void causal_softmax_backward_##T(const float* s, const float* dp, T* ds, i64 rows, \
                                                           i64 q_len, i64 kv_len) { \
        causal_softmax_backward<T>(s, dp, ds, rows, q_len, kv_len); \
    }
ATTENTION(f32)
ATTENTION(bf16)
