// Reductions: row sums of a contiguous [rows, cols] matrix, the building block of sums over any axes (the
// tensor layer permutes the reduced axes last and makes the input contiguous first).
// Accumulation is in f32 in a fixed order (each thread strides over the row, then the block tree of
// `block_sum`), so results depend only on the shape and the block size: deterministic.

// y[r] = sum_c x[r * cols + c]. One block per row (grid-stride over rows); an empty row sums to 0.
template <typename T>
__device__ void row_sum(const T* x, T* y, i64 rows, i64 cols) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* row = x + r * cols;
        float acc = 0.0f;
        for (i64 c = threadIdx.x; c < cols; c += blockDim.x) acc += load(row, c);
        float total = block_sum(acc);
        if (threadIdx.x == 0) store(y, r, total);
    }
}

extern "C" __global__ void row_sum_f32(const f32* x, f32* y, i64 rows, i64 cols) { row_sum<f32>(x, y, rows, cols); }
extern "C" __global__ void row_sum_bf16(const bf16* x, bf16* y, i64 rows, i64 cols) { row_sum<bf16>(x, y, rows, cols); }
