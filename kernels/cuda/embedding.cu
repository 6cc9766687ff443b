// Embedding lookup out[i] = W[ids[i]] (rows of `dim`) and its gradient dW[r] = sum_{i: ids[i] = r} g[i].
// The backward takes the positions grouped by id on the host (positions[starts[k]..starts[k+1]] are the
// ascending positions of id rows[k]); one block per distinct id sums its positions' gradient rows in that
// order, so the result is deterministic and needs no atomics. Rows of dW no id refers to stay as the
// caller zeroed them.

template <typename T>
__device__ void embedding_forward(const T* w, const unsigned int* ids, T* out, i64 n_ids, i64 dim) {
    FOR_EACH(i, n_ids * dim) {
        i64 pos = i / dim, c = i % dim;
        out[i] = w[(i64)ids[pos] * dim + c];
    }
}

template <typename T>
__device__ void embedding_backward(const T* grad_out, const unsigned int* rows, const unsigned int* starts,
                                   const unsigned int* positions, T* grad_w, i64 n_rows, i64 dim) {
    for (i64 k = blockIdx.x; k < n_rows; k += gridDim.x) {
        i64 begin = starts[k], end = starts[k + 1];
        T* dst = grad_w + (i64)rows[k] * dim;
        for (i64 c = threadIdx.x; c < dim; c += blockDim.x) {
            float acc = 0.0f;
            for (i64 e = begin; e < end; ++e) acc += load(grad_out, (i64)positions[e] * dim + c);
            store(dst, c, acc);
        }
    }
}

#define EMBEDDING(T) \
    extern "C" __global__ void embedding_forward_##T(const T* w, const unsigned int* ids, T* out, i64 n_ids, \
                                                     i64 dim) { \
        embedding_forward<T>(w, ids, out, n_ids, dim); \
    } \
    extern "C" __global__ void embedding_backward_##T(const T* grad_out, const unsigned int* rows, \
                                                      const unsigned int* starts, \
                                                      const unsigned int* positions, T* grad_w, i64 n_rows, \
                                                      i64 dim) { \
        embedding_backward<T>(grad_out, rows, starts, positions, grad_w, n_rows, dim); \
    }
EMBEDDING(f32)
EMBEDDING(bf16)
