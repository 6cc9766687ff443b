// Rotary position embedding (rotate-half) on contiguous [batch, seq, heads, head_dim]: pair p of a head is
// the dims (p, p + half) with half = head_dim / 2, rotated by the angle of (sequence index, p):
//   y_p = x_p cos - x_{p+half} sin,   y_{p+half} = x_{p+half} cos + x_p sin.
// cos and sin are [seq, half] tables computed on the host in f64 (the backward passes negated sines).
// One thread per pair; consecutive threads take consecutive pairs of a head, so loads are coalesced.

template <typename T>
__device__ void rope_rotate(const T* x, T* y, const float* cos_table, const float* sin_table, i64 pairs,
                            i64 seq, i64 heads, i64 half) {
    FOR_EACH(i, pairs) {
        i64 p = i % half;
        i64 head_row = i / half;  // index over [batch, seq, heads]
        i64 s = (head_row / heads) % seq;
        i64 lo = head_row * 2 * half + p;
        float a = load(x, lo), b = load(x, lo + half);
        float c = cos_table[s * half + p], sn = sin_table[s * half + p];
        store(y, lo, a * c - b * sn);
        store(y, lo + half, b * c + a * sn);
    }
}

#define ROPE(T) \
    extern "C" __global__ void rope_rotate_##T(const T* x, T* y, const float* cos_table, const float* sin_table, \
                                               i64 pairs, i64 seq, i64 heads, i64 half) { \
        rope_rotate<T>(x, y, cos_table, sin_table, pairs, seq, heads, half); \
    }
ROPE(f32)
ROPE(bf16)
