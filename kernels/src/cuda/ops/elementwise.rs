//! Launchers of `kernels/cuda/elementwise.cu`.
use super::{grid_1d, launch};
use crate::cpu::gated::GateActivation;
use crate::cuda::{CudaDevice, GpuDType, Kernel, Result, StridedArg};
use cudarc::driver::PushKernelArg;

/// Declares the one-thread-per-element launchers, one table entry each:
///
/// ```text
/// /// docs
/// name(params) over (dtype, n): kernel_for_dtype, "C signature of the kernel"; let x = ...; args;
/// ```
///
/// becomes `pub unsafe fn name(device: &CudaDevice, params, dtype: GpuDType, n: usize) -> Result<()>`,
/// which launches nothing for `n == 0`, else binds `n` as the kernels' `i64` count, runs the entry's
/// `let`s, picks the entry's kernel for `dtype` and launches it on `grid_1d(n)` with exactly the listed
/// arguments, in order. The C signature joins the function's docs, so a reviewer checks each argument
/// list against it in one place.
macro_rules! elementwise_launchers {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident($($param:ident: $ty:ty),* $(,)?) over ($dtype:ident, $n:ident):
            $kernel:expr, $signature:literal;
            $(let $bind:ident = $value:expr;)*
            $($arg:expr),+;
    )*) => {$(
        $(#[doc = $doc])*
        ///
        #[doc = concat!("Kernel: `", $signature, "`.")]
        ///
        /// # Safety
        /// The operands must address only elements of live buffers of this device, and each output
        /// must hold `n` contiguous elements; all have type `dtype`.
        #[allow(clippy::too_many_arguments)] // operands and outputs kept flat, in the kernel's order
        pub unsafe fn $name(
            device: &CudaDevice,
            $($param: $ty,)*
            $dtype: GpuDType,
            $n: usize,
        ) -> Result<()> {
            if $n == 0 {
                return Ok(());
            }
            let $n = $n as i64;
            $(let $bind = $value;)*
            // SAFETY: the arguments are listed in the order and types of the kernel's signature (in the
            // docs above); the caller's `# Safety` contract covers every address and element count.
            unsafe { launch!(device, $kernel, grid_1d($n as usize); $($arg),+) }
        }
    )*};
}

/// The kernel instantiated for `dtype` of a pair declared for f32 and bf16.
fn for_dtype(dtype: GpuDType, f32: Kernel, bf16: Kernel) -> Kernel {
    match dtype {
        GpuDType::F32 => f32,
        GpuDType::BF16 => bf16,
    }
}

/// `y[dst(i)] = convert(x[src(i)])` for the `n` elements of the views (dtype conversion included).
///
/// # Safety
/// `x` and `y` must be buffers of this device holding every element the views address.
#[allow(clippy::too_many_arguments)] // two (view, address, dtype) triples, kept flat for the callers
pub unsafe fn copy_strided(
    device: &CudaDevice,
    src: &StridedArg,
    x: u64,
    src_dtype: GpuDType,
    dst: &StridedArg,
    y: u64,
    dst_dtype: GpuDType,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    if src_dtype == dst_dtype {
        if let Some((src16, dst16)) = in_16_byte_units(src, x, dst, y, src_dtype.size_in_bytes()) {
            let n = (n * src_dtype.size_in_bytes() / 16) as i64;
            // SAFETY: `copy_vec16(Strided, const vec16*, Strided, vec16*, i64)`; the views address the same
            // bytes as the element views (checked alignment and divisibility).
            return unsafe {
                launch!(device, Kernel::CopyVec16, grid_1d(n as usize); &src16, &x, &dst16, &y, &n)
            };
        }
    }
    if src.rank == 2 && src.strides[1] == 1 && dst.strides[1] == 1 {
        let (rows, cols) = (src.shape[0], src.shape[1]);
        let kernel = match (src_dtype, dst_dtype) {
            (GpuDType::F32, GpuDType::F32) => Kernel::CopyRowsF32F32,
            (GpuDType::F32, GpuDType::BF16) => Kernel::CopyRowsF32Bf16,
            (GpuDType::BF16, GpuDType::F32) => Kernel::CopyRowsBf16F32,
            (GpuDType::BF16, GpuDType::BF16) => Kernel::CopyRowsBf16Bf16,
        };
        let config = cudarc::driver::LaunchConfig {
            grid_dim: ((cols as u32).div_ceil(256).min(64), (rows as u32).min(65535), 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (xs, ys) = (src.strides[0], dst.strides[0]);
        // SAFETY: `copy_rows_S_D(const S*, i64, i64, D*, i64, i64, i64, i64)` over the same elements as
        // the views describe.
        return unsafe {
            launch!(device, kernel, config; &x, &src.offset, &xs, &y, &dst.offset, &ys, &rows, &cols)
        };
    }
    let kernel = match (src_dtype, dst_dtype) {
        (GpuDType::F32, GpuDType::F32) => Kernel::CopyF32F32,
        (GpuDType::F32, GpuDType::BF16) => Kernel::CopyF32Bf16,
        (GpuDType::BF16, GpuDType::F32) => Kernel::CopyBf16F32,
        (GpuDType::BF16, GpuDType::BF16) => Kernel::CopyBf16Bf16,
    };
    let n = n as i64;
    // SAFETY: argument list matches `copy_S_D(Strided, const S*, Strided, D*, i64)`.
    unsafe { launch!(device, kernel, grid_1d(n as usize); src, &x, dst, &y, &n) }
}

/// The views re-expressed in 16-byte units when both have a unit-stride innermost dim whose length, every
/// other stride, both offsets and both base addresses are multiples of 16 bytes: a same-dtype copy then
/// moves 16 bytes per thread (8 bf16 values) with a single index computation.
fn in_16_byte_units(
    src: &StridedArg,
    x: u64,
    dst: &StridedArg,
    y: u64,
    elem_bytes: usize,
) -> Option<(StridedArg, StridedArg)> {
    let per = (16 / elem_bytes) as i64;
    let fits = |s: &StridedArg| {
        let rank = s.rank as usize;
        rank >= 1
            && s.strides[rank - 1] == 1
            && s.shape[rank - 1] % per == 0
            && s.offset % per == 0
            && (0..rank - 1).all(|d| s.strides[d] % per == 0)
    };
    if src.rank != dst.rank || !fits(src) || !fits(dst) || !x.is_multiple_of(16) || !y.is_multiple_of(16) {
        return None;
    }
    let shrink = |s: &StridedArg| {
        let mut out = *s;
        let rank = s.rank as usize;
        out.offset /= per;
        out.shape[rank - 1] /= per;
        for d in 0..rank - 1 {
            out.strides[d] /= per;
        }
        out
    };
    Some((shrink(src), shrink(dst)))
}

/// A strided operand of a kernel: the view and the device address of its storage's first element.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    pub view: StridedArg,
    pub base: u64,
}

/// The broadcasting binary kernels (`binary_<op>_<dtype>`, and `binary_vec_<op>_<dtype>` for contiguous
/// aligned operands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
}

impl Binary {
    /// The kernel of this op for strided operands of `dtype`.
    fn strided_kernel(self, dtype: GpuDType) -> Kernel {
        match (self, dtype) {
            (Binary::Add, GpuDType::F32) => Kernel::BinaryAddF32,
            (Binary::Add, GpuDType::BF16) => Kernel::BinaryAddBf16,
            (Binary::Sub, GpuDType::F32) => Kernel::BinarySubF32,
            (Binary::Sub, GpuDType::BF16) => Kernel::BinarySubBf16,
            (Binary::Mul, GpuDType::F32) => Kernel::BinaryMulF32,
            (Binary::Mul, GpuDType::BF16) => Kernel::BinaryMulBf16,
            (Binary::Div, GpuDType::F32) => Kernel::BinaryDivF32,
            (Binary::Div, GpuDType::BF16) => Kernel::BinaryDivBf16,
        }
    }

    /// The kernel of this op for contiguous, 16-byte aligned operands of `dtype` (16 bytes per thread).
    fn vec_kernel(self, dtype: GpuDType) -> Kernel {
        match (self, dtype) {
            (Binary::Add, GpuDType::F32) => Kernel::BinaryVecAddF32,
            (Binary::Add, GpuDType::BF16) => Kernel::BinaryVecAddBf16,
            (Binary::Sub, GpuDType::F32) => Kernel::BinaryVecSubF32,
            (Binary::Sub, GpuDType::BF16) => Kernel::BinaryVecSubBf16,
            (Binary::Mul, GpuDType::F32) => Kernel::BinaryVecMulF32,
            (Binary::Mul, GpuDType::BF16) => Kernel::BinaryVecMulBf16,
            (Binary::Div, GpuDType::F32) => Kernel::BinaryVecDivF32,
            (Binary::Div, GpuDType::BF16) => Kernel::BinaryVecDivBf16,
        }
    }
}

/// The unary kernels (`unary_<op>_<dtype>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Silu,
}

impl Unary {
    /// The kernel of this op for `dtype`.
    fn kernel(self, dtype: GpuDType) -> Kernel {
        match (self, dtype) {
            (Unary::Neg, GpuDType::F32) => Kernel::UnaryNegF32,
            (Unary::Neg, GpuDType::BF16) => Kernel::UnaryNegBf16,
            (Unary::Exp, GpuDType::F32) => Kernel::UnaryExpF32,
            (Unary::Exp, GpuDType::BF16) => Kernel::UnaryExpBf16,
            (Unary::Log, GpuDType::F32) => Kernel::UnaryLogF32,
            (Unary::Log, GpuDType::BF16) => Kernel::UnaryLogBf16,
            (Unary::Silu, GpuDType::F32) => Kernel::UnarySiluF32,
            (Unary::Silu, GpuDType::BF16) => Kernel::UnarySiluBf16,
        }
    }
}

/// `y[i] = a[i] (op) b[i]` over the `n` elements of the (broadcast) views; `y` is contiguous.
///
/// # Safety
/// The operands must address only elements of live buffers of this device, and `y` must hold `n`
/// elements; all three have type `dtype`.
pub unsafe fn binary(
    device: &CudaDevice,
    op: Binary,
    a: &Operand,
    b: &Operand,
    y: u64,
    dtype: GpuDType,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    // Both inputs contiguous (one dim after coalescing, unit stride) and 16-byte aligned: 16 bytes per
    // thread, no index arithmetic.
    let contiguous_at = |o: &Operand| {
        let v = &o.view;
        let start = o.base + (v.offset as u64) * dtype.size_in_bytes() as u64;
        (v.rank == 1 && v.strides[0] == 1 && start.is_multiple_of(16)).then_some(start)
    };
    let per = 16 / dtype.size_in_bytes();
    if let (Some(pa), Some(pb), true, true) =
        (contiguous_at(a), contiguous_at(b), n.is_multiple_of(per), y.is_multiple_of(16))
    {
        let chunks = (n / per) as i64;
        // SAFETY: `binary_vec_OP_T(const vec16*, const vec16*, vec16*, i64)` over `n` contiguous elements.
        return unsafe {
            launch!(device, op.vec_kernel(dtype), grid_1d(chunks as usize); &pa, &pb, &y, &chunks)
        };
    }
    // SAFETY: as above; the strided kernel reads the views as they are.
    unsafe { binary_strided(device, op, a, b, y, dtype, n) }
}

/// The activation flag the gated kernels take (`int silu`).
fn silu_flag(activation: GateActivation) -> i32 {
    match activation {
        GateActivation::Silu => 1,
        GateActivation::Identity => 0,
    }
}

elementwise_launchers! {
    /// `y[i] = value` for `i < n`.
    fill(y: u64, value: f32) over (dtype, n):
        for_dtype(dtype, Kernel::FillF32, Kernel::FillBf16), "fill_T(T*, float, i64)";
        &y, &value, &n;

    /// [`binary`] for operands that are not both contiguous and aligned: one element per thread through
    /// the views' strides.
    binary_strided(op: Binary, a: &Operand, b: &Operand, y: u64) over (dtype, n):
        op.strided_kernel(dtype), "binary_OP_T(Strided, const T*, Strided, const T*, T*, i64)";
        &a.view, &a.base, &b.view, &b.base, &y, &n;

    /// `y[i] = f(x[i])` over the `n` elements of the view; `y` is contiguous.
    unary(op: Unary, x: &Operand, y: u64) over (dtype, n):
        op.kernel(dtype), "unary_OP_T(Strided, const T*, T*, i64)";
        &x.view, &x.base, &y, &n;

    /// `y[i] = scale * x[i] + shift` over the `n` elements of the view; `y` is contiguous.
    affine(x: &Operand, scale: f32, shift: f32, y: u64) over (dtype, n):
        for_dtype(dtype, Kernel::AffineF32, Kernel::AffineBf16),
        "affine_T(Strided, const T*, float, float, T*, i64)";
        &x.view, &x.base, &scale, &shift, &y, &n;

    /// `y[i] = grad[i] * s * (1 + x[i] (1 - s))`, `s = sigmoid(x[i])`, over `n` elements; `y` is
    /// contiguous.
    silu_backward(x: &Operand, grad: &Operand, y: u64) over (dtype, n):
        for_dtype(dtype, Kernel::SiluBackwardF32, Kernel::SiluBackwardBf16),
        "silu_backward_T(Strided, const T*, Strided, const T*, T*, i64)";
        &x.view, &x.base, &grad.view, &grad.base, &y, &n;

    /// `y[i] = act(gate[i]) * up[i]` over the `n` elements of the views; `y` is contiguous.
    gated(gate: &Operand, up: &Operand, activation: GateActivation, y: u64) over (dtype, n):
        for_dtype(dtype, Kernel::GatedForwardF32, Kernel::GatedForwardBf16),
        "gated_forward_T(Strided, const T*, Strided, const T*, T*, i64, int)";
        let silu = silu_flag(activation);
        &gate.view, &gate.base, &up.view, &up.base, &y, &n, &silu;

    /// `grad_up[i] = grad[i] * act(gate[i])`, `grad_gate[i] = grad[i] * up[i] * act'(gate[i])` in one pass
    /// over the `n` elements of the views; both outputs are contiguous.
    gated_backward(
        gate: &Operand,
        up: &Operand,
        grad: &Operand,
        activation: GateActivation,
        grad_gate: u64,
        grad_up: u64,
    ) over (dtype, n):
        for_dtype(dtype, Kernel::GatedBackwardF32, Kernel::GatedBackwardBf16),
        "gated_backward_T(Strided, const T*, Strided, const T*, Strided, const T*, T*, T*, i64, int)";
        let silu = silu_flag(activation);
        &gate.view, &gate.base, &up.view, &up.base, &grad.view, &grad.base, &grad_gate, &grad_up, &n, &silu;
}
