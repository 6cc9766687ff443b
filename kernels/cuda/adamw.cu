// Optimizer kernels: the fused AdamW step (in place on param, m, v) and the partial sums of the squared
// norm used by gradient clipping.

// One AdamW step per element, the formula of the CPU kernel (kernels/src/cpu/adamw.rs) with the same
// per-step constants (computed on the host in f64, rounded to f32):
//     m' = m + (1 - beta1) (g - m),   v' = v beta2 + (1 - beta2) g^2,
//     p' = p decay - step_size * m' / (sqrt(v') / sqrt_c2 + eps).
// Explicitly rounded intrinsics keep the compiler from fusing multiply-adds, so f32 results round like the
// CPU's. bf16 buffers (the pure-bf16 mode) are loaded to f32 and rounded once on store.
template <typename T>
__device__ void adamw_step(T* p, const T* g, T* m, T* v, i64 n, float decay, float one_minus_beta1,
                           float beta2, float one_minus_beta2, float step_size, float sqrt_c2, float eps) {
    FOR_EACH(i, n) {
        float gi = load(g, i), mi = load(m, i), vi = load(v, i), pi = load(p, i);
        float m_new = __fadd_rn(mi, __fmul_rn(one_minus_beta1, __fsub_rn(gi, mi)));
        float v_new = __fadd_rn(__fmul_rn(vi, beta2), __fmul_rn(one_minus_beta2, __fmul_rn(gi, gi)));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v_new), sqrt_c2), eps);
        float p_new = __fsub_rn(__fmul_rn(pi, decay), __fmul_rn(step_size, __fdiv_rn(m_new, denom)));
        store(p, i, p_new);
        store(m, i, m_new);
        store(v, i, v_new);
    }
}

#define ADAMW(T) \
    extern "C" __global__ void adamw_step_##T(T* p, const T* g, T* m, T* v, i64 n, float decay, \
                                              float one_minus_beta1, float beta2, float one_minus_beta2, \
                                              float step_size, float sqrt_c2, float eps) { \
        adamw_step<T>(p, g, m, v, n, decay, one_minus_beta1, beta2, one_minus_beta2, step_size, sqrt_c2, eps); \
    }
ADAMW(f32)
ADAMW(bf16)

// partials[b] = sum of x[i]^2 over chunk b = [b * chunk, min(n, (b + 1) * chunk)), accumulated in f32 in a
// fixed order (threads stride over the chunk, then the block tree). The host adds the partials in f64, in
// order, so the norm depends only on n and the chunk size: deterministic.
template <typename T>
__device__ void squared_norm_partials(const T* x, float* partials, i64 n, i64 chunk) {
    for (i64 b = blockIdx.x; b * chunk < n; b += gridDim.x) {
        i64 end = min(n, (b + 1) * chunk);
        float acc = 0.0f;
        for (i64 i = b * chunk + threadIdx.x; i < end; i += blockDim.x) {
            float xi = load(x, i);
            acc = __fadd_rn(acc, __fmul_rn(xi, xi));
        }
        float total = block_sum(acc);
        if (threadIdx.x == 0) partials[b] = total;
    }
}

extern "C" __global__ void squared_norm_partials_f32(const f32* x, float* partials, i64 n, i64 chunk) {
    squared_norm_partials<f32>(x, partials, n, chunk);
}
extern "C" __global__ void squared_norm_partials_bf16(const bf16* x, float* partials, i64 n, i64 chunk) {
    squared_norm_partials<bf16>(x, partials, n, chunk);
}
