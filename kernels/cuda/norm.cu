// RMSNorm over rows of length `dim`: y = x * r * w with r = 1 / sqrt(mean(x^2) + eps) per row.
// Backward (derivation in the CPU kernel): dx = r (g w) - x r^3 / dim * sum(g w x),  dw = sum_rows g x r.
// Row-wise kernels run one block per row (blocks step over rows when there are more rows than blocks).
// The backward is one launch: each block sums the weight gradient of its run of consecutive rows into a
// partial row; the block that finishes last (an integer counter decides which, nothing else) adds the
// partials in block order, so the result does not depend on timing.

template <typename T>
__device__ void rms_norm_forward(const T* x, const T* w, T* y, i64 rows, i64 dim, float eps) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * dim;
        T* yr = y + row * dim;
        float sum_xx = 0.0f;
        for (i64 c = threadIdx.x; c < dim; c += blockDim.x) {
            float v = load(xr, c);
            sum_xx += v * v;
        }
        sum_xx = block_sum(sum_xx);
        float r = 1.0f / sqrtf(sum_xx / (float)dim + eps);
        for (i64 c = threadIdx.x; c < dim; c += blockDim.x) store(yr, c, load(xr, c) * r * load(w, c));
    }
}

// Block b handles rows [b * rows_per_block, (b + 1) * rows_per_block) and writes the sum of their g x r
// into partial[b * dim ..][..dim] (each column owned by one thread, rows added in order). Then the last
// block to finish writes gw[c] = sum over b (in order) of partial[b * dim + c] and sets `finished` back to
// 0 for the next launch (it must be 0 when the kernel starts).
template <typename T>
__device__ void rms_norm_backward(const T* x, const T* w, const T* g, T* gx, T* gw, float* partial,
                                  unsigned int* finished, i64 rows, i64 dim, float eps, i64 rows_per_block) {
    float* acc = partial + (i64)blockIdx.x * dim;
    for (i64 c = threadIdx.x; c < dim; c += blockDim.x) acc[c] = 0.0f;
    i64 start = (i64)blockIdx.x * rows_per_block;
    i64 end = start + rows_per_block < rows ? start + rows_per_block : rows;
    float inv_dim = 1.0f / (float)dim;
    for (i64 row = start; row < end; ++row) {
        const T* xr = x + row * dim;
        const T* gr = g + row * dim;
        T* gxr = gx + row * dim;
        float sum_xx = 0.0f, sum_gwx = 0.0f;
        for (i64 c = threadIdx.x; c < dim; c += blockDim.x) {
            float xi = load(xr, c);
            sum_xx += xi * xi;
            sum_gwx += load(gr, c) * load(w, c) * xi;
        }
        sum_xx = block_sum(sum_xx);
        sum_gwx = block_sum(sum_gwx);
        float r = 1.0f / sqrtf(sum_xx / (float)dim + eps);
        float coef = r * r * r * inv_dim * sum_gwx;
        for (i64 c = threadIdx.x; c < dim; c += blockDim.x) {
            float xi = load(xr, c), gi = load(gr, c);
            store(gxr, c, r * (gi * load(w, c)) - xi * coef);
            acc[c] += gi * xi * r;
        }
    }
    // Publish this block's partial row before counting it as done (the threadFenceReduction pattern).
    __threadfence();
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(finished, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Volatile loads read the other blocks' partials from L2, not from a stale L1 line.
    const volatile float* partials = partial;
    for (i64 c = threadIdx.x; c < dim; c += blockDim.x) {
        float s = 0.0f;
        for (i64 b = 0; b < gridDim.x; ++b) s += partials[b * dim + c];
        store(gw, c, s);
    }
    if (threadIdx.x == 0) *finished = 0u;
}

#define NORM(T) \
    extern "C" __global__ void rms_norm_forward_##T(const T* x, const T* w, T* y, i64 rows, i64 dim, float eps) { \
        rms_norm_forward<T>(x, w, y, rows, dim, eps); \
    } \
    extern "C" __global__ void rms_norm_backward_##T(const T* x, const T* w, const T* g, T* gx, T* gw, \
                                                     float* partial, unsigned int* finished, i64 rows, i64 dim, \
                                                     float eps, i64 rows_per_block) { \
        rms_norm_backward<T>(x, w, g, gx, gw, partial, finished, rows, dim, eps, rows_per_block); \
    }
NORM(f32)
NORM(bf16)
