// Shared by every kernel source (prepended before compilation). No CUDA headers are needed: bf16 is a raw
// 16-bit pattern converted by hand (round to nearest even, NaN kept quiet), all arithmetic is in f32.
typedef unsigned short bf16;
typedef long long i64;
typedef float f32;
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float bf16_to_f32(bf16 x) { return __uint_as_float(((unsigned int)x) << 16); }

__device__ __forceinline__ bf16 f32_to_bf16(float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

__device__ __forceinline__ float load(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, i64 i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void store(float* p, i64 i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, i64 i, float v) { p[i] = f32_to_bf16(v); }

// A strided view (mirrors `StridedArg` on the Rust side): element i in row-major order over `shape` lives
// at offset + sum_d index_d * strides[d].
struct Strided {
    int rank;
    int pad;
    i64 offset;
    i64 shape[8];
    i64 strides[8];
};

__device__ __forceinline__ i64 strided_offset(const Strided& s, i64 i) {
    i64 off = s.offset;
    if (i <= 0xffffffffll) {
        // 32-bit division is several times cheaper than 64-bit; every dim of a view with this many
        // elements fits.
        unsigned int k = (unsigned int)i;
        for (int d = s.rank - 1; d >= 0; --d) {
            unsigned int n = (unsigned int)s.shape[d];
            off += (i64)(k % n) * s.strides[d];
            k /= n;
        }
        return off;
    }
    for (int d = s.rank - 1; d >= 0; --d) {
        i64 n = s.shape[d];
        off += (i % n) * s.strides[d];
        i /= n;
    }
    return off;
}

// Grid-stride loop over [0, n).
#define FOR_EACH(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n); i += (i64)gridDim.x * blockDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread. The order of
// additions is fixed by the block size, so results are deterministic.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int warps = (blockDim.x + 31) >> 5;
        float w = lane < warps ? partial[lane] : 0.0f;
        w = warp_sum(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    return total;
}

// Maximum over the block, returned to every thread (same block-size rules as block_sum).
__device__ float block_max(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int warps = (blockDim.x + 31) >> 5;
        float w = lane < warps ? partial[lane] : NEG_INF;
        w = warp_max(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    return total;
}

// ---- Tensor-core fragments: mma.sync m16n8k16, bf16 inputs, f32 accumulators (sm_80 and later). -------
// Lane l of a warp is thread t = l % 4 of group g = l / 4. For D[16x8] = A[16x16] B[16x8] + C[16x8] each
// lane holds (every 32-bit register two bf16, the lower index in the low half):
//   A: a[0] = A[g][2t, 2t+1],  a[1] = A[g+8][2t, 2t+1],  a[2] = A[g][2t+8, 2t+9],  a[3] = A[g+8][2t+8, 2t+9]
//   B: b[0] = B[2t, 2t+1][g],  b[1] = B[2t+8, 2t+9][g]
//   C, D: c[0], c[1] = C[g][2t, 2t+1],  c[2], c[3] = C[g+8][2t, 2t+1]
// so two accumulators side by side (columns 0-7 and 8-15) hold exactly the A fragment of their 16x16
// product, rounded to bf16 (`accumulators_as_a`): P and dS go from one product to the next in registers.
typedef unsigned int u32;

__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    return (u32)f32_to_bf16(lo) | ((u32)f32_to_bf16(hi) << 16);
}

__device__ __forceinline__ void mma_bf16(float c[4], const u32 a[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The A fragment of the 16x16 block at `m` of a row-major bf16 matrix with row stride `ld` (even).
__device__ __forceinline__ void load_a(const bf16* m, int ld, int g, int t, u32 a[4]) {
    a[0] = *(const u32*)(m + g * ld + 2 * t);
    a[1] = *(const u32*)(m + (g + 8) * ld + 2 * t);
    a[2] = *(const u32*)(m + g * ld + 2 * t + 8);
    a[3] = *(const u32*)(m + (g + 8) * ld + 2 * t + 8);
}

// The B fragment of the 16x8 block B = M^T, M the row-major 8x16 block at `m` (row n of M is column n of B).
__device__ __forceinline__ void load_b_transposed(const bf16* m, int ld, int g, int t, u32* b0, u32* b1) {
    *b0 = *(const u32*)(m + g * ld + 2 * t);
    *b1 = *(const u32*)(m + g * ld + 2 * t + 8);
}

// The B fragment of the row-major 16x8 block at `m` (row stride `ld`).
__device__ __forceinline__ void load_b(const bf16* m, int ld, int g, int t, u32* b0, u32* b1) {
    *b0 = (u32)m[2 * t * ld + g] | ((u32)m[(2 * t + 1) * ld + g] << 16);
    *b1 = (u32)m[(2 * t + 8) * ld + g] | ((u32)m[(2 * t + 9) * ld + g] << 16);
}

// The A fragment (rounded to bf16) of the 16x16 matrix held by the accumulators of its columns 0-7 (`lo`)
// and 8-15 (`hi`).
__device__ __forceinline__ void accumulators_as_a(const float lo[4], const float hi[4], u32 a[4]) {
    a[0] = pack_bf16(lo[0], lo[1]);
    a[1] = pack_bf16(lo[2], lo[3]);
    a[2] = pack_bf16(hi[0], hi[1]);
    a[3] = pack_bf16(hi[2], hi[3]);
}

// acc[16 x KEYS] += A[16 x D] T^T for a warp's 16-row strip A (its D/16 A fragments along the depth) and
// the row-major tile T[KEYS x D] at `tile`: the scores of a strip of queries against a tile of keys.
template <int KEYS, int D>
__device__ __forceinline__ void strip_times_tile_t(const u32 (&a)[D / 16][4], const bf16* tile, int ld, int g,
                                                   int t, float (&acc)[KEYS / 8][4]) {
    #pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        #pragma unroll
        for (int n = 0; n < KEYS / 8; ++n) {
            u32 b0, b1;
            load_b_transposed(tile + n * 8 * ld + kk * 16, ld, g, t, &b0, &b1);
            mma_bf16(acc[n], a[kk], b0, b1);
        }
    }
}

// acc[16 x D] += P[16 x KEYS] T for P held in accumulators (`p[n]`: columns 8n..8n+7, rounded to bf16 on
// the way, `accumulators_as_a`) and the row-major tile T[KEYS x D] at `tile`: P V in forward, dS K for dQ.
template <int KEYS, int D>
__device__ __forceinline__ void accumulators_times_tile(const float (&p)[KEYS / 8][4], const bf16* tile, int ld,
                                                        int g, int t, float (&acc)[D / 8][4]) {
    #pragma unroll
    for (int kk = 0; kk < KEYS / 16; ++kk) {
        u32 pa[4];
        accumulators_as_a(p[2 * kk], p[2 * kk + 1], pa);
        #pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            u32 b0, b1;
            load_b(tile + kk * 16 * ld + n * 8, ld, g, t, &b0, &b1);
            mma_bf16(acc[n], pa, b0, b1);
        }
    }
}

// ---- Flash attention operands (flash_attention.cu, flash_attention_backward.cu). ---------------------
// Element strides of one `[batch, len, heads, head_dim]` operand whose head_dim is contiguous (mirrors
// `AttentionRows` on the Rust side).
struct AttentionRows {
    i64 batch;
    i64 row;
    i64 head;
};

// Sizes of one call (mirrors `FlashShape` on the Rust side). Query i sits at position i + kv_len - q_len.
struct FlashShape {
    i64 batch;
    i64 heads;
    i64 q_len;
    i64 kv_len;
    int head_dim;
    float scale;
};

// Shared-memory tiles hold rows of D + TILE_PAD bf16: the 16-byte pad moves row r by 4r words, so the
// eight rows one fragment load touches fall in distinct banks.
#define TILE_PAD 8

// Rows [row0, row0 + rows) of head h of batch b of `src` into the row-major shared tile `tile` (row stride
// D + TILE_PAD), zeros past `len`, in 16-byte chunks: consecutive threads copy consecutive chunks of a row
// (coalesced reads). The host guarantees 16-byte aligned rows.
template <int D>
__device__ void stage_rows(bf16* tile, const bf16* src, AttentionRows s, i64 b, i64 h, i64 row0, i64 len,
                           int rows) {
    const int chunks = D / 8;
    for (int c = threadIdx.x; c < rows * chunks; c += blockDim.x) {
        int r = c / chunks, col = (c % chunks) * 8;
        uint4 x = {0u, 0u, 0u, 0u};
        if (row0 + r < len) x = *(const uint4*)(src + b * s.batch + (row0 + r) * s.row + h * s.head + col);
        *(uint4*)(tile + r * (D + TILE_PAD) + col) = x;
    }
}

// One warp per row: the warps of the whole grid over `count` rows (the grid is capped; warps loop over
// the rest).
#define WARP_PER_ROW(row, count)                                                   \
    const int lane = threadIdx.x & 31;                                             \
    const i64 warps = ((i64)gridDim.x * blockDim.x) >> 5;                          \
    for (i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < (count); row += warps)

// Key j is visible to query i (both absolute indices within their sequences).
__device__ __forceinline__ bool visible(i64 i, i64 j, const FlashShape& s) {
    return j < s.kv_len && j <= i + s.kv_len - s.q_len;
}
