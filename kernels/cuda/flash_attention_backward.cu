// Flash attention backward, FlashAttention-2 style (the forward and its notation: flash_attention.cu).
//
// With P_ij = exp(scale q_i . k_j - lse_i) on visible keys (0 elsewhere), recomputed tile by tile from the
// forward's saved log-sum-exp, and dO the gradient of the output:
//     D_i = rowsum(dO_i * O_i)  (= sum_j P_ij dP_ij),           dP_ij = dO_i . v_j,
//     dS_ij = P_ij (dP_ij - D_i),
//     dV_j = sum_i P_ij dO_i,   dK_j = scale sum_i dS_ij q_i,   dQ_i = scale sum_j dS_ij k_j.
// Three kernels: `_dot` computes D (one warp per row); `flash_attention_backward_T` walks the query rows
// for a tile of keys and accumulates dK and dV in registers; `_dq_T` walks the keys for a tile of query
// rows and accumulates dQ in registers. dQ is a second pass (recomputing P and dP) rather than f32 atomics
// from the key-tile kernel, so every gradient is summed in a fixed order: deterministic, bit for bit.
// Inputs are read in their `[batch, len, heads, head_dim]` layout (any row strides, head_dim contiguous);
// gradients are written contiguous in that layout.
//
// bf16 (tensor cores, mma.sync m16n8k16, f32 accumulators), 4 warps per block:
// - dK, dV: one block per (64-key tile, head, batch), warp w owning keys 16w..16w+15. The key and value
//   tiles stay in shared memory; 16 query rows at a time (Q, dO, lse, D) are staged next to them. Per step
//   each warp forms S^T = K Q^T and dP^T = V dO^T (16 x 16 each), turns them into P^T and dS^T, and adds
//   dV += P^T dO and dK += dS^T Q with P^T, dS^T passed in registers as A operands.
// - dQ: one block per (64-row query tile, head, batch), warp w owning rows 16w..16w+15, whose Q and dO
//   fragments stay in registers; 32-key tiles of K and V are staged; S = Q K^T, dP = dO V^T, then
//   dQ += dS K.
// Barriers: after staging (every warp reads the whole staged tile) and after using a staged tile (before
// the next one overwrites it); the initial Q and dO tiles pass through the key buffer once.
//
// f32 (plain FMA, the precise reference path): one warp per key row (dK, dV) or query row (dQ), the other
// operand's rows read one at a time from global memory; dot products are warp shuffle trees.
#define KV_KEYS 64
#define KV_ROWS 16
#define DQ_ROWS 64
#define DQ_KEYS 32

// The arguments every backward kernel takes, in this order.
#define BACKWARD_ARGS(T)                                                                                 \
    const T *q, AttentionRows qs, const T *k, AttentionRows ks, const T *v, AttentionRows vs,           \
        const T *dout, AttentionRows dos, const float *lse, const float *dot, FlashShape s

template <typename T>
__device__ void row_dot(const T* o, AttentionRows os, const T* dout, AttentionRows dos, float* dot,
                        FlashShape s) {
    WARP_PER_ROW(row, s.batch * s.heads * s.q_len) {
        // `row` runs over [batch, heads, q_len], the layout of `dot`.
        const i64 i = row % s.q_len, h = (row / s.q_len) % s.heads, b = row / (s.q_len * s.heads);
        const T* oi = o + b * os.batch + i * os.row + h * os.head;
        const T* gi = dout + b * dos.batch + i * dos.row + h * dos.head;
        float sum = 0.0f;
        for (int c = lane; c < s.head_dim; c += 32) sum += load(oi, c) * load(gi, c);
        sum = warp_sum(sum);
        if (lane == 0) dot[row] = sum;
    }
}

#define ROW_DOT(T)                                                                                  \
    extern "C" __global__ void flash_attention_backward_dot_##T(const T* o, AttentionRows os,            \
                                                                const T* dout, AttentionRows dos,       \
                                                                float* dot, FlashShape s) {             \
        row_dot<T>(o, os, dout, dos, dot, s);                                                       \
    }
ROW_DOT(f32)
ROW_DOT(bf16)

template <int D>
__device__ void backward_kv_bf16(bf16* tiles, float* stats, BACKWARD_ARGS(bf16), bf16* dk, bf16* dv) {
    const int LD = D + TILE_PAD;
    bf16* k_tile = tiles;
    bf16* v_tile = k_tile + KV_KEYS * LD;
    bf16* q_tile = v_tile + KV_KEYS * LD;
    bf16* do_tile = q_tile + KV_ROWS * LD;
    float* lse_rows = stats;
    float* dot_rows = stats + KV_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const i64 j0 = (i64)blockIdx.x * KV_KEYS, h = blockIdx.y, b = blockIdx.z;
    const i64 keys[2] = {j0 + warp * 16 + g, j0 + warp * 16 + g + 8};
    const i64 bh = b * s.heads + h;
    stage_rows<D>(k_tile, k, ks, b, h, j0, s.kv_len, KV_KEYS);
    stage_rows<D>(v_tile, v, vs, b, h, j0, s.kv_len, KV_KEYS);

    float grad_k[D / 8][4], grad_v[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        #pragma unroll
        for (int e = 0; e < 4; ++e) grad_k[n][e] = grad_v[n][e] = 0.0f;
    }
    // Rows before the first one that sees key j0 contribute nothing.
    const i64 first = max((i64)0, j0 - (s.kv_len - s.q_len));
    for (i64 i0 = first / KV_ROWS * KV_ROWS; i0 < s.q_len; i0 += KV_ROWS) {
        stage_rows<D>(q_tile, q, qs, b, h, i0, s.q_len, KV_ROWS);
        stage_rows<D>(do_tile, dout, dos, b, h, i0, s.q_len, KV_ROWS);
        if (threadIdx.x < KV_ROWS) {
            const i64 i = i0 + threadIdx.x;
            lse_rows[threadIdx.x] = i < s.q_len ? lse[bh * s.q_len + i] : 0.0f;
            dot_rows[threadIdx.x] = i < s.q_len ? dot[bh * s.q_len + i] : 0.0f;
        }
        __syncthreads();  // these query rows (and, the first time, the key and value tiles) are staged

        float st[2][4], dpt[2][4];
        #pragma unroll
        for (int n = 0; n < 2; ++n) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.0f;
        }
        #pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            u32 ka[4], va[4];
            load_a(k_tile + warp * 16 * LD + kk * 16, LD, g, t, ka);
            load_a(v_tile + warp * 16 * LD + kk * 16, LD, g, t, va);
            #pragma unroll
            for (int n = 0; n < 2; ++n) {
                u32 b0, b1;
                load_b_transposed(q_tile + n * 8 * LD + kk * 16, LD, g, t, &b0, &b1);
                mma_bf16(st[n], ka, b0, b1);
                load_b_transposed(do_tile + n * 8 * LD + kk * 16, LD, g, t, &b0, &b1);
                mma_bf16(dpt[n], va, b0, b1);
            }
        }
        // Element e of accumulator n: key keys[e / 2], query row i0 + c.
        #pragma unroll
        for (int n = 0; n < 2; ++n) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = n * 8 + 2 * t + (e & 1);
                const i64 i = i0 + c;
                const bool seen = i < s.q_len && visible(i, keys[e >> 1], s);
                const float p = seen ? expf(st[n][e] * s.scale - lse_rows[c]) : 0.0f;
                st[n][e] = p;
                dpt[n][e] = p * (dpt[n][e] - dot_rows[c]);
            }
        }
        u32 pa[4], dsa[4];
        accumulators_as_a(st[0], st[1], pa);
        accumulators_as_a(dpt[0], dpt[1], dsa);
        #pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            u32 b0, b1;
            load_b(do_tile + n * 8, LD, g, t, &b0, &b1);
            mma_bf16(grad_v[n], pa, b0, b1);
            load_b(q_tile + n * 8, LD, g, t, &b0, &b1);
            mma_bf16(grad_k[n], dsa, b0, b1);
        }
        __syncthreads();  // every warp is done with these rows before the next ones are staged
    }

    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (keys[r] >= s.kv_len) continue;
        const i64 at = ((b * s.kv_len + keys[r]) * s.heads + h) * D + 2 * t;
        #pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            *(u32*)(dk + at + n * 8) = pack_bf16(grad_k[n][2 * r] * s.scale, grad_k[n][2 * r + 1] * s.scale);
            *(u32*)(dv + at + n * 8) = pack_bf16(grad_v[n][2 * r], grad_v[n][2 * r + 1]);
        }
    }
}

// Launched with 128 threads (4 warps) per block.
extern "C" __global__ void flash_attention_backward_bf16(BACKWARD_ARGS(bf16), bf16* dk, bf16* dv) {
    __shared__ __align__(16) bf16 tiles[(2 * KV_KEYS + 2 * KV_ROWS) * (128 + TILE_PAD)];
    __shared__ float stats[2 * KV_ROWS];
    if (s.head_dim == 64) {
        backward_kv_bf16<64>(tiles, stats, q, qs, k, ks, v, vs, dout, dos, lse, dot, s, dk, dv);
    } else {
        backward_kv_bf16<128>(tiles, stats, q, qs, k, ks, v, vs, dout, dos, lse, dot, s, dk, dv);
    }
}

template <int D>
__device__ void backward_q_bf16(bf16* tiles, BACKWARD_ARGS(bf16), bf16* dq) {
    const int LD = D + TILE_PAD;
    bf16* k_tile = tiles;
    bf16* v_tile = tiles + DQ_KEYS * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const i64 i0 = (i64)blockIdx.x * DQ_ROWS, h = blockIdx.y, b = blockIdx.z;
    const i64 rows[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};
    const i64 bh = b * s.heads + h;

    // Q, then dO, pass through the (2 * DQ_KEYS = DQ_ROWS rows) tile buffer into registers.
    u32 qa[D / 16][4], da[D / 16][4];
    stage_rows<D>(tiles, q, qs, b, h, i0, s.q_len, DQ_ROWS);
    __syncthreads();  // staged before any warp reads its rows
    #pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) load_a(tiles + warp * 16 * LD + kk * 16, LD, g, t, qa[kk]);
    __syncthreads();  // read by every warp before dO overwrites it
    stage_rows<D>(tiles, dout, dos, b, h, i0, s.q_len, DQ_ROWS);
    __syncthreads();
    #pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) load_a(tiles + warp * 16 * LD + kk * 16, LD, g, t, da[kk]);
    __syncthreads();  // read by every warp before keys overwrite it

    float lse_r[2], dot_r[2];
    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        lse_r[r] = rows[r] < s.q_len ? lse[bh * s.q_len + rows[r]] : 0.0f;
        dot_r[r] = rows[r] < s.q_len ? dot[bh * s.q_len + rows[r]] : 0.0f;
    }
    float grad_q[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; ++n) grad_q[n][0] = grad_q[n][1] = grad_q[n][2] = grad_q[n][3] = 0.0f;
    const i64 key_end = min(i0 + DQ_ROWS, s.q_len) + s.kv_len - s.q_len;
    for (i64 j0 = 0; j0 < key_end; j0 += DQ_KEYS) {
        stage_rows<D>(k_tile, k, ks, b, h, j0, s.kv_len, DQ_KEYS);
        stage_rows<D>(v_tile, v, vs, b, h, j0, s.kv_len, DQ_KEYS);
        __syncthreads();  // K and V tiles complete before any warp multiplies with them

        float sc[DQ_KEYS / 8][4], dp[DQ_KEYS / 8][4];
        #pragma unroll
        for (int n = 0; n < DQ_KEYS / 8; ++n) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) sc[n][e] = dp[n][e] = 0.0f;
        }
        #pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            #pragma unroll
            for (int n = 0; n < DQ_KEYS / 8; ++n) {
                u32 b0, b1;
                load_b_transposed(k_tile + n * 8 * LD + kk * 16, LD, g, t, &b0, &b1);
                mma_bf16(sc[n], qa[kk], b0, b1);
                load_b_transposed(v_tile + n * 8 * LD + kk * 16, LD, g, t, &b0, &b1);
                mma_bf16(dp[n], da[kk], b0, b1);
            }
        }
        // Element e of accumulator n: query rows[e / 2], key j0 + n * 8 + 2t + e % 2; sc becomes dS.
        #pragma unroll
        for (int n = 0; n < DQ_KEYS / 8; ++n) {
            #pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                const i64 j = j0 + n * 8 + 2 * t + (e & 1);
                const bool seen = rows[r] < s.q_len && visible(rows[r], j, s);
                const float p = seen ? expf(sc[n][e] * s.scale - lse_r[r]) : 0.0f;
                sc[n][e] = p * (dp[n][e] - dot_r[r]);
            }
        }
        accumulators_times_tile<DQ_KEYS, D>(sc, k_tile, LD, g, t, grad_q);
        __syncthreads();  // every warp is done with the tiles before the next ones are staged
    }

    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (rows[r] >= s.q_len) continue;
        bf16* out = dq + ((b * s.q_len + rows[r]) * s.heads + h) * D + 2 * t;
        #pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            *(u32*)(out + n * 8) = pack_bf16(grad_q[n][2 * r] * s.scale, grad_q[n][2 * r + 1] * s.scale);
        }
    }
}

// Launched with 128 threads (4 warps) per block.
extern "C" __global__ void flash_attention_backward_dq_bf16(BACKWARD_ARGS(bf16), bf16* dq) {
    __shared__ __align__(16) bf16 tiles[DQ_ROWS * (128 + TILE_PAD)];
    if (s.head_dim == 64) {
        backward_q_bf16<64>(tiles, q, qs, k, ks, v, vs, dout, dos, lse, dot, s, dq);
    } else {
        backward_q_bf16<128>(tiles, q, qs, k, ks, v, vs, dout, dos, lse, dot, s, dq);
    }
}

template <int D>
__device__ void backward_kv_f32(BACKWARD_ARGS(float), float* dk, float* dv) {
    const int E = D / 32;
    WARP_PER_ROW(row, s.batch * s.heads * s.kv_len) {
        const i64 j = row % s.kv_len, h = (row / s.kv_len) % s.heads, b = row / (s.kv_len * s.heads);
        const i64 bh = b * s.heads + h;
        const float* kj = k + b * ks.batch + j * ks.row + h * ks.head;
        const float* vj = v + b * vs.batch + j * vs.row + h * vs.head;
        float kv[E], vv[E], grad_k[E], grad_v[E];
        #pragma unroll
        for (int e = 0; e < E; ++e) {
            kv[e] = kj[lane + 32 * e];
            vv[e] = vj[lane + 32 * e];
            grad_k[e] = grad_v[e] = 0.0f;
        }
        for (i64 i = max((i64)0, j - (s.kv_len - s.q_len)); i < s.q_len; ++i) {
            const float* qi = q + b * qs.batch + i * qs.row + h * qs.head;
            const float* gi = dout + b * dos.batch + i * dos.row + h * dos.head;
            float sd = 0.0f, dpd = 0.0f;
            #pragma unroll
            for (int e = 0; e < E; ++e) {
                sd += qi[lane + 32 * e] * kv[e];
                dpd += gi[lane + 32 * e] * vv[e];
            }
            const float p = expf(warp_sum(sd) * s.scale - lse[bh * s.q_len + i]);
            const float ds = p * (warp_sum(dpd) - dot[bh * s.q_len + i]);
            #pragma unroll
            for (int e = 0; e < E; ++e) {
                grad_v[e] += p * gi[lane + 32 * e];
                grad_k[e] += ds * qi[lane + 32 * e];
            }
        }
        const i64 at = ((b * s.kv_len + j) * s.heads + h) * D;
        #pragma unroll
        for (int e = 0; e < E; ++e) {
            dk[at + lane + 32 * e] = grad_k[e] * s.scale;
            dv[at + lane + 32 * e] = grad_v[e];
        }
    }
}

extern "C" __global__ void flash_attention_backward_f32(BACKWARD_ARGS(float), float* dk, float* dv) {
    if (s.head_dim == 64) {
        backward_kv_f32<64>(q, qs, k, ks, v, vs, dout, dos, lse, dot, s, dk, dv);
    } else {
        backward_kv_f32<128>(q, qs, k, ks, v, vs, dout, dos, lse, dot, s, dk, dv);
    }
}

template <int D>
__device__ void backward_q_f32(BACKWARD_ARGS(float), float* dq) {
    const int E = D / 32;
    WARP_PER_ROW(row, s.batch * s.heads * s.q_len) {
        const i64 i = row % s.q_len, h = (row / s.q_len) % s.heads, b = row / (s.q_len * s.heads);
        const float* qi = q + b * qs.batch + i * qs.row + h * qs.head;
        const float* gi = dout + b * dos.batch + i * dos.row + h * dos.head;
        const float lse_i = lse[row], dot_i = dot[row];
        float qv[E], gv[E], grad_q[E];
        #pragma unroll
        for (int e = 0; e < E; ++e) {
            qv[e] = qi[lane + 32 * e];
            gv[e] = gi[lane + 32 * e];
            grad_q[e] = 0.0f;
        }
        for (i64 j = 0; j <= i + s.kv_len - s.q_len; ++j) {
            const float* kj = k + b * ks.batch + j * ks.row + h * ks.head;
            const float* vj = v + b * vs.batch + j * vs.row + h * vs.head;
            float sd = 0.0f, dpd = 0.0f;
            #pragma unroll
            for (int e = 0; e < E; ++e) {
                sd += qv[e] * kj[lane + 32 * e];
                dpd += gv[e] * vj[lane + 32 * e];
            }
            const float p = expf(warp_sum(sd) * s.scale - lse_i);
            const float ds = p * (warp_sum(dpd) - dot_i);
            #pragma unroll
            for (int e = 0; e < E; ++e) grad_q[e] += ds * kj[lane + 32 * e];
        }
        float* out = dq + ((b * s.q_len + i) * s.heads + h) * D;
        #pragma unroll
        for (int e = 0; e < E; ++e) out[lane + 32 * e] = grad_q[e] * s.scale;
    }
}

extern "C" __global__ void flash_attention_backward_dq_f32(BACKWARD_ARGS(float), float* dq) {
    if (s.head_dim == 64) {
        backward_q_f32<64>(q, qs, k, ks, v, vs, dout, dos, lse, dot, s, dq);
    } else {
        backward_q_f32<128>(q, qs, k, ks, v, vs, dout, dos, lse, dot, s, dq);
    }
}
