// Cross-entropy over rows of `vocab` logits, one target per row; rows whose target is the ignore id
// (when has_ignore != 0) do not count. Per counted row: loss = (m - x[t]) + log(sum_j exp(x_j - m)) with
// m = max_j x_j; the gradient of the mean over `count` rows is factor * (softmax(x) - onehot(t)) with
// factor = grad_loss / count. One block per row, all arithmetic in f32.

__device__ __forceinline__ bool ignored(unsigned int target, unsigned int ignore_id, int has_ignore) {
    return has_ignore != 0 && target == ignore_id;
}

// Max and sum of exp(x - max) of a row (every thread gets both).
template <typename T>
__device__ void row_softmax_stats(const T* xr, i64 vocab, float* max_out, float* sum_out) {
    float m = NEG_INF;
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, load(xr, j));
    m = block_max(m);
    float sum = 0.0f;
    for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) sum += expf(load(xr, j) - m);
    *sum_out = block_sum(sum);
    *max_out = m;
}

// row_loss[r] = the loss of row r, 0 for ignored rows.
template <typename T>
__device__ void cross_entropy_rows(const T* logits, const unsigned int* targets, float* row_loss, i64 rows,
                                   i64 vocab, unsigned int ignore_id, int has_ignore) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        unsigned int t = targets[row];
        if (ignored(t, ignore_id, has_ignore)) {
            if (threadIdx.x == 0) row_loss[row] = 0.0f;
            continue;
        }
        const T* xr = logits + row * vocab;
        float m, sum;
        row_softmax_stats(xr, vocab, &m, &sum);
        if (threadIdx.x == 0) row_loss[row] = (m - load(xr, (i64)t)) + logf(sum);
    }
}

// out[0] = sum of row_loss / count, summed in f64 in a fixed order. One block of exactly 256 threads.
template <typename T>
__device__ void cross_entropy_mean(const float* row_loss, T* out, i64 rows, i64 count) {
    __shared__ double partial[256];
    double acc = 0.0;
    for (i64 i = threadIdx.x; i < rows; i += blockDim.x) acc += (double)row_loss[i];
    partial[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int k = 0; k < (int)blockDim.x; ++k) total += partial[k];
        store(out, 0, (float)(total / (double)count));
    }
}

// grad[r] = factor * (softmax(x_r) - onehot(t_r)) for counted rows, 0 for ignored rows.
template <typename T>
__device__ void cross_entropy_backward(const T* logits, const unsigned int* targets, T* grad, i64 rows,
                                       i64 vocab, unsigned int ignore_id, int has_ignore, float factor) {
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        unsigned int t = targets[row];
        T* gr = grad + row * vocab;
        if (ignored(t, ignore_id, has_ignore)) {
            for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) store(gr, j, 0.0f);
            continue;
        }
        const T* xr = logits + row * vocab;
        float m, sum;
        row_softmax_stats(xr, vocab, &m, &sum);
        float scale = factor / sum;
        for (i64 j = threadIdx.x; j < vocab; j += blockDim.x) {
            float v = expf(load(xr, j) - m) * scale;
            store(gr, j, j == (i64)t ? v - factor : v);
        }
    }
}

#define LOSS(T) \
    extern "C" __global__ void cross_entropy_rows_##T(const T* logits, const unsigned int* targets, \
                                                      float* row_loss, i64 rows, i64 vocab, \
                                                      unsigned int ignore_id, int has_ignore) { \
        cross_entropy_rows<T>(logits, targets, row_loss, rows, vocab, ignore_id, has_ignore); \
    } \
    extern "C" __global__ void cross_entropy_mean_##T(const float* row_loss, T* out, i64 rows, i64 count) { \
        cross_entropy_mean<T>(row_loss, out, rows, count); \
    } \
    extern "C" __global__ void cross_entropy_backward_##T(const T* logits, const unsigned int* targets, T* grad, \
                                                          i64 rows, i64 vocab, unsigned int ignore_id, \
                                                          int has_ignore, float factor) { \
        cross_entropy_backward<T>(logits, targets, grad, rows, vocab, ignore_id, has_ignore, factor); \
    }
LOSS(f32)
LOSS(bf16)
