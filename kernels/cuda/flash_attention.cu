// Flash attention forward (docs/METHOD.md section 3's causal attention without the [T, T] scores).
//
// Per (batch b, head h) and query row i, with keys j visible when j <= i + kv_len - q_len:
//     s_ij = scale q_i . k_j,   m_i = max_j s_ij,   l_i = sum_j exp(s_ij - m_i),
//     o_i = sum_j exp(s_ij - m_i) v_j / l_i,   lse_i = m_i + log l_i   (saved for backward).
// Online softmax over key tiles: with a running max m and sum l per row, a tile with new max m' rescales
//     l <- l exp(m - m') + sum_tile exp(s - m'),   o <- o exp(m - m') + sum_tile exp(s - m') v,
// so only one tile of scores exists at a time, in registers. q, k, v are read in their
// `[batch, len, heads, head_dim]` layout (any row strides, head_dim contiguous); o is written contiguous
// in that layout and lse as f32 `[batch, heads, q_len]`.
//
// bf16 (tensor cores): one block of 4 warps per (64-row query tile, head, batch); warp w owns query rows
// 16w..16w+15 of the tile. Its Q fragments stay in registers; 64-key tiles of K and V are staged through
// shared memory; S = Q K^T and O += P V are mma.sync m16n8k16 products with f32 accumulators, P goes from
// the S accumulators to the A operand of P V in registers (rounded to bf16, as the values it weighs are),
// while l sums the unrounded f32 probabilities. Barriers: after staging a tile (every warp reads all of
// it) and after using it (before the next tile overwrites it).
//
// f32 (plain FMA, the precise reference path): one warp per query row, lane c holding elements c, c + 32,
// ... of q_i and o_i; keys one at a time from global memory (L1/L2 serve the reuse across rows); no
// shared memory, no barriers.
//
// Deterministic: every sum runs in a fixed order (per lane, then fixed shuffle trees), no atomics.
#define FWD_ROWS 64
#define FWD_KEYS 64

template <int D>
__device__ void forward_bf16(bf16* tiles, const bf16* q, AttentionRows qs, const bf16* k, AttentionRows ks,
                             const bf16* v, AttentionRows vs, bf16* o, float* lse, FlashShape s) {
    const int LD = D + TILE_PAD;
    bf16* k_tile = tiles;
    bf16* v_tile = tiles + FWD_KEYS * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const i64 i0 = (i64)blockIdx.x * FWD_ROWS, h = blockIdx.y, b = blockIdx.z;
    const i64 rows[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};

    // The query tile passes through k_tile once, into registers.
    stage_rows<D>(k_tile, q, qs, b, h, i0, s.q_len, FWD_ROWS);
    __syncthreads();  // the whole tile is staged before any warp reads its rows
    u32 qa[D / 16][4];
    #pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) load_a(k_tile + warp * 16 * LD + kk * 16, LD, g, t, qa[kk]);
    __syncthreads();  // every warp holds its fragments before keys overwrite the tile

    float acc[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    const i64 last_row = min(i0 + FWD_ROWS, s.q_len) - 1;
    const i64 key_end = last_row + s.kv_len - s.q_len + 1;  // keys past it are masked for the whole tile
    for (i64 j0 = 0; j0 < key_end; j0 += FWD_KEYS) {
        stage_rows<D>(k_tile, k, ks, b, h, j0, s.kv_len, FWD_KEYS);
        stage_rows<D>(v_tile, v, vs, b, h, j0, s.kv_len, FWD_KEYS);
        __syncthreads();  // K and V tiles complete before any warp multiplies with them

        float sc[FWD_KEYS / 8][4];
        #pragma unroll
        for (int n = 0; n < FWD_KEYS / 8; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
        strip_times_tile_t<FWD_KEYS, D>(qa, k_tile, LD, g, t, sc);
        // Scale and mask; the new running max of each of this lane's two rows (shared by its 4-lane group).
        float mx[2] = {m[0], m[1]};
        #pragma unroll
        for (int n = 0; n < FWD_KEYS / 8; ++n) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                i64 j = j0 + n * 8 + 2 * t + (e & 1);
                sc[n][e] = visible(rows[e >> 1], j, s) ? sc[n][e] * s.scale : NEG_INF;
                mx[e >> 1] = fmaxf(mx[e >> 1], sc[n][e]);
            }
        }
        float alpha[2];
        #pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            // Key 0 is visible to every row, so mx is finite from the first tile on.
            alpha[r] = expf(m[r] - mx[r]);
            m[r] = mx[r];
            l[r] *= alpha[r];
        }
        #pragma unroll
        for (int n = 0; n < FWD_KEYS / 8; ++n) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                sc[n][e] = expf(sc[n][e] - m[e >> 1]);
                l[e >> 1] += sc[n][e];
            }
        }
        #pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            acc[n][0] *= alpha[0];
            acc[n][1] *= alpha[0];
            acc[n][2] *= alpha[1];
            acc[n][3] *= alpha[1];
        }
        accumulators_times_tile<FWD_KEYS, D>(sc, v_tile, LD, g, t, acc);
        __syncthreads();  // every warp is done with the tiles before the next ones are staged
    }

    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        // Each lane summed its own columns; the row's sum adds the group's four partial sums.
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        if (rows[r] >= s.q_len) continue;
        const float inv = 1.0f / l[r];
        bf16* out = o + ((b * s.q_len + rows[r]) * s.heads + h) * D;
        #pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            *(u32*)(out + n * 8 + 2 * t) = pack_bf16(acc[n][2 * r] * inv, acc[n][2 * r + 1] * inv);
        }
        if (t == 0) lse[(b * s.heads + h) * s.q_len + rows[r]] = m[r] + logf(l[r]);
    }
}

// Launched with 128 threads (4 warps) per block.
extern "C" __global__ void flash_attention_forward_bf16(const bf16* q, AttentionRows qs, const bf16* k,
                                                        AttentionRows ks, const bf16* v, AttentionRows vs,
                                                        bf16* o, float* lse, FlashShape s) {
    __shared__ __align__(16) bf16 tiles[2 * FWD_KEYS * (128 + TILE_PAD)];
    if (s.head_dim == 64) {
        forward_bf16<64>(tiles, q, qs, k, ks, v, vs, o, lse, s);
    } else {
        forward_bf16<128>(tiles, q, qs, k, ks, v, vs, o, lse, s);
    }
}

template <int D>
__device__ void forward_f32(const float* q, AttentionRows qs, const float* k, AttentionRows ks,
                            const float* v, AttentionRows vs, float* o, float* lse, FlashShape s) {
    const int E = D / 32;
    WARP_PER_ROW(row, s.batch * s.heads * s.q_len) {
        const i64 i = row % s.q_len, h = (row / s.q_len) % s.heads, b = row / (s.q_len * s.heads);
        const float* qi = q + b * qs.batch + i * qs.row + h * qs.head;
        float qv[E], acc[E];
        #pragma unroll
        for (int e = 0; e < E; ++e) {
            qv[e] = qi[lane + 32 * e];
            acc[e] = 0.0f;
        }
        float m = NEG_INF, l = 0.0f;
        for (i64 j = 0; j <= i + s.kv_len - s.q_len; ++j) {
            const float* kj = k + b * ks.batch + j * ks.row + h * ks.head;
            const float* vj = v + b * vs.batch + j * vs.row + h * vs.head;
            float dot = 0.0f;
            #pragma unroll
            for (int e = 0; e < E; ++e) dot += qv[e] * kj[lane + 32 * e];
            const float sij = warp_sum(dot) * s.scale;
            const float m_new = fmaxf(m, sij), alpha = expf(m - m_new), p = expf(sij - m_new);
            l = l * alpha + p;
            #pragma unroll
            for (int e = 0; e < E; ++e) acc[e] = acc[e] * alpha + p * vj[lane + 32 * e];
            m = m_new;
        }
        float* out = o + ((b * s.q_len + i) * s.heads + h) * D;
        #pragma unroll
        for (int e = 0; e < E; ++e) out[lane + 32 * e] = acc[e] / l;
        if (lane == 0) lse[(b * s.heads + h) * s.q_len + i] = m + logf(l);
    }
}

extern "C" __global__ void flash_attention_forward_f32(const float* q, AttentionRows qs, const float* k,
                                                       AttentionRows ks, const float* v, AttentionRows vs,
                                                       float* o, float* lse, FlashShape s) {
    if (s.head_dim == 64) {
        forward_f32<64>(q, qs, k, ks, v, vs, o, lse, s);
    } else {
        forward_f32<128>(q, qs, k, ks, v, vs, o, lse, s);
    }
}
