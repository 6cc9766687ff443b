// Optimizer kernels: the fused AdamW step (in place on param, m, v), the partial sums of the squared
// norm used by gradient clipping, and their multi-tensor forms, which update every parameter of a model
// in one launch and clip by the global gradient norm without the host reading anything.

// Per-step constants of AdamW, computed on the host in f64 and rounded to f32 (`Constants` in
// kernels/src/cuda/ops/adamw.rs mirrors this layout).
struct AdamWConstants {
    float decay;
    float one_minus_beta1;
    float beta2;
    float one_minus_beta2;
    float step_size;
    float sqrt_c2;
    float eps;
};

// One AdamW step of one element, the formula of the CPU kernel (kernels/src/cpu/adamw.rs):
//     m' = m + (1 - beta1) (g - m),   v' = v beta2 + (1 - beta2) g^2,
//     p' = p decay - step_size * m' / (sqrt(v') / sqrt_c2 + eps).
// Explicitly rounded intrinsics keep the compiler from fusing multiply-adds, so f32 results round like the
// CPU's. Returns p' and leaves m', v' in `m`, `v`.
__device__ __forceinline__ float adamw_update(float g, float& m, float& v, float p, float decay,
                                              const AdamWConstants& c) {
    m = __fadd_rn(m, __fmul_rn(c.one_minus_beta1, __fsub_rn(g, m)));
    v = __fadd_rn(__fmul_rn(v, c.beta2), __fmul_rn(c.one_minus_beta2, __fmul_rn(g, g)));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), c.sqrt_c2), c.eps);
    return __fsub_rn(__fmul_rn(p, decay), __fmul_rn(c.step_size, __fdiv_rn(m, denom)));
}

// bf16 buffers (the pure-bf16 mode) are loaded to f32 and rounded once on store.
template <typename T>
__device__ void adamw_step(T* p, const T* g, T* m, T* v, i64 n, AdamWConstants c) {
    FOR_EACH(i, n) {
        float mi = load(m, i), vi = load(v, i);
        float p_new = adamw_update(load(g, i), mi, vi, load(p, i), c.decay, c);
        store(p, i, p_new);
        store(m, i, mi);
        store(v, i, vi);
    }
}

#define ADAMW(T) \
    extern "C" __global__ void adamw_step_##T(T* p, const T* g, T* m, T* v, i64 n, AdamWConstants c) { \
        adamw_step<T>(p, g, m, v, n, c); \
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

// ---- Multi-tensor forms -------------------------------------------------------------------------------
// Every tensor of the group is cut into chunks of `chunk` elements (its last one shorter); chunk c belongs
// to tensor chunk_tensor[c] and starts at element (c - first_chunk) * chunk of it. Blocks step over the
// chunks, so one launch covers every tensor whatever their sizes.

// The kinds of tensor (`StateKind` on the Rust side): what param, grad, m, v and master hold.
#define KIND_F32 0    // param, grad, m, v f32; no master
#define KIND_MIXED 1  // param and grad bf16; m, v and the master f32; param receives the master's rounding
#define KIND_BF16 2   // param, grad, m, v bf16 (pure bf16); no master

// One tensor of a group (`TensorEntry` on the Rust side mirrors this layout).
struct TensorEntry {
    unsigned long long param;
    unsigned long long m;
    unsigned long long v;
    unsigned long long master;  // 0 unless KIND_MIXED
    i64 n;
    i64 first_chunk;
    int kind;
    int decays;
};

// Sum over the block in f64 (blockDim.x a multiple of 32, at most 1024); fixed order, as block_sum.
__device__ double block_sum_f64(double v) {
    __shared__ double partial[32];
    __shared__ double total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int warps = (blockDim.x + 31) >> 5;
        double w = lane < warps ? partial[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
        if (lane == 0) total = w;
    }
    __syncthreads();
    return total;
}

template <typename G>
__device__ double chunk_squares(const G* g, i64 begin, i64 end) {
    double acc = 0.0;
    for (i64 i = begin + threadIdx.x; i < end; i += blockDim.x) {
        double x = (double)load(g, i);
        acc += x * x;
    }
    return acc;
}

// partials[c] = sum of g^2 over chunk c of the gradients, in f64: squares of f32 (or bf16) values are exact
// in f64, so the only roundings are the f64 additions, in an order fixed by the chunk layout and the block
// size: deterministic, and within f64 rounding of the CPU's f64 sum.
extern "C" __global__ void multi_tensor_norm_partials(const TensorEntry* tensors, const unsigned long long* grads,
                                                      const int* chunk_tensor, i64 chunks, i64 chunk,
                                                      double* partials) {
    for (i64 c = blockIdx.x; c < chunks; c += gridDim.x) {
        int t = chunk_tensor[c];
        TensorEntry e = tensors[t];
        i64 begin = (c - e.first_chunk) * chunk;
        i64 end = min(e.n, begin + chunk);
        double acc = e.kind == KIND_F32 ? chunk_squares((const f32*)grads[t], begin, end)
                                        : chunk_squares((const bf16*)grads[t], begin, end);
        double total = block_sum_f64(acc);
        if (threadIdx.x == 0) partials[c] = total;
    }
}

// The sum of the `count` partials, on one block, in a fixed order (each thread's strided run, then
// block_sum_f64), the same in every kernel that reads it.
__device__ double partials_total(const double* partials, i64 count) {
    double acc = 0.0;
    for (i64 i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    return block_sum_f64(acc);
}

// One block: status[0] = the global norm sqrt(sum of partials), status[1] = the clip factor
// min(1, max_norm / (norm + 1e-6)) (1 when the norm is not finite: the step is skipped anyway).
extern "C" __global__ void multi_tensor_clip_factor(const double* partials, i64 count, double max_norm,
                                                    double* status) {
    double total = partials_total(partials, count);
    if (threadIdx.x == 0) {
        double norm = sqrt(total);
        double scale = max_norm / (norm + 1e-6);
        status[0] = norm;
        status[1] = scale < 1.0 ? scale : 1.0;
    }
}

// One block: squares[0] = the sum of the partials, the squared norm of the group before its square root:
// the part of a global norm that one rank's shard contributes (ZeRO-1 sums it over the ranks in f64 and
// hands the norm and clip factor to multi_tensor_adamw). The sum is multi_tensor_clip_factor's, bit for bit.
extern "C" __global__ void multi_tensor_squares(const double* partials, i64 count, double* squares) {
    double total = partials_total(partials, count);
    if (threadIdx.x == 0) squares[0] = total;
}

// One chunk of one tensor: W is the weight that is updated (the param, or the f32 master), shadow the bf16
// param that receives the master's rounding (null without a master). The gradient is multiplied by the
// clip factor as it is read, as clip_grad_norm's scaling does on the CPU.
template <typename W, typename G, typename S>
__device__ void adamw_chunk(W* w, const G* g, S* m, S* v, bf16* shadow, i64 begin, i64 end, bool clip,
                            float scale, float decay, const AdamWConstants& c) {
    for (i64 i = begin + threadIdx.x; i < end; i += blockDim.x) {
        float gi = load(g, i);
        if (clip) gi = __fmul_rn(gi, scale);
        float mi = load(m, i), vi = load(v, i);
        float w_new = adamw_update(gi, mi, vi, load(w, i), decay, c);
        store(w, i, w_new);
        store(m, i, mi);
        store(v, i, vi);
        if (shadow) store(shadow, i, w_new);
    }
}

// One AdamW step of every tensor of the group, each gradient scaled by status[1]; nothing is written when
// the norm status[0] is not finite (the host then refuses the update, as the CPU trainer does). Tensors
// listed as not decaying use a decay factor of exactly 1.
extern "C" __global__ void multi_tensor_adamw(const TensorEntry* tensors, const unsigned long long* grads,
                                              const int* chunk_tensor, i64 chunks, i64 chunk,
                                              const double* status, AdamWConstants c) {
    double norm = status[0];
    if (!isfinite(norm)) return;
    double factor = status[1];
    bool clip = factor < 1.0;
    float scale = (float)factor;
    for (i64 ci = blockIdx.x; ci < chunks; ci += gridDim.x) {
        int t = chunk_tensor[ci];
        TensorEntry e = tensors[t];
        i64 begin = (ci - e.first_chunk) * chunk;
        i64 end = min(e.n, begin + chunk);
        float decay = e.decays ? c.decay : 1.0f;
        if (e.kind == KIND_F32) {
            adamw_chunk((f32*)e.param, (const f32*)grads[t], (f32*)e.m, (f32*)e.v, (bf16*)0, begin, end, clip,
                        scale, decay, c);
        } else if (e.kind == KIND_MIXED) {
            adamw_chunk((f32*)e.master, (const bf16*)grads[t], (f32*)e.m, (f32*)e.v, (bf16*)e.param, begin, end,
                        clip, scale, decay, c);
        } else {
            adamw_chunk((bf16*)e.param, (const bf16*)grads[t], (bf16*)e.m, (bf16*)e.v, (bf16*)0, begin, end,
                        clip, scale, decay, c);
        }
    }
}
