
// One warp per score row: every lane strides over the row, reductions are warp shuffles (no block
// barriers), and the row (at most a few KB) stays in L1 between the passes.
#define WARP_ROWS(row)                                                              \
    const int lane = threadIdx.x & 31;                                              \
    const i64 warps = ((i64)gridDim.x * blockDim.x) >> 5;                           \
    for (i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += warps)

// Max and 1/sum(exp(s - max)) over the n visible scores of a row, in every lane of the warp.
__device__ __forceinline__ void visible_softmax_stats(const float* sr, i64 n, int lane, float* max_out,
                                                      float* inv_sum_out) {
    float m = NEG_INF;
    for (i64 j = lane; j < n; j += 32) m = fmaxf(m, sr[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (i64 j = lane; j < n; j += 32) sum += expf(sr[j] - m);
    sum = warp_sum(sum);
    *max_out = m;
    *inv_sum_out = 1.0f / sum;
}

// p = softmax over the visible keys of each score row, 0 for masked keys. `p` may alias `s` when T is f32
// (each element is read and then written by the same lane, after the row's reductions).
template <typename T>
__device__ void causal_softmax(const float* s, T* p, i64 rows, i64 q_len, i64 kv_len) {
    WARP_ROWS(row) {
        i64 n = row % q_len + kv_len - q_len + 1;
        const float* sr = s + row * kv_len;
        T* pr = p + row * kv_len;
        float m, inv_sum;
        visible_softmax_stats(sr, n, lane, &m, &inv_sum);
        for (i64 j = lane; j < kv_len; j += 32) store(pr, j, j < n ? expf(sr[j] - m) * inv_sum : 0.0f);
    }
}

// Score gradient dS = P * (dP - rowsum(P * dP)) with P recomputed in f32 from the scores `s`; 0 for masked
// keys. `ds` may alias `dp` when T is f32 (same read-then-write rule as above).
template <typename T>
__device__ void causal_softmax_backward(const float* s, const float* dp, T* ds, i64 rows, i64 q_len,
                                        i64 kv_len) {
    WARP_ROWS(row) {
        i64 n = row % q_len + kv_len - q_len + 1;
        const float* sr = s + row * kv_len;
        const float* dpr = dp + row * kv_len;
        T* dsr = ds + row * kv_len;
        float m, inv_sum;
        visible_softmax_stats(sr, n, lane, &m, &inv_sum);
        float dot = 0.0f;
        for (i64 j = lane; j < n; j += 32) dot += expf(sr[j] - m) * inv_sum * dpr[j];
        dot = warp_sum(dot);
        for (i64 j = lane; j < kv_len; j += 32) {
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
