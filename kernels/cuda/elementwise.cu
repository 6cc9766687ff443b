// Elementwise kernels: strided copy with dtype conversion, fill, broadcasting binary arithmetic, unary
// functions, affine maps and the silu gradient.
// Every kernel is instantiated for f32 and bf16 as `<name>_<dtype>` (extern "C", so names are stable).
// Arithmetic uses the explicitly rounded intrinsics (`__fadd_rn`, ...), which the compiler never fuses into
// an fma, so f32 results round exactly like the CPU kernels (two roundings for `a * b + c`).

// Offset of element i of a view; rank-0 and rank-1 views (the common, coalesced case) skip the divisions.
__device__ __forceinline__ i64 view_offset(const Strided& s, i64 i) {
    if (s.rank == 0) return s.offset;
    if (s.rank == 1) return s.offset + i * s.strides[0];
    return strided_offset(s, i);
}

template <typename S, typename D>
__device__ void copy_strided(Strided src, const S* x, Strided dst, D* y, i64 n) {
    FOR_EACH(i, n) { store(y, view_offset(dst, i), load(x, view_offset(src, i))); }
}

#define COPY(S, D) \
    extern "C" __global__ void copy_##S##_##D(Strided src, const S* x, Strided dst, D* y, i64 n) { \
        copy_strided<S, D>(src, x, dst, y, n); \
    }
COPY(f32, f32)
COPY(f32, bf16)
COPY(bf16, f32)
COPY(bf16, bf16)

// Copies between two row-major matrices with unit-stride rows and arbitrary row strides (padded buffers):
// blocks along x cover a row, y walks the rows, so no thread divides.
template <typename S, typename D>
__device__ void copy_rows(const S* x, i64 x_offset, i64 x_stride, D* y, i64 y_offset, i64 y_stride, i64 rows,
                          i64 cols) {
    for (i64 r = blockIdx.y; r < rows; r += gridDim.y) {
        for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += (i64)gridDim.x * blockDim.x) {
            store(y, y_offset + r * y_stride + c, load(x, x_offset + r * x_stride + c));
        }
    }
}

#define COPY_ROWS(S, D) \
    extern "C" __global__ void copy_rows_##S##_##D(const S* x, i64 x_offset, i64 x_stride, D* y, i64 y_offset, \
                                                   i64 y_stride, i64 rows, i64 cols) { \
        copy_rows<S, D>(x, x_offset, x_stride, y, y_offset, y_stride, rows, cols); \
    }
COPY_ROWS(f32, f32)
COPY_ROWS(f32, bf16)
COPY_ROWS(bf16, f32)
COPY_ROWS(bf16, bf16)

// Same-dtype copies in 16-byte units (the launcher re-expresses both views in these units).
struct __align__(16) vec16 {
    unsigned int a, b, c, d;
};
extern "C" __global__ void copy_vec16(Strided src, const vec16* x, Strided dst, vec16* y, i64 n) {
    FOR_EACH(i, n) { y[view_offset(dst, i)] = x[view_offset(src, i)]; }
}

template <typename T>
__device__ void fill(T* y, float value, i64 n) {
    FOR_EACH(i, n) { store(y, i, value); }
}

extern "C" __global__ void fill_f32(f32* y, float value, i64 n) { fill<f32>(y, value, n); }
extern "C" __global__ void fill_bf16(bf16* y, float value, i64 n) { fill<bf16>(y, value, n); }

// ---- Broadcasting binary ops: y[i] = a[sa(i)] (op) b[sb(i)], y contiguous; broadcast dims have stride 0.

struct OpAdd { __device__ float operator()(float a, float b) const { return __fadd_rn(a, b); } };
struct OpSub { __device__ float operator()(float a, float b) const { return __fsub_rn(a, b); } };
struct OpMul { __device__ float operator()(float a, float b) const { return __fmul_rn(a, b); } };
struct OpDiv { __device__ float operator()(float a, float b) const { return __fdiv_rn(a, b); } };

template <typename T, typename Op>
__device__ void binary(Strided sa, const T* a, Strided sb, const T* b, T* y, i64 n) {
    Op op;
    FOR_EACH(i, n) { store(y, i, op(load(a, view_offset(sa, i)), load(b, view_offset(sb, i)))); }
}

// The same on contiguous, 16-byte-aligned inputs: each thread handles 16 bytes (4 f32 or 8 bf16 values).
template <typename T, typename Op>
__device__ void binary_vec(const vec16* a, const vec16* b, vec16* y, i64 chunks) {
    Op op;
    constexpr int per = 16 / sizeof(T);
    FOR_EACH(i, chunks) {
        vec16 va = a[i], vb = b[i], vy;
        const T* pa = reinterpret_cast<const T*>(&va);
        const T* pb = reinterpret_cast<const T*>(&vb);
        T* py = reinterpret_cast<T*>(&vy);
#pragma unroll
        for (int j = 0; j < per; ++j) store(py, j, op(load(pa, j), load(pb, j)));
        y[i] = vy;
    }
}

#define BINARY(NAME, OP, T) \
    extern "C" __global__ void binary_##NAME##_##T(Strided sa, const T* a, Strided sb, const T* b, T* y, i64 n) { \
        binary<T, OP>(sa, a, sb, b, y, n); \
    }
BINARY(add, OpAdd, f32)
BINARY(add, OpAdd, bf16)
BINARY(sub, OpSub, f32)
BINARY(sub, OpSub, bf16)
BINARY(mul, OpMul, f32)
BINARY(mul, OpMul, bf16)
BINARY(div, OpDiv, f32)
BINARY(div, OpDiv, bf16)

#define BINARY_VEC(NAME, OP, T) \
    extern "C" __global__ void binary_vec_##NAME##_##T(const vec16* a, const vec16* b, vec16* y, i64 chunks) { \
        binary_vec<T, OP>(a, b, y, chunks); \
    }
BINARY_VEC(add, OpAdd, f32)
BINARY_VEC(add, OpAdd, bf16)
BINARY_VEC(sub, OpSub, f32)
BINARY_VEC(sub, OpSub, bf16)
BINARY_VEC(mul, OpMul, f32)
BINARY_VEC(mul, OpMul, bf16)
BINARY_VEC(div, OpDiv, f32)
BINARY_VEC(div, OpDiv, bf16)

// ---- Unary functions: y[i] = f(x[sx(i)]), y contiguous.

// 1 / (1 + exp(-x)): exp overflows to inf for large -x and 1 / inf == 0, so it saturates without NaN.
__device__ __forceinline__ float sigmoid(float x) { return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x))); }

struct OpNeg { __device__ float operator()(float x) const { return -x; } };
struct OpExp { __device__ float operator()(float x) const { return expf(x); } };
struct OpLog { __device__ float operator()(float x) const { return logf(x); } };
// silu(x) = x / (1 + exp(-x)), as on the CPU (one rounding fewer than x * sigmoid(x)).
struct OpSilu { __device__ float operator()(float x) const { return __fdiv_rn(x, __fadd_rn(1.0f, expf(-x))); } };

template <typename T, typename Op>
__device__ void unary(Strided sx, const T* x, T* y, i64 n) {
    Op op;
    FOR_EACH(i, n) { store(y, i, op(load(x, view_offset(sx, i)))); }
}

#define UNARY(NAME, OP, T) \
    extern "C" __global__ void unary_##NAME##_##T(Strided sx, const T* x, T* y, i64 n) { unary<T, OP>(sx, x, y, n); }
UNARY(neg, OpNeg, f32)
UNARY(neg, OpNeg, bf16)
UNARY(exp, OpExp, f32)
UNARY(exp, OpExp, bf16)
UNARY(log, OpLog, f32)
UNARY(log, OpLog, bf16)
UNARY(silu, OpSilu, f32)
UNARY(silu, OpSilu, bf16)

// ---- Affine map: y[i] = scale * x[sx(i)] + shift (two roundings, no fma), y contiguous.

template <typename T>
__device__ void affine(Strided sx, const T* x, float scale, float shift, T* y, i64 n) {
    FOR_EACH(i, n) { store(y, i, __fadd_rn(__fmul_rn(scale, load(x, view_offset(sx, i))), shift)); }
}

extern "C" __global__ void affine_f32(Strided sx, const f32* x, float scale, float shift, f32* y, i64 n) {
    affine<f32>(sx, x, scale, shift, y, n);
}
extern "C" __global__ void affine_bf16(Strided sx, const bf16* x, float scale, float shift, bf16* y, i64 n) {
    affine<bf16>(sx, x, scale, shift, y, n);
}

// ---- Silu gradient: y[i] = g * s * (1 + x * (1 - s)) with s = sigmoid(x), y contiguous.

template <typename T>
__device__ void silu_backward(Strided sx, const T* x, Strided sg, const T* g, T* y, i64 n) {
    FOR_EACH(i, n) {
        float xi = load(x, view_offset(sx, i));
        float gi = load(g, view_offset(sg, i));
        float s = sigmoid(xi);
        float slope = __fmul_rn(s, __fadd_rn(1.0f, __fmul_rn(xi, __fsub_rn(1.0f, s))));
        store(y, i, __fmul_rn(gi, slope));
    }
}

extern "C" __global__ void silu_backward_f32(Strided sx, const f32* x, Strided sg, const f32* g, f32* y, i64 n) {
    silu_backward<f32>(sx, x, sg, g, y, n);
}
extern "C" __global__ void silu_backward_bf16(Strided sx, const bf16* x, Strided sg, const bf16* g, bf16* y, i64 n) {
    silu_backward<bf16>(sx, x, sg, g, y, n);
}

// ---- Gated product of the MLP: y[i] = act(g) * u, act = silu (silu != 0) or the identity, y contiguous.
// Backward in one pass: du = dh * act(g), dg = dh * u * act'(g), with act(g) = g * s and
// act'(g) = s * (1 + g * (1 - s)), s = sigmoid(g), in the CPU kernel's order of operations.

template <typename T>
__device__ void gated_forward(Strided sg, const T* g, Strided su, const T* u, T* y, i64 n, int silu) {
    FOR_EACH(i, n) {
        float gi = load(g, view_offset(sg, i));
        float ui = load(u, view_offset(su, i));
        float a = silu ? OpSilu()(gi) : gi;
        store(y, i, __fmul_rn(a, ui));
    }
}

template <typename T>
__device__ void gated_backward(Strided sg, const T* g, Strided su, const T* u, Strided sd, const T* dh,
                               T* grad_gate, T* grad_up, i64 n, int silu) {
    FOR_EACH(i, n) {
        float gi = load(g, view_offset(sg, i));
        float ui = load(u, view_offset(su, i));
        float di = load(dh, view_offset(sd, i));
        if (silu) {
            float s = sigmoid(gi);
            float slope = __fmul_rn(s, __fadd_rn(1.0f, __fmul_rn(gi, __fsub_rn(1.0f, s))));
            store(grad_up, i, __fmul_rn(di, __fmul_rn(gi, s)));
            store(grad_gate, i, __fmul_rn(__fmul_rn(di, ui), slope));
        } else {
            store(grad_up, i, __fmul_rn(di, gi));
            store(grad_gate, i, __fmul_rn(di, ui));
        }
    }
}

#define GATED(T) \
    extern "C" __global__ void gated_forward_##T(Strided sg, const T* g, Strided su, const T* u, T* y, i64 n, \
                                                  int silu) { \
        gated_forward<T>(sg, g, su, u, y, n, silu); \
    } \
    extern "C" __global__ void gated_backward_##T(Strided sg, const T* g, Strided su, const T* u, Strided sd, \
                                                   const T* dh, T* grad_gate, T* grad_up, i64 n, int silu) { \
        gated_backward<T>(sg, g, su, u, sd, dh, grad_gate, grad_up, n, silu); \
    }
GATED(f32)
GATED(bf16)
